// Drives a running `dsfuse serve` with the official `openai` npm client. Usage: node openai_client.mjs BASE_URL
// Prints one line per check and exits non-zero on the first failure.
import OpenAI from 'openai';

const baseURL = process.argv[2];
const client = new OpenAI({ baseURL, apiKey: 'test-key', maxRetries: 0, timeout: 60000 });
const check = (cond, what) => {
  if (!cond) { console.error('FAIL ' + what); process.exit(1); }
  console.log('ok ' + what);
};

const models = await client.models.list();
const ids = [];
for await (const m of models) ids.push(m.id);
check(ids.length === 1, 'models.list returns the served model: ' + ids.join(','));
const model = ids[0];

const chat = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'ROMEO:' }], max_tokens: 12, seed: 1 });
check(chat.object === 'chat.completion' && typeof chat.choices[0].message.content === 'string', 'chat.completions plain');
check(chat.usage.completion_tokens === 12, 'usage.completion_tokens = 12');

const stream = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'JULIET:' }], max_tokens: 12,
  stream: true, stream_options: { include_usage: true }, temperature: 0 });
let text = '', chunks = 0, usage = null, finish = null;
for await (const chunk of stream) {
  chunks++;
  if (chunk.usage) usage = chunk.usage;
  const c = chunk.choices[0];
  if (c && c.delta && c.delta.content) text += c.delta.content;
  if (c && c.finish_reason) finish = c.finish_reason;
}
check(chunks > 3 && text.length > 0, 'chat.completions stream (' + chunks + ' chunks)');
check(finish === 'length' && usage && usage.completion_tokens === 12, 'stream finish_reason and include_usage');
const plain = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'JULIET:' }], max_tokens: 12, temperature: 0 });
check(plain.choices[0].message.content === text, 'streamed text equals the plain answer');

const comp = await client.completions.create({ model, prompt: 'First Citizen:', max_tokens: 8 });
check(comp.object === 'text_completion' && typeof comp.choices[0].text === 'string', 'completions');

try {
  await client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] });
  check(false, 'unknown model is an error');
} catch (e) {
  check(e.status === 404 && /does not exist/.test(e.message), 'unknown model -> 404 NotFoundError: ' + e.constructor.name);
}
try {
  await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], max_tokens: 0 });
  check(false, 'max_tokens 0 is an error');
} catch (e) {
  check(e.status === 400, 'max_tokens 0 -> 400 BadRequestError');
}
console.log('all checks passed');
