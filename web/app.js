// The demo page: picks a device, trains the variants of a comparison side by side (a step
// of each in turn) with the core's trainer (compiled to wasm), and draws what happens. All training is in Rust;
// this file is controls, charts and bookkeeping.

import init, {
  open_device, default_corpus, presets, norms, colors, resolve_config, sweep_jobs, summarize, grouped_grad_norms,
  diagnostics, Run,
} from './pkg/simplegpt_web.js';

// Each comparison: its variants (`sets`: config overrides), and what it suggests: a preset,
// and for the stress test its one constant LR.
const COMPARISONS = {
  residual: {
    variants: [
      { name: 'residual', sets: ['residual=true'] },
      { name: 'no residual', sets: ['residual=false'] },
    ],
  },
  // The placements ticked on the page (`placementVariants`), the core's list.
  norms: { placements: true },
  sweep: {
    // The small version of `simplegpt sweep --variant ... --lr-min 1e-3 --lr-max 1
    // --points 4`: the core makes its runs (each variant at each LR, cosine to LR/10).
    preset: 'small',
    sweep: { variants: ['pre-LN:norm=pre_ln', 'SimpleNorm:norm=simple'], lr_min: 1e-3, lr_max: 1, points: 4 },
  },
  lr: {
    // Constant and high: at 4 layers pre-LN fails at it, SimpleNorm trains (the README's pair).
    lr: 1.0,
    preset: 'small',
    variants: [
      { name: 'pre-LN', sets: ['norm=pre_ln'] },
      { name: 'SimpleNorm', sets: ['norm=simple'] },
    ],
  },
};

const $ = (id) => document.getElementById(id);
// `presets`, `norms` and `colors`: the core's (`config::PRESETS`, `config::NormKind::ALL`,
// `study::plot::COLORS`), once loaded.
const state = { device: null, text: null, stop: false, results: null, extraSet: [], presets: [], norms: [], colors: [] };
const color = (i) => state.colors[i % state.colors.length];

function setState(name, message) {
  document.body.dataset.state = name;
  $('status').textContent = message;
  if (name === 'error') document.body.dataset.error = message;
  else delete document.body.dataset.error;
}

// ---------------------------------------------------------------------------- device

// `backend`: `auto` (WebGPU unless its adapter is a software fallback, which trains far
// slower than the CPU backend: SwiftShader about 70x here), `webgpu` (whatever the
// adapter), or `cpu`. The notice says which was chosen and why.
async function openDevice(backend) {
  let reason = null;
  let adapterName = '';
  let fallbackAdapter = false;
  if (backend === 'cpu') reason = 'WebGPU was turned off for this page (?backend=cpu)';
  else if (!navigator.gpu) reason = 'this browser has no WebGPU (navigator.gpu is missing)';
  else {
    try {
      const adapter = await navigator.gpu.requestAdapter();
      if (!adapter) reason = 'the browser granted no WebGPU adapter';
      else {
        // Browsers hide the adapter's name from wgpu; they tell vendor and architecture.
        const info = adapter.info ?? {};
        adapterName = [info.vendor, info.architecture, info.description].filter(Boolean).join(' ');
        fallbackAdapter = !!(adapter.isFallbackAdapter || info.isFallbackAdapter);
        if (fallbackAdapter) adapterName += ' (software fallback adapter)';
      }
    } catch (e) {
      reason = `requesting a WebGPU adapter failed: ${e}`;
    }
  }
  let device = JSON.parse(await open_device(reason === null, adapterName));
  if (reason === null && backend === 'auto' && (fallbackAdapter || device.software)) {
    reason = `WebGPU's adapter here is software (${device.adapter}), far slower than the CPU backend; ?backend=webgpu uses it anyway`;
    device = JSON.parse(await open_device(false, ''));
  }
  const notice = $('backend');
  if (reason === null) {
    notice.textContent = `WebGPU: ${device.adapter}`;
    notice.classList.remove('fallback');
  } else {
    notice.textContent = `CPU backend: ${reason}`;
    notice.classList.add('fallback');
  }
  return device;
}

// ---------------------------------------------------------------------------- charts

