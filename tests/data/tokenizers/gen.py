# Generates the synthetic tokenizer.json files A-D of this directory (tests/test_tokenizer_components.cpp).
# Then mkcases.py records the reference outputs with HF tokenizers 0.23.2 for Node (npm install tokenizers@0.23.2).
import json, os
HERE = os.path.dirname(os.path.abspath(__file__))
def bl_alphabet():
    bs=list(range(ord('!'),ord('~')+1))+list(range(0xa1,0xad))+list(range(0xae,0x100))
    cs=bs[:]; n=0
    for b in range(256):
        if b not in bs: bs.append(b); cs.append(256+n); n+=1
    return {b:chr(c) for b,c in zip(bs,cs)}
def merges_for(words, vocab, merges):
    for w in words:
        cur=w[0]
        for ch in w[1:]:
            for t in (cur,ch):
                if t not in vocab: vocab[t]=len(vocab)
            new=cur+ch
            if new not in vocab:
                vocab[new]=len(vocab); merges.append([cur,ch])
            cur=new
def added(id_,content,special=True,lstrip=False,rstrip=False,single_word=False,normalized=False):
    return dict(id=id_,content=content,single_word=single_word,lstrip=lstrip,rstrip=rstrip,normalized=normalized,special=special)
def base(model,added_tokens,normalizer,pre,post,decoder):
    return {"version":"1.0","truncation":None,"padding":None,"added_tokens":added_tokens,"normalizer":normalizer,
            "pre_tokenizer":pre,"post_processor":post,"decoder":decoder,"model":model}
words=['▁the','▁a','▁hello','▁world','hello','ing','▁is','▁it','▁of','▁and','▁to','tion','▁x','▁y','12','▁<','er','▁th']
# A: llama2-like sentencepiece BPE with byte fallback
v={'<unk>':0,'<s>':1,'</s>':2}
for b in range(256): v['<0x%02X>'%b]=len(v)
for c in 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789▁.,!?<>': 
    if c not in v: v[c]=len(v)
m=[]; merges_for(words,v,m)
n=len(v)
A=base({"type":"BPE","dropout":None,"unk_token":"<unk>","continuing_subword_prefix":None,"end_of_word_suffix":None,"fuse_unk":True,"byte_fallback":True,"vocab":v,"merges":[' '.join(x) for x in m]},
  [added(0,'<unk>'),added(1,'<s>'),added(2,'</s>'),added(n,'[MASK]',True,lstrip=True,rstrip=True),added(n+1,'<tool>',False,single_word=True,normalized=True),added(n+2,'is',False,single_word=True,normalized=False),added(n+3,'ñ',False,rstrip=True,normalized=False)],
  {"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Replace","pattern":{"String":" "},"content":"▁"}]},
  None,
  {"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}],"pair":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}}],"special_tokens":{"<s>":{"id":"<s>","ids":[1],"tokens":["<s>"]}}},
  {"type":"Sequence","decoders":[{"type":"Replace","pattern":{"String":"▁"},"content":" "},{"type":"ByteFallback"},{"type":"Fuse"},{"type":"Strip","content":" ","start":1,"stop":0}]})
json.dump(A,open(os.path.join(HERE,'A.json'),'w'),ensure_ascii=False)
# B: metaspace pre-tokenizer, NFKC+Lowercase+Strip, metaspace decoder, template <s> $A </s>
v={'<unk>':0,'<s>':1,'</s>':2}
for c in 'abcdefghijklmnopqrstuvwxyz0123456789▁.,!?<>': v[c]=len(v)
m=[]; merges_for(words+['▁fi','▁ﬁ'],v,m)
B=base({"type":"BPE","dropout":None,"unk_token":"<unk>","continuing_subword_prefix":None,"end_of_word_suffix":None,"fuse_unk":False,"byte_fallback":False,"vocab":v,"merges":m},
  [added(0,'<unk>'),added(1,'<s>'),added(2,'</s>')],
  {"type":"Sequence","normalizers":[{"type":"NFKC"},{"type":"Lowercase"},{"type":"Strip","strip_left":True,"strip_right":True},{"type":"Replace","pattern":{"Regex":"[0-9]{3,}"},"content":"#"}]},
  {"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":True},
  {"type":"Sequence","processors":[{"type":"ByteLevel","add_prefix_space":False,"trim_offsets":False,"use_regex":False},{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"</s>","type_id":0}}],"pair":[{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}}],"special_tokens":{"<s>":{"id":"<s>","ids":[1],"tokens":["<s>"]},"</s>":{"id":"</s>","ids":[2],"tokens":["</s>"]}}}]},
  {"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":True})
