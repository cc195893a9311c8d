// Cold start of the browser node, and its memory: how long from opening the page
// until the homeserver in the Service Worker has answered the first `/sync` of
// the embedded client (Hydrogen) and of a minimal client asking as soon as it
// can, for a returning user whose browser was closed (so no worker runs), with
// an empty account and with one in 20 rooms × 500 messages; the same with the
// browser running but the worker stopped, as an idle one is; how long a first visit
// takes until the worker controls the page; and the worker's wasm memory.
//
//   node benches/cold-start.mjs [--rooms 20] [--events 500] [--runs 3]
//
// Needs dist/ (scripts/build-web) and the glia binary (GLIA_BIN or target/debug/glia).

import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { launchBrowser, openShell, startGlia, workerStatus } from '../tests/e2e/browser.js';
import { median } from './client-workload.mjs';

const { values: opts } = parseArgs({
  options: { rooms: { type: 'string', default: '20' }, events: { type: 'string', default: '500' }, runs: { type: 'string', default: '3' } },
});
const [ROOMS, EVENTS, RUNS] = [opts.rooms, opts.events, opts.runs].map(Number);
const progress = (text) => process.stderr.write(`cold-start bench: ${text}\n`);

/// Runs in the page before its own scripts: records when a worker controls the
/// page and then, given a stored session, asks for the first `/sync` as a
/// client does (ms since the navigation began).
function firstSync() {
  if (window !== window.top) return; // not in Hydrogen's download sandbox
  // Room for the client's first `/sync` after all its fonts and icons.
  performance.setResourceTimingBufferSize(2000);
  const token = localStorage.getItem('bench-token');
  window.coldStart = new Promise((resolve, reject) => {
    const go = async () => {
      const controlled = performance.now();
      if (!token) return resolve({ controlled });
      const filter = encodeURIComponent(JSON.stringify({ room: { timeline: { limit: 10 } } }));
      // `bench` tells this request from the client's.
      const res = await fetch(`/_matrix/client/v3/sync?timeout=0&bench&filter=${filter}`, {
        headers: { Authorization: `Bearer ${token}` },
      });
      const body = await res.json();
      if (!res.ok) throw new Error(JSON.stringify(body));
      resolve({ controlled, synced: performance.now(), rooms: Object.keys(body.rooms?.join ?? {}).length });
    };
    const start = () => go().catch(reject);
    if (navigator.serviceWorker.controller) start();
    else navigator.serviceWorker.addEventListener('controllerchange', start, { once: true });
  });
}

/// When the client's first `/sync` was answered, in ms since the page was opened.
async function clientSynced(page) {
  const answered = await page.waitForFunction(() => {
    const syncs = performance.getEntriesByType('resource').filter((e) => e.name.includes('/sync?'));
    return syncs.find((e) => !new URL(e.name).searchParams.has('bench'))?.responseEnd;
  }, null, { timeout: 30_000 });
  return answered.jsonValue();
}

/// Opens `url` in `page` and waits for the first syncs (given a session).
async function opened(page, url) {
  await page.goto(url);
  const times = await page.evaluate(() => window.coldStart);
  if (times.synced !== undefined) times.client = await clientSynced(page);
  return times;
}

/// Opens the page in a browser started afresh on `profile` (or a new one) and
/// waits for its first sync.
async function coldStart(url, profile) {
  const browser = await launchBrowser({ profile });
  try {
    await browser.context.addInitScript(firstSync);
    const page = browser.context.pages()[0] ?? (await browser.context.newPage());
    const times = await opened(page, url);
    return { ...times, memory: (await workerStatus(page)).memory };
  } finally {
    await browser.close();
  }
}

/// Opens the page `RUNS` times in one browser, each time in a new tab after
/// the worker was stopped (as the browser stops an idle one), once the browser
/// has started up and shown the page once: a cold worker without a browser
/// starting alongside.
async function workerStopped(url, profile) {
  const browser = await launchBrowser({ profile });
  try {
    await browser.context.addInitScript(firstSync);
    const first = browser.context.pages()[0] ?? (await browser.context.newPage());
    await opened(first, url);
    await first.close();
    const cdp = await browser.context.newCDPSession(await browser.context.newPage());
    await cdp.send('ServiceWorker.enable');
    const times = [];
    for (let run = 0; run < RUNS; run++) {
      await cdp.send('ServiceWorker.stopAllWorkers');
      const page = await browser.context.newPage();
      times.push(await opened(page, url));
      await page.close();
    }
    return times;
  } finally {
    await browser.close();
  }
}

