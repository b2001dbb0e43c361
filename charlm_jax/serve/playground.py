"""The playground page ``GET /`` serves: type a prompt, set the temperature, watch the text stream in.

It talks to the server's own endpoints only (``/generate`` streamed, ``/next`` for the bars at the cursor,
``/inspect`` for the prompt coloured by surprisal, with ``charlm_jax.use.page``'s colours and bars), so
it needs no network beyond the server. Element ids (``prompt``, ``temperature``, ``generate``, ``output``,
``next``, ``inspect``, ``status``) are what the browser test drives.
"""

from __future__ import annotations

from charlm_jax.use.page import VIEW_CSS, VIEW_JS

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>charlm-jax playground</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 70em; }
textarea { width: 100%; height: 6em; font: 14px/1.5 ui-monospace, monospace; }
#controls { display: flex; gap: 1.5em; align-items: center; flex-wrap: wrap; margin: 0.6em 0; }
#output, #inspect { font: 14px/1.6 ui-monospace, monospace; white-space: pre-wrap; word-break: break-all;
  border: 1px solid #ccc; padding: 0.7em; min-height: 3em; }
#output .prompt { color: #888; }
#columns { display: grid; grid-template-columns: 1fr 22em; gap: 1.5em; }
#status { color: #555; font-size: 12px; min-height: 1.2em; }
h2 { font-size: 15px; margin: 1em 0 0.3em; }
__VIEW_CSS__
</style></head>
<body>
<h1>charlm-jax playground</h1>
<div id="model"></div>
<textarea id="prompt" spellcheck="false"></textarea>
<div id="controls">
  <label>temperature <input id="temperature" type="range" min="0" max="2" step="0.05" value="0.5">
    <output id="temperature-value">0.5</output></label>
  <label>length <input id="length" type="number" min="1" value="400" style="width: 5em"></label>
  <label>seed <input id="seed" type="number" value="0" style="width: 6em"></label>
  <button id="generate">Generate</button> <button id="stop" disabled>Stop</button>
</div>
<div id="status"></div>
<div id="columns">
  <div><h2>Generated</h2><div id="output"></div>
    <h2>The prompt as the model read it (orange: bits it needed; hover for what it expected next)</h2>
    <div id="inspect"></div></div>
  <div><h2 id="next-title">Next character at the cursor</h2><div id="next"></div></div>
</div>
<script>
__VIEW_JS__
const $ = id => document.getElementById(id);
const prompt = $("prompt"), slider = $("temperature");
let controller = null, nextTimer = null, inspectTimer = null, inspection = null;
async function post(path, body, signal) {
  const response = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                      body: JSON.stringify(body), signal});
  if (!response.ok) throw new Error((await response.json()).error || response.statusText);
  return response;
}
function status(text) { $("status").textContent = text; }
async function generate() {
  if (controller) controller.abort();
  controller = new AbortController();
  const output = $("output"); output.textContent = "";
  const head = document.createElement("span"); head.className = "prompt"; head.textContent = prompt.value;
  const body = document.createElement("span"); body.id = "generated"; output.append(head, body);
  $("stop").disabled = false; status("generating…");
  const started = performance.now();
  try {
    const response = await post("/generate", {prompt: prompt.value, temperature: +slider.value,
      length: +$("length").value, seed: +$("seed").value, stream: true}, controller.signal);
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "", count = 0;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\\n\\n")) >= 0) {
        const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        const kind = (event.match(/^event: (.*)$/m) || [, "message"])[1];
        const data = JSON.parse(event.match(/^data: (.*)$/m)[1]);
        if (kind === "error") throw new Error(data.error);
        if (kind === "message") { body.textContent += data.text; count += data.text.length; }
        status(`${count} characters in ${((performance.now() - started) / 1000).toFixed(2)} s` +
               (kind === "end" ? " (done)" : ""));
      }
    }
  } catch (failure) {
    if (failure.name !== "AbortError") status(`error: ${failure.message}`);
  } finally { $("stop").disabled = true; controller = null; }
}
async function showNextAtCursor() {
  const upto = prompt.value.slice(0, prompt.selectionStart);
  const box = $("next"); box.innerHTML = "";
  if (!upto) return;
  try {
    const data = await (await post("/next", {prompt: upto, temperature: +slider.value, top: 10})).json();
    box.innerHTML = ""; $("next-title").textContent = `Next character at the cursor (T = ${slider.value})`;
    showBars(box, data.next.map(n => [n.char, n.p]));
  } catch (failure) { box.textContent = failure.message; }
}
async function inspectPrompt() {
  const box = $("inspect");
  if (!prompt.value) { box.textContent = ""; return; }
  try {
    inspection = await (await post("/inspect", {text: prompt.value.slice(-4000), top: 10})).json();
  } catch (failure) { box.textContent = failure.message; return; }
  box.innerHTML = "";
  inspection.labels.forEach((label, i) => {
    const span = document.createElement("span"); span.textContent = label; span.dataset.i = i;
    span.style.backgroundColor = surprisalColour(inspection.surprisal[i]); box.appendChild(span);
  });
}
$("inspect").addEventListener("mouseover", e => {
  if (!inspection || e.target.dataset.i === undefined) return;
  const i = +e.target.dataset.i, box = $("next"); box.innerHTML = "";
  $("next-title").textContent = `After ${JSON.stringify(inspection.labels[i])} (position ${i}, T = 1)`;
  showBars(box, inspection.top[i]);
});
function later(timer, work, ms) { clearTimeout(timer); return setTimeout(work, ms); }
prompt.addEventListener("input", () => {
  nextTimer = later(nextTimer, showNextAtCursor, 150); inspectTimer = later(inspectTimer, inspectPrompt, 400);
});
["click", "keyup"].forEach(kind => prompt.addEventListener(kind, () => { nextTimer = later(nextTimer, showNextAtCursor, 150); }));
slider.addEventListener("input", () => {
  $("temperature-value").textContent = slider.value; nextTimer = later(nextTimer, showNextAtCursor, 150);
});
$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => { if (controller) controller.abort(); status("stopped"); });
fetch("/health").then(r => r.json()).then(h => {
  const m = h.model;
  $("model").textContent = `model: ${m.layers} × ${m.hidden_size} LSTM, ${m.vocabulary} ${m.units}, step ${m.step}`;
  if (!prompt.value) { prompt.value = h.default_prompt; prompt.dispatchEvent(new Event("input")); }
});
</script></body></html>
"""

PLAYGROUND = _PAGE.replace("__VIEW_CSS__", VIEW_CSS).replace("__VIEW_JS__", VIEW_JS)