// Draws line series [{name, color, xs, ys}] on a canvas; non-finite points break the line.
// The x axis is steps from 0, or (logX) log-scaled over the data's range. `reference`: a
// loss drawn as a dashed horizontal line. `yCap`: the top of the y axis at most; larger
// values (a loss blowing up) are drawn at the top edge, so the rest stays readable.
function drawChart(canvas, series, { logY = false, logX = false, reference = null, yCap = null } = {}) {
  const ctx = canvas.getContext('2d');
  const { width: w, height: h } = canvas;
  const pad = { l: 52, r: 10, t: 10, b: 28 };
  ctx.clearRect(0, 0, w, h);
  const tf = (y) => (logY ? Math.log10(y) : y);
  const pts = series.flatMap((s) => s.ys.map((y, i) => [s.xs[i], y])).filter(([, y]) => Number.isFinite(tf(y)));
  if (pts.length === 0) {
    if (series.some((s) => s.ys.length)) {
      ctx.fillStyle = '#b00020';
      ctx.font = '14px system-ui';
      ctx.fillText('no finite values to draw (the runs diverged)', pad.l, h / 2);
    }
    return;
  }
  const xMax = Math.max(1, ...pts.map(([x]) => x));
  // Over every x given, so that a run that diverged at the edge of a sweep still spans it.
  const xs = series.flatMap((s) => s.xs).filter((x) => x > 0).map(Math.log10);
  const [lxMin, lxMax] = [Math.min(...xs), Math.max(...xs) + (Math.max(...xs) > Math.min(...xs) ? 0 : 1)];
  const ys = [...pts.map(([, y]) => tf(y)), ...(reference == null ? [] : [tf(reference)])];
  let yMin = Math.min(...ys);
  let yMax = Math.max(...ys);
  if (yCap != null && tf(yCap) > yMin) yMax = Math.min(yMax, tf(yCap));
  if (yMax - yMin < 1e-9) { yMin -= 0.5; yMax += 0.5; }
  const X = (x) => pad.l + (logX ? (Math.log10(x) - lxMin) / (lxMax - lxMin) : x / xMax) * (w - pad.l - pad.r);
  const Y = (y) => pad.t + (1 - (Math.min(tf(y), yMax) - yMin) / (yMax - yMin)) * (h - pad.t - pad.b);
  ctx.strokeStyle = '#999';
  ctx.fillStyle = '#333';
  ctx.font = '12px system-ui';
  ctx.beginPath();
  ctx.moveTo(pad.l, pad.t);
  ctx.lineTo(pad.l, h - pad.b);
  ctx.lineTo(w - pad.r, h - pad.b);
  ctx.stroke();
  for (let i = 0; i <= 4; i++) {
    const v = yMin + ((yMax - yMin) * i) / 4;
    const label = logY ? (10 ** v).toPrecision(2) : Math.abs(v) >= 1e4 ? v.toExponential(1) : v.toFixed(2);
    ctx.fillText(label, 4, Y(logY ? 10 ** v : v) + 4);
  }
  if (logX) {
    ctx.fillText(`LR ${(10 ** lxMin).toPrecision(2)}`, pad.l, h - 8);
    ctx.fillText(`${(10 ** lxMax).toPrecision(2)}`, w - pad.r - 40, h - 8);
  } else {
    ctx.fillText('0', pad.l, h - 8);
    ctx.fillText(`step ${xMax}`, w - pad.r - 60, h - 8);
  }
  if (reference != null) {
    ctx.save();
    ctx.strokeStyle = '#777';
    ctx.setLineDash([6, 4]);
    ctx.beginPath();
    ctx.moveTo(pad.l, Y(reference));
    ctx.lineTo(w - pad.r, Y(reference));
    ctx.stroke();
    ctx.restore();
  }
  for (const s of series) {
    const finite = (i) => Number.isFinite(tf(s.ys[i])); // false past either end
    ctx.strokeStyle = s.color;
    ctx.fillStyle = s.color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    s.ys.forEach((y, i) => {
      if (!finite(i)) return;
      if (finite(i - 1)) ctx.lineTo(X(s.xs[i]), Y(y));
      else ctx.moveTo(X(s.xs[i]), Y(y));
      // A point with no finite neighbour (a first diagnostic step, a run cut short by
      // divergence, an LR between two that diverged) has no line: it shows as a dot.
      if (!finite(i - 1) && !finite(i + 1)) ctx.fillRect(X(s.xs[i]) - 2.5, Y(y) - 2.5, 5, 5);
    });
    ctx.stroke();
  }
}

