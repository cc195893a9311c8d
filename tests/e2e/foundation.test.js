// The homeserver answers from inside the browser: glia serve hands out the static
// app, and every /_matrix request is answered by the wasm core in the Service Worker.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { withShell } from './browser.js';

const shell = withShell({ before, after });

/// Fetches `path` from the page and returns what the page saw, plus whether the
/// Service Worker (not the network) produced the response.
async function fetchFromPage(path, init = {}) {
  const [response, seen] = await Promise.all([
    shell.page.waitForResponse((r) => new URL(r.url()).pathname === path && r.request().method() === (init.method ?? 'GET')),
    shell.page.evaluate(async ([path, init]) => {
      const res = await fetch(path, init);
      return { status: res.status, headers: Object.fromEntries(res.headers), text: await res.text() };
    }, [path, init]),
  ]);
  return { ...seen, fromServiceWorker: response.fromServiceWorker() };
}

test('the shell page loads the worker and shows what the homeserver answered', async () => {
  assert.equal(await shell.page.evaluate(() => document.body.dataset.state), 'ready');
  assert.ok(await shell.page.evaluate(() => navigator.serviceWorker.controller !== null));
  assert.match(await shell.page.textContent('#server'), /^glia\//);
  const steps = await shell.page.$$eval('#steps li', (items) => items.map((i) => i.className));
  assert.deepEqual(steps, ['done', 'done', 'done', 'done']);
});

test('/versions comes from the wasm core in the Service Worker', async () => {
  const res = await fetchFromPage('/_matrix/client/versions');
  assert.equal(res.status, 200);
  assert.ok(res.fromServiceWorker);
  assert.match(res.headers.server, /^glia\/\d/);
  assert.equal(res.headers['access-control-allow-origin'], '*');
  assert.ok(Array.isArray(JSON.parse(res.text).versions));
});

test('an unknown Matrix endpoint gets M_UNRECOGNIZED from the worker', async () => {
  const res = await fetchFromPage('/_matrix/client/v3/no/such/endpoint');
  assert.equal(res.status, 404);
  assert.ok(res.fromServiceWorker);
  assert.equal(JSON.parse(res.text).errcode, 'M_UNRECOGNIZED');

  const wrongMethod = await fetchFromPage('/_matrix/client/versions', { method: 'POST', body: '{}' });
  assert.equal(wrongMethod.status, 405);
  assert.equal(JSON.parse(wrongMethod.text).errcode, 'M_UNRECOGNIZED');
});

test('CORS preflight is answered with the spec headers and no endpoint logic', async () => {
  const res = await fetchFromPage('/_matrix/client/versions', { method: 'OPTIONS' });
  assert.equal(res.status, 200);
  assert.ok(res.fromServiceWorker);
  assert.equal(res.text, '');
  assert.match(res.headers['access-control-allow-methods'], /PUT/);
  assert.match(res.headers['access-control-allow-headers'], /Authorization/);
});

test('the worker keeps its IndexedDB store and answers again after being stopped', async () => {
  const databases = await shell.page.evaluate(async () => (await indexedDB.databases()).map((d) => d.name));
  assert.ok(databases.includes('glia'), `databases: ${databases}`);

  const cdp = await shell.browser.context.newCDPSession(shell.page);
  await cdp.send('ServiceWorker.enable');
  await cdp.send('ServiceWorker.stopAllWorkers');
  const res = await fetchFromPage('/_matrix/client/versions');
  assert.equal(res.status, 200);
  assert.ok(res.fromServiceWorker);

  await shell.page.reload();
  await shell.page.waitForFunction(() => document.body.dataset.state === 'ready');
  assert.equal((await fetchFromPage('/_matrix/client/versions')).status, 200);
});

test('the node key is made once in the worker and kept across restarts', async () => {
  const serverName = async () => {
    const res = await fetchFromPage('/_matrix/key/v2/server');
    assert.equal(res.status, 200);
    assert.ok(res.fromServiceWorker);
    const body = JSON.parse(res.text);
    assert.ok(body.signatures[body.server_name]['ed25519:glia']);
    return body.server_name;
  };
  const first = await serverName();
  assert.match(first, /^[0-9a-f]{64}$/);
  assert.equal(await shell.page.textContent('#server-name'), first, 'the shell page shows it');

  const cdp = await shell.browser.context.newCDPSession(shell.page);
  await cdp.send('ServiceWorker.enable');
  await cdp.send('ServiceWorker.stopAllWorkers');
  assert.equal(await serverName(), first);
  await shell.page.reload();
  await shell.page.waitForFunction(() => document.body.dataset.state === 'ready');
  assert.equal(await serverName(), first);
});

test('requests outside /_matrix pass through to the network', async () => {
  const res = await fetchFromPage('/shell.css');
  assert.equal(res.status, 200);
  assert.equal(res.fromServiceWorker, false);
});
