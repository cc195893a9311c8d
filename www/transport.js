// The page's side of the transport: WebSocket links to relays, owned by one tab
// per origin at a time (Web Locks: when that tab closes, another takes over),
// carrying frames between this browser's Service Worker node and other nodes,
// and direct WebRTC links to the peers that are online (www/direct.js).
// The protocol is glia's relay protocol (src/p2p/relay.rs); the worker holds the
// node key, signs the relay's challenge and handles every frame, so this page
// never sees a private key or a message it could forge.

import { directLinks, route } from './direct.js';

const LOCK = 'glia-transport';
const BACKOFF_START_MS = 250;
const BACKOFF_MAX_MS = 10_000;

/// The default relay: the one `glia serve` runs beside the web app.
export function defaultRelay() {
  const url = new URL('/_glia/relay', location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

/// Asks the worker something and resolves with its answer.
function ask(message) {
  return new Promise((resolve, reject) => {
    const channel = new MessageChannel();
    channel.port1.onmessage = ({ data }) => (data?.error ? reject(new Error(data.error)) : resolve(data));
    navigator.serviceWorker.controller.postMessage(message, [channel.port2]);
  });
}

function tell(message) {
  navigator.serviceWorker.controller?.postMessage(message);
}

/// Starts the transport for `relays`, with `iceServers` (STUN/TURN) for direct
/// links (none by default: peers on one network need none); `onStatus(status)`
/// hears of every change: `{ owner, relays: [{ url, state, error }],
/// peers: [{ key, path: 'direct' | 'relayed' }] }`.
///
/// `window.gliaTransport` is for tests and diagnostics: `status()` adds to
/// each peer how many frames went each way on each path, and `closeDirect(key)`
/// closes the direct link to a peer as if it had broken.
export function startTransport({ relays = [defaultRelay()], iceServers = [], onStatus = () => {} } = {}) {
  const status = { owner: false, relays: relays.map((url) => ({ url, state: 'waiting' })), peers: [] };
  const changed = () => {
    status.peers = direct.list();
    onStatus(structuredClone(status));
  };
  const links = [];
  const welcomed = () => links.find((l) => l.ws?.readyState === WebSocket.OPEN && l.welcomed);
  // With no relay up a frame is dropped: the node's sender retries it.
  const toRelay = (message) => {
    const link = welcomed();
    link?.ws.send(message);
    return link !== undefined;
  };
  const direct = directLinks({
    iceServers,
    signal: (to, data) => toRelay(JSON.stringify({ type: 'signal', to, data })),
    relay: toRelay,
    receive: (bytes) => ask({ glia: 'frame', bytes: bytes.buffer }),
    changed,
  });
  changed();

  // Frames the node sends: the owner puts them on the peer's direct link or
  // the first open relay link.
  navigator.serviceWorker.addEventListener('message', ({ data }) => {
    if (data?.glia !== 'frame' || !status.owner) return;
    direct.send(data.bytes, route(data.bytes));
  });

  navigator.locks.request(LOCK, () => {
    status.owner = true;
    changed();
    relays.forEach((url, index) => links.push(connect(url, status.relays[index], { direct, changed })));
    // Held for as long as this page lives.
    return new Promise(() => {});
  });
  window.gliaTransport = {
    status: () => ({ ...structuredClone(status), peers: direct.list({ counts: true }) }),
    closeDirect: (key) => direct.close(key),
  };
  return status;
}

function connect(url, state, { direct, changed }) {
  const link = { ws: null, welcomed: false };
  let backoff = BACKOFF_START_MS;
  const open = () => {
    state.state = 'connecting';
    changed();
    const ws = new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    link.ws = ws;
    link.welcomed = false;
    ws.onmessage = async ({ data }) => {
      if (typeof data !== 'string') return received(ws, new Uint8Array(data), direct);
      const control = JSON.parse(data);
      switch (control.type) {
        case 'challenge': {
          const { key, sig } = await ask({ glia: 'hello', nonce: control.nonce });
          ws.send(JSON.stringify({ type: 'hello', key, sig }));
          break;
        }
        case 'welcome':
          link.welcomed = true;
          backoff = BACKOFF_START_MS;
          state.state = 'connected';
          state.error = undefined;
          changed();
          tell({ glia: 'connected' });
          break;
        case 'stored':
          tell({ glia: 'delivery', to: control.to, id: control.id, stored: true });
          break;
        case 'signal':
          direct.signalled(control.from, control.data);
          break;
        case 'error':
          if (control.to !== undefined && control.id !== undefined) {
            tell({ glia: 'delivery', to: control.to, id: control.id, stored: false, reason: control.message });
          } else if (control.to !== undefined) {
            // Only signals are refused with a destination and no frame id.
            direct.refused(control.to);
          } else {
            state.error = `${control.code}: ${control.message}`;
            changed();
          }
          break;
      }
    };
    ws.onclose = () => {
      link.welcomed = false;
      state.state = 'disconnected';
      changed();
      setTimeout(open, backoff);
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    };
  };
  open();
  return link;
}

/// Hands a frame to the worker; one the relay kept for this node is acked once
/// the node has handled it, so the relay forgets it only then.
async function received(ws, bytes, direct) {
  const frame = route(bytes);
  direct.relayed(frame);
  const { handled } = await ask({ glia: 'frame', bytes: bytes.buffer });
  if (frame.mailbox && handled && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: 'ack', frames: [[frame.origin, frame.id]] }));
  }
}