function redraw() {
  const variants = state.results?.variants ?? [];
  // Dashed: the loss of the letter frequencies alone; a run stuck there learned no context.
  const reference = state.results?.unigram ?? null;
  $('unigram-note').textContent = reference == null ? ''
    : `; dashed: ${reference.toFixed(3)}, the loss of a model that knows only how often each character occurs`;
  // Up to the divergence threshold (diverge_factor x the first loss): a run is stopped there,
  // so only its last step goes past, and that one is drawn at the top edge.
  const firsts = variants.map((v) => v.summary.first_loss).filter(Number.isFinite);
  const factor = Math.max(...variants.map((v) => v.config.train.diverge_factor));
  const yCap = firsts.length ? factor * Math.max(...firsts) : null;
  drawChart($('loss-chart'), variants.map((v, i) => ({ name: v.name, color: color(i), xs: v.steps, ys: v.loss })), { reference, yCap });
  $('legend').innerHTML = variants
    .map((v, i) => `<span style="--c:${color(i)}">${v.name}</span>`)
    .join('');
  // A sweep: the final validation loss of each variant against its LR, as `simplegpt sweep`
  // reports it (a diverged run leaves a gap).
  $('lr-figure').hidden = !state.results?.sweep;
  if (state.results?.sweep) {
    const names = [...new Set(variants.map((v) => v.variant))];
    const series = names.map((name, i) => {
      const runs = variants.filter((v) => v.variant === name).map((v) => v.summary);
      return { name, color: color(i), xs: runs.map((s) => s.lr), ys: runs.map((s) => (s.diverged_at == null ? s.final_val : NaN)) };
    });
    drawChart($('lr-chart'), series, { logX: true, reference });
    $('lr-legend').innerHTML = series.map((s) => `<span style="--c:${s.color}">${s.name}</span>`).join('');
  }
  const chosen = variants.find((v) => v.name === $('grad-variant').value) ?? variants[variants.length - 1];
  if (!chosen) return;
  $('grad-caption').textContent = chosen.grad.grouped ? 'Gradient norm per parameter group,' : 'Gradient norm per parameter,';
  const series = Object.entries(chosen.grad.series)
    .map(([name, points], i) => ({ name, color: color(i), xs: points.map(([step]) => step), ys: points.map(([, norm]) => norm) }));
  drawChart($('grad-chart'), series, { logY: true });
  $('grad-legend').innerHTML = series.map((s) => `<span style="--c:${s.color}">${s.name}</span>`).join('');
  // The attention logits cross zero at init: a linear axis for them, log for the RMS.
  const kind = $('diag-kind').value;
  const diag = Object.entries(chosen.diag[kind])
    .map(([name, points], i) => ({ name, color: color(i), xs: points.map(([step]) => step), ys: points.map(([, v]) => v) }));
  drawChart($('diag-chart'), diag, { logY: kind !== 'attn_logit_max' });
  $('diag-legend').innerHTML = diag.map((s) => `<span style="--c:${s.color}">${s.name}</span>`).join('');
}

// Adds a diagnostic record's attention logits, linear output RMS and block RMS to its
// variant's curves (the core's `diagnostics`, as the CLI's reports plot them).
function addDiagnostics(v, record) {
  const curves = JSON.parse(diagnostics(JSON.stringify([record])));
  for (const [kind, series] of Object.entries(curves)) {
    for (const [name, points] of series) (v.diag[kind][name] ??= []).push(...points);
  }
}

