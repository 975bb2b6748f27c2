// The chat page served at "/": plain HTML + JS, no build step. Streams /v1/chat/completions over SSE.
// `?autotest=MESSAGE` sends MESSAGE on load (used by the headless-browser test).
#include "server/server.h"

namespace dsfuse::server {

const char* web_page() {
  return R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dsfuse chat</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:48rem;margin:0 auto;padding:1rem;background:#fafafa}
#log{white-space:pre-wrap;min-height:20rem;border:1px solid #ccc;background:#fff;padding:.75rem;border-radius:6px}
.user{color:#124;font-weight:600;margin-top:.5rem}.assistant{color:#222}.thinking{color:#888;font-style:italic}
form{display:flex;gap:.5rem;margin-top:.75rem}#msg{flex:1;padding:.5rem}button{padding:.5rem 1rem}
#status{color:#666;font-size:.85rem;margin-top:.25rem}
</style></head><body>
<h1>dsfuse</h1>
<div id="log"></div>
<form id="f"><input id="msg" autocomplete="off" placeholder="Message"><button id="send">Send</button></form>
<div id="status"></div>
<script>
const log = document.getElementById('log'), msg = document.getElementById('msg'), statusEl = document.getElementById('status');
const history = [];
let model = null;
async function getModel() {
  if (model) return model;
  const r = await fetch('/v1/models'); const j = await r.json(); model = j.data[0].id; return model;
}
function add(cls, text) { const d = document.createElement('div'); d.className = cls; d.textContent = text; log.appendChild(d); return d; }
async function send(text) {
  add('user', 'You: ' + text);
  history.push({role: 'user', content: text});
  const think = add('thinking', ''), out = add('assistant', '');
  out.id = 'answer-' + history.length;
  statusEl.textContent = 'generating...';
  const t0 = performance.now(); let tokens = 0;
  const r = await fetch('/v1/chat/completions', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({model: await getModel(), messages: history, stream: true, max_tokens: 200})});
  if (!r.ok) { out.textContent = 'error: ' + (await r.text()); statusEl.textContent = ''; return; }
  const reader = r.body.getReader(), dec = new TextDecoder(); let buf = '', answer = '';
  for (;;) {
    const {value, done} = await reader.read(); if (done) break;
    buf += dec.decode(value, {stream: true});
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const line = buf.slice(0, i); buf = buf.slice(i + 2);
      if (!line.startsWith('data: ')) continue;
      const data = line.slice(6); if (data === '[DONE]') continue;
      const c = JSON.parse(data); const d = (c.choices[0] || {}).delta || {};
      if (d.reasoning_content) think.textContent += d.reasoning_content;
      if (d.content) { answer += d.content; out.textContent = answer; tokens++; }
    }
  }
  history.push({role: 'assistant', content: answer});
  out.dataset.done = '1';
  statusEl.textContent = tokens + ' chunks in ' + ((performance.now() - t0) / 1000).toFixed(2) + ' s';
}
document.getElementById('f').addEventListener('submit', e => { e.preventDefault(); const t = msg.value.trim(); if (t) { msg.value = ''; send(t); } });
const auto = new URLSearchParams(location.search).get('autotest');
if (auto) { msg.value = auto; document.getElementById('send').click(); }
</script></body></html>
)HTML";
}

}  // namespace dsfuse::server
