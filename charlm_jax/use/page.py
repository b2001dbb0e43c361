"""One self-contained HTML page of an ``Inspection``: opens from disk in any browser, no network.

The page shows the text coloured by a chosen unit (any cell state ``c`` or output ``h``, the units found
to track a feature listed first) or by surprisal; hovering a character (a click pins it) shows the model's
likeliest next characters there as bars; a table lists the features with their best unit, its correlation
and the chance level. The view is also chosen by the address's fragment (``page.html#cell=c0_12``,
``#view=surprisal``), which the selector writes, so a view can be linked and a test can open one.

Everything the page needs is one JSON object in the file: the labels, the surprisal, the top-k, and every
unit's values over the shown characters quantised to int8 (scaled by the unit's largest magnitude), base64:
``2 * layers * hidden`` bytes a character (the book's model: 256, so 5,000 characters are about 1.7 MB).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from charlm_jax.use.cells import CellRanking
from charlm_jax.use.inside import Inspection

DEFAULT_PAGE_CHARS = 5000


def page_data(inspection: Inspection, rankings: Sequence[CellRanking], title: str, chars: int) -> dict:
    """The JSON object the page reads: the first ``chars`` rows of ``inspection``."""
    n = min(chars, len(inspection.ids))
    layers, hidden = inspection.c.shape[1:]
    units = np.concatenate([inspection.c[:n].reshape(n, -1), inspection.h[:n].reshape(n, -1)], axis=1)
    scale = np.maximum(np.abs(units).max(axis=0), 1e-12)  # (units,)
    quantised = np.round(units / scale * 127).astype(np.int8)
    names = [f"{kind}{layer}_{index}" for kind in "ch" for layer in range(layers) for index in range(hidden)]
    surprisal = inspection.surprisal()[:n]
    return {
        "title": title,
        **predictions(inspection, n),
        "units": names,
        "values": base64.b64encode(quantised.tobytes()).decode("ascii"),
        "rankings": [
            {
                "feature": r.feature,
                "unit": f"{r.kind}{r.layer}_{r.index}" if r.present else None,
                "label": r.unit,
                "r": round(r.correlation, 3),
                "chance": round(r.chance, 3),
                "tracks": r.beats_chance,
            }
            for r in rankings
        ],
        "bits_per_char": round(float(np.nanmean(surprisal)), 4),
    }


def predictions(inspection: Inspection, n: int) -> dict:
    """The first ``n`` rows' labels, surprisal (bits, None where nothing predicts) and likeliest next characters,
    as JSON values: what the page and the server's ``/inspect`` show."""
    surprisal = inspection.surprisal()[:n]
    return {
        "labels": inspection.labels()[:n],
        "surprisal": [None if not np.isfinite(s) else round(float(s), 3) + 0.0 for s in surprisal],  # no -0.0
        "top": [
            [[inspection.vocab_label(int(i)), round(float(p), 4)] for i, p in zip(ids, probs)]
            for ids, probs in zip(inspection.top_ids[:n], inspection.top_probs[:n])
        ],
    }


def write_page(path: str | Path, data: dict) -> Path:
    """Write the page (atomically: a half-written page is never left under ``path``)."""
    path = Path(path)
    payload = json.dumps(data, ensure_ascii=True).replace("</", "<\\/")
    document = (
        PAGE.replace("__VIEW_CSS__", VIEW_CSS)
        .replace("__VIEW_JS__", VIEW_JS)
        .replace("__TITLE__", html.escape(data["title"]))
        .replace("__DATA__", payload)
    )
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(document, encoding="utf-8")
    temporary.replace(path)
    return path


