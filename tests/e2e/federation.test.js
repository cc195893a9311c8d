// Two people, two browsers (separate profiles, separate IndexedDB), one relay:
// each browser's homeserver lives in its Service Worker, and the page's
// transport (www/transport.js) carries federation through the relay that
// `glia serve` runs. Driven through the Client-Server API inside each page.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { api, launchBrowser, openShell, sentEverything, startGlia } from './browser.js';

const v3 = '/_matrix/client/v3';
const WAIT_MS = 30_000;
let glia, relayData;
const people = {};
let roomId;

async function person(name) {
  const browser = await launchBrowser();
  const page = await openShell(browser.context, glia.url);
  await page.waitForFunction(() => document.body.dataset.relay === 'connected', null, { timeout: WAIT_MS });
  const challenge = await api(page, 'POST', `${v3}/register`, { username: name, password: 'correct horse' });
  const registered = await api(page, 'POST', `${v3}/register`, {
    username: name,
    password: 'correct horse',
    auth: { type: 'm.login.dummy', session: challenge.json.session },
  });
  assert.equal(registered.status, 200, JSON.stringify(registered.json));
  return { browser, page, id: registered.json.user_id, token: registered.json.access_token };
}

const call = (who, method, path, body) => api(who.page, method, path, body, who.token);

/// Syncs `who` (long-polls of a second, so each change is looked at as it
/// lands) until `found(sync)` returns something.
async function sees(who, what, found) {
  const deadline = Date.now() + WAIT_MS;
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

/// The bodies of the room's messages starting with `prefix`, oldest first, once
/// there are `count` of them (waiting on the sync long-poll for more).
async function messages(who, prefix, count) {
  let found = [];
  await sees(who, `${count} messages "${prefix}…"`, async () => {
    const page = await call(who, 'GET', `${v3}/rooms/${encodeURIComponent(roomId)}/messages?dir=b&limit=1000`);
    assert.equal(page.status, 200, JSON.stringify(page.json));
    found = page.json.chunk.filter((e) => e.type === 'm.room.message' && e.content.body.startsWith(prefix))
      .map((e) => e.content.body).reverse();
    return found.length >= count;
  });
  return found;
}

async function say(who, body, txn) {
  const path = `${v3}/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${txn}`;
  const sent = await call(who, 'PUT', path, { msgtype: 'm.text', body });
  assert.equal(sent.status, 200, JSON.stringify(sent.json));
}

before(async () => {
  relayData = await mkdtemp(path.join(tmpdir(), 'glia-e2e-relay-'));
  glia = await startGlia(['serve', '--listen', '127.0.0.1:0', '--root', 'dist', '--relay-data', relayData]);
  people.alice = await person('alice');
  people.bob = await person('bob');
});

after(async () => {
  await people.alice?.browser.close();
  await people.bob?.browser.close();
  glia?.stop();
  await rm(relayData, { recursive: true, force: true });
});

test('alice invites bob of the other browser; he sees it and joins through the relay', async () => {
  const { alice, bob } = people;
  assert.notEqual(alice.id.split(':')[1], bob.id.split(':')[1], 'two nodes');
  const created = await call(alice, 'POST', `${v3}/createRoom`, { name: 'Two browsers' });
  assert.equal(created.status, 200, JSON.stringify(created.json));
  roomId = created.json.room_id;
  const invited = await call(alice, 'POST', `${v3}/rooms/${encodeURIComponent(roomId)}/invite`, { user_id: bob.id });
  assert.equal(invited.status, 200, JSON.stringify(invited.json));
  await sees(bob, 'the invite', (sync) => sync.rooms?.invite?.[roomId]);
  const joined = await call(bob, 'POST', `${v3}/join/${encodeURIComponent(roomId)}`, {});
  assert.equal(joined.status, 200, JSON.stringify(joined.json));
  await sees(alice, "bob's join", (sync) =>
    sync.rooms?.join?.[roomId]?.timeline?.events?.some((e) => e.type === 'm.room.member' && e.state_key === bob.id));
});

test('200 messages each way arrive once and in order', async () => {
  const { alice, bob } = people;
  const count = 200;
  const sent = (who) => Array.from({ length: count }, (_, n) => `${who} ${n}`);
  for (let n = 0; n < count; n++) await say(alice, `alice ${n}`, `a${n}`);
  for (let n = 0; n < count; n++) await say(bob, `bob ${n}`, `b${n}`);
  assert.deepEqual(await messages(bob, 'alice ', count), sent('alice'));
  assert.deepEqual(await messages(alice, 'bob ', count), sent('bob'));
});

test('bob closes his tab; alice sends 20; bob opens it again and gets all 20 in order', async () => {
  const { alice, bob } = people;
  await bob.page.close();
  for (let n = 0; n < 20; n++) await say(alice, `while away ${n}`, `w${n}`);
  bob.page = await openShell(bob.browser.context, glia.url);
  await bob.page.waitForFunction(() => document.body.dataset.relay === 'connected', null, { timeout: WAIT_MS });
  assert.deepEqual(
    await messages(bob, 'while away', 20),
    Array.from({ length: 20 }, (_, n) => `while away ${n}`),
  );
});

test('two tabs of one profile: one drives the transport, the other takes over when it closes', async () => {
  const { alice, bob } = people;
  const second = await openShell(alice.browser.context, glia.url, { newPage: true });
  await second.waitForFunction(() => document.body.dataset.relay === 'other-tab', null, { timeout: WAIT_MS });
  await say(bob, 'to both tabs', 't1');
  assert.deepEqual(await messages({ ...alice, page: second }, 'to both tabs', 1), ['to both tabs']);

  await alice.page.close();
  alice.page = second;
  await second.waitForFunction(() => document.body.dataset.relay === 'connected', null, { timeout: WAIT_MS });
  await say(bob, 'to the tab left', 't2');
  await say(alice, 'from the tab left', 't3');
  assert.deepEqual(await messages(alice, 'to the tab left', 1), ['to the tab left']);
  assert.deepEqual(await messages(bob, 'from the tab left', 1), ['from the tab left']);
});

test("alice's worker is stopped twice mid-burst: every message reaches bob once and in order", async (t) => {
  const { alice, bob } = people;
  const count = 100;
  const path = `${v3}/rooms/${encodeURIComponent(roomId)}/send/m.room.message`;
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
  assert.deepEqual(await messages(bob, 'burst ', count), sent);
  assert.deepEqual(await messages(alice, 'burst ', count), sent, "alice's own history has each once");
  await say(bob, 'after the burst', 'ab');
  assert.deepEqual(await messages(alice, 'after the burst', 1), ['after the burst']);
  await sentEverything(alice.page, WAIT_MS);
});
