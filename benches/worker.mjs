// The client bench against the homeserver in a Service Worker: `glia serve` hands
// out the web app, headless Chromium opens the shell page with a fresh profile,
// and benches/client-workload.mjs runs inside the page, so every request goes
// through the page's fetch to the worker and its IndexedDB store.
//
//   node benches/worker.mjs [--sends 1000] [--rooms 100] [--events 100] ...
//
// Needs dist/ (scripts/build-web) and the glia binary (GLIA_BIN or target/debug/glia).

import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { launchBrowser, openShell, startGlia } from '../tests/e2e/browser.js';
import { rows } from './client-workload.mjs';

const { values: opts } = parseArgs({
  options: Object.fromEntries(
    [['sends', '1000'], ['clients', '8'], ['samples', '200'], ['rooms', '100'], ['events', '100'], ['syncs', '5']]
      .map(([k, d]) => [k, { type: 'string', default: d }]),
  ),
});
const N = Object.fromEntries(Object.entries(opts).map(([k, v]) => [k, Number(v)]));

const glia = await startGlia(['serve', '--listen', '127.0.0.1:0', '--root', 'dist']);
const browser = await launchBrowser();
try {
  const page = await openShell(browser.context, glia.url);
  if ((await page.evaluate(() => document.body.dataset.state)) !== 'ready') throw new Error('the worker did not start');
  page.on('console', (msg) => process.stderr.write(`worker bench: ${msg.text()}\n`));
  const workload = await readFile(path.join(import.meta.dirname, 'client-workload.mjs'), 'utf8');
  await page.addScriptTag({ type: 'module', content: `${workload}\nwindow.gliaMeasure = measure;` });
  await page.waitForFunction(() => typeof window.gliaMeasure === 'function');
  const fig = await page.evaluate((N) => window.gliaMeasure(location.origin, N, (m) => console.log(m)), N);

  console.log(`Client-Server API of the Service Worker homeserver (IndexedDB), headless Chromium; the page's fetch as the client.`);
  console.log();
  console.log(`| | ${fig.server} (Service Worker) |`);
  console.log('|---|---:|');
  for (const [key, label, , digits, scale = 1] of rows(N)) {
    if (fig[key] !== undefined) console.log(`| ${label} | ${(fig[key] * scale).toFixed(digits)} |`);
  }
} finally {
  await browser.close();
  glia.stop();
}