// Adds a diagnostic record's gradient norms to its variant's curves: every parameter of a
// small model; of a bigger one, the core's parameter groups (the root of their summed
// squares), as the CLI's reports plot them. A norm that was not finite arrives as null.
function addGradNorms(v, record) {
  const names = Object.keys(record.grad_norms);
  v.grad.grouped ??= names.length > 16;
  const curves = v.grad.grouped
    ? JSON.parse(grouped_grad_norms(JSON.stringify([record])))
    : names.map((name) => [name, [[record.step, record.grad_norms[name]]]]);
  for (const [name, points] of curves) (v.grad.series[name] ??= []).push(...points);
}

// The run is evaluated at step 0 and at its last step: a run that diverged or was stopped
// before the end has only the untrained model's validation loss, so say which step it is.
function staleVal(v) {
  const last = v.records[v.records.length - 1]?.step;
  return v.val_step != null && v.val_step !== last ? ` (step ${v.val_step})` : '';
}

// Each run's `study::Summary`, as the CLI's reports give it. A number that was not finite
// arrives as null, as in summary.json: where the run measured it, it says so.
function updateTable() {
  const fmt = (x, measured = false) => (x == null ? (measured ? 'not finite' : '–')
    : Math.abs(x) >= 1e4 ? x.toExponential(3) : x.toFixed(4));
  const rows = (state.results?.variants ?? []).map((v) => {
    const s = v.summary;
    return `<tr><td>${v.name}</td><td>${fmt(s.final_loss, v.loss.length > 0)}</td><td>${fmt(s.best_loss)}</td>
      <td>${fmt(s.final_val, v.val_step != null)}${staleVal(v)}</td><td>${s.diverged_at ?? '–'}</td>
      <td>${s.tokens_per_sec ? Math.round(s.tokens_per_sec) : '–'}</td><td>${state.results.backend}: ${state.results.adapter}</td></tr>`;
  });
  $('results').querySelector('tbody').innerHTML = rows.join('');
}

// ---------------------------------------------------------------------------- training

const nextTask = () => new Promise((resolve) => setTimeout(resolve, 0));

// The page's overrides for every run of a comparison (before the address's `?set=` ones).
function pageSets(comparison, form) {
  const steps = form.steps;
  const sets = [`seed=${form.seed}`, `max_steps=${steps}`, `lr_decay_steps=${steps}`,
    'log_interval=1', `eval_interval=${steps}`, 'eval_iters=4', 'diag_interval=5', 'checkpoint=false'];
  // A sweep sets each run's LR itself: the form's is not used.
  const lr = comparison.sweep ? null : form.lr ?? comparison.lr;
  if (lr != null) sets.push(`lr=${lr}`, `min_lr=${comparison.lr ? lr : lr / 10}`);
  // Warm up over a tenth of a short run (nanoGPT's 100 steps would be all of it); the
  // stress test over a third, as in the README's pair (100 of 300 steps), so that its LR is
  // reached by a trained model rather than by the random init.
  sets.push(`warmup_steps=${Math.min(100, Math.floor(steps / (comparison.lr ? 3 : 10)))}`);
  return sets;
}

// A comparison's runs, each `{name, variant, config}`, every config made by the core before
// the first run trains. The page's `?set=key=value` overrides apply to every run; a
// variant's own come last. A sweep's runs are the core's `sweep_jobs`, which refuses
// overrides that give lr or min_lr.
function comparisonJobs(comparison, form) {
  const sets = [...pageSets(comparison, form), ...state.extraSet];
  if (comparison.sweep) {
    const { variants, lr_min, lr_max, points } = comparison.sweep;
    return JSON.parse(sweep_jobs(form.preset, sets, variants, lr_min, lr_max, points));
  }
  const variants = comparison.placements ? placementVariants(form.norms) : comparison.variants;
  return variants.map((v) => ({
    name: v.name, variant: v.name, config: JSON.parse(resolve_config(form.preset, [...sets, ...v.sets])) }));
}

