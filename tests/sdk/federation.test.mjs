// A stock SDK across federation: matrix-js-sdk clients on two `glia node` processes
// that reach each other only through a `glia relay` on loopback. Alice (node A)
// invites bob (node B) by `@bob:<B's key>`; they talk, type and read both ways, and
// carol (node C) joins them; then the relay goes down and comes back while alice
// talks, bob's node goes down while alice sends it 20 messages, which wait in the
// relay's mailbox, and goes down again while the relay restarts; at last bob leaves.
//
// Needs Node 22 (matrix-js-sdk 43), which npm installs as the `node` package:
//   node_modules/node/bin/node --test --test-force-exit 'tests/sdk/*.test.mjs'
// Always runs glia (GLIA_TEST_SERVER does not apply: Synapse cannot federate peer to
// peer); GLIA_BIN=PATH picks another glia binary, GLIA_SDK_TRACE=1 prints every
// request the clients made and copies the processes' output to stderr. A failing
// step prints the failed requests with their bodies and what each process logged.

import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { ClientEvent, createClient, Direction, Filter, RoomEvent, RoomMemberEvent } from 'matrix-js-sdk';
import {
  aliceSeesBobsReceipt, awaitedLater, bobSeesAliceTyping, formatRequests, login as loginAs, recordingFetch, register as registerAs,
  requests, silent, startSync, stepper, WAIT_MS, waitFor,
} from './harness.mjs';
import { startGlia, startRelay, withTimeout } from './server.mjs';

/// Messages alice sends while the relay is down, and while bob's node is.
const RELAY_DOWN = 3;
const NODE_DOWN = 20;
const trace = !!process.env.GLIA_SDK_TRACE;

let relay;
const nodes = {}; // a, b, c -> GliaProcess (node A, node B, node C)
const clients = {}; // username -> MatrixClient
const sessions = {}; // username -> { userId, deviceId, accessToken }
let roomId;

/// Answers that are no failure: the 401 that opens user-interactive auth, the 404
/// for an unstable endpoint the SDK probes (MSC4143 RTC transports), and a sync
/// the test aborted by stopping the client before stopping its node.
const expected = (r) =>
  (r.status === 401 && r.path.endsWith('/register')) ||
  (r.status === 404 && r.path.includes('/unstable/')) ||
  (r.status === 'AbortError' && r.path.includes('/sync'));

/// What each process logged, the last lines of each, for a failure report.
function processLogs() {
  return [relay, ...Object.values(nodes)]
    .filter(Boolean)
    .map((p) => `--- ${p.name} (${p.url}, data ${p.data}), last lines of its output\n${p.log.slice(-40).join('\n')}`)
    .join('\n');
}

/// Runs one step of the scenario; a failure prints the requests that went wrong
/// and what the processes logged.
const step = stepper({
  expected,
  describe: {
    where: () => `relay at ${relay?.url}, ${Object.values(nodes).map((node) => `${node.name} at ${node.url}`).join(', ')}`,
    more: processLogs,
  },
});

/// Resolves once `check()` holds, looking now and after each timeline event and
/// sync the client reports; fails after `ms`.
function waitUntil(client, check, what, ms = WAIT_MS) {
  if (check()) return Promise.resolve();
  let listener;
  const held = new Promise((resolve) => {
    listener = () => {
      if (check()) resolve();
    };
    client.on(RoomEvent.Timeline, listener);
    client.on(ClientEvent.Sync, listener);
  });
  return awaitedLater(
    withTimeout(held, ms, what).finally(() => {
      client.off(RoomEvent.Timeline, listener);
      client.off(ClientEvent.Sync, listener);
    }),
  );
}

const register = (node, username) => registerAs(node.url, username);
const login = (node, username) => loginAs(node.url, username, `glia sdk federation test (${username})`);

