// The demo page in a real headless Chromium: a tiny two-variant comparison trains on WebGPU
// (SwiftShader here), its numbers match a native CPU run of the same config, and with
// WebGPU unavailable the page falls back to the CPU backend and says so.
//
// Needs: web/pkg built (web/build.sh), Debian's chromium, playwright-core (npm), and the
// native binary in SIMPLEGPT_BIN (cargo builds it for the Rust tests).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { serve } from '../web/serve.mjs';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
// Screenshots and the browser's run record: a fresh directory per run unless told where.
const OUT = process.env.SIMPLEGPT_TEST_OUT ?? mkdtempSync(join(tmpdir(), 'simplegpt-browser-'));
// Without network: keep Chromium from reaching out; WebGPU on a CPU adapter needs the flag.
const QUIET = ['--no-sandbox', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--disable-quic', '--no-first-run'];

let server;
let base;
before(async () => {
  mkdirSync(OUT, { recursive: true });
  server = await serve(0);
  base = `http://127.0.0.1:${server.address().port}/`;
});
after(() => server.close());

/// Opens the page at `query` in a fresh Chromium with `args` and waits until it is done;
/// with `noWebGpu`, the page sees a browser without WebGPU (no navigator.gpu). `during(page)`,
/// if given, runs once the page has loaded, before the wait; its result is `state.during`.
async function runPage(args, query, { noWebGpu = false, during = null } = {}) {
  const browser = await chromium.launch({ executablePath: CHROMIUM, args, headless: true });
  try {
    const page = await browser.newPage({ viewport: { width: 1100, height: 1400 } });
    if (noWebGpu) await page.addInitScript(() => delete Navigator.prototype.gpu);
    const logs = [];
    page.on('console', (m) => logs.push(m.text()));
    page.on('pageerror', (e) => logs.push(`pageerror: ${e}`));
    await page.goto(base + query);
    const seen = during ? await during(page) : null;
    await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), null, { timeout: 15 * 60 * 1000 });
    const state = await page.evaluate(() => ({
      state: document.body.dataset.state,
      error: document.body.dataset.error,
      notice: document.getElementById('backend').textContent,
      results: window.simplegptResults,
      records: window.simplegptRecords(),
    }));
    state.during = seen;
    return { page, state, logs, browser };
  } catch (e) {
    await browser.close();
    throw e;
  }
}

/// Pixels of a canvas that are drawn on (or, given `rgb`, of about that colour), in the
/// rectangle at (x, y) of the canvas's width + w and height + h.
function countPixels(page, id, rect, rgb = null) {
  return page.evaluate(({ id, rect, rgb }) => {
    const c = document.getElementById(id);
    const px = c.getContext('2d').getImageData(rect.x, rect.y, c.width + rect.w, c.height + rect.h).data;
    let n = 0;
    for (let i = 0; i < px.length; i += 4) {
      n += rgb === null ? px[i + 3] > 0
        : Math.abs(px[i] - rgb[0]) < 24 && Math.abs(px[i + 1] - rgb[1]) < 24 && Math.abs(px[i + 2] - rgb[2]) < 24 && px[i + 3] > 200;
    }
    return n;
  }, { id, rect, rgb });
}

/// The page's config (JSON) as the CLI's TOML.
function toToml(config) {
  const value = (v) => (typeof v === 'number' && Number.isInteger(v) ? String(v) : JSON.stringify(v));
  return Object.entries(config)
    .map(([section, table]) => `[${section}]\n${Object.entries(table).map(([k, v]) => `${k} = ${value(v)}`).join('\n')}\n`)
    .join('\n');
}

