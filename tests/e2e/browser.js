// Shared set-up for the end-to-end tests: a `glia serve` on a free loopback port
// and Debian's Chromium driven by playwright-core, each with a fresh profile.

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const root = path.resolve(import.meta.dirname, '../..');

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/// Starts the `glia` binary with `args` and resolves with its base URL once it
/// prints the address it listens on.
export async function startGlia(args) {
  const bin = process.env.GLIA_BIN ?? path.join(root, 'target/debug/glia');
  const child = spawn(bin, args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: child.stdout });
  const url = await new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`glia ${args.join(' ')} exited with ${code}`)));
    lines.on('line', (line) => {
      const match = line.match(/at (http:\/\/\S+)/);
      if (match) resolve(match[1]);
    });
  });
  return { url, stop: () => child.kill('SIGINT') };
}

/// A Chromium with a profile of its own: in a fresh directory, removed on close,
/// or in `profile`, kept for the next launch.
export async function launchBrowser({ profile } = {}) {
  const dir = profile ?? (await mkdtemp(path.join(tmpdir(), 'glia-e2e-')));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: CHROMIUM_ARGS,
  });
  return {
    context,
    async close() {
      await context.close();
      if (!profile) await rm(dir, { recursive: true, force: true });
    },
  };
}

/// Opens the shell page (in the context's first tab, or a new one) and waits
/// until the worker has taken the page and answered.
export async function openShell(context, url, { newPage = false } = {}) {
  const page = (!newPage && context.pages()[0]) || (await context.newPage());
  await page.goto(url);
  await page.waitForFunction(() => ['ready', 'failed'].includes(document.body.dataset.state), null, {
    timeout: 60_000,
  });
  return page;
}

/// Registers `before`/`after` hooks for a test file: a `glia serve` of dist/ and
/// one browser with the shell page open. Returns a handle whose `page` and
/// `browser` are set once `before` has run.
export function withShell(hooks) {
  const shell = {};
  hooks.before(async () => {
    // One node alone: no relay, so test files running at once share no mailbox.
    shell.glia = await startGlia(['serve', '--listen', '127.0.0.1:0', '--root', 'dist', '--no-relay']);
    shell.browser = await launchBrowser();
    shell.page = await openShell(shell.browser.context, shell.glia.url);
  });
  hooks.after(async () => {
    await shell.browser?.close();
    shell.glia?.stop();
  });
  return shell;
}

/// A JSON request made by `page` (so through its Service Worker).
export async function api(page, method, path, body, token) {
  return page.evaluate(
    async ([method, path, body, token]) => {
      const headers = { 'Content-Type': 'application/json' };
      if (token) headers.Authorization = `Bearer ${token}`;
      const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
      return { status: res.status, server: res.headers.get('server'), json: await res.json() };
    },
    [method, path, body, token],
  );
}

/// Runs in a page: what its Service Worker says of itself (`{ queued, memory }`).
const askStatus = () =>
  new Promise((resolve, reject) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = ({ data }) => (data?.error ? reject(new Error(data.error)) : resolve(data));
    navigator.serviceWorker.controller.postMessage({ glia: 'status' }, [channel.port2]);
  });

export const workerStatus = (page) => page.evaluate(askStatus);

/// Waits until the page's Service Worker has sent everything it queued.
export const sentEverything = (page, timeout) =>
  page.waitForFunction(`(${askStatus})().then((status) => status.queued === 0)`, null, { timeout });
