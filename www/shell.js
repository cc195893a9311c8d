// The shell page: registers glia's Service Worker and shows start-up progress;
// then connects the homeserver inside this browser to the network through the
// relays (www/transport.js), shows its status (www/status.js), runs the stock
// client beside the panel (./client.js, built from www/client/) and, while no
// one is signed in, offers a one-click account (www/account.js).

import { setUpAccount } from './account.js';
import { startClient } from './client.js';
import { showNode, showTransport, showUser, watchQueue, watchStorage } from './status.js';
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
  // The client starts as soon as a worker controls the page (at once on a
  // return visit), while the worker may still be loading the homeserver: its
  // requests wait for the worker, not for the steps below.
  controlled().then(client).catch((err) => console.error('glia client:', err));
  const registration = await run('Registering the Service Worker', () =>
    navigator.serviceWorker.register('sw.js', { scope: './' }));
  await run('Loading the homeserver (wasm) and opening its store', () => activated(registration));
  await run('Connecting this page to the homeserver', controlled);
  const response = await run('Asking the homeserver for its versions', async () => {
    const res = await fetch('/_matrix/client/versions');
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return res;
  });
  const { versions } = await response.json();
  const keys = await fetch('/_matrix/key/v2/server').then((res) => res.json());
  showNode({ serverName: keys.server_name, server: response.headers.get('Server'), versions });
  document.getElementById('startup').open = false;
  document.body.dataset.state = 'ready';
  startTransport({ onStatus: showTransport });
  watchQueue();
  watchStorage();
}

/// The stock client, and the one-click account while no one is signed in to it.
async function client() {
  const container = document.getElementById('client');
  container.hidden = false;
  const offerAccount = setUpAccount(async (username, password) => (await started).signIn(username, password));
  const started = startClient(container, {
    onChange({ section, userId }) {
      document.body.dataset.client = section;
      showUser(userId);
      // Hydrogen's sign-in screen, or its list of sessions to pick from: no one is signed in.
      offerAccount(['login', 'picker'].includes(section));
    },
  });
  await started;
}

/// A `data-copy` button copies the text of the element it names.
async function copyOnClick({ target }) {
  const button = target.closest('button[data-copy]');
  if (!button) return;
  try {
    await navigator.clipboard.writeText(document.getElementById(button.dataset.copy).textContent);
    button.textContent = 'Copied';
  } catch {
    button.textContent = 'Copy failed';
  }
  setTimeout(() => (button.textContent = 'Copy'), 1_500);
}

document.addEventListener('click', copyOnClick);
main().catch((err) => console.error('glia shell:', err));