const glia = await startGlia(['serve', '--listen', '127.0.0.1:0', '--root', 'dist', '--no-relay']);
const profile = await mkdtemp(path.join(tmpdir(), 'glia-cold-'));
try {
  // A first visit: the worker installs, compiles the wasm, makes the node key
  // and opens IndexedDB before it controls the page.
  const firstVisits = [];
  for (let run = 0; run < RUNS; run++) firstVisits.push((await coldStart(glia.url)).controlled);

  progress('registering');
  let browser = await launchBrowser({ profile });
  let page = await openShell(browser.context, glia.url);
  // The shell's one-click account signs the client in; the bench's own
  // requests use a second device of it.
  await page.click('#create-account');
  await page.waitForFunction(() => document.body.dataset.account === 'created' && document.body.dataset.userId);
  const [userId, password] = [await page.evaluate(() => document.body.dataset.userId), await page.textContent('#kept-password')];
  await page.evaluate(async ([user, password]) => {
    const res = await fetch('/_matrix/client/v3/login', {
      method: 'POST',
      body: JSON.stringify({ type: 'm.login.password', identifier: { type: 'm.id.user', user }, password }),
    });
    localStorage.setItem('bench-token', (await res.json()).access_token);
  }, [userId, password]);
  await clientSynced(page);
  await browser.close();

  const empty = [];
  for (let run = 0; run < RUNS; run++) empty.push(await coldStart(glia.url, profile));
  const idle = await workerStopped(glia.url, profile);

  progress(`filling ${ROOMS} rooms with ${EVENTS} messages each`);
  browser = await launchBrowser({ profile });
  page = await openShell(browser.context, glia.url);
  const workload = await readFile(path.join(import.meta.dirname, 'client-workload.mjs'), 'utf8');
  await page.addScriptTag({ type: 'module', content: `${workload}\nwindow.gliaBench = { Client, pool };` });
  await page.waitForFunction(() => window.gliaBench);
  await page.evaluate(async ([rooms, events]) => {
    const { Client, pool } = window.gliaBench;
    const client = new Client(location.origin, localStorage.getItem('bench-token'));
    const ids = [];
    for (let r = 0; r < rooms; r++) ids.push(await client.createRoom({ name: `room ${r}` }));
    const sends = ids.flatMap((id) => Array.from({ length: events }, (_, n) => [id, n]));
    await pool(sends, 8, ([id, n]) => client.send(id, `message ${n}`));
  }, [ROOMS, EVENTS]);
  const filledMemory = (await workerStatus(page)).memory;
  await browser.close();

  const full = [];
  for (let run = 0; run < RUNS; run++) full.push(await coldStart(glia.url, profile));
  if (full.some((f) => f.rooms !== ROOMS)) throw new Error(`a first sync saw ${full.map((f) => f.rooms)} rooms`);

  const ms = (values) => `${median(values).toFixed(0)} (${Math.min(...values).toFixed(0)}–${Math.max(...values).toFixed(0)})`;
  const mib = (bytes) => (bytes / 2 ** 20).toFixed(1);
  console.log(`Browser node cold start, headless Chromium; median (min–max) of ${RUNS} runs, ms since the page was opened.`);
  console.log();
  console.log('| | figure | target |');
  console.log('|---|---:|---:|');
  console.log(`| first visit: page open → worker controlling (install, wasm, key, IndexedDB) | ${ms(firstVisits)} | |`);
  console.log(`| browser restarted, empty account: page open → worker controlling | ${ms(empty.map((e) => e.controlled))} | |`);
  console.log(`| … → the client's (Hydrogen's) first /sync answered | ${ms(empty.map((e) => e.client))} | < 300 |`);
  console.log(`| … → a minimal client's first /sync answered (asked as soon as the page is controlled) | ${ms(empty.map((e) => e.synced))} | |`);
  console.log(`| browser running, worker stopped, empty account: page open → Hydrogen's first /sync answered | ${ms(idle.map((e) => e.client))} | |`);
  console.log(`| … → a minimal client's first /sync answered | ${ms(idle.map((e) => e.synced))} | |`);
  console.log(`| browser restarted, ${ROOMS} rooms × ${EVENTS} messages: → Hydrogen's first /sync answered | ${ms(full.map((e) => e.client))} | < 1000 |`);
  console.log(`| … → a minimal client's first /sync answered | ${ms(full.map((e) => e.synced))} | |`);
  console.log(`| worker wasm memory after sending ${ROOMS * EVENTS} messages, MiB | ${mib(filledMemory)} | |`);
  console.log(`| worker wasm memory after a cold start and first /sync of them, MiB | ${mib(median(full.map((f) => f.memory)))} | |`);
} finally {
  glia.stop();
  await rm(profile, { recursive: true, force: true });
}
