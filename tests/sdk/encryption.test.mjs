// Real end-to-end encryption across two glia nodes: matrix-js-sdk clients with its
// Rust crypto (@matrix-org/matrix-sdk-crypto-wasm, no fakes) on `glia node`
// processes linked only through a `glia relay`. Alice (node A) makes an encrypted
// room and invites bob (node B); each decrypts what the other sends, which takes
// device keys queried and one-time keys claimed across the nodes, and room keys
// sent as to-device messages between them. Bob then backs his keys up on his node,
// signs in on a second device, restores the backup with his recovery key and reads
// the history.
//
// Needs Node 22 (matrix-js-sdk 43), which npm installs as the `node` package:
//   node_modules/node/bin/node --test --test-force-exit 'tests/sdk/*.test.mjs'
// GLIA_BIN=PATH picks another glia binary; GLIA_SDK_TRACE=1 prints every request.

import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { createClient, MatrixEventEvent, RoomEvent, RoomMemberEvent } from 'matrix-js-sdk';
import {
  formatRequests, login, recordingFetch, register, requests, silent, startSync, stepper, WAIT_MS, waitFor,
} from './harness.mjs';
import { startGlia, startRelay, withTimeout } from './server.mjs';

const trace = !!process.env.GLIA_SDK_TRACE;
const ENCRYPTION = { type: 'm.room.encryption', state_key: '', content: { algorithm: 'm.megolm.v1.aes-sha2' } };

let relay;
const nodes = {}; // a, b -> GliaProcess
const clients = {}; // alice, bob, bob2 -> MatrixClient
let roomId;

/// Answers that are no failure: the 401 that opens user-interactive auth, 404s
/// for what the SDK probes (unstable endpoints, a backup before there is one,
/// dehydrated devices) and syncs aborted by stopping a client.
const expected = (r) =>
  (r.status === 401 && r.path.endsWith('/register')) ||
  (r.status === 404 && (r.path.includes('/unstable/') || r.path.includes('/room_keys/version'))) ||
  (r.status === 'AbortError' && r.path.includes('/sync'));

const step = stepper({
  expected,
  describe: {
    where: () => `relay at ${relay?.url}, ${Object.values(nodes).map((n) => `${n.name} at ${n.url}`).join(', ')}`,
    more: () =>
      [relay, ...Object.values(nodes)]
        .filter(Boolean)
        .map((p) => `--- ${p.name}, last lines of its output\n${p.log.slice(-30).join('\n')}`)
        .join('\n'),
  },
});

/// A client of `node` as `session`, with Rust crypto (in memory) and its sync loop running.
async function cryptoClient(node, who, session) {
  const client = createClient({ baseUrl: node.url, fetchFn: recordingFetch(who), logger: silent, ...session });
  await client.initRustCrypto({ useIndexedDB: false });
  await startSync(client, who, { initialSyncLimit: 50 });
  clients[who] = client;
  return client;
}

/// The message `client` decrypted in the room with `body`, once it has; fails if
/// it cannot decrypt it or takes too long.
async function decrypted(client, body) {
  const find = () =>
    client.getRoom(roomId)?.getLiveTimeline().getEvents().find((e) => e.isEncrypted() && e.getContent().body === body);
  let listener;
  const found = new Promise((resolve) => {
    listener = () => {
      const event = find();
      if (event) resolve(event);
    };
    client.on(MatrixEventEvent.Decrypted, listener);
    client.on(RoomEvent.Timeline, listener);
    listener();
  });
  const event = await withTimeout(found, WAIT_MS, `${client.getUserId()} (${client.getDeviceId()}) to decrypt "${body}"`)
    .finally(() => {
      client.off(MatrixEventEvent.Decrypted, listener);
      client.off(RoomEvent.Timeline, listener);
    });
  assert.equal(event.getWireType(), 'm.room.encrypted', 'it came encrypted');
  assert.equal(event.getType(), 'm.room.message');
  assert.equal(event.isDecryptionFailure(), false);
  return event;
}

