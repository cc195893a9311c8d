// Shared set-up for the end-to-end tests: a `glia serve` on a free loopback port
// and Debian's Chromium driven by playwright-core, each with a fresh profile.

import assert from 'node:assert/strict';
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


/// Starts the `glia` binary with `args` (inside `host`'s network namespace if
/// given, tests/e2e/netns.js) and resolves with its base URL once it prints the
/// address it listens on.
export async function startGlia(args, { host } = {}) {
  const bin = process.env.GLIA_BIN ?? path.join(root, 'target/debug/glia');
  const command = host ? ['ip', ['netns', 'exec', host.ns, bin, ...args]] : [bin, args];
  const child = spawn(...command, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
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
/// or in `profile`, kept for the next launch. On loopback with WebRTC off, or
/// inside `host`'s network namespace with WebRTC on, where `origin` (not
/// loopback, so not secure by itself) may run Service Workers.
export async function launchBrowser({ profile, host, origin } = {}) {
  const dir = profile ?? (await mkdtemp(path.join(tmpdir(), 'glia-e2e-')));
  const args = host
    ? [
        `--unsafely-treat-insecure-origin-as-secure=${origin}`,
        // Raw host candidates: mDNS names would need multicast across the bridge.
        '--disable-features=WebRtcHideLocalIpsWithMdns',
      ]
    : [];
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: host?.chromium ?? process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [...CHROMIUM_ARGS, ...args],
  });
  // Outside a test namespace WebRTC would gather this machine's own addresses
  // (and `--force-webrtc-ip-handling-policy=disable_non_proxied_udp` does not
  // stop Chromium 156 from offering UDP host candidates): without it, the
  // transport keeps to the relay, as in a browser with WebRTC turned off.
  if (!host) await context.addInitScript(() => delete window.RTCPeerConnection);
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

const v3 = '/_matrix/client/v3';
/// How long the helpers below wait for something another node sends.
export const WAIT_MS = 30_000;

/// Someone on a browser node of their own: a fresh browser (in `host`'s
/// namespace if given) with the shell open and a relay connected, and an account.
export async function person(url, name, { host } = {}) {
  const browser = await launchBrowser({ host, origin: new URL(url).origin });
  const page = await openShell(browser.context, url);
  await page.waitForFunction(() => document.body.dataset.relay === 'connected', null, { timeout: WAIT_MS });
  const challenge = await api(page, 'POST', `${v3}/register`, { username: name, password: 'correct horse' });
  const registered = await api(page, 'POST', `${v3}/register`, {
    username: name,
    password: 'correct horse',
    auth: { type: 'm.login.dummy', session: challenge.json.session },
  });
  assert.equal(registered.status, 200, JSON.stringify(registered.json));
  const id = registered.json.user_id;
  return { browser, page, id, node: id.split(':')[1], token: registered.json.access_token };
}

/// A request of `who`'s, with their token.
export const call = (who, method, path, body) => api(who.page, method, path, body, who.token);

/// Syncs `who` (long-polls of a second, so each change is looked at as it
/// lands) until `found(sync)` returns something, for at most `timeout` ms.
export async function sees(who, what, found, { timeout = WAIT_MS } = {}) {
  const deadline = Date.now() + timeout;
  let since;
  while (Date.now() < deadline) {
    const query = since ? `?timeout=1000&since=${encodeURIComponent(since)}` : '?timeout=0';
    const sync = await call(who, 'GET', `${v3}/sync${query}`);
    assert.equal(sync.status, 200, JSON.stringify(sync.json));
    const result = await found(sync.json);
    if (result) return result;
    since = sync.json.next_batch;
  }
  throw new Error(`timed out waiting for ${what}`);
}

/// `from` makes a room and invites `to`, who joins it (through the other node);
/// resolves with its ID once `from` has seen the join.
export async function shareRoom(from, to, name) {
  const created = await call(from, 'POST', `${v3}/createRoom`, { name });
  assert.equal(created.status, 200, JSON.stringify(created.json));
  const roomId = created.json.room_id;
  const invited = await call(from, 'POST', `${v3}/rooms/${encodeURIComponent(roomId)}/invite`, { user_id: to.id });
  assert.equal(invited.status, 200, JSON.stringify(invited.json));
  await sees(to, 'the invite', (sync) => sync.rooms?.invite?.[roomId]);
  const joined = await call(to, 'POST', `${v3}/join/${encodeURIComponent(roomId)}`, {});
  assert.equal(joined.status, 200, JSON.stringify(joined.json));
  await sees(from, `${to.id}'s join`, (sync) =>
    sync.rooms?.join?.[roomId]?.timeline?.events?.some((e) => e.type === 'm.room.member' && e.state_key === to.id));
  return roomId;
}

export async function say(who, roomId, body, txn) {
  const path = `${v3}/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${txn}`;
  const sent = await call(who, 'PUT', path, { msgtype: 'm.text', body });
  assert.equal(sent.status, 200, JSON.stringify(sent.json));
}

/// The bodies of the room's messages starting with `prefix`, oldest first, once
/// there are `count` of them (waiting on the sync long-poll for more).
export async function messages(who, roomId, prefix, count, options) {
  let found = [];
  await sees(who, `${count} messages "${prefix}…"`, async () => {
    const page = await call(who, 'GET', `${v3}/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=1000`);
    assert.equal(page.status, 200, JSON.stringify(page.json));
    found = page.json.chunk.filter((e) => e.type === 'm.room.message' && e.content.body.startsWith(prefix))
      .map((e) => e.content.body).reverse();
    return found.length >= count;
  }, options);
  return found;
}

/// What `who`'s transport knows of `other`'s node: its path and the frames
/// counted on each (www/transport.js's `window.gliaTransport`).
export function peerOf(who, other) {
  return who.page.evaluate((key) => window.gliaTransport.status().peers.find((p) => p.key === key), other.node);
}

/// Waits until `who`'s frames to `other`'s node take `path` ('direct' or 'relayed').
export async function onPath(who, other, path) {
  await who.page.waitForFunction(
    ([key, path]) => window.gliaTransport.status().peers.some((p) => p.key === key && p.path === path),
    [other.node, path],
    { timeout: WAIT_MS },
  );
}
