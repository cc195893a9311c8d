// Two people, two browsers (separate profiles, separate IndexedDB), one relay:
// each browser's homeserver lives in its Service Worker, and the page's
// transport (www/transport.js) carries federation through the relay that
// `glia serve` runs. Driven through the Client-Server API inside each page.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { call, messages, openShell, peerOf, person, say, sees, sentEverything, shareRoom, startGlia, WAIT_MS } from './browser.js';

let glia, relayData;
const people = {};
let roomId;

before(async () => {
  relayData = await mkdtemp(path.join(tmpdir(), 'glia-e2e-relay-'));
  glia = await startGlia(['serve', '--listen', '127.0.0.1:0', '--root', 'dist', '--relay-data', relayData]);
  people.alice = await person(glia.url, 'alice');
  people.bob = await person(glia.url, 'bob');
});

after(async () => {
  await people.alice?.browser.close();
  await people.bob?.browser.close();
  glia?.stop();
  await rm(relayData, { recursive: true, force: true });
});

test('alice invites bob of the other browser; he sees it and joins through the relay', async () => {
  const { alice, bob } = people;
  assert.notEqual(alice.node, bob.node, 'two nodes');
  roomId = await shareRoom(alice, bob, 'Two browsers');
});

test("bob joins a room after 120 messages and pages back through all of them, asked of alice's node", async () => {
  const { alice, bob } = people;
  const created = await call(alice, 'POST', '/_matrix/client/v3/createRoom', { name: 'With a past' });
  assert.equal(created.status, 200, JSON.stringify(created.json));
  const room = created.json.room_id;
  const past = Array.from({ length: 120 }, (_, n) => `history ${n}`);
  for (const [n, body] of past.entries()) await say(alice, room, body, `h${n}`);
  const invited = await call(alice, 'POST', `/_matrix/client/v3/rooms/${encodeURIComponent(room)}/invite`, { user_id: bob.id });
  assert.equal(invited.status, 200, JSON.stringify(invited.json));
  await sees(bob, 'the invite', (sync) => sync.rooms?.invite?.[room]);
  const joined = await call(bob, 'POST', `/_matrix/client/v3/join/${encodeURIComponent(room)}`, {});
  assert.equal(joined.status, 200, JSON.stringify(joined.json));
  assert.deepEqual(await messages(bob, room, 'history ', past.length), past);
});

test('200 messages each way arrive once and in order', async () => {
  const { alice, bob } = people;
  const count = 200;
  const sent = (who) => Array.from({ length: count }, (_, n) => `${who} ${n}`);
  for (let n = 0; n < count; n++) await say(alice, roomId, `alice ${n}`, `a${n}`);
  for (let n = 0; n < count; n++) await say(bob, roomId, `bob ${n}`, `b${n}`);
  assert.deepEqual(await messages(bob, roomId, 'alice ', count), sent('alice'));
  assert.deepEqual(await messages(alice, roomId, 'bob ', count), sent('bob'));
  assert.equal((await peerOf(alice, bob)).sent.direct, 0, 'all through the relay');
});

test('bob closes his tab; alice sends 20; bob opens it again and gets all 20 in order', async () => {
  const { alice, bob } = people;
  await bob.page.close();
  for (let n = 0; n < 20; n++) await say(alice, roomId, `while away ${n}`, `w${n}`);
  bob.page = await openShell(bob.browser.context, glia.url);
  await bob.page.waitForFunction(() => document.body.dataset.relay === 'connected', null, { timeout: WAIT_MS });
  assert.deepEqual(
    await messages(bob, roomId, 'while away', 20),
    Array.from({ length: 20 }, (_, n) => `while away ${n}`),
  );
});

