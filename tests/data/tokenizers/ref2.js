// usage: node ref2.js tokenizer.json < texts.jsonl -> full reference records (cases.jsonl format + decoded_skip)
const { Tokenizer } = require('tokenizers');
const readline = require('readline');
(async () => {
  const tok = Tokenizer.fromFile(process.argv[2]);
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.trim()) continue;
    const { text } = JSON.parse(line);
    const e = await tok.encode(text, null, { addSpecialTokens: false });
    const p = await tok.encode(text, null, { addSpecialTokens: true });
    const ids = Array.from(e.getIds());
    const pids = Array.from(p.getIds());
    process.stdout.write(JSON.stringify({ text, ids, tokens: e.getTokens(), ids_post: pids, tokens_post: p.getTokens(),
      decoded: await tok.decode(ids, false), decoded_post_skip: await tok.decode(pids, true) }) + '\n');
  }
})();