test('a two-variant comparison trains on WebGPU, every step, and matches a native CPU run', async () => {
  const steps = 6;
  // With dropout: its masks are a portable hash, so WebGPU and the native CPU draw the same.
  // The two variants train side by side: the second has steps while the first has not ended.
  const during = async (page) => {
    await page.waitForFunction(() => {
      const v = window.simplegptResults?.variants ?? [];
      return document.body.dataset.state === 'done' || (v.length === 2 && v[1].steps.length > 0);
    }, null, { timeout: 15 * 60 * 1000 });
    return page.evaluate(() => window.simplegptResults.variants.map((v) => v.steps.length));
  };
  // backend=webgpu: this Chromium's adapter is SwiftShader, which the page would pass over.
  const { page, state, logs, browser } = await runPage(['--enable-unsafe-webgpu', ...QUIET],
    `?compare=residual&preset=micro&steps=${steps}&seed=1&set=dropout=0.1&backend=webgpu&autostart=1`, { during });
  try {
    await page.screenshot({ path: join(OUT, 'webgpu.png'), fullPage: true });
    assert.equal(state.state, 'done', `${state.error}\n${logs.join('\n')}`);
    const r = state.results;
    assert.equal(r.backend, 'webgpu', `the WebGPU adapter was used, not the CPU fallback: ${state.notice}`);
    assert.match(state.notice, /^WebGPU: /);
    assert.equal(r.variants.length, 2);
    assert.ok(state.during[0] < steps && state.during[1] > 0, `steps of each when the second had some: ${state.during}`);
    for (const v of r.variants) {
      assert.deepEqual(v.steps, [...Array(steps).keys()], `${v.name}: every step`);
      assert.ok(v.loss.every(Number.isFinite), `${v.name}: finite losses ${v.loss}`);
      assert.ok(v.loss[steps - 1] < v.loss[0], `${v.name}: the loss falls ${v.loss}`);
      assert.equal(v.summary.diverged_at, null);
    }
    assert.notDeepEqual(r.variants[0].loss, r.variants[1].loss);
    // The reference line: the character-frequency loss of the text, below the uniform
    // guess over its characters (ln vocab) and shown in the caption.
    const vocab = r.variants[0].header.config.model.vocab_size;
    assert.ok(r.unigram > 1 && r.unigram < Math.log(vocab), `unigram loss ${r.unigram}, vocab ${vocab}`);
    assert.match(await page.textContent('#unigram-note'), new RegExp(`dashed: ${r.unigram.toFixed(3)}, `));

    // The same config and seed natively on the CPU: `simplegpt repro` must pass.
    const bin = process.env.SIMPLEGPT_BIN;
    assert.ok(bin, 'SIMPLEGPT_BIN names the native simplegpt binary');
    const dir = mkdtempSync(join(tmpdir(), 'simplegpt-native-'));
    const record = state.records[0];
    assert.equal(record.header.config.model.dropout, 0.1);
    writeFileSync(join(dir, 'config.toml'), toToml(record.header.config));
    writeFileSync(join(OUT, 'browser-record.json'), JSON.stringify(record));
    execFileSync(bin, ['train', '--device', 'cpu', '--config', join(dir, 'config.toml'), '--out', join(dir, 'run')], { stdio: 'pipe' });
    const report = execFileSync(bin, ['repro', join(dir, 'run'), join(OUT, 'browser-record.json')]).toString();
    console.log(report);
    assert.match(report, /verdict: PASS/);

    // Train again on the same page: WebGPU repeats the run bit for bit (every number of
    // every record but the timing).
    await page.evaluate(() => { document.body.dataset.state = 'train-again'; });
    await page.click('#start');
    await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), null, { timeout: 15 * 60 * 1000 });
    const untimed = (records) => records.map((rec) => rec.steps.map(({ tokens_per_sec, ...numbers }) => numbers));
    const again = await page.evaluate(() => window.simplegptRecords());
    assert.equal(again.length, 2);
    assert.deepEqual(untimed(again), untimed(state.records), 'the same run twice on WebGPU');
  } finally {
    await browser.close();
  }
});

test('without WebGPU the page falls back to the CPU and says so', async () => {
  // WebGPU taken away before the page loads (without --enable-unsafe-webgpu this Chromium
  // grants no adapter anyway, but that is its default, not the test's): the page must find
  // out on its own, without ?backend=cpu.
  const { page, state, logs, browser } = await runPage(QUIET, '?compare=residual&preset=micro&steps=3&seed=2&autostart=1',
    { noWebGpu: true });
  try {
    await page.screenshot({ path: join(OUT, 'cpu-fallback.png'), fullPage: true });
    assert.equal(state.state, 'done', `${state.error}\n${logs.join('\n')}`);
    assert.equal(state.results.backend, 'cpu');
    assert.match(state.notice, /^CPU backend: .*navigator\.gpu is missing/);
    assert.ok(await page.isVisible('#backend.fallback'));
    for (const v of state.results.variants) assert.deepEqual(v.steps, [0, 1, 2]);
  } finally {
    await browser.close();
  }
});

