// A user's homeserver in the browser: register, create a room, send, and read the
// message back from /sync, all answered by the Service Worker; then the worker is
// stopped and the page reloaded, and the history comes back from IndexedDB.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { api, withShell, workerStatus } from './browser.js';

const shell = withShell({ before, after });

const call = (method, path, body, token) => api(shell.page, method, path, body, token);

/// Messages of `roomId` in a sync response's timeline.
function bodies(sync, roomId) {
  const events = sync.rooms?.join?.[roomId]?.timeline?.events ?? [];
  return events.filter((e) => e.type === 'm.room.message').map((e) => e.content.body);
}

/// A new account's access token.
async function register(username) {
  const v3 = '/_matrix/client/v3';
  const challenge = await call('POST', `${v3}/register`, { username, password: 'correct horse' });
  const registered = await call('POST', `${v3}/register`, {
    username, password: 'correct horse', auth: { type: 'm.login.dummy', session: challenge.json.session },
  });
  return registered.json.access_token;
}

test('register, create a room, send, and sync it back through the worker; history survives a restart', async () => {
  const v3 = '/_matrix/client/v3';
  const versions = await call('GET', '/_matrix/client/versions');
  assert.ok(versions.json.versions.includes('v1.1'), 'advertises what stock clients need');

  const challenge = await call('POST', `${v3}/register`, { username: 'alice', password: 'correct horse' });
  assert.equal(challenge.status, 401);
  assert.deepEqual(challenge.json.flows, [{ stages: ['m.login.dummy'] }]);
  const registered = await call('POST', `${v3}/register`, {
    username: 'alice',
    password: 'correct horse',
    auth: { type: 'm.login.dummy', session: challenge.json.session },
  });
  assert.equal(registered.status, 200, JSON.stringify(registered.json));
  assert.match(registered.server, /^glia\//);
  const token = registered.json.access_token;

  const created = await call('POST', `${v3}/createRoom`, { name: 'In the browser' }, token);
  assert.equal(created.status, 200, JSON.stringify(created.json));
  const roomId = created.json.room_id;
  const sent = await call('PUT', `${v3}/rooms/${encodeURIComponent(roomId)}/send/m.room.message/t1`,
    { msgtype: 'm.text', body: 'hello from the worker' }, token);
  assert.equal(sent.status, 200, JSON.stringify(sent.json));

  const first = await call('GET', `${v3}/sync`, undefined, token);
  assert.equal(first.status, 200);
  assert.deepEqual(bodies(first.json, roomId), ['hello from the worker']);

  // A long-poll returns as soon as the next message lands.
  const since = encodeURIComponent(first.json.next_batch);
  const [next] = await Promise.all([
    call('GET', `${v3}/sync?since=${since}&timeout=20000`, undefined, token),
    call('PUT', `${v3}/rooms/${encodeURIComponent(roomId)}/send/m.room.message/t2`,
      { msgtype: 'm.text', body: 'second' }, token),
  ]);
  assert.deepEqual(bodies(next.json, roomId), ['second'], JSON.stringify(next.json));

  const cdp = await shell.browser.context.newCDPSession(shell.page);
  await cdp.send('ServiceWorker.enable');
  await cdp.send('ServiceWorker.stopAllWorkers');
  await shell.page.reload();
  await shell.page.waitForFunction(() => document.body.dataset.state === 'ready');

  const afterRestart = await call('GET', `${v3}/sync`, undefined, token);
  assert.equal(afterRestart.status, 200, 'the access token is still valid');
  assert.deepEqual(bodies(afterRestart.json, roomId), ['hello from the worker', 'second']);
  const login = await call('POST', `${v3}/login`, {
    type: 'm.login.password', identifier: { type: 'm.id.user', user: 'alice' }, password: 'correct horse',
  });
  assert.equal(login.status, 200, 'the account is still there');
});

test('the worker makes thumbnails with the browser: scaled within the box, or cropped to it', async () => {
  const token = await register('painter');
  // In the page: a 400×200 JPEG drawn on a canvas, uploaded, and the
  // thumbnails the worker answers decoded back to their sizes.
  const sizes = await shell.page.evaluate(async (token) => {
    const canvas = new OffscreenCanvas(400, 200);
    const context = canvas.getContext('2d');
    context.fillStyle = '#3a6';
    context.fillRect(0, 0, 400, 200);
    const jpeg = await canvas.convertToBlob({ type: 'image/jpeg' });
    const auth = { Authorization: `Bearer ${token}` };
    const uploaded = await fetch('/_matrix/media/v3/upload', {
      method: 'POST', headers: { ...auth, 'Content-Type': 'image/jpeg' }, body: jpeg,
    });
    const mxc = (await uploaded.json()).content_uri.slice('mxc://'.length);
    const thumbnail = async (query) => {
      const res = await fetch(`/_matrix/client/v1/media/thumbnail/${mxc}?${query}`, { headers: auth });
      if (!res.ok) return { status: res.status, error: await res.text() };
      const bitmap = await createImageBitmap(await res.blob());
      return { type: res.headers.get('content-type'), width: bitmap.width, height: bitmap.height };
    };
    const notImage = await fetch('/_matrix/media/v3/upload', {
      method: 'POST', headers: { ...auth, 'Content-Type': 'image/png' }, body: 'not a picture',
    });
    const broken = (await notImage.json()).content_uri.slice('mxc://'.length);
    const refused = await fetch(`/_matrix/client/v1/media/thumbnail/${broken}?width=10&height=10`, { headers: auth });
    return {
      scaled: await thumbnail('width=64&height=64&method=scale'),
      cropped: await thumbnail('width=64&height=64&method=crop'),
      small: await thumbnail('width=1000&height=1000&method=crop'),
      refused: refused.status,
    };
  }, token);
  assert.deepEqual(sizes.scaled, { type: 'image/jpeg', width: 64, height: 32 });
  assert.deepEqual(sizes.cropped, { type: 'image/jpeg', width: 64, height: 64 });
  assert.deepEqual(sizes.small, { type: 'image/jpeg', width: 400, height: 200 }, 'never enlarged');
  assert.equal(sizes.refused, 400);
});

test('a large file goes into IndexedDB and back a chunk at a time: the worker never holds it whole', async () => {
  const token = await register('archivist');
  const before = (await workerStatus(shell.page)).memory;
  const MIB = 1 << 20;
  const uploaded = await shell.page.evaluate(async ([token, size]) => {
    const file = new Uint8Array(size);
    for (let i = 0; i < size; i += 4096) file[i] = (i / 4096) % 251;
    const digest = async (bytes) => Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes))).join();
    const res = await fetch('/_matrix/media/v3/upload', {
      method: 'POST', headers: { Authorization: `Bearer ${token}` }, body: new Blob([file]),
    });
    return { status: res.status, body: await res.json(), digest: await digest(file) };
  }, [token, 40 * MIB]);
  assert.equal(uploaded.status, 200, JSON.stringify(uploaded.body));
  const grown = (await workerStatus(shell.page)).memory - before;
  assert.ok(grown < 8 * MIB, `the worker's memory grew by ${(grown / MIB).toFixed(1)} MiB for a 40 MiB upload`);

  const mxc = uploaded.body.content_uri.slice('mxc://'.length);
  const downloaded = await shell.page.evaluate(async ([token, mxc]) => {
    const res = await fetch(`/_matrix/client/v1/media/download/${mxc}`, { headers: { Authorization: `Bearer ${token}` } });
    const bytes = await res.arrayBuffer();
    const digest = Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', bytes))).join();
    return { status: res.status, size: bytes.byteLength, digest };
  }, [token, mxc]);
  assert.deepEqual(downloaded, { status: 200, size: 40 * MIB, digest: uploaded.digest });
  const grownAfter = (await workerStatus(shell.page)).memory - before;
  assert.ok(grownAfter < 8 * MIB, `the worker's memory grew by ${(grownAfter / MIB).toFixed(1)} MiB after its download`);
});
