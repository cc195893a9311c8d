// Client-Server API figures of a homeserver, measured the way clients load it: plain
// fetch over loopback, no SDK. Prints a markdown table; with two servers, side by side
// with how the first compares with the second.
//
//   node benches/client.mjs --url http://127.0.0.1:8008           # a running homeserver
//   node benches/client.mjs --server glia=target/release/glia --server synapse --runs 3
//
// --server starts a fresh homeserver for each run (tests/sdk/server.mjs: glia,
// glia=PATH or synapse, which installs Synapse into target/synapse/ on first use).
// Needs Node 22 (node_modules/node/bin/node). Sizes: --sends (1000), --clients (8),
// --samples (200), --rooms (100), --events (100), --syncs (5).
//
// What is measured, on one server at a time:
// - sends: one user PUTs --sends messages into a room one after another; then
//   --clients users in one room each send their share one after another, all at once.
// - send→sync latency: a second user long-polls /sync (timeout 30 s, issued before
//   the send); from the start of the PUT until its sync answer holds the message.
// - initial /sync of an account in --rooms rooms holding --events messages each (built
//   through the API first), as a freshly logged-in device (so no server-side cache of
//   an earlier identical request answers), with no filter and with a timeline limit
//   of 10; the median of --syncs.
// - incremental /sync (since=, timeout 0) of that account right after it sent one
//   message; the median of 20.

import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { startServer } from '../tests/sdk/server.mjs';

const { values: opts } = parseArgs({
  options: {
    url: { type: 'string', multiple: true, default: [] },
    server: { type: 'string', multiple: true, default: [] },
    runs: { type: 'string', default: '1' },
    sends: { type: 'string', default: '1000' },
    clients: { type: 'string', default: '8' },
    samples: { type: 'string', default: '200' },
    rooms: { type: 'string', default: '100' },
    events: { type: 'string', default: '100' },
    syncs: { type: 'string', default: '5' },
  },
});
const N = Object.fromEntries(['runs', 'sends', 'clients', 'samples', 'rooms', 'events', 'syncs'].map((k) => [k, Number(opts[k])]));
const targets = [...opts.url.map((url) => ({ url })), ...opts.server.map((kind) => ({ kind }))];
if (targets.length === 0) {
  console.error('usage: node benches/client.mjs (--url URL | --server glia[=PATH] | --server synapse)... [--runs N]');
  process.exit(2);
}

const PASSWORD = 'bench password';
const LIMIT_10 = JSON.stringify({ room: { timeline: { limit: 10 } } });
const progress = (msg) => process.stderr.write(`client bench: ${msg}\n`);

/// One user's view of the homeserver.
class Client {
  constructor(base, token, userId) {
    Object.assign(this, { base, token, userId, txn: 0 });
  }