/// A client of `node` for `session`, with its sync loop started and its first
/// sync done. Every sync asks for up to 50 timeline events per room, so that what
/// arrives at once (a mailbox handed over) comes whole rather than as a gap.
async function startSyncing(node, username, session) {
  const client = createClient({
    baseUrl: node.url,
    fetchFn: recordingFetch(username),
    logger: silent,
    ...session,
  });
  const filter = new Filter(session.userId);
  filter.setDefinition({ room: { timeline: { limit: 50 } } });
  await startSync(client, username, { initialSyncLimit: 50, filter });
  clients[username] = client;
  return client;
}

/// The bodies of the messages in the client's live timeline of the room, oldest first.
function bodies(client) {
  return (client.getRoom(roomId)?.getLiveTimeline().getEvents() ?? [])
    .filter((e) => e.getType() === 'm.room.message')
    .map((e) => e.getContent().body);
}

/// The first message from `sender` with `body` that `client` gets from its sync.
function waitForMessage(client, sender, body) {
  return waitFor(
    client,
    RoomEvent.Timeline,
    (event, room, toStartOfTimeline) =>
      room?.roomId === roomId &&
      !toStartOfTimeline &&
      event.getType() === 'm.room.message' &&
      event.getSender() === sender &&
      event.getContent().body === body,
    `${client.getUserId()} to see "${body}" from ${sender}`,
  ).then(([event]) => event);
}

/// Sends `texts` one after the other, each once node A has taken it.
async function sendAll(client, texts) {
  for (const text of texts) await client.sendTextMessage(roomId, text);
}

before(async () => {
  relay = await startRelay({ echo: trace });
  nodes.a = await startGlia(undefined, { relays: [relay.url], name: 'node A', echo: trace });
  nodes.b = await startGlia(undefined, { relays: [relay.url], name: 'node B', echo: trace });
  nodes.c = await startGlia(undefined, { relays: [relay.url], name: 'node C', echo: trace });
});

after(async () => {
  for (const client of Object.values(clients)) client.stopClient();
  // After a failure the data directories stay, for a look at the stores.
  const keepData = !!step.failed();
  for (const child of [...Object.values(nodes), relay].filter(Boolean)) {
    await child.stop({ keepData });
    if (keepData) console.error(`--- ${child.name}'s data directory is kept: ${child.data}`);
  }
  if (trace) console.error(`--- every request\n${formatRequests(requests)}`);
});

step('alice on node A and bob on node B register, log in with a password and sync', async () => {
  const alice = await register(nodes.a, 'alice');
  const bob = await register(nodes.b, 'bob');
  assert.notEqual(alice.split(':')[1], bob.split(':')[1], 'two servers');
  sessions.alice = await login(nodes.a, 'alice');
  sessions.bob = await login(nodes.b, 'bob');
  assert.equal(sessions.alice.userId, alice);
  assert.equal(sessions.bob.userId, bob);
  await startSyncing(nodes.a, 'alice', sessions.alice);
  await startSyncing(nodes.b, 'bob', sessions.bob);
});

step("alice invites bob of node B; he sees the invite in his sync and joins by the room's ID", async () => {
  const { alice, bob } = clients;
  ({ room_id: roomId } = await alice.createRoom({ name: 'glia federation test', preset: 'private_chat' }));
  assert.match(roomId, /^!/);

  const invited = waitFor(bob, RoomEvent.MyMembership, (room, membership) => room.roomId === roomId && membership === 'invite', 'bob to see his invite');
  // Bob's user ID, as his node's register answered it, names node B.
  await alice.invite(roomId, sessions.bob.userId);
  const [room] = await invited;
  // The invite's stripped state shows the room's name and who invited him.
  assert.equal(room.name, 'glia federation test');
  assert.equal(room.getMember(bob.getUserId())?.events.member?.getSender(), alice.getUserId(), 'the inviter');

  const joinedSeenByAlice = waitFor(
    alice,
    RoomMemberEvent.Membership,
    (event, member) => member.roomId === roomId && member.userId === bob.getUserId() && member.membership === 'join',
    'alice to see bob join',
  );
  const joined = await bob.joinRoom(roomId);
  assert.equal(joined.roomId, roomId);
  await joinedSeenByAlice;
  const members = (client) => client.getRoom(roomId).getJoinedMembers().map((m) => m.userId).sort();
  const both = [alice.getUserId(), bob.getUserId()].sort();
  assert.deepEqual(members(alice), both);
  await waitUntil(bob, () => members(bob).length === 2, "bob's client to list both members");
  assert.deepEqual(members(bob), both);
  assert.equal(bob.getRoom(roomId).name, 'glia federation test');
});

