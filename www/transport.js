// The page's side of the transport: WebSocket links to relays, owned by one tab
// per origin at a time (Web Locks: when that tab closes, another takes over),
// carrying frames between this browser's Service Worker node and other nodes.
// The protocol is glia's relay protocol (src/p2p/relay.rs); the worker holds the
// node key, signs the relay's challenge and handles every frame, so this page
// never sees a private key or a message it could forge.

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

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/// A frame's origin key and id, and whether a relay may keep it (frame.rs's prefix).
function route(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    mailbox: (bytes[2] & 1) === 1,
    id: Number(view.getBigUint64(3)),
    origin: hex(bytes.subarray(11, 43)),
  };
}

/// Starts the transport for `relays`; `onStatus(status)` hears of every change:
/// `{ owner, relays: [{ url, state, error }] }`.
export function startTransport({ relays = [defaultRelay()], onStatus = () => {} } = {}) {
  const status = { owner: false, relays: relays.map((url) => ({ url, state: 'waiting' })) };
  const changed = () => onStatus(structuredClone(status));
  changed();
  const links = [];

  // Frames the node sends: the owner puts them on the first open link; the
  // node's sender retries whatever could not go.
  navigator.serviceWorker.addEventListener('message', ({ data }) => {
    if (data?.glia !== 'frame' || !status.owner) return;
    const link = links.find((l) => l.ws?.readyState === WebSocket.OPEN && l.welcomed);
    link?.ws.send(data.bytes);
  });

  navigator.locks.request(LOCK, () => {
    status.owner = true;
    changed();
    relays.forEach((url, index) => links.push(connect(url, status.relays[index], changed)));
    // Held for as long as this page lives.
    return new Promise(() => {});
  });
  return status;
}

function connect(url, state, changed) {
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
      if (typeof data !== 'string') return received(ws, new Uint8Array(data));
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
        case 'error':
          if (control.to !== undefined && control.id !== undefined) {
            tell({ glia: 'delivery', to: control.to, id: control.id, stored: false, reason: control.message });
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
async function received(ws, bytes) {
  const { mailbox, id, origin } = route(bytes);
  const { handled } = await ask({ glia: 'frame', bytes: bytes.buffer });
  if (mailbox && handled && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: 'ack', frames: [[origin, id]] }));
  }
}
