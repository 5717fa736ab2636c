"""The page `python -m lit_softmax serve` shows at /: plain HTML and JavaScript, nothing fetched from the internet."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lit_softmax: try the model</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1040px; color: #222; padding: 0 16px; }
  h1 { font-size: 1.5em; margin-bottom: 4px; } h2 { font-size: 1.05em; margin: 0 0 8px; }
  .intro { color: #555; margin-top: 0; }
  .row { display: flex; gap: 28px; flex-wrap: wrap; align-items: flex-start; }
  .card { border: 1px solid #ddd; border-radius: 8px; padding: 14px; }
  canvas { border: 1px solid #888; image-rendering: pixelated; display: block; }
  #draw { cursor: crosshair; touch-action: none; background: #000; }
  button { margin-top: 8px; font-size: 0.95em; }
  .bar-row { display: grid; grid-template-columns: 92px 180px 58px; align-items: center; gap: 6px; font-size: 0.9em; }
  .bar { height: 14px; background: #9ab; border-radius: 2px; }
  .bar-row.best .bar { background: #d35400; } .bar-row.best { font-weight: 600; }
  .note { color: #666; font-size: 0.85em; max-width: 260px; }
  #label { color: #d35400; }
  #status { color: #a00; min-height: 1.2em; }
</style>
</head>
<body>
<h1>Softmax regression on Fashion-MNIST</h1>
<p class="intro">One linear layer: a score <i>s<sub>i</sub> = w<sub>i</sub>&middot;x + b<sub>i</sub></i> per class,
the softmax turns the ten scores into probabilities, the highest wins.</p>
<div class="row">
  <div class="card">
    <h2>1. Your garment</h2>
    <input type="file" id="file" accept="image/png,image/jpeg,image/bmp,image/tiff">
    <p class="note">or draw one, light on black like the dataset:</p>
    <canvas id="draw" width="252" height="252"></canvas>
    <button id="clear">Clear</button> <button id="predict-drawing">Predict the drawing</button>
  </div>
  <div class="card">
    <h2>2. What the model sees</h2>
    <canvas id="input" width="140" height="140"></canvas>
    <p class="note">28&times;28 grey levels: trimmed to the garment, centred, background black.</p>
    <h2>3. Prediction: <span id="label">&ndash;</span></h2>
    <div id="bars"></div>
  </div>
  <div class="card">
    <h2>4. What it looks for</h2>
    <canvas id="template" width="140" height="140"></canvas>
    <p class="note">The weights <i>w</i> of <b id="template-label">the predicted class</b>: a light pixel where it
    is red raises that class's score, where it is blue lowers it.</p>
  </div>
</div>
<p id="status" role="status"></p>
<script>
let CLASSES = [], TEMPLATES = [];
const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };

fetch("/templates").then((r) => r.json()).then((d) => { CLASSES = d.classes; TEMPLATES = d.templates; bars(null); });

function bars(probabilities) {
  const best = probabilities ? probabilities.indexOf(Math.max(...probabilities)) : -1;
  $("bars").innerHTML = "";
  CLASSES.forEach((name, i) => {
    const p = probabilities ? probabilities[i] : 0;
    const row = document.createElement("div");
    row.className = "bar-row" + (i === best ? " best" : "");
    row.innerHTML = `<span>${name}</span><div class="bar" style="width:${(100 * p).toFixed(1)}%"></div>` +
                    `<span>${(100 * p).toFixed(1)}%</span>`;
    $("bars").appendChild(row);
  });
}

function paint(canvas, values, colour) {  // 28x28 values -> canvas, each value through colour(v) -> [r, g, b]
  const small = document.createElement("canvas");
  small.width = small.height = 28;
  const ctx = small.getContext("2d"), img = ctx.createImageData(28, 28);
  values.flat().forEach((v, i) => { const [r, g, b] = colour(v); img.data.set([r, g, b, 255], 4 * i); });
  ctx.putImageData(img, 0, 0);
  const big = canvas.getContext("2d");
  big.imageSmoothingEnabled = false;
  big.drawImage(small, 0, 0, canvas.width, canvas.height);
}

function show(d) {
  $("label").textContent = d.label;
  bars(d.probabilities);
  paint($("input"), d.input, (v) => [v, v, v]);
  // Colour scale: the 98th percentile of |w| (a few border pixels, almost always black in the dataset, have
  // huge weights after the per-pixel standardisation; scaled by the largest, the garment's shape would fade).
  const w = TEMPLATES[d.index], sizes = w.map(Math.abs).sort((a, b) => a - b);
  const top = sizes[Math.floor(0.98 * (sizes.length - 1))] || 1;
  paint($("template"), w, (v) => {  // diverging: blue (negative), white (0), red (positive)
    const t = Math.min(1, Math.abs(v) / top), fade = Math.round(255 * (1 - t));
    return v >= 0 ? [255, fade, fade] : [fade, fade, 255];
  });
  $("template-label").textContent = d.label;
}

async function predict(image) {
  status("asking the model...");
  try {
    const r = await fetch("/predict", {method: "POST", headers: {"Content-Type": "application/json"},
                                       body: JSON.stringify({image: image, return_input: true})});
    const d = await r.json();
    if (!r.ok) { status(`refused (HTTP ${r.status}): ${d.detail}`); return; }
    show(d);
    status("");
  } catch (e) { status(`no answer from the server: ${e}`); }
}

$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => predict(reader.result);
  reader.readAsDataURL(file);
});

const pad = $("draw"), pen = pad.getContext("2d");
const clear = () => { pen.fillStyle = "#000"; pen.fillRect(0, 0, pad.width, pad.height); };
clear();
let drawing = false;
const at = (e) => { const r = pad.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
pad.addEventListener("pointerdown", (e) => { drawing = true; pen.beginPath(); pen.moveTo(...at(e)); });
pad.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  pen.strokeStyle = "#fff"; pen.lineWidth = 18; pen.lineCap = pen.lineJoin = "round";
  pen.lineTo(...at(e)); pen.stroke();
});
window.addEventListener("pointerup", () => { drawing = false; });
$("clear").addEventListener("click", clear);
$("predict-drawing").addEventListener("click", () => predict(pad.toDataURL("image/png")));
</script>
</body>
</html>
"""