step('each sees the message the other sent, through its own node and sync', async () => {
  const { alice, bob } = clients;
  const bobSees = waitForMessage(bob, alice.getUserId(), 'hello bob');
  await alice.sendTextMessage(roomId, 'hello bob');
  await bobSees;

  const aliceSees = waitForMessage(alice, bob.getUserId(), 'hello alice');
  await bob.sendTextMessage(roomId, 'hello alice');
  await aliceSees;

  assert.deepEqual(bodies(alice), ['hello bob', 'hello alice']);
  assert.deepEqual(bodies(bob), ['hello bob', 'hello alice']);
});

step('bob sees alice typing, then stop typing', () => bobSeesAliceTyping(clients, roomId));

step("alice sees bob's read receipt on her message", () => aliceSeesBobsReceipt(clients, roomId));

step('carol on node C joins too, and each of the three sees what the other two say', async () => {
  const carolId = await register(nodes.c, 'carol');
  sessions.carol = await login(nodes.c, 'carol');
  const carol = await startSyncing(nodes.c, 'carol', sessions.carol);
  const { alice, bob } = clients;

  const invited = waitFor(carol, RoomEvent.MyMembership, (room, membership) => room.roomId === roomId && membership === 'invite', 'carol to see her invite');
  await alice.invite(roomId, carolId);
  await invited;
  const joinSeen = (client) =>
    waitFor(
      client,
      RoomMemberEvent.Membership,
      (event, member) => member.roomId === roomId && member.userId === carolId && member.membership === 'join',
      `${client.getUserId()} to see carol join`,
    );
  const seen = [joinSeen(alice), joinSeen(bob)];
  await carol.joinRoom(roomId);
  await Promise.all(seen);

  for (const [speaker, listeners] of [[carol, [alice, bob]], [bob, [alice, carol]], [alice, [bob, carol]]]) {
    const text = `three of us: ${speaker.getUserId()}`;
    const heard = listeners.map((client) => waitForMessage(client, speaker.getUserId(), text));
    await speaker.sendTextMessage(roomId, text);
    await Promise.all(heard);
  }
  // The last three in the same order everywhere (carol joined after the first two).
  const last = bodies(alice).slice(-3);
  for (const client of [bob, carol]) assert.deepEqual(bodies(client).slice(-3), last);
});

step('with the relay down, node A keeps what alice sends and delivers it once the relay is back', async () => {
  const { alice, bob, carol } = clients;
  const marks = Object.fromEntries(Object.entries(nodes).map(([name, node]) => [name, node.mark()]));
  await relay.stop({ keepData: true });
  // Every node saw its link drop: what alice sends now cannot leave node A.
  for (const name in nodes) await nodes[name].waitForLog(/^glia: relay \S+: .*; reconnecting$/, { from: marks[name] });

  const texts = Array.from({ length: RELAY_DOWN }, (_, i) => `while the relay was down ${i + 1}`);
  const seeAll = [bob, carol].map((client) =>
    waitUntil(client, () => bodies(client).includes(texts.at(-1)), `${client.getUserId()} to see "${texts.at(-1)}"`, 2 * WAIT_MS));
  await sendAll(alice, texts);

  await relay.start(); // the same port and data directory
  for (const name in nodes) await nodes[name].waitForLog(/^glia: relay \S+: connected$/, { from: marks[name] });
  await Promise.all(seeAll);
  assert.deepEqual(bodies(bob).slice(-RELAY_DOWN), texts);
  assert.deepEqual(bodies(bob), bodies(alice));
  assert.deepEqual(bodies(carol), bodies(alice).slice(-bodies(carol).length));
});

