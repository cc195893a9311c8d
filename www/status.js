// The status panel: this node's server name, who is signed in, how the node reaches
// others (relays, and each peer with whether it is direct over WebRTC or relayed),
// how many frames wait in its durable send queue, and whether the browser keeps
// its storage. The same state is on the body as data- attributes, for tests:
// data-relay, data-peers, data-queued, data-user-id, data-storage.

const QUEUE_EVERY_MS = 3_000;
const ANSWER_MS = 2_000;
const STORAGE_EVERY_MS = 30_000;
/// The share of the quota past which saving may soon fail.
const NEARLY_FULL = 0.9;

/// What the homeserver said of itself.
export function showNode({ serverName, server, versions }) {
  document.getElementById('server-name').textContent = serverName;
  document.getElementById('server').textContent = server ?? '(unknown)';
  document.getElementById('versions').textContent =
    versions.length ? versions.join(', ') : 'none yet: the Client-Server API is still being built';
  document.getElementById('node').hidden = false;
}

/// The Matrix ID signed in to the client, if any.
export function showUser(userId) {
  document.getElementById('user-id').textContent = userId ?? 'not signed in';
  document.querySelector('[data-copy="user-id"]').hidden = !userId;
  if (userId) document.body.dataset.userId = userId;
  else delete document.body.dataset.userId;
}

/// The relay links and peers as the transport reports them (www/transport.js);
/// `data-relay` is `connected` while any relay has welcomed this node.
export function showTransport(status) {
  const relays = document.getElementById('relays');
  relays.replaceChildren(...status.relays.map((relay) => {
    const item = document.createElement('li');
    item.textContent = `${relay.url}: ${status.owner ? relay.state : 'driven by another tab'}`;
    if (relay.error) item.textContent += ` (${relay.error})`;
    return item;
  }));
  const connected = status.relays.some((relay) => relay.state === 'connected');
  document.body.dataset.relay = connected ? 'connected' : status.owner ? 'connecting' : 'other-tab';

  const peers = status.peers ?? [];
  const list = document.getElementById('peers');
  list.replaceChildren(...peers.map(({ key, path }) => {
    const item = document.createElement('li');
    item.dataset.key = key;
    item.dataset.path = path;
    item.title = key;
    item.textContent = `${key.slice(0, 8)}…${key.slice(-4)}: ${path === 'direct' ? 'direct (WebRTC)' : 'relayed'}`;
    return item;
  }));
  if (!peers.length) {
    const none = status.owner ? 'none' : 'driven by another tab';
    list.append(Object.assign(document.createElement('li'), { textContent: none }));
  }
  document.body.dataset.peers = peers.length;
}

/// Asks the worker every few seconds how many frames its send queue holds.
export async function watchQueue() {
  const shown = document.getElementById('queued');
  for (;;) {
    const queued = await askQueued();
    shown.textContent = queued ?? 'unknown';
    if (queued === null) delete document.body.dataset.queued;
    else document.body.dataset.queued = queued;
    await new Promise((resolve) => setTimeout(resolve, QUEUE_EVERY_MS));
  }
}

/// The worker's `{ queued }`, or null if it does not answer in time (a worker
/// that does not know the question, or a busy one) or answers without it.
function askQueued() {
  return new Promise((resolve) => {
    const worker = navigator.serviceWorker.controller;
    if (!worker) return resolve(null);
    const channel = new MessageChannel();
    const timer = setTimeout(() => resolve(null), ANSWER_MS);
    channel.port1.onmessage = ({ data }) => {
      clearTimeout(timer);
      resolve(Number.isInteger(data?.queued) ? data.queued : null);
    };
    worker.postMessage({ glia: 'status' }, [channel.port2]);
  });
}

/// Asks the browser to keep this origin's storage, which holds the node's key
/// (its server name), rooms and messages: by default storage is "best effort",
/// and a browser short of disk clears a best-effort origin whole. Chromium
/// grants it without asking to sites people engage with (bookmarked,
/// installed as an app: www/manifest.webmanifest, allowed to notify); Firefox
/// asks once. Then shows every half minute whether it is kept and how much of
/// the quota is used.
export async function watchStorage() {
  const storage = navigator.storage;
  const shown = document.getElementById('storage');
  if (!storage?.persist) {
    shown.textContent = 'unknown (this browser does not say whether it keeps it)';
    return;
  }
  await storage.persist().catch(() => false);
  for (;;) {
    const kept = await storage.persisted().catch(() => false);
    const { usage = 0, quota = 0 } = await storage.estimate().catch(() => ({}));
    const full = quota > 0 && usage / quota > NEARLY_FULL;
    document.body.dataset.storage = kept ? 'persistent' : 'best-effort';
    shown.textContent = [
      kept
        ? 'kept'
        : 'best effort: the browser may clear it all when the disk runs short '
          + '(install glia as an app, or bookmark it, and Chromium keeps it)',
      `${size(usage)} used of ${size(quota)}`,
      ...(full ? ['nearly full: new messages may fail to be saved'] : []),
    ].join('; ');
    shown.classList.toggle('warning', !kept || full);
    await new Promise((resolve) => setTimeout(resolve, STORAGE_EVERY_MS));
  }
}

/// Bytes as browsers show them, in decimal units.
function size(bytes) {
  const units = ['bytes', 'kB', 'MB', 'GB', 'TB'];
  const at = Math.min(units.length - 1, Math.max(0, Math.floor(Math.log10(Math.max(bytes, 1)) / 3)));
  return at === 0 ? `${bytes} bytes` : `${(bytes / 1000 ** at).toFixed(1)} ${units[at]}`;
}