/// Waits (bounded) until `check()` resolves truthy, looking again every 50 ms:
/// what it waits on (a client's uploads) has no event of its own to wait for.
async function eventually(check, what) {
  const deadline = Date.now() + WAIT_MS;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

before(async () => {
  relay = await startRelay({ echo: trace });
  nodes.a = await startGlia(undefined, { relays: [relay.url], name: 'node A', echo: trace });
  nodes.b = await startGlia(undefined, { relays: [relay.url], name: 'node B', echo: trace });
});

after(async () => {
  for (const client of Object.values(clients)) client.stopClient();
  const keepData = !!step.failed();
  for (const child of [...Object.values(nodes), relay].filter(Boolean)) await child.stop({ keepData });
  if (trace) console.error(`--- every request\n${formatRequests(requests)}`);
});

step('alice on node A and bob on node B sign in with Rust crypto, which uploads their device keys', async () => {
  await register(nodes.a.url, 'alice');
  await register(nodes.b.url, 'bob');
  const alice = await cryptoClient(nodes.a, 'alice', await login(nodes.a.url, 'alice', 'alice on node A'));
  const bob = await cryptoClient(nodes.b, 'bob', await login(nodes.b.url, 'bob', 'bob on node B'));
  assert.notEqual(alice.getDomain(), bob.getDomain(), 'two servers');
  // Each device's keys, as its own node has them, are those its crypto made.
  for (const client of [alice, bob]) {
    const query = { device_keys: { [client.getUserId()]: [] } };
    let device;
    await eventually(async () => {
      const keys = await client.http.authedRequest('POST', '/keys/query', undefined, query);
      device = keys.device_keys[client.getUserId()]?.[client.getDeviceId()];
      return device;
    }, `${client.getUserId()}'s device keys on their node`);
    const own = await client.getCrypto().getOwnDeviceKeys();
    assert.equal(device.keys[`ed25519:${client.getDeviceId()}`], own.ed25519);
    assert.equal(device.keys[`curve25519:${client.getDeviceId()}`], own.curve25519);
  }
});

step('alice creates an encrypted room and invites bob, who joins', async () => {
  const { alice, bob } = clients;
  ({ room_id: roomId } = await alice.createRoom({ name: 'secrets', preset: 'private_chat', initial_state: [ENCRYPTION] }));
  const invited = waitFor(bob, RoomEvent.MyMembership, (room, m) => room.roomId === roomId && m === 'invite', 'bob invited');
  await alice.invite(roomId, bob.getUserId());
  await invited;
  const joined = waitFor(
    alice,
    RoomMemberEvent.Membership,
    (event, member) => member.roomId === roomId && member.userId === bob.getUserId() && member.membership === 'join',
    'alice to see bob join',
  );
  await bob.joinRoom(roomId);
  await joined;
  for (const client of [alice, bob]) {
    await eventually(() => client.getCrypto().isEncryptionEnabledInRoom(roomId), `${client.getUserId()}: encryption on`);
  }
});

step("bob decrypts alice's message, and alice decrypts bob's reply", async () => {
  const { alice, bob } = clients;
  await alice.sendTextMessage(roomId, 'hello bob, only you can read this');
  await decrypted(bob, 'hello bob, only you can read this');
  await bob.sendTextMessage(roomId, 'hello alice, and only you this');
  await decrypted(alice, 'hello alice, and only you this');
  // The nodes hold ciphertext only.
  const stored = await alice.createMessagesRequest(roomId, null, 10, 'b');
  const messages = stored.chunk.filter((e) => e.type === 'm.room.encrypted' || e.type === 'm.room.message');
  assert.deepEqual(messages.map((e) => e.type), ['m.room.encrypted', 'm.room.encrypted']);
});

step("bob backs his room keys up on node B; on a second device he restores them and reads the history", async () => {
  const { bob } = clients;
  await bob.getCrypto().resetKeyBackup();
  const version = await bob.getCrypto().getActiveSessionBackupVersion();
  assert.ok(version, 'a backup version in use');
  // Both of the room's sessions (alice's, and bob's own) reach the backup.
  await eventually(async () => {
    const info = await bob.http.authedRequest('GET', '/room_keys/version');
    return info.version === version && info.count >= 2;
  }, "bob's keys in his backup");
  const recoveryKey = await bob.getCrypto().getSessionBackupPrivateKey();
  assert.ok(recoveryKey instanceof Uint8Array);

  const bob2 = await cryptoClient(nodes.b, 'bob2', await login(nodes.b.url, 'bob', "bob's second device"));
  assert.notEqual(bob2.getDeviceId(), bob.getDeviceId());
  await bob2.getCrypto().storeSessionBackupPrivateKey(recoveryKey, version);
  const restored = await bob2.getCrypto().restoreKeyBackup();
  assert.ok(restored.imported >= 2, JSON.stringify(restored));
  await decrypted(bob2, 'hello bob, only you can read this');
  await decrypted(bob2, 'hello alice, and only you this');
});
