// A stock SDK against the homeserver: two matrix-js-sdk clients register, log in,
// run their own sync loops, share a room and see each other's messages, typing and
// read receipts, all through the Client-Server API of `glia node`.
//
// Needs Node 22 (matrix-js-sdk 43), which npm installs as the `node` package:
//   node_modules/node/bin/node --test --test-force-exit 'tests/sdk/*.test.mjs'
// (--test-force-exit: after stopClient the SDK still holds the 110 s local timeout of
// its last /sync, which would keep the process alive that long after the last test.)
// GLIA_TEST_SERVER=synapse runs the same test against a Synapse (see server.mjs),
// GLIA_TEST_SERVER=url=http://… against a homeserver already running there, GLIA_BIN=PATH
// with another glia binary; GLIA_SDK_TRACE=1 prints every request the clients made. A failing step prints the failed requests with their bodies.

import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { createClient, RoomEvent, RoomMemberEvent } from 'matrix-js-sdk';
import {
  aliceSeesBobsReceipt, bobSeesAliceTyping, formatRequests, login as loginAs, recordingFetch, register, requests, silent,
  startSync, stepper, WAIT_MS, waitFor,
} from './harness.mjs';
import { startServer } from './server.mjs';


let server;
const clients = {};
let roomId;

/// Answers that are no failure: the 401 that opens user-interactive auth, and the
/// 404 for an unstable endpoint the SDK probes (MSC4143 RTC transports).
const expected = (r) =>
  (r.status === 401 && r.path.endsWith('/register')) || (r.status === 404 && r.path.includes('/unstable/'));

/// Runs one step of the conversation; a failure prints the requests that went
/// wrong, which is what a homeserver developer needs.
const step = stepper({ expected, describe: { where: () => `${server?.kind} at ${server?.url}` } });

/// Logs in with m.login.password and starts a client of its own with its sync loop.
async function loginAndStart(username, userId) {
  const fetchFn = recordingFetch(username);
  const login = await loginAs(server.url, username, `glia sdk test (${username})`);
  assert.equal(login.userId, userId);

  const client = createClient({
    baseUrl: server.url,
    fetchFn,
    logger: silent,
    ...login,
  });
  await startSync(client, username, { initialSyncLimit: 10 });
  return client;
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

before(async () => {
  server = await startServer();
});

after(async () => {
  for (const client of Object.values(clients)) client.stopClient();
  await server?.stop();
  if (process.env.GLIA_SDK_TRACE) console.error(`--- every request\n${formatRequests(requests)}`);
});

step('alice and bob register with m.login.dummy, log in with a password and sync', async () => {
  const alice = await register(server.url, 'alice');
  const bob = await register(server.url, 'bob');
  clients.alice = await loginAndStart('alice', alice);
  clients.bob = await loginAndStart('bob', bob);
});

step('alice creates a room and invites bob, who joins it', async () => {
  const { alice, bob } = clients;
  ({ room_id: roomId } = await alice.createRoom({ name: 'glia sdk test', preset: 'private_chat' }));
  assert.match(roomId, /^!/);

  const invited = waitFor(bob, RoomEvent.MyMembership, (room, membership) => room.roomId === roomId && membership === 'invite', 'bob to see his invite');
  await alice.invite(roomId, bob.getUserId());
  await invited;

  const joinedSeenByAlice = waitFor(
    alice,
    RoomMemberEvent.Membership,
    (event, member) => member.roomId === roomId && member.userId === bob.getUserId() && member.membership === 'join',
    'alice to see bob join',
  );
  const room = await bob.joinRoom(roomId);
  assert.equal(room.roomId, roomId);
  await joinedSeenByAlice;
  assert.deepEqual(alice.getRoom(roomId).getJoinedMembers().map((m) => m.userId).sort(), [alice.getUserId(), bob.getUserId()].sort());
});

step('each sees the message the other sent, through its own sync', async () => {
  const { alice, bob } = clients;
  const bobSees = waitForMessage(bob, alice.getUserId(), 'hello bob');
  await alice.sendTextMessage(roomId, 'hello bob');
  const seenByBob = await bobSees;

  const aliceSees = waitForMessage(alice, bob.getUserId(), 'hello alice');
  await bob.sendTextMessage(roomId, 'hello alice');
  await aliceSees;

  assert.equal(seenByBob.getRoomId(), roomId);
  const bodies = (client) =>
    client.getRoom(roomId).getLiveTimeline().getEvents()
      .filter((e) => e.getType() === 'm.room.message')
      .map((e) => e.getContent().body);
  assert.deepEqual(bodies(alice), ['hello bob', 'hello alice']);
  assert.deepEqual(bodies(bob), ['hello bob', 'hello alice']);
});

step('bob sees alice typing, then stop typing', () => bobSeesAliceTyping(clients, roomId));

step("alice sees bob's read receipt on her message", () => aliceSeesBobsReceipt(clients, roomId));