step(`with node B down, ${NODE_DOWN} messages wait in the relay's mailbox and reach bob in order, once each`, async () => {
  const { alice } = clients;
  clients.bob.stopClient();
  delete clients.bob;
  await nodes.b.stop({ keepData: true });

  const texts = Array.from({ length: NODE_DOWN }, (_, i) => `while bob's node was down ${i + 1}`);
  const carolSees = waitUntil(clients.carol, () => bodies(clients.carol).includes(texts.at(-1)), `carol to see "${texts.at(-1)}"`);
  await sendAll(alice, texts);
  const sent = bodies(alice);
  assert.deepEqual(sent.slice(-NODE_DOWN), texts);
  // Carol, online all along, has them live.
  await carolSees;
  assert.deepEqual(bodies(clients.carol).slice(-NODE_DOWN), texts);

  // The same port, data directory and relay; the node says when the relay welcomed it.
  await nodes.b.start();
  // Bob's access token is in node B's store on disk: no new login.
  const bob = await startSyncing(nodes.b, 'bob', sessions.bob);
  await waitUntil(bob, () => bodies(bob).includes(texts.at(-1)), `bob to see "${texts.at(-1)}"`, 2 * WAIT_MS);

  // Everything alice's client shows, in the same order, with nothing doubled:
  // from bob's sync, and from node B's /messages.
  assert.deepEqual(bodies(bob).filter((b) => b.startsWith("while bob's node")), texts);
  assert.deepEqual(bodies(bob), sent.slice(-bodies(bob).length));
  const page = await bob.createMessagesRequest(roomId, null, 100, Direction.Backward);
  const history = page.chunk.filter((e) => e.type === 'm.room.message').map((e) => e.content.body).reverse();
  assert.deepEqual(history, sent);
});

// What alice sends just before the relay restarts is either on the relay's disk
// by then or in flight, to be sent again once the relay is back: bob gets it
// either way, once.
step('with node B down, the relay restarts as alice talks, and bob still gets every message once, in order', async () => {
  const { alice } = clients;
  clients.bob.stopClient();
  delete clients.bob;
  await nodes.b.stop({ keepData: true });

  const texts = Array.from({ length: RELAY_DOWN }, (_, i) => `while the relay restarted ${i + 1}`);
  await sendAll(alice, texts);
  const marks = { a: nodes.a.mark(), c: nodes.c.mark() };
  await relay.restart(); // the same port and data directory
  for (const name of ['a', 'c']) await nodes[name].waitForLog(/^glia: relay \S+: connected$/, { from: marks[name] });

  await nodes.b.start();
  const bob = await startSyncing(nodes.b, 'bob', sessions.bob);
  await waitUntil(bob, () => bodies(bob).includes(texts.at(-1)), `bob to see "${texts.at(-1)}"`, 2 * WAIT_MS);
  assert.deepEqual(bodies(bob).filter((b) => b.startsWith('while the relay restarted')), texts);
  assert.deepEqual(bodies(bob), bodies(alice).slice(-bodies(bob).length));
});

step('bob leaves, and alice and carol see him leave', async () => {
  const { alice, bob, carol } = clients;
  const left = [alice, carol].map((client) =>
    waitFor(
      client,
      RoomMemberEvent.Membership,
      (event, member) => member.roomId === roomId && member.userId === bob.getUserId() && member.membership === 'leave',
      `${client.getUserId()} to see bob leave`,
    ));
  await bob.leave(roomId);
  await Promise.all(left);
  for (const client of [alice, carol]) {
    assert.deepEqual(client.getRoom(roomId).getJoinedMembers().map((m) => m.userId).sort(), [alice.getUserId(), carol.getUserId()].sort());
  }
});