  async request(method, path, body) {
    const res = await fetch(this.base + path, {
      method,
      headers: {
        ...(this.token && { Authorization: `Bearer ${this.token}` }),
        ...(body !== undefined && { 'Content-Type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) {
      const err = new Error(`${method} ${path.replace(/\?.*/, '')} -> ${res.status} ${text.slice(0, 300)}`);
      Object.assign(err, { status: res.status, body: text });
      throw err;
    }
    return Object.assign(JSON.parse(text), { [BYTES]: text.length });
  }

  /// Registers through the m.login.dummy stage of user-interactive auth.
  static async register(base, username) {
    const anonymous = new Client(base);
    const body = { username, password: PASSWORD, initial_device_display_name: 'bench' };
    const challenge = await anonymous.request('POST', '/_matrix/client/v3/register', body).then(
      () => { throw new Error('registration without auth succeeded'); },
      (err) => { if (err.status !== 401) throw err; return JSON.parse(err.body); },
    );
    const res = await anonymous.request('POST', '/_matrix/client/v3/register', {
      ...body, auth: { type: 'm.login.dummy', session: challenge.session },
    });
    return new Client(base, res.access_token, res.user_id);
  }

  /// The same account on a new device.
  async login() {
    const res = await new Client(this.base).request('POST', '/_matrix/client/v3/login', {
      type: 'm.login.password', identifier: { type: 'm.id.user', user: this.userId }, password: PASSWORD,
    });
    return new Client(this.base, res.access_token, res.user_id);
  }

  createRoom(body = {}) {
    return this.request('POST', '/_matrix/client/v3/createRoom', body).then((r) => r.room_id);
  }

  join(roomId) {
    return this.request('POST', `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {});
  }

  send(roomId, body) {
    const txn = `b${process.pid}.${++this.txn}`;
    return this.request('PUT', `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${txn}`, {
      msgtype: 'm.text', body,
    });
  }

  sync({ since, timeout = 0, filter } = {}) {
    const q = new URLSearchParams({ timeout: String(timeout) });
    if (since) q.set('since', since);
    if (filter) q.set('filter', filter);
    return this.request('GET', `/_matrix/client/v3/sync?${q}`);
  }
}
const BYTES = Symbol('bytes');

/// Whether a sync answer holds a message with `body` in `roomId`.
function hasMessage(sync, roomId, body) {
  return (sync.rooms?.join?.[roomId]?.timeline?.events ?? []).some((e) => e.content?.body === body);
}

function quantile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}
function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/// Runs `worker(item)` over `items`, `concurrency` at a time.
async function pool(items, concurrency, worker) {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) await worker(items[next++]);
  }));
}

/// Peak resident memory of a process, in MiB (Linux).
function peakRssMiB(pid) {
  try {
    const kb = Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmHWM:\s+(\d+)/)[1]);
    return kb / 1024;
  } catch {
    return undefined;
  }
}

/// Every figure of one run against the homeserver at `base`.
async function measure(base) {
  const fig = {};
  const tag = Math.random().toString(36).slice(2, 8);
  const versions = await fetch(`${base}/_matrix/client/versions`);
  fig.server = versions.headers.get('server') ?? '(no Server header)';
  await versions.arrayBuffer();

  // Sends: one client, then several at once in one room.
  progress(`${fig.server}: sends`);
  const users = [];
  for (let i = 0; i < N.clients; i++) users.push(await Client.register(base, `send${i}_${tag}`));
  const room = await users[0].createRoom({ preset: 'public_chat' });
  for (const user of users.slice(1)) await user.join(room);
  let t = performance.now();
  for (let i = 0; i < N.sends; i++) await users[0].send(room, `sequential ${i}`);
  fig.sendSequential = N.sends / ((performance.now() - t) / 1000);
  const share = Math.ceil(N.sends / N.clients);
  t = performance.now();
  await Promise.all(users.map(async (user, u) => {
    for (let i = 0; i < share; i++) await user.send(room, `parallel ${u}.${i}`);
  }));
  fig.sendParallel = (share * N.clients) / ((performance.now() - t) / 1000);

  // Send→sync latency between two users.
  progress(`${fig.server}: send→sync latency`);
  const [sender, receiver] = [users[0], users[1]];
  const latencyRoom = await sender.createRoom({ preset: 'public_chat' });
  await receiver.join(latencyRoom);
  let since = (await receiver.sync({ filter: LIMIT_10 })).next_batch;
  const latencies = [];
  for (let i = 0; i < N.samples; i++) {
    const body = `latency ${i}`;
    const delivered = (async () => {
      for (;;) {
        const sync = await receiver.sync({ since, timeout: 30_000, filter: LIMIT_10 });
        since = sync.next_batch;
        if (hasMessage(sync, latencyRoom, body)) return performance.now();
      }
    })();
    const sent = performance.now();
    await sender.send(latencyRoom, body);
    latencies.push((await delivered) - sent);
  }
  fig.latencyP50 = median(latencies);
  fig.latencyP99 = quantile(latencies, 0.99);

  // An account in many rooms full of messages, built through the API.
  progress(`${fig.server}: building ${N.rooms} rooms × ${N.events} messages`);
  const heavy = await Client.register(base, `heavy_${tag}`);
  const rooms = [];
  t = performance.now();
  await pool(Array.from({ length: N.rooms }, (_, i) => i), 4, async (i) => {
    rooms.push(await heavy.createRoom({ name: `room ${i}` }));
  });
  fig.createRoom = N.rooms / ((performance.now() - t) / 1000);
  t = performance.now();
  const sends = rooms.flatMap((r) => Array.from({ length: N.events }, (_, i) => [r, i]));
  // Rooms interleaved so that the concurrent senders write to different rooms.
  sends.sort((a, b) => a[1] - b[1]);
  await pool(sends, N.clients, ([r, i]) => heavy.send(r, `message ${i} of ${r}`));
  fig.fixtureSends = sends.length / ((performance.now() - t) / 1000);

  progress(`${fig.server}: initial and incremental /sync`);
  for (const [key, filter] of [['initialSync', undefined], ['initialSyncLimit10', LIMIT_10]]) {
    const times = [];
    for (let i = 0; i < N.syncs; i++) {
      const device = await heavy.login();
      t = performance.now();
      const sync = await device.sync({ filter });
      times.push(performance.now() - t);
      const joined = Object.keys(sync.rooms?.join ?? {}).length;
      if (joined !== N.rooms) throw new Error(`initial sync shows ${joined} joined rooms, not ${N.rooms}`);
      fig[`${key}Bytes`] = sync[BYTES];
    }
    fig[key] = median(times);
  }
  since = (await heavy.sync({ filter: LIMIT_10 })).next_batch;
  const incremental = [];
  for (let i = 0; i < 20; i++) {
    const body = `incremental ${i}`;
    const target = rooms[i % rooms.length];
    await heavy.send(target, body);
    t = performance.now();
    const sync = await heavy.sync({ since, filter: LIMIT_10 });
    incremental.push(performance.now() - t);
    if (!hasMessage(sync, target, body)) throw new Error('incremental sync lacks the message just sent');
    since = sync.next_batch;
  }
  fig.incrementalSync = median(incremental);
  return fig;
}

const ROWS = [
  ['sendSequential', `messages sent per second, 1 client, ${N.sends} sequential PUTs`, 'higher', 0],
  ['sendParallel', `messages sent per second, ${N.clients} clients in one room at once`, 'higher', 0],
  ['latencyP50', `send → other user's /sync, p50 ms (${N.samples} samples)`, 'lower', 1],
  ['latencyP99', "send → other user's /sync, p99 ms", 'lower', 1],
  ['createRoom', 'rooms created per second (4 at once)', 'higher', 1],
  ['fixtureSends', `messages sent per second into ${N.rooms} rooms (${N.clients} at once)`, 'higher', 0],
  ['initialSync', `initial /sync ms, ${N.rooms} rooms × ${N.events} messages, no filter`, 'lower', 1],
  ['initialSyncBytes', '… its response, KiB', 'lower', 0, 1 / 1024],
  ['initialSyncLimit10', 'initial /sync ms, timeline limit 10', 'lower', 1],
  ['initialSyncLimit10Bytes', '… its response, KiB', 'lower', 0, 1 / 1024],
  ['incrementalSync', 'incremental /sync ms after one new message', 'lower', 1],
  ['peakRss', 'server peak RSS, MiB', 'lower', 0],
];

function format(values, digits, scale = 1) {
  if (values.every((v) => v === undefined)) return '–';
  const fix = (v) => (v * scale).toFixed(digits);
  const vs = values.filter((v) => v !== undefined);
  const [lo, mid, hi] = [Math.min(...vs), median(vs), Math.max(...vs)].map(fix);
  return lo === hi ? mid : `${mid} (${lo}–${hi})`;
}

function compare(a, b, better) {
  if (a === undefined || b === undefined || !a || !b) return '–';
  const ratio = better === 'higher' ? a / b : b / a;
  if (Math.abs(ratio - 1) < 0.05) return 'same';
  return ratio > 1 ? `${ratio.toFixed(1)}× better` : `${(1 / ratio).toFixed(1)}× worse`;
}

const results = []; // per target: { name, runs: [fig...] }
for (const target of targets) {
  const entry = { runs: [], spec: target.kind ?? target.url };
  results.push(entry);
  for (let run = 0; run < (target.kind ? N.runs : 1); run++) {
    const server = target.kind ? await startServer(target.kind) : undefined;
    try {
      const fig = await measure(server?.url ?? target.url.replace(/\/$/, ''));
      if (server) fig.peakRss = peakRssMiB(server.pid);
      entry.runs.push(fig);
      entry.name = fig.server;
    } finally {
      await server?.stop();
    }
  }
}

// The Server header names each column, with what was started when two share a name.
const names = results.map((r, _, all) => (all.filter((o) => o.name === r.name).length > 1 ? `${r.name} (${r.spec})` : r.name));
const many = results.some((r) => r.runs.length > 1);
console.log(`Client-Server API over loopback, Node ${process.version} fetch as the client${many ? '; median (min–max) of fresh-server runs' : ''}.`);
console.log();
const head = ['', ...names, ...(results.length === 2 ? [`${names[0].split(/[/ ]/)[0]} vs ${names[1].split(/[/ ]/)[0]}`] : [])];
console.log(`| ${head.join(' | ')} |`);
console.log(`|${head.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`);
for (const [key, label, better, digits, scale] of ROWS) {
  const cols = results.map((r) => format(r.runs.map((f) => f[key]), digits, scale));
  if (results.length === 2) {
    const med = results.map((r) => { const vs = r.runs.map((f) => f[key]).filter((v) => v !== undefined); return vs.length ? median(vs) : undefined; });
    cols.push(compare(med[0], med[1], better));
  }
  if (cols.slice(0, results.length).every((c) => c === '–')) continue;
  console.log(`| ${label} | ${cols.join(' | ')} |`);
}
