// The Client-Server workload of the client bench, with nothing but `fetch` and
// `performance`: benches/client.mjs runs it from Node against glia node (and
// Synapse), benches/worker.mjs inside a page, against the homeserver in its
// Service Worker. What it measures is described in benches/client.mjs.

const PASSWORD = 'bench password';
export const LIMIT_10 = JSON.stringify({ room: { timeline: { limit: 10 } } });

/// One user's view of the homeserver.
export class Client {
  constructor(base, token, userId) {
    Object.assign(this, { base, token, userId, txn: 0, tag: Math.random().toString(36).slice(2, 10) });
  }

  async request(method, path, body) {
    const res = await fetch(this.base + path, {
      method,
      headers: {
        ...(this.token && { Authorization: `Bearer ${this.token}` }),
        ...(body !== undefined && { 'Content-Type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) {
      const err = new Error(`${method} ${path.replace(/\?.*/, '')} -> ${res.status} ${text.slice(0, 300)}`);
      Object.assign(err, { status: res.status, body: text });
      throw err;
    }
    return Object.assign(JSON.parse(text), { [BYTES]: text.length });
  }

  /// Registers through the m.login.dummy stage of user-interactive auth.
  static async register(base, username) {
    const anonymous = new Client(base);
    const body = { username, password: PASSWORD, initial_device_display_name: 'bench' };
    const challenge = await anonymous.request('POST', '/_matrix/client/v3/register', body).then(
      () => { throw new Error('registration without auth succeeded'); },
      (err) => { if (err.status !== 401) throw err; return JSON.parse(err.body); },
    );
    const res = await anonymous.request('POST', '/_matrix/client/v3/register', {
      ...body, auth: { type: 'm.login.dummy', session: challenge.session },
    });
    return new Client(base, res.access_token, res.user_id);
  }

  /// The same account on a new device.
  async login() {
    const res = await new Client(this.base).request('POST', '/_matrix/client/v3/login', {
      type: 'm.login.password', identifier: { type: 'm.id.user', user: this.userId }, password: PASSWORD,
    });
    return new Client(this.base, res.access_token, res.user_id);
  }

  createRoom(body = {}) {
    return this.request('POST', '/_matrix/client/v3/createRoom', body).then((r) => r.room_id);
  }

  join(roomId) {
    return this.request('POST', `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {});
  }

  send(roomId, body) {
    const txn = `b${this.tag}.${++this.txn}`;
    return this.request('PUT', `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/m.room.message/${txn}`, {
      msgtype: 'm.text', body,
    });
  }

  sync({ since, timeout = 0, filter } = {}) {
    const q = new URLSearchParams({ timeout: String(timeout) });
    if (since) q.set('since', since);
    if (filter) q.set('filter', filter);
    return this.request('GET', `/_matrix/client/v3/sync?${q}`);
  }
}
const BYTES = Symbol('bytes');

/// Whether a sync answer holds a message with `body` in `roomId`.
function hasMessage(sync, roomId, body) {
  return (sync.rooms?.join?.[roomId]?.timeline?.events ?? []).some((e) => e.content?.body === body);
}

export function quantile(values, q) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}
export function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/// Runs `worker(item)` over `items`, `concurrency` at a time.
export async function pool(items, concurrency, worker) {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) await worker(items[next++]);
  }));
}

/// Every figure of one run against the homeserver at `base`, with the sizes in `N`
/// ({ sends, clients, samples, rooms, events, syncs }), telling `progress` each step.
export async function measure(base, N, progress = () => {}) {
  const fig = {};
  const tag = Math.random().toString(36).slice(2, 8);
  const versions = await fetch(`${base}/_matrix/client/versions`);
  fig.server = versions.headers.get('server') ?? '(no Server header)';
  await versions.arrayBuffer();

  // Sends: one client, then several at once in one room.
  progress(`${fig.server}: sends`);
  const users = [];
  for (let i = 0; i < N.clients; i++) users.push(await Client.register(base, `send${i}_${tag}`));
  const room = await users[0].createRoom({ preset: 'public_chat' });
  for (const user of users.slice(1)) await user.join(room);
  let t = performance.now();
  for (let i = 0; i < N.sends; i++) await users[0].send(room, `sequential ${i}`);
  fig.sendSequential = N.sends / ((performance.now() - t) / 1000);
  const share = Math.ceil(N.sends / N.clients);
  t = performance.now();
  await Promise.all(users.map(async (user, u) => {
    for (let i = 0; i < share; i++) await user.send(room, `parallel ${u}.${i}`);
  }));
  fig.sendParallel = (share * N.clients) / ((performance.now() - t) / 1000);

  // Send→sync latency between two users.
  progress(`${fig.server}: send→sync latency`);
  const [sender, receiver] = [users[0], users[1]];
  const latencyRoom = await sender.createRoom({ preset: 'public_chat' });
  await receiver.join(latencyRoom);
  let since = (await receiver.sync({ filter: LIMIT_10 })).next_batch;
  const latencies = [];
  for (let i = 0; i < N.samples; i++) {
    const body = `latency ${i}`;
    const delivered = (async () => {
      for (;;) {
        const sync = await receiver.sync({ since, timeout: 30_000, filter: LIMIT_10 });
        since = sync.next_batch;
        if (hasMessage(sync, latencyRoom, body)) return performance.now();
      }
    })();
    const sent = performance.now();
    await sender.send(latencyRoom, body);
    latencies.push((await delivered) - sent);
  }
  fig.latencyP50 = median(latencies);
  fig.latencyP99 = quantile(latencies, 0.99);

  // An account in many rooms full of messages, built through the API.
  progress(`${fig.server}: building ${N.rooms} rooms × ${N.events} messages`);
  const heavy = await Client.register(base, `heavy_${tag}`);
  const rooms = [];
  t = performance.now();
  await pool(Array.from({ length: N.rooms }, (_, i) => i), 4, async (i) => {
    rooms.push(await heavy.createRoom({ name: `room ${i}` }));
  });
  fig.createRoom = N.rooms / ((performance.now() - t) / 1000);
  t = performance.now();
  const sends = rooms.flatMap((r) => Array.from({ length: N.events }, (_, i) => [r, i]));
  // Rooms interleaved so that the concurrent senders write to different rooms.
  sends.sort((a, b) => a[1] - b[1]);
  await pool(sends, N.clients, ([r, i]) => heavy.send(r, `message ${i} of ${r}`));
  fig.fixtureSends = sends.length / ((performance.now() - t) / 1000);

  progress(`${fig.server}: initial and incremental /sync`);
  for (const [key, filter] of [['initialSync', undefined], ['initialSyncLimit10', LIMIT_10]]) {
    const times = [];
    for (let i = 0; i < N.syncs; i++) {
      const device = await heavy.login();
      t = performance.now();
      const sync = await device.sync({ filter });
      times.push(performance.now() - t);
      const joined = Object.keys(sync.rooms?.join ?? {}).length;
      if (joined !== N.rooms) throw new Error(`initial sync shows ${joined} joined rooms, not ${N.rooms}`);
      fig[`${key}Bytes`] = sync[BYTES];
    }
    fig[key] = median(times);
  }
  since = (await heavy.sync({ filter: LIMIT_10 })).next_batch;
  const incremental = [];
  for (let i = 0; i < 20; i++) {
    const body = `incremental ${i}`;
    const target = rooms[i % rooms.length];
    await heavy.send(target, body);
    t = performance.now();
    const sync = await heavy.sync({ since, filter: LIMIT_10 });
    incremental.push(performance.now() - t);
    if (!hasMessage(sync, target, body)) throw new Error('incremental sync lacks the message just sent');
    since = sync.next_batch;
  }
  fig.incrementalSync = median(incremental);
  return fig;
}

/// The figures of `measure`, as table rows: key, label, which way is better,
/// digits, and a scale.
export function rows(N) {
  return [
  ['sendSequential', `messages sent per second, 1 client, ${N.sends} sequential PUTs`, 'higher', 0],
  ['sendParallel', `messages sent per second, ${N.clients} clients in one room at once`, 'higher', 0],
  ['latencyP50', `send → other user's /sync, p50 ms (${N.samples} samples)`, 'lower', 1],
  ['latencyP99', "send → other user's /sync, p99 ms", 'lower', 1],
  ['createRoom', 'rooms created per second (4 at once)', 'higher', 1],
  ['fixtureSends', `messages sent per second into ${N.rooms} rooms (${N.clients} at once)`, 'higher', 0],
  ['initialSync', `initial /sync ms, ${N.rooms} rooms × ${N.events} messages, no filter`, 'lower', 1],
  ['initialSyncBytes', '… its response, KiB', 'lower', 0, 1 / 1024],
  ['initialSyncLimit10', 'initial /sync ms, timeline limit 10', 'lower', 1],
  ['initialSyncLimit10Bytes', '… its response, KiB', 'lower', 0, 1 / 1024],
  ['incrementalSync', 'incremental /sync ms after one new message', 'lower', 1],
  ['peakRss', 'server peak RSS, MiB', 'lower', 0],
  ];
}