test("alice invites bob while his tab is closed; he sees the invite when he opens it, and joins", async () => {
  const { alice, bob } = people;
  const created = await call(alice, 'POST', '/_matrix/client/v3/createRoom', { name: 'Asked while away' });
  assert.equal(created.status, 200, JSON.stringify(created.json));
  const room = created.json.room_id;
  await bob.page.close();
  const invited = await call(alice, 'POST', `/_matrix/client/v3/rooms/${encodeURIComponent(room)}/invite`, { user_id: bob.id });
  assert.equal(invited.status, 200, JSON.stringify(invited.json));
  bob.page = await openShell(bob.browser.context, glia.url);
  await bob.page.waitForFunction(() => document.body.dataset.relay === 'connected', null, { timeout: WAIT_MS });
  await sees(bob, 'the invite', (sync) => sync.rooms?.invite?.[room]);
  const joined = await call(bob, 'POST', `/_matrix/client/v3/join/${encodeURIComponent(room)}`, {});
  assert.equal(joined.status, 200, JSON.stringify(joined.json));
  await say(alice, room, 'welcome back', 'welcome');
  assert.deepEqual(await messages(bob, room, 'welcome back', 1), ['welcome back']);
});

test('two tabs of one profile: one drives the transport, the other takes over when it closes', async () => {
  const { alice, bob } = people;
  const second = await openShell(alice.browser.context, glia.url, { newPage: true });
  await second.waitForFunction(() => document.body.dataset.relay === 'other-tab', null, { timeout: WAIT_MS });
  await say(bob, roomId, 'to both tabs', 't1');
  assert.deepEqual(await messages({ ...alice, page: second }, roomId, 'to both tabs', 1), ['to both tabs']);

  await alice.page.close();
  alice.page = second;
  await second.waitForFunction(() => document.body.dataset.relay === 'connected', null, { timeout: WAIT_MS });
  await say(bob, roomId, 'to the tab left', 't2');
  await say(alice, roomId, 'from the tab left', 't3');
  assert.deepEqual(await messages(alice, roomId, 'to the tab left', 1), ['to the tab left']);
  assert.deepEqual(await messages(bob, roomId, 'from the tab left', 1), ['from the tab left']);
});

test("alice's worker is stopped twice mid-burst: every message reaches bob once and in order", async (t) => {
  const { alice, bob } = people;
  const count = 100;
  const path = `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message`;
  // The page sends the burst as a client does: one PUT after another, sending a
  // request again under the same transaction ID when the worker stopped beneath it.
  const burst = alice.page.evaluate(async ([path, token, count]) => {
    window.burstAcked = 0;
    let retries = 0;
    for (let n = 0; n < count; n++) {
      for (let attempt = 0; ; attempt++) {
        if (attempt === 20) throw new Error(`message ${n} was never acknowledged`);
        try {
          const res = await fetch(`${path}/k${n}`, {
            method: 'PUT',
            headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${token}` },
            body: JSON.stringify({ msgtype: 'm.text', body: `burst ${n}` }),
          });
          if (res.ok) break;
        } catch {
          // The worker stopped under this request.
        }
        retries++;
      }
      window.burstAcked = n + 1;
    }
    return retries;
  }, [path, alice.token, count]);
  const cdp = await alice.browser.context.newCDPSession(alice.page);
  const statuses = [];
  cdp.on('ServiceWorker.workerVersionUpdated', ({ versions }) =>
    statuses.push(...versions.map((v) => v.runningStatus)));
  await cdp.send('ServiceWorker.enable');
  for (const acked of [30, 60]) {
    await alice.page.waitForFunction((n) => window.burstAcked >= n, acked, { timeout: WAIT_MS });
    await cdp.send('ServiceWorker.stopAllWorkers');
  }
  t.diagnostic(`${await burst} requests sent again after a stop`);
  assert.equal(statuses.filter((s) => s === 'stopped').length, 2, `the worker went ${statuses.join(', ')}`);
  const sent = Array.from({ length: count }, (_, n) => `burst ${n}`);
  assert.deepEqual(await messages(bob, roomId, 'burst ', count), sent);
  assert.deepEqual(await messages(alice, roomId, 'burst ', count), sent, "alice's own history has each once");
  await say(bob, roomId, 'after the burst', 'ab');
  assert.deepEqual(await messages(alice, roomId, 'after the burst', 1), ['after the burst']);
  await sentEverything(alice.page, WAIT_MS);
});
