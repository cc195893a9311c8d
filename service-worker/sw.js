// glia's Service Worker: loads the wasm homeserver and hands it every Matrix
// request. Everything else goes to the network as usual.
//
// A classic worker (`importScripts` + wasm-bindgen's `no-modules` output): the fetch
// listener is registered synchronously at start-up, as the spec requires, and
// classic workers run in every browser that has Service Workers.
'use strict';

// Replaced by scripts/build-web with a hash of the wasm, so a rebuilt homeserver
// changes this file and the browser installs the new worker.
const BUILD = '__GLIA_BUILD__';

importScripts(`pkg/glia.js?v=${BUILD}`);

const node = wasm_bindgen({ module_or_path: `pkg/glia_bg.wasm?v=${BUILD}` })
  .then(() => wasm_bindgen.WorkerNode.open())
  .then((n) => {
    // Frames for other nodes go to this worker's pages; the one that owns the
    // relay connections (www/transport.js) sends them on; iframes (Hydrogen's
    // download sandbox) never own them.
    n.attach((bytes) => {
      const post = (found) => found.forEach((page) => page.postMessage({ glia: 'frame', bytes }));
      // The pages as last found, so a frame does not wait for the search; the
      // search runs again for the next one.
      if (pages) {
        post(pages);
        findPages();
      } else {
        findPages().then(post);
      }
    });
    return n;
  });

// The top-level pages as last found (`null` until then). A page that owns the
// transport asks the worker to answer the relay's challenge before it can send
// anything, and such messages look again, so a new owner is known by the time
// a frame could reach it.
let pages = null;
function findPages() {
  return self.clients
    .matchAll({ type: 'window' })
    .then((found) => (pages = found.filter((page) => page.frameType === 'top-level')));
}

const MATRIX_PREFIXES = ['/_matrix/', '/.well-known/matrix/'];

self.addEventListener('install', (event) => {
  // The app's own files bypass this worker (static routing, where the browser
  // has it), so opening the page never waits for a stopped worker to start.
  event.addRoutes?.([
    ...MATRIX_PREFIXES.map((prefix) => ({ condition: { urlPattern: { pathname: `${prefix}*` } }, source: 'fetch-event' })),
    { condition: { urlPattern: { pathname: '*' } }, source: 'network' },
  ]);
  // Install only once the homeserver has loaded, so a broken build never takes over.
  event.waitUntil(node.then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  // Take the open pages now, without waiting for a reload.
  event.waitUntil(self.clients.claim());
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (url.origin !== self.location.origin) return;
  if (!MATRIX_PREFIXES.some((prefix) => url.pathname.startsWith(prefix))) return;
  event.respondWith(node.then((n) => n.handle(event.request)).catch(workerFailed));
});

// The page's transport talks to the node: frames that came from the relay, what
// the relay said of frames sent, and its challenge to sign. Each message that
// wants an answer brings a port for it; a message also wakes a stopped worker.
self.addEventListener('message', (event) => {
  const message = event.data ?? {};
  // Frames come only from a page that said hello first.
  if (message.glia !== 'frame') findPages();
  const reply = (value) => event.ports[0]?.postMessage(value);
  const work = node.then((n) => {
    switch (message.glia) {
      case 'frame':
        return n.receive(new Uint8Array(message.bytes)).then((handled) => reply({ handled }));
      case 'delivery':
        return n.delivery(message.to, BigInt(message.id), message.stored, message.reason ?? '');
      case 'connected':
        return n.connected();
      case 'status':
        return n.status().then(reply);
      // Sent as a page opens: started, the worker has begun loading the node.
      case 'wake':
        return undefined;
      case 'hello': {
        const [key, sig] = n.hello(message.nonce);
        return reply({ key, sig });
      }
    }
  });
  event.waitUntil(work.catch((err) => reply({ error: String(err) })));
});

function workerFailed(err) {
  const body = JSON.stringify({ errcode: 'M_UNKNOWN', error: `glia's worker failed: ${err}` });
  return new Response(body, {
    status: 500,
    headers: { 'Content-Type': 'application/json', 'Access-Control-Allow-Origin': '*' },
  });
}
