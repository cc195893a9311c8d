// Runs benches/bench.html (glia's store workload on IndexedDB) in headless
// Chromium against a `glia serve` of target/bench-web, and prints its table rows.

import { launchBrowser, startGlia } from '../tests/e2e/browser.js';

const n = process.argv[2] ?? '2000';
const events = process.argv[3] ?? '1000';
const glia = await startGlia(['serve', '--listen', '127.0.0.1:0', '--root', 'target/bench-web']);
const browser = await launchBrowser();
try {
  const page = await browser.context.newPage();
  await page.goto(`${glia.url}bench.html?n=${n}&events=${events}`);
  await page.waitForFunction(() => document.body.dataset.state !== 'running', null, { timeout: 300_000 });
  const result = await page.textContent('#result');
  if ((await page.evaluate(() => document.body.dataset.state)) !== 'done') throw new Error(result);
  process.stdout.write(result);
} finally {
  await browser.close();
  glia.stop();
}
