// Message latency between two browser nodes, from `PUT /send` in A's page to
// the /sync long-poll in B's page returning the message (both clocks are this
// machine's), one message at a time: through the relay `glia serve` runs (on
// loopback, WebRTC off) and over a direct WebRTC data channel (each browser in
// a network namespace of its own, tests/e2e/netns.js; needs root). Prints a
// markdown table.
//
//   node benches/browser-latency.mjs [--messages 100]
//
// Needs dist/ (scripts/build-web) and the glia binary (GLIA_BIN or target/debug/glia).

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { onPath, peerOf, person, shareRoom, startGlia, WAIT_MS } from '../tests/e2e/browser.js';
import { createNetwork, netnsUnavailable } from '../tests/e2e/netns.js';

const { values: opts } = parseArgs({ options: { messages: { type: 'string', default: '100' } } });
const COUNT = Number(opts.messages);
const WARM_UP = 5;

/// Latencies in ms of `count` messages from `a` to `b` in `roomId`: from send
/// to sync (`total`), and of the transport alone (`hop`: from A's page taking
/// the transaction from its worker to B's page handing it to its own).
async function measure(a, b, roomId, count) {
  await a.page.evaluate(() => {
    window.gliaFrames = [];
    navigator.serviceWorker.addEventListener('message', ({ data }) => {
      if (data?.glia === 'frame') window.gliaFrames.push({ at: performance.timeOrigin + performance.now(), bytes: data.bytes });
    });
  });
  await b.page.evaluate(([roomId, token]) => {
    window.gliaFrames = [];
    const post = ServiceWorker.prototype.postMessage;
    ServiceWorker.prototype.postMessage = function (message, transfer) {
      if (message?.glia === 'frame') {
        window.gliaFrames.push({ at: performance.timeOrigin + performance.now(), bytes: new Uint8Array(message.bytes) });
      }
      return post.call(this, message, transfer);
    };
    // B's client: long-polls /sync and notes when each message comes back;
    // one loop, however many rounds are measured, as a client has.
    window.gliaArrived = {};
    if (window.gliaSyncing) return;
    window.gliaSyncing = true;
    const headers = { Authorization: `Bearer ${token}` };
    (async () => {
      let since = (await (await fetch('/_matrix/client/v3/sync?timeout=0', { headers })).json()).next_batch;
      for (;;) {
        const query = `timeout=10000&since=${encodeURIComponent(since)}`;
        const sync = await (await fetch(`/_matrix/client/v3/sync?${query}`, { headers })).json();
        const now = performance.timeOrigin + performance.now();
        for (const event of sync.rooms?.join?.[roomId]?.timeline?.events ?? []) {
          if (event.type === 'm.room.message') window.gliaArrived[event.content.body] ??= now;
        }
        since = sync.next_batch;
      }
    })();
  }, [roomId, b.token]);
  const latencies = { total: [], out: [], hop: [], in: [] };
  // When the page saw the transaction carrying `body` (the worker's frames
  // carry the event in clear JSON).
  const seen = (who, body) => who.page.evaluate((body) => {
    const frame = window.gliaFrames.find(({ bytes }) => new TextDecoder().decode(bytes).includes(body));
    window.gliaFrames = [];
    return frame?.at;
  }, body);
  for (let n = 0; n < count; n++) {
    const body = `latency ${n} ${Math.random()}`;
    const sentAt = await a.page.evaluate(async ([roomId, token, body, txn]) => {
      const at = performance.timeOrigin + performance.now();
      const path = `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${txn}`;
      const res = await fetch(path, {
        method: 'PUT',
        headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ msgtype: 'm.text', body }),
      });
      if (!res.ok) throw new Error(`send: HTTP ${res.status}`);
      return at;
    }, [roomId, a.token, body, `${Date.now()}.${n}`]);
    const arrived = await b.page.waitForFunction((body) => window.gliaArrived[body], body, { timeout: WAIT_MS });
    const [arrivedAt, leftA, reachedB] = [await arrived.jsonValue(), await seen(a, body), await seen(b, body)];
    latencies.total.push(arrivedAt - sentAt);
    latencies.out.push(leftA - sentAt);
    latencies.hop.push(reachedB - leftA);
    latencies.in.push(arrivedAt - reachedB);
  }
  return latencies;
}

/// Two people on browser nodes of their own sharing a room, `hosts` placing
/// them (and the relay) in namespaces; resolves with the latencies of COUNT
/// messages, after `ready(alice, bob)`.
async function run(hosts, ready) {
  const relayData = await mkdtemp(path.join(tmpdir(), 'glia-bench-relay-'));
  const listen = `${hosts?.relay.address ?? '127.0.0.1'}:0`;
  const glia = await startGlia(['serve', '--listen', listen, '--root', 'dist', '--relay-data', relayData], {
    host: hosts?.relay,
  });
  const people = [];
  try {
    people.push(await person(glia.url, 'alice', { host: hosts?.alice }));
    people.push(await person(glia.url, 'bob', { host: hosts?.bob }));
    const [alice, bob] = people;
    const roomId = await shareRoom(alice, bob, 'Latency');
    await ready(alice, bob);
    await measure(alice, bob, roomId, WARM_UP);
    const before = await peerOf(alice, bob);
    const latencies = await measure(alice, bob, roomId, COUNT);
    const after = await peerOf(alice, bob);
    return { latencies, relayed: after.sent.relayed - before.sent.relayed, direct: after.sent.direct - before.sent.direct };
  } finally {
    for (const who of people) await who.browser.close();
    glia.stop();
    await rm(relayData, { recursive: true, force: true });
  }
}

/// p50, p99 and max of `values`, formatted.
function spread(values) {
  const sorted = [...values].sort((x, y) => x - y);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return [at(0.5), at(0.99), sorted.at(-1)].map((ms) => ms.toFixed(1));
}

function row(label, { latencies, relayed, direct }) {
  const [p50, p99, max] = spread(latencies.total);
  const [[out50], [hop50, hop99], [in50]] = [latencies.out, latencies.hop, latencies.in].map(spread);
  return `| ${label} | ${latencies.total.length} | ${p50} | ${p99} | ${max} | ${out50} | ${hop50} | ${hop99} | ${in50} | ${direct} / ${relayed} |`;
}

const rows = [];
rows.push(row('relay (loopback)', await run(null, async () => {})));
const unavailable = netnsUnavailable();
if (unavailable) {
  rows.push(`| WebRTC data channel | skipped: ${unavailable} | | | | | | | | |`);
} else {
  const network = createNetwork(['relay', 'alice', 'bob']);
  try {
    const direct = await run(network.hosts, async (alice, bob) => {
      await onPath(alice, bob, 'direct');
      await onPath(bob, alice, 'direct');
    });
    rows.push(row('WebRTC data channel (network namespaces)', direct));
  } finally {
    network.remove();
  }
}

console.log('Message latency between two browser nodes: `PUT /send` in A\'s page to B\'s `/sync` long-poll returning it;');
console.log('out: A\'s page sending to A\'s worker handing its page the frame; hop: the transport, from A\'s page to B\'s;');
console.log('in: B\'s page handing its worker the frame to B\'s `/sync` returning the message.');
console.log();
console.log('| path | messages | p50 ms | p99 ms | max ms | out p50 ms | hop p50 ms | hop p99 ms | in p50 ms | frames A→B direct / relayed |');
console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
for (const line of rows) console.log(line);