test('the LR sweep trains each variant at each LR and plots final loss against LR', async () => {
  const { page, state, logs, browser } = await runPage(QUIET, '?compare=sweep&preset=micro&steps=3&seed=3&backend=cpu&autostart=1');
  try {
    await page.screenshot({ path: join(OUT, 'sweep.png'), fullPage: true });
    assert.equal(state.state, 'done', `${state.error}\n${logs.join('\n')}`);
    const runs = state.results.variants;
    // The core's log grid from 1e-3 to 1 in 4 points (to rounding), min_lr a tenth of each.
    const lrs = [1e-3, 1e-2, 1e-1, 1];
    const got = runs.map((v) => v.config.train.lr);
    assert.ok(got.length === 8 && got.every((lr, i) => Math.abs(lr - lrs[i % 4]) <= 1e-12 * lrs[i % 4]), `lrs ${got}`);
    assert.deepEqual(runs.map((v) => v.config.model.norm), [...Array(4).fill('pre_ln'), ...Array(4).fill('simple')]);
    assert.deepEqual(runs.map((v) => v.config.train.min_lr), got.map((lr) => lr / 10));
    assert.ok(await page.isVisible('#lr-chart'), 'the loss-vs-LR chart is shown');
    // Each variant's curve is drawn: pixels of its colour (#1f77b4, #d62728) in the plot
    // area, where the dashed unigram line and the axes are grey.
    for (const [name, rgb] of [['pre_ln', [0x1f, 0x77, 0xb4]], ['simple', [0xd6, 0x27, 0x28]]]) {
      const inked = await countPixels(page, 'lr-chart', { x: 60, y: 10, w: -70, h: -40 }, rgb);
      assert.ok(inked > 100, `pixels of ${name}'s colour in the LR chart: ${inked}`);
    }
  } finally {
    await browser.close();
  }
});