# The parts of the view the server's playground shows too: the surprisal colours and the next-character bars.
VIEW_CSS = """.bar { display: flex; align-items: center; gap: 0.5em; font-family: ui-monospace, monospace; }
.bar div.fill { background: #4a7bd0; height: 0.9em; }"""
VIEW_JS = """function surprisalColour(s) { return s === null ? "transparent" : `rgba(255, 127, 14, ${Math.min(s / 8, 1)})`; }
function showBars(box, top) {  // top: [[label, probability], ...], likeliest first
  top.forEach(([label, p]) => {
    const row = document.createElement("div"); row.className = "bar";
    const name = document.createElement("code"); name.textContent = JSON.stringify(label);
    const fill = document.createElement("div"); fill.className = "fill"; fill.style.width = `${p * 300}px`;
    const value = document.createElement("span"); value.textContent = p.toFixed(3);
    row.append(name, fill, value); box.appendChild(row);
  });
}"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
#controls { margin: 0.5em 0 1em; display: flex; gap: 1.5em; align-items: center; flex-wrap: wrap; }
#text { font: 14px/1.7 ui-monospace, monospace; white-space: pre-wrap; word-break: break-all;
        border: 1px solid #ccc; padding: 0.8em; max-height: 60vh; overflow-y: auto; }
#text span { cursor: pointer; }
#text span.pinned { outline: 2px solid #000; }
#next { margin-top: 1em; min-height: 8em; }
__VIEW_CSS__
table { border-collapse: collapse; margin-top: 1em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
tr.tracks td { background: #eef6ee; }
.legend { font-size: 12px; color: #555; }
</style></head>
<body data-view="">
<h1>__TITLE__</h1>
<div id="summary"></div>
<div id="controls">
  <label>colour by <select id="view"><option value="cell">a unit</option><option value="surprisal">surprisal
  </option></select></label>
  <label>unit <select id="cell"></select></label>
  <span class="legend" id="legend"></span>
</div>
<div id="text"></div>
<div id="next"><em>hover a character (click to pin it) to see the model's likeliest next characters there</em></div>
<h2>Units that track a feature of the text</h2>
<table id="cells"><thead><tr><th>feature</th><th>best unit</th><th>correlation r</th>
<th>chance (best |r| of shifted copies)</th><th>tracks it</th><th></th></tr></thead><tbody></tbody></table>
<script id="data" type="application/json">__DATA__</script>
<script>
__VIEW_JS__
const data = JSON.parse(document.getElementById("data").textContent);
const n = data.labels.length, unitCount = data.units.length;
const raw = atob(data.values), values = new Int8Array(raw.length);
for (let i = 0; i < raw.length; i++) values[i] = raw.charCodeAt(i) << 24 >> 24;
const textBox = document.getElementById("text"), spans = [];
data.labels.forEach((label, i) => {
  const span = document.createElement("span");
  span.textContent = label; span.dataset.i = i; textBox.appendChild(span); spans.push(span);
});
document.getElementById("summary").textContent =
  `${n.toLocaleString()} characters shown, ${data.bits_per_char} bits per character (stateful), ${unitCount} units`;
const cellSelect = document.getElementById("cell"), viewSelect = document.getElementById("view");
const found = data.rankings.filter(r => r.tracks).map(r => r.unit);
const ordered = [...new Set([...found, ...data.units])];
ordered.forEach(name => {
  const option = document.createElement("option"); option.value = name;
  const why = data.rankings.filter(r => r.unit === name && r.tracks).map(r => r.feature).join(", ");
  option.textContent = why ? `${name} (${why})` : name; cellSelect.appendChild(option);
});
function cellColour(v) {  // v in [-1, 1]: blue below zero, red above
  const a = Math.min(Math.abs(v), 1);
  return v >= 0 ? `rgba(214, 39, 40, ${a})` : `rgba(31, 119, 180, ${a})`;
}
function render(view, unit) {
  document.body.dataset.view = view === "surprisal" ? "surprisal" : unit;
  viewSelect.value = view; cellSelect.value = unit;
  const column = data.units.indexOf(unit);
  for (let i = 0; i < n; i++) {
    spans[i].style.backgroundColor = view === "surprisal" ? surprisalColour(data.surprisal[i])
      : cellColour(values[i * unitCount + column] / 127);
  }
  document.getElementById("legend").textContent = view === "surprisal"
    ? "orange: bits the model needed for this character (0 to 8+)"
    : `${unit}: blue negative, red positive (scaled by its largest value)`;
}
function fromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const unit = data.units.includes(params.get("cell")) ? params.get("cell") : (found[0] || data.units[0]);
  render(params.get("view") === "surprisal" ? "surprisal" : "cell", unit);
}
function toHash() {
  location.hash = viewSelect.value === "surprisal" ? `view=surprisal&cell=${cellSelect.value}` : `cell=${cellSelect.value}`;
}
viewSelect.addEventListener("change", toHash); cellSelect.addEventListener("change", toHash);
window.addEventListener("hashchange", fromHash);
let pinned = null;
function showNext(i) {
  const box = document.getElementById("next"); box.innerHTML = "";
  const head = document.createElement("div");
  const s = data.surprisal[i];
  head.textContent = `after ${JSON.stringify(data.labels[i])} (position ${i}` +
    (s === null ? ")" : `, it cost ${s} bits)`) + ": the likeliest next characters";
  box.appendChild(head);
  showBars(box, data.top[i]);
}
textBox.addEventListener("mouseover", e => { if (e.target.dataset.i && pinned === null) showNext(+e.target.dataset.i); });
textBox.addEventListener("click", e => {
  if (!e.target.dataset.i) return;
  if (pinned !== null) spans[pinned].classList.remove("pinned");
  pinned = pinned === +e.target.dataset.i ? null : +e.target.dataset.i;
  if (pinned !== null) { spans[pinned].classList.add("pinned"); showNext(pinned); }
});
const body = document.querySelector("#cells tbody");
data.rankings.forEach(r => {
  const row = document.createElement("tr"); if (r.tracks) row.className = "tracks";
  [r.feature, r.unit ? r.label : "not in this text", r.unit ? r.r : "", r.unit ? r.chance : "",
   r.tracks ? "yes" : "no"].forEach(v => { const td = document.createElement("td"); td.textContent = v; row.appendChild(td); });
  const td = document.createElement("td");
  if (r.unit) {
    const button = document.createElement("button"); button.textContent = "show";
    button.addEventListener("click", () => { location.hash = `cell=${r.unit}`; }); td.appendChild(button);
  }
  row.appendChild(td); body.appendChild(row);
});
fromHash();
</script></body></html>
"""
