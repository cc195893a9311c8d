// The shell page: registers glia's Service Worker, shows start-up progress, then
// what the homeserver inside this browser answers, and connects it to the
// network through the relays (www/transport.js).

import { startTransport } from './transport.js';

const stepsList = document.getElementById('steps');
const started = performance.now();

function step(text) {
  const item = document.createElement('li');
  item.textContent = text;
  stepsList.append(item);
  return {
    done() {
      item.classList.add('done');
      const time = document.createElement('span');
      time.className = 'time';
      time.textContent = `${Math.round(performance.now() - started)} ms`;
      item.append(time);
    },
    fail(err) {
      item.classList.add('failed');
      item.append(`: ${err.message ?? err}`);
      document.body.dataset.state = 'failed';
      throw err;
    },
  };
}

async function run(text, work) {
  const s = step(text);
  try {
    const result = await work();
    s.done();
    return result;
  } catch (err) {
    s.fail(err);
  }
}

// Resolves once `registration`'s worker is active, or rejects if installing it
// fails (the wasm did not load).
function activated(registration) {
  return new Promise((resolve, reject) => {
    const watch = (worker) => {
      if (!worker) return;
      worker.addEventListener('statechange', () => {
        if (worker.state === 'activated') resolve();
        if (worker.state === 'redundant' && !registration.active) {
          reject(new Error('the homeserver failed to load; the worker console says why'));
        }
      });
    };
    if (registration.active) resolve();
    watch(registration.installing ?? registration.waiting);
    registration.addEventListener('updatefound', () => watch(registration.installing));
  });
}

function controlled() {
  if (navigator.serviceWorker.controller) return Promise.resolve();
  return new Promise((resolve) =>
    navigator.serviceWorker.addEventListener('controllerchange', resolve, { once: true }));
}

async function main() {
  if (!('serviceWorker' in navigator)) {
    step('Service Workers are unavailable').fail(
      new Error('open this page over https or http://localhost in a current browser'));
  }
  const registration = await run('Registering the Service Worker', () =>
    navigator.serviceWorker.register('sw.js', { scope: './' }));
  await run('Loading the homeserver (wasm) and opening its store', () => activated(registration));
  await run('Connecting this page to the homeserver', controlled);
  const response = await run('Asking the homeserver for its versions', async () => {
    const res = await fetch('/_matrix/client/versions');
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return res;
  });
  const body = await response.json();
  const keys = await fetch('/_matrix/key/v2/server').then((res) => res.json());
  document.getElementById('server-name').textContent = keys.server_name;
  document.getElementById('server').textContent = response.headers.get('Server') ?? '(unknown)';
  document.getElementById('versions').textContent =
    body.versions.length ? body.versions.join(', ') : 'none yet: the Client-Server API is still being built';
  document.getElementById('raw').textContent = JSON.stringify(body, null, 2);
  document.getElementById('node').hidden = false;
  document.body.dataset.state = 'ready';
  startTransport({ onStatus: showTransport });
}

/// The relay links as the status panel shows them; `data-relay` on the body is
/// `connected` while any relay has welcomed this node.
function showTransport(status) {
  const list = document.getElementById('relays');
  list.replaceChildren(...status.relays.map((relay) => {
    const item = document.createElement('li');
    item.textContent = `${relay.url}: ${status.owner ? relay.state : 'driven by another tab'}`;
    if (relay.error) item.textContent += ` (${relay.error})`;
    return item;
  }), ...status.peers.map((peer) => {
    const item = document.createElement('li');
    item.textContent = `peer ${peer.key.slice(0, 16)}…: ${peer.path}`;
    return item;
  }));
  const connected = status.relays.some((relay) => relay.state === 'connected');
  document.body.dataset.relay = connected ? 'connected' : status.owner ? 'connecting' : 'other-tab';
}

main().catch((err) => console.error('glia shell:', err));