async function runComparison(form) {
  const comparison = COMPARISONS[form.compare];
  const text = form.customText ?? state.text;
  state.results = { backend: state.device.backend, adapter: state.device.adapter, sweep: !!comparison.sweep, variants: [] };
  window.simplegptResults = state.results; // filled in as the runs train
  // Clear the last comparison's charts and table now, so that a failure below leaves none
  // of its results looking like this one's.
  redraw();
  updateTable();
  const jobs = comparisonJobs(comparison, form);
  $('grad-variant').innerHTML = jobs.map((job) => `<option>${job.name}</option>`).join('');
  $('grad-variant').value = jobs[jobs.length - 1].name;
  $('samples').innerHTML = '';
  const created = []; // every Run built, freed below whatever happens
  const runs = [];
  try {
    for (const job of jobs) {
      if (state.stop) break;
      setState('running', `${job.name}: building the model`);
      const run = await Run.create(JSON.stringify(job.config), text);
      created.push(run);
      runs.push(startRun(run, job));
    }
    // A step of each unfinished run in turn (as `simplegpt compare --interleave`), so that
    // the curves grow side by side; each run's numbers are what it gives trained alone.
    let live = runs;
    while (live.length && !state.stop) {
      for (const r of live) await stepRun(r, form);
      for (const r of live) if (r.run.finished()) await finishRun(r, form);
      live = live.filter((r) => !r.done);
      await nextTask(); // let the page paint and take clicks between steps
    }
    for (const r of live) await finishRun(r, form); // stopped: what they reached
  } finally {
    for (const run of created) run.free(); // their GPU memory, also when a step failed
  }
}

// A run's page state: its results entry (the table's row, the charts' curves) and the
// place of its sample, in the order of the comparison.
function startRun(run, job) {
  state.results.unigram ??= run.unigram_loss();
  const configJson = JSON.stringify(job.config);
  const v = { name: job.name, variant: job.variant, config: job.config, header: JSON.parse(run.header()),
    steps: [], loss: [], val_step: null, records: [], summary: null, grad: { grouped: null, series: {} },
    diag: { attn_logit_max: {}, linear_rms: {}, act_rms: {} } };
  // The table's numbers: the core's summary of the records so far. Each call sends every
  // record, so it is made at every logged step while that is cheap, and on a long run at
  // about a twentieth of the time (and at an evaluation, a divergence and the end).
  const r = { run, v, done: false, summarized: -Infinity, cost: 0, sample: document.createElement('div') };
  r.summarizeNow = () => {
    const t0 = performance.now();
    v.summary = JSON.parse(summarize(v.name, configJson, JSON.stringify(v.records)));
    r.summarized = performance.now();
    r.cost = r.summarized - t0;
  };
  r.summarizeNow();
  state.results.variants.push(v);
  $('samples').append(r.sample);
  return r;
}

// One training step of a run, recorded and drawn.
async function stepRun(r, form) {
  const v = r.v;
  if (v.records.length === 0) setState('running', `${v.name}: compiling shaders (the first step)`);
  const json = await r.run.step();
  if (!json) return;
  const rec = JSON.parse(json);
  v.records.push(rec);
  // A non-finite loss arrives as null (JSON has no NaN).
  if (rec.loss !== undefined) { v.steps.push(rec.step); v.loss.push(rec.loss ?? NaN); }
  if (rec.val_loss !== undefined) v.val_step = rec.step;
  if (rec.grad_norms) addGradNorms(v, rec);
  if (rec.attn_logit_max) addDiagnostics(v, rec);
  if (rec.diverged || rec.val_loss !== undefined || performance.now() - r.summarized >= 20 * r.cost) r.summarizeNow();
  const loss = rec.loss === undefined ? '' : rec.loss === null ? ', loss not finite' : `, loss ${rec.loss.toFixed(4)}`;
  setState('running', `${v.name}: step ${rec.step} of ${form.steps}${loss}${rec.diverged ? ' (diverged)' : ''}`);
  redraw();
  updateTable();
}

// A run at its end (or divergence, or Stop): its final summary, and a text sample.
async function finishRun(r, form) {
  r.done = true;
  r.summarizeNow();
  redraw();
  updateTable();
  const { name, summary, records } = r.v;
  if (records.length === 0) return; // stopped before its first step: nothing to sample
  const sample = await r.run.sample('', 200, BigInt(form.seed));
  const heading = document.createElement('h3');
  heading.textContent = summary.diverged_at == null ? name
    : `${name}: diverged at step ${summary.diverged_at}; what the broken model writes`;
  const pre = document.createElement('pre');
  pre.textContent = sample;
  r.sample.append(heading, pre);
}

