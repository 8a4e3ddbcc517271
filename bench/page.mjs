// The demo page as a visitor meets it, timed in a real headless Chromium: how long until
// the first step of the comparison is on the page, until every variant has one (the
// curves grow together), and until it is done; which backend the page chose and why.
//
//   node bench/page.mjs                                  # the default page, WebGPU allowed
//   node bench/page.mjs '?compare=residual&autostart=1&backend=cpu'
//
// Needs web/pkg built (web/build.sh), Debian's chromium and playwright-core (npm ci). In
// this Chromium WebGPU is SwiftShader (a software fallback adapter), so the page's `auto`
// picks its CPU backend; `backend=webgpu` forces SwiftShader.

import { chromium } from 'playwright-core';
import { serve } from '../web/serve.mjs';

const query = process.argv[2] ?? '?compare=residual&autostart=1';
const limit = Number(process.env.LIMIT_S ?? 600);
const server = await serve(0);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--enable-unsafe-webgpu', '--no-sandbox', '--disable-background-networking', '--no-first-run'],
});
try {
  const page = await browser.newPage();
  const t0 = Date.now();
  await page.goto(`http://127.0.0.1:${server.address().port}/${query}`);
  const seconds = () => ((Date.now() - t0) / 1000).toFixed(1);
  const steps = () =>
    page.evaluate(() => (window.simplegptResults?.variants ?? []).map((v) => [v.name, v.steps.length]));
  let first = null;
  let all = null;
  let state = null;
  for (;;) {
    state = await page.evaluate(() => document.body.dataset.state);
    const s = await steps();
    if (first === null && s.some(([, n]) => n > 0)) first = seconds();
    if (all === null && s.length > 1 && s.every(([, n]) => n > 0)) all = seconds();
    if (state === 'done' || state === 'error' || (Date.now() - t0) / 1000 > limit) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const backend = await page.evaluate(() => document.getElementById('backend').textContent);
  const s = await steps();
  console.log(`page ${query}`);
  console.log(`backend: ${backend}`);
  console.log(`first step on the page after ${first ?? '-'} s; every variant's after ${all ?? '-'} s`);
  console.log(`${state === 'done' ? 'done' : `state ${state}`} after ${seconds()} s: ${s.map(([n, k]) => `${n} ${k} steps`).join(', ')}`);
} finally {
  await browser.close();
  server.close();
}