test('the norms comparison trains the ticked placements and draws their diagnostics', async () => {
  // WebGPU offered (SwiftShader, a software adapter): the page's default, auto, passes it over
  // for the CPU backend and says why.
  const { page, state, logs, browser } = await runPage(['--enable-unsafe-webgpu', ...QUIET],
    '?compare=norms&norms=ngpt,simple&preset=micro&steps=6&seed=5&autostart=1');
  try {
    await page.screenshot({ path: join(OUT, 'norms.png'), fullPage: true });
    assert.equal(state.state, 'done', `${state.error}\n${logs.join('\n')}`);
    assert.equal(state.results.backend, 'cpu');
    assert.match(state.notice, /^CPU backend: WebGPU's adapter here is software .*far slower than the CPU backend/);
    const runs = state.results.variants;
    // In the core's order; nGPT with what it is defined with (micro has GELU, learned
    // positions and tied weights).
    assert.deepEqual(runs.map((v) => v.config.model.norm), ['simple', 'ngpt']);
    const ngpt = runs[1].config.model;
    assert.deepEqual([ngpt.mlp, ngpt.pos, ngpt.tie_weights, ngpt.bias], ['swiglu', 'rope', false, false]);
    assert.deepEqual(await page.$$eval('#placements input:checked', (boxes) => boxes.map((b) => b.value)), ['simple', 'ngpt']);
    const offered = await page.$$eval('#placements input', (boxes) => boxes.map((b) => b.value));
    assert.ok(offered.includes('pre_ln') && offered.includes('deepnorm') && offered.length >= 11, `placements ${offered}`);
    // Diagnostic steps 0 and 5 record each layer's largest attention logit and each linear's RMS.
    for (const v of runs) {
      const diag = v.records.filter((r) => r.attn_logit_max);
      assert.deepEqual(diag.map((r) => r.step), [0, 5], v.name);
      assert.ok(diag.every((r) => r.attn_logit_max.length === v.config.model.n_layer && 'lm_head' in r.linear_rms), v.name);
    }
    // The chosen variant's (the last, nGPT's) logits per layer are drawn: the first
    // layer's colour, #1f77b4, in the plot area.
    const inked = () => countPixels(page, 'diag-chart', { x: 60, y: 10, w: -70, h: -40 }, [0x1f, 0x77, 0xb4]);
    assert.ok(await inked() > 50, `pixels of layer 0 in the diagnostics chart: ${await inked()}`);
    await page.selectOption('#diag-kind', 'linear_rms');
    assert.match(await page.textContent('#diag-legend'), /attn\.q.*lm_head/);
    // q, k and v's curves may lie on top of each other; the head's output (the logits) has a
    // scale of its own: its colour, as the legend gives it, is drawn.
    const hex = await page.$eval('#diag-legend', (l) => [...l.children].find((s) => s.textContent === 'lm_head').style.getPropertyValue('--c'));
    const rgb = [1, 3, 5].map((i) => parseInt(hex.trim().slice(i, i + 2), 16));
    const head = await countPixels(page, 'diag-chart', { x: 60, y: 10, w: -70, h: -40 }, rgb);
    assert.ok(head > 50, `pixels of lm_head's colour ${hex} in the linear RMS chart: ${head}`);
    // With no placement ticked there is nothing to compare: an error, not an empty run.
    for (const box of await page.$$('#placements input:checked')) await box.uncheck();
    await page.click('#start');
    assert.match(await page.evaluate(() => document.body.dataset.error), /tick at least one placement/);
  } finally {
    await browser.close();
  }
});

test('a bad query parameter or form value is an error on the page, and the page still works', async () => {
  // `constructor` is a name every JavaScript object has: not a comparison all the same.
  const { page, state, browser } = await runPage(QUIET, '?compare=constructor&preset=micro&steps=2&backend=cpu&autostart=1');
  try {
    assert.equal(state.state, 'error');
    assert.match(state.error, /unknown comparison 'constructor'; choose one of residual/);
    const error = () => page.evaluate(() => document.body.dataset.error);
    await page.fill('#steps', '1e3');
    await page.click('#start');
    assert.match(await error(), /steps must be a whole number from 1 to 100000, got '1e3'/);
    await page.fill('#steps', '2');
    await page.fill('#lr', 'Infinity');
    await page.click('#start');
    assert.match(await error(), /learning rate must be a positive number, got 'Infinity'/);
    // With the form fixed, Train trains.
    await page.fill('#lr', '');
    await page.click('#start');
    await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state));
    const done = await page.evaluate(() => ({ state: document.body.dataset.state, error: document.body.dataset.error, n: window.simplegptResults?.variants.length }));
    assert.deepEqual(done, { state: 'done', error: undefined, n: 2 });
  } finally {
    await browser.close();
  }
});

test('a run that diverges is shown as a result, not a crash', async () => {
  const { page, state, logs, browser } = await runPage(QUIET, '?compare=lr&preset=micro&steps=6&lr=1e9&seed=4&backend=cpu&autostart=1');
  try {
    await page.screenshot({ path: join(OUT, 'diverged.png'), fullPage: true });
    assert.equal(state.state, 'done', `${state.error}\n${logs.join('\n')}`);
    for (const v of state.results.variants) {
      const at = v.summary.diverged_at;
      assert.ok(Number.isInteger(at) && at < 6, `${v.name} diverged: ${at}`);
      // Its validation loss is the untrained model's, and the table says so.
      assert.equal(v.val_step, 0);
    }
    const table = await page.textContent('#results tbody');
    assert.match(table, /\(step 0\)/);
    assert.match(await page.textContent('#samples'), /diverged at step \d+; what the broken model writes/);
    // The finite losses before the divergence are drawn (as dots where they stand alone):
    // pixels in the first variant's colour, #1f77b4.
    const inked = await countPixels(page, 'loss-chart', { x: 0, y: 0, w: 0, h: 0 }, [0x1f, 0x77, 0xb4]);
    assert.ok(inked >= 16, `pixels of the first variant in the loss chart: ${inked}`);
  } finally {
    await browser.close();
  }
});
