// End-to-end encryption figures across two `glia node` processes linked only by a
// `glia relay` on loopback: /keys/query and /keys/claim for a user of the same node
// and for one of the other node (asked over federation), and how long a to-device
// message takes from alice's PUT /sendToDevice on node A to bob's /sync on node B
// (a long-poll issued before the send). Plain fetch, no SDK; prints a markdown table.
//
//   node benches/e2ee.mjs [--samples 50]     (GLIA_BIN picks the binary: target/release/glia)

import { parseArgs } from 'node:util';
import { startGlia, startRelay } from '../tests/sdk/server.mjs';
import { Client, median, quantile } from './client-workload.mjs';

const { values: opts } = parseArgs({ options: { samples: { type: 'string', default: '50' } } });
const N = Number(opts.samples);
const bin = process.env.GLIA_BIN ?? 'target/release/glia';
const v3 = '/_matrix/client/v3';

/// Uploads device keys and `count` one-time keys in the shape clients do (the
/// node checks their shape, not the signatures); returns the device ID.
async function uploadKeys(client, count) {
  const { device_id: device } = await client.request('GET', `${v3}/account/whoami`);
  const signed = (key) => ({ key, signatures: { [client.userId]: { [`ed25519:${device}`]: 'sig' } } });
  const oneTimeKeys = Object.fromEntries(
    Array.from({ length: count }, (_, i) => [`signed_curve25519:K${String(i).padStart(6, '0')}`, signed(Buffer.from(`one-time key ${i}`).toString('base64').replace(/=+$/, ''))]),
  );
  await client.request('POST', `${v3}/keys/upload`, {
    device_keys: {
      user_id: client.userId,
      device_id: device,
      algorithms: ['m.olm.v1.curve25519-aes-sha2', 'm.megolm.v1.aes-sha2'],
      keys: { [`curve25519:${device}`]: 'curve', [`ed25519:${device}`]: 'ed' },
      signatures: { [client.userId]: { [`ed25519:${device}`]: 'sig' } },
    },
    one_time_keys: oneTimeKeys,
  });
  return device;
}

/// Times `n` runs of `run()`, one after another, in ms.
async function timed(n, run) {
  const times = [];
  for (let i = 0; i < n; i++) {
    const start = performance.now();
    await run(i);
    times.push(performance.now() - start);
  }
  return times;
}

const row = (what, times) =>
  `| ${what} | ${times.length} | ${median(times).toFixed(1)} | ${quantile(times, 0.99).toFixed(1)} |`;

const relay = await startRelay();
const a = await startGlia(bin, { relays: [relay.url], name: 'node A' });
const b = await startGlia(bin, { relays: [relay.url], name: 'node B' });
try {
  const alice = await Client.register(a.url, 'alice');
  const carol = await Client.register(a.url, 'carol');
  const bob = await Client.register(b.url, 'bob');
  const carolDevice = await uploadKeys(carol, N);
  const bobDevice = await uploadKeys(bob, N);

  const query = (user) => () => alice.request('POST', `${v3}/keys/query`, { device_keys: { [user]: [] } });
  const claim = (user, device) => async () => {
    const res = await alice.request('POST', `${v3}/keys/claim`, { one_time_keys: { [user]: { [device]: 'signed_curve25519' } } });
    if (!Object.keys(res.one_time_keys[user]?.[device] ?? {}).length) throw new Error(`no key claimed: ${JSON.stringify(res)}`);
  };
  const lines = [];
  lines.push(row('/keys/query, a user of the same node', await timed(N, query(carol.userId))));
  lines.push(row('/keys/query, a user of the other node', await timed(N, query(bob.userId))));
  lines.push(row('/keys/claim, a device of the same node', await timed(N, claim(carol.userId, carolDevice))));
  lines.push(row('/keys/claim, a device of the other node', await timed(N, claim(bob.userId, bobDevice))));

  let since = (await bob.sync()).next_batch;
  const delivery = await timed(N, async (i) => {
    const synced = (async () => {
      for (;;) {
        const sync = await bob.sync({ since, timeout: 30_000 });
        since = sync.next_batch;
        if ((sync.to_device?.events ?? []).some((e) => e.content.n === i)) return;
      }
    })();
    const body = { messages: { [bob.userId]: { [bobDevice]: { n: i } } } };
    await alice.request('PUT', `${v3}/sendToDevice/m.glia.bench/t${i}`, body);
    await synced;
  });
  lines.push(row('to-device message, node A → relay → node B, send to /sync', delivery));

  console.log('| operation | samples | p50 ms | p99 ms |');
  console.log('|---|---|---|---|');
  console.log(lines.join('\n'));
} finally {
  for (const p of [a, b, relay]) await p.stop();
}
