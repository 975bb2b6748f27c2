# Records reference outputs of HF tokenizers 0.23.2 (Node) for the synthetic tokenizers A-D.
# usage: NODE_PATH=<dir with node_modules> python3 mkcases.py
import json, os, random, subprocess
HERE = os.path.dirname(os.path.abspath(__file__))
random.seed(12345)
atoms=['a','Z','hello','Hello',' the',' world','is',' is ','it','ing',' ','  ','\t','\n','\r\n',"'s",'1','23','4567','²','½','中文','😀','👍🏽','\u0301','é','é','ﬁ','İ','ß','ñ','<s>','</s>','[MASK]',' [MASK] ','<tool>',' <tool>','<|end|>','<unk>','▁','Ġ','!','-','--',',',';','#','x','xx','q','\u00a0','\x85','##','[CLS]']
hand=['Hello world','  leading and trailing  ','is it [MASK] here','a [MASK]b','x <tool> y','<tool>','ñ   ñ','12345 a-b--c,d;e xxq#r','ﬁne İstanbul ÉCOLE','😀👍🏽 中文', '', ' ', 'is is this','<s>hello</s>']
texts=hand+[''.join(random.choice(atoms) for _ in range(random.randint(1,14))) for _ in range(26)]
inp='\n'.join(json.dumps({'text':t},ensure_ascii=False) for t in texts)+'\n'
for n in 'ABCD':
    r=subprocess.run(['node',os.path.join(HERE,'ref2.js'),os.path.join(HERE,n+'.json')],input=inp.encode(),capture_output=True,check=True)
    open(os.path.join(HERE,n+'.cases.jsonl'),'wb').write(r.stdout)
