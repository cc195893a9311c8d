// Media repository figures: upload and download throughput (MiB/s) of a file and the
// time of the first thumbnail of a 4000×3000 JPEG photo, in the Service Worker
// homeserver (headless Chromium, IndexedDB) and in a release `glia node` (redb on
// disk), and how much the worker's memory grew meanwhile. The photo is made by the
// browser (OffscreenCanvas), and the same bytes go to both. Prints a markdown table.
//
//   node benches/media.mjs [--mib 8] [--runs 3]
//
// Needs dist/ (scripts/build-web), the glia binary for `glia serve` (GLIA_BIN or
// target/debug/glia) and target/release/glia for the node.

import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { launchBrowser, openShell, startGlia, workerStatus } from '../tests/e2e/browser.js';
import { startGlia as startNode } from '../tests/sdk/server.mjs';
import { mediaWorkload } from './media-workload.mjs';

const { values: opts } = parseArgs({ options: { mib: { type: 'string', default: '8' }, runs: { type: 'string', default: '3' } } });
const N = { mib: Number(opts.mib), runs: Number(opts.runs) };

const inline = async (file) => (await readFile(path.join(import.meta.dirname, file), 'utf8')).replace(/^import .*$/gm, '');
const glia = await startGlia(['serve', '--listen', '127.0.0.1:0', '--root', 'dist']);
const browser = await launchBrowser();
let worker, jpeg, grown;
try {
  const page = await openShell(browser.context, glia.url);
  if ((await page.evaluate(() => document.body.dataset.state)) !== 'ready') throw new Error('the worker did not start');
  const code = `${await inline('client-workload.mjs')}\n${await inline('media-workload.mjs')}\nwindow.gliaMedia = mediaWorkload; window.gliaClient = Client;`;
  await page.addScriptTag({ type: 'module', content: code });
  await page.waitForFunction(() => typeof window.gliaMedia === 'function');
  // A registration first: hashing its password takes argon2's 19 MiB, which
  // the worker keeps, and which the memory figure is not about.
  await page.evaluate(() => window.gliaClient.register(location.origin, 'warmup'));
  const before = (await workerStatus(page)).memory;
  [worker, jpeg] = await page.evaluate(async (N) => {
    // A photo-like picture: gradients and noise, which JPEG cannot make small.
    const canvas = new OffscreenCanvas(4000, 3000);
    const ctx = canvas.getContext('2d');
    const image = ctx.createImageData(4000, 3000);
    for (let i = 0; i < image.data.length; i += 4) {
      const p = i / 4;
      image.data.set([(p % 4000) / 16 + Math.random() * 40, p / 4000 / 12 + Math.random() * 40, Math.random() * 255, 255], i);
    }
    ctx.putImageData(image, 0, 0);
    const jpeg = new Uint8Array(await (await canvas.convertToBlob({ type: 'image/jpeg', quality: 0.9 })).arrayBuffer());
    const figures = await window.gliaMedia(location.origin, { ...N, jpeg });
    return [figures, Array.from(jpeg)];
  }, N);
  grown = (await workerStatus(page)).memory - before;
} finally {
  await browser.close();
  glia.stop();
}

const node = await startNode(process.env.GLIA_RELEASE_BIN ?? 'target/release/glia');
let native;
try {
  native = await mediaWorkload(node.url, { ...N, jpeg: new Uint8Array(jpeg) });
} finally {
  await node.stop();
}

console.log(`| media (${N.mib} MiB file, median of ${N.runs}; JPEG ${(jpeg.length / 2 ** 20).toFixed(1)} MiB, 4000×3000) | Service Worker (IndexedDB) | glia node (redb) |`);
console.log('|---|---:|---:|');
console.log(`| upload, MiB/s | ${worker.upload.toFixed(1)} | ${native.upload.toFixed(1)} |`);
console.log(`| download, MiB/s | ${worker.download.toFixed(1)} | ${native.download.toFixed(1)} |`);
console.log(`| first thumbnail 800×600 of the JPEG, ms | ${worker.thumbnailMs.toFixed(0)} | ${native.thumbnailMs.toFixed(0)} |`);
// The wasm memory only grows, so this is the most the worker held at once
// beyond what it had after a first registration.
console.log(`| worker's wasm memory grown by all of the above beyond the 19 MiB a registration's argon2 leaves, MiB | ${(grown / 2 ** 20).toFixed(1)} | |`);
