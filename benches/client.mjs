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
import { parseArgs } from 'node:util';
import { startServer } from '../tests/sdk/server.mjs';
import { measure, median, rows } from './client-workload.mjs';

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

const progress = (msg) => process.stderr.write(`client bench: ${msg}\n`);

/// Peak resident memory of a process, in MiB (Linux).
function peakRssMiB(pid) {
  try {
    const kb = Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmHWM:\s+(\d+)/)[1]);
    return kb / 1024;
  } catch {
    return undefined;
  }
}

const ROWS = rows(N);

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
      const fig = await measure(server?.url ?? target.url.replace(/\/$/, ''), N, progress);
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