// The records in the format the native CLI writes (run.json + metrics.jsonl as one object),
// which `simplegpt repro` reads.
function runRecords() {
  return (state.results?.variants ?? []).map((v) => ({ header: v.header, steps: v.records }));
}
window.simplegptRecords = runRecords;

function exportRecords() {
  for (const [i, record] of runRecords().entries()) {
    const blob = new Blob([JSON.stringify(record, null, 1)], { type: 'application/json' });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = `simplegpt-${i}-${state.results.variants[i].name.replace(/\W+/g, '_')}.json`;
    a.click();
    URL.revokeObjectURL(a.href);
  }
}

// ---------------------------------------------------------------------------- controls

// The form's values, or an Error naming the first bad one.
function readForm() {
  const value = (id) => $(id).value.trim();
  const count = (id, what, min, max) => {
    const n = Number(value(id));
    if (!/^\d+$/.test(value(id)) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new Error(`${what} must be a whole number from ${min} to ${max}, got '${value(id)}'`);
    }
    return n;
  };
  const custom = document.querySelector('input[name=text]:checked').value === 'custom';
  const lr = value('lr') === '' ? null : Number(value('lr'));
  if (lr !== null && !(Number.isFinite(lr) && lr > 0)) throw new Error(`learning rate must be a positive number, got '${value('lr')}'`);
  const customText = custom ? $('custom-text').value : null;
  if (customText === '') throw new Error('paste or drop some text first');
  const norms = [...$('placements').querySelectorAll('input:checked')].map((box) => box.value);
  if (value('compare') === 'norms' && norms.length === 0) throw new Error('tick at least one placement to compare');
  const form = { compare: value('compare'), preset: value('preset'), steps: count('steps', 'steps', 1, 100000),
    seed: count('seed', 'seed', 0, Number.MAX_SAFE_INTEGER), lr, customText, norms };
  for (const key of ['compare', 'preset']) {
    if (!choices(key).includes(form[key])) throw new Error(unknown(key, form[key]));
  }
  return form;
}

// What the comparison and preset fields (and address parameters) may be: the page's
// comparisons, the core's presets.
const choices = (key) => (key === 'compare' ? Object.keys(COMPARISONS) : state.presets.map((p) => p.name));

function unknown(key, value) {
  return `unknown ${key === 'compare' ? 'comparison' : 'preset'} '${value}'; choose one of ${choices(key).join(', ')}`;
}

// The norms comparison's variants: one per ticked placement, in the core's order.
function placementVariants(names) {
  return state.norms.filter((n) => names.includes(n.name)).map((n) => ({ name: n.label, sets: n.sets }));
}

// A checkbox per placement of the core, ticked as `ticked` (names) says.
function fillPlacements(ticked) {
  const boxes = state.norms.map((n) => {
    const label = document.createElement('label');
    label.title = n.about;
    const box = Object.assign(document.createElement('input'), { type: 'checkbox', value: n.name, checked: ticked.includes(n.name) });
    label.append(box, ` ${n.label}`);
    return label;
  });
  $('placements').replaceChildren($('placements').querySelector('legend'), ...boxes);
}

// `?norms=pre_ln,simple`: the placements to tick, or an Error naming an unknown one.
function parseNorms(param) {
  const names = param.split(',').map((n) => n.trim()).filter((n) => n !== '');
  const known = state.norms.map((n) => n.name);
  const bad = names.find((n) => !known.includes(n));
  if (bad !== undefined) throw new Error(`unknown placement '${bad}' in norms=; choose from ${known.join(', ')}`);
  return names;
}

// Nothing in the form changes while a run uses it.
function lockForm(locked) {
  for (const el of $('controls').querySelectorAll('select, input, textarea')) el.disabled = locked;
  if (!locked) $('lr').disabled = !!COMPARISONS[$('compare').value]?.sweep;
  $('placements').hidden = !COMPARISONS[$('compare').value]?.placements;
  $('start').disabled = locked;
  $('stop').disabled = !locked;
}