json.dump(B,open(os.path.join(HERE,'B.json'),'w'),ensure_ascii=False)
# C: byte-level BPE with every split behaviour, digits, ByteLevel(add_prefix_space, use_regex), prefix merges
al=bl_alphabet()
v={}
for b in range(256): v[al[b]]=len(v)
m=[]; merges_for(['Ġthe','Ġhello','hello','Ġworld','12','--','Ġ-','ĠĠ','ing','Ġx'],v,m)
pre={"type":"Sequence","pretokenizers":[
  {"type":"Digits","individual_digits":False},
  {"type":"Split","pattern":{"String":"-"},"behavior":"MergedWithPrevious","invert":False},
  {"type":"Split","pattern":{"Regex":"[,;]"},"behavior":"MergedWithNext","invert":False},
  {"type":"Split","pattern":{"Regex":"x+"},"behavior":"Contiguous","invert":False},
  {"type":"Split","pattern":{"Regex":"#"},"behavior":"Removed","invert":False},
  {"type":"Split","pattern":{"Regex":"[^q]+"},"behavior":"Removed","invert":True},
  {"type":"ByteLevel","add_prefix_space":True,"trim_offsets":True,"use_regex":True}]}
C=base({"type":"BPE","dropout":None,"unk_token":None,"continuing_subword_prefix":None,"end_of_word_suffix":None,"fuse_unk":False,"byte_fallback":False,"ignore_merges":True,"vocab":v,"merges":[' '.join(x) for x in m]},
  [added(len(v),'<|end|>'),added(len(v)+1,'<tool>',False,lstrip=True,normalized=True)],
  {"type":"NFC"},pre,
  {"type":"RobertaProcessing","sep":["<|end|>",len(v)],"cls":["<|end|>",len(v)],"trim_offsets":True,"add_prefix_space":True},
  {"type":"ByteLevel","add_prefix_space":True,"trim_offsets":True,"use_regex":True})
json.dump(C,open(os.path.join(HERE,'C.json'),'w'),ensure_ascii=False)
# D: Digits individual + Whitespace split + WhitespaceSplit, no decoder; BertProcessing; continuing_subword_prefix
v={'[UNK]':0,'[CLS]':1,'[SEP]':2}
for c in 'abcdefghijklmnopqrstuvwxyz0123456789.,!?': v[c]=len(v); v['##'+c]=len(v)
m=[]
for w in ['he','hel','hell','hello','th','the']:
    a,b=w[:-1],'##'+w[-1]
    if a not in v: v[a]=len(v)
    v[w]=len(v); m.append(a+' '+b)
D=base({"type":"BPE","dropout":None,"unk_token":"[UNK]","continuing_subword_prefix":"##","end_of_word_suffix":None,"fuse_unk":False,"byte_fallback":False,"vocab":v,"merges":m},
  [added(0,'[UNK]'),added(1,'[CLS]'),added(2,'[SEP]')],
  {"type":"Lowercase"},
  {"type":"Sequence","pretokenizers":[{"type":"WhitespaceSplit"},{"type":"Digits","individual_digits":True},{"type":"Whitespace"}]},
  {"type":"BertProcessing","sep":["[SEP]",2],"cls":["[CLS]",1]},None)
json.dump(D,open(os.path.join(HERE,'D.json'),'w'),ensure_ascii=False)