async function start() {
  let form;
  try {
    form = readForm();
  } catch (e) {
    return setState('error', `error: ${e.message}`);
  }
  state.stop = false;
  lockForm(true);
  $('export').disabled = true;
  try {
    await runComparison(form);
    setState('done', state.stop ? 'stopped' : `done: ${state.results.variants.length} variants trained on ${state.device.backend}`);
  } catch (e) {
    setState('error', `error: ${e?.message ?? e}`);
  } finally {
    lockForm(false);
    $('export').disabled = !state.results?.variants.length;
  }
}

function wireControls() {
  $('start').addEventListener('click', start);
  $('stop').addEventListener('click', () => { state.stop = true; });
  $('export').addEventListener('click', exportRecords);
  $('grad-variant').addEventListener('change', redraw);
  $('diag-kind').addEventListener('change', redraw);
  $('compare').addEventListener('change', () => {
    const suggested = COMPARISONS[$('compare').value].preset;
    if (suggested) $('preset').value = suggested;
    lockForm(false); // the sweep has its own LRs: its LR field is off
  });
  const box = $('custom-text');
  box.addEventListener('input', () => { document.querySelector('input[name=text][value=custom]').checked = true; });
  box.addEventListener('dragover', (e) => { e.preventDefault(); box.classList.add('dragging'); });
  box.addEventListener('dragleave', () => box.classList.remove('dragging'));
  box.addEventListener('drop', async (e) => {
    e.preventDefault();
    box.classList.remove('dragging');
    const file = e.dataTransfer.files[0];
    if (file) {
      box.value = await file.text();
      document.querySelector('input[name=text][value=custom]').checked = true;
    }
  });
}

async function main() {
  const params = new URLSearchParams(location.search);
  wireControls();
  // A bad parameter is reported once the page is ready, and the form keeps its default
  // for it, so that choosing a valid value and pressing Train still works.
  let paramError = null;
  try {
    setState('loading', 'loading the WebAssembly module');
    await init();
    state.text = default_corpus();
    state.colors = colors();
    state.presets = JSON.parse(presets());
    // The core's presets, as the CLI's --preset knows them; the first is its default.
    $('preset').replaceChildren(...state.presets.map((p) => new Option(`${p.name}: ${p.about}`, p.name)));
    state.norms = JSON.parse(norms());
    let ticked = state.norms.filter((n) => n.default).map((n) => n.name);
    if (params.has('norms')) {
      try {
        ticked = parseNorms(params.get('norms'));
      } catch (e) {
        paramError ??= e.message;
      }
    }
    fillPlacements(ticked);
    for (const key of ['compare', 'preset']) {
      const value = params.get(key);
      if (value !== null && !choices(key).includes(value)) paramError ??= unknown(key, value);
      else if (value !== null) $(key).value = value;
    }
    for (const key of ['steps', 'seed', 'lr']) {
      if (params.has(key)) $(key).value = params.get(key);
    }
    // Any config key, as the CLI's --set (e.g. ?set=dropout=0.1&set=n_layer=2).
    state.extraSet = params.getAll('set');
    const suggested = COMPARISONS[$('compare').value].preset;
    if (!params.has('preset') && suggested) $('preset').value = suggested;
    lockForm(false);
    $('start').disabled = true; // until the device is open
    setState('loading', 'opening the GPU');
    const backend = params.get('backend') ?? 'auto';
    if (!['auto', 'webgpu', 'cpu'].includes(backend)) throw new Error(`unknown backend '${backend}'; choose one of auto, webgpu, cpu`);
    state.device = await openDevice(backend);
    const extra = state.extraSet.length ? ` (with ${state.extraSet.join(', ')})` : '';
    setState('ready', `ready${extra}: pick a comparison and press Train`);
  } catch (e) {
    setState('error', `error: ${e?.message ?? e}`);
    return;
  }
  $('start').disabled = false;
  if (paramError) setState('error', `error: ${paramError}`);
  else if (params.get('autostart') === '1') start();
}

main();
