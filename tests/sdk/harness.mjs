// What the SDK tests share: a quiet matrix-js-sdk, a record of every request the
// clients made (printed when a step fails), steps that stop the scenario at the
// first failure, waits on the SDK's events, and the steps both scenarios take.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ClientEvent, createClient, RoomEvent, RoomMemberEvent } from 'matrix-js-sdk';
import { logger as sdkLogger } from 'matrix-js-sdk/lib/logger.js';
import { withTimeout } from './server.mjs';

export const WAIT_MS = 15_000;
export const PASSWORD = 'correct horse battery staple';

// matrix-js-sdk logs every sync at debug level: silence its global logger and the
// children made from it later, and give each client a silent logger of its own.
sdkLogger.methodFactory = () => () => {};
sdkLogger.disableAll();
export const silent = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, log() {}, getChild: () => silent };

/// Every request the SDK made, in the order it made them, with the status it got.
export const requests = [];

/// A fetch that records the SDK's requests (and the bodies of failed ones).
export function recordingFetch(who) {
  return async (input, init = {}) => {
    const url = new URL(input instanceof Request ? input.url : input);
    const entry = { who, method: init.method ?? 'GET', path: url.pathname + url.search, status: 'pending' };
    requests.push(entry);
    try {
      const res = await fetch(input, init);
      entry.status = res.status;
      if (!res.ok) {
        entry.request = typeof init.body === 'string' ? init.body.slice(0, 500) : undefined;
        entry.response = (await res.clone().text()).slice(0, 500);
      }
      return res;
    } catch (err) {
      entry.status = err.name;
      throw err;
    }
  };
}

export function formatRequests(list) {
  return list
    .map((r) => {
      const path = r.path.replace(/access_token=[^&]+/, 'access_token=…');
      let line = `${r.who.padEnd(5)} ${r.method.padEnd(6)} ${path} -> ${r.status}`;
      if (r.request) line += `\n        request:  ${r.request}`;
      if (r.response) line += `\n        response: ${r.response}`;
      return line;
    })
    .join('\n');
}

/// A `step(name, fn)` for a scenario: each runs only if every earlier one passed,
/// and on failure prints the requests that went wrong (not yet printed) and
/// those of this step, under `describe()`. `expected(request)` names the
/// answers that are no failure. `step.failed()` names the step that failed.
export function stepper({ expected, describe }) {
  const reported = new Set();
  let broken; // the step that failed: the later ones build on it
  const step = (name, fn) => {
    test(name, { timeout: 4 * WAIT_MS }, async (t) => {
      if (broken) return t.skip(`an earlier step failed: ${broken}`);
      const from = requests.length;
      try {
        await fn();
      } catch (err) {
        broken = name;
        const failed = requests.filter((r) => (typeof r.status !== 'number' || r.status >= 400) && !expected(r) && !reported.has(r));
        failed.forEach((r) => reported.add(r));
        console.error(`\n--- ${name}: ${describe.where()}`);
        if (failed.length) console.error(`--- failed requests\n${formatRequests(failed)}`);
        console.error(`--- requests made during this step\n${formatRequests(requests.slice(from))}\n`);
        const more = describe.more?.();
        if (more) console.error(`${more}\n`);
        throw err;
      }
    });
  };
  step.failed = () => broken;
  return step;
}

/// Resolves with the arguments of the first `event` from `emitter` for which
/// `match(...args)` holds; fails after `ms`. Subscribe before causing the event.
export function waitFor(emitter, event, match, what, ms = WAIT_MS) {
  let listener;
  const seen = new Promise((resolve) => {
    listener = (...args) => {
      if (match(...args)) resolve(args);
    };
    emitter.on(event, listener);
  });
  return awaitedLater(withTimeout(seen, ms, what).finally(() => emitter.off(event, listener)));
}

/// `promise`, marked as handled: a wait set up before an action that fails is
/// then not reported a second time, as an unhandled rejection after its step.
export function awaitedLater(promise) {
  promise.catch(() => {});
  return promise;
}

/// Bob sees alice start typing in the room, then stop.
export async function bobSeesAliceTyping({ alice, bob }, roomId) {
  const typing = (state) =>
    waitFor(bob, RoomMemberEvent.Typing, (event, member) => member.roomId === roomId && member.userId === alice.getUserId() && member.typing === state, `bob to see alice typing=${state}`);

  const started = typing(true);
  await alice.sendTyping(roomId, true, 30_000);
  await started;

  const stopped = typing(false);
  await alice.sendTyping(roomId, false, 0);
  await stopped;
}

/// Alice sees bob's read receipt on her message in the room.
export async function aliceSeesBobsReceipt({ alice, bob }, roomId) {
  const aliceMessage = bob.getRoom(roomId).getLiveTimeline().getEvents()
    .find((e) => e.getSender() === alice.getUserId() && e.getType() === 'm.room.message');
  const eventId = aliceMessage.getId();

  const receipt = waitFor(
    alice,
    RoomEvent.Receipt,
    (event, room) => room.roomId === roomId && event.getContent()[eventId]?.['m.read']?.[bob.getUserId()] !== undefined,
    "alice to see bob's read receipt",
  );
  await bob.sendReadReceipt(aliceMessage);
  await receipt;
}

/// Registers `username` on the homeserver at `baseUrl` with the m.login.dummy
/// stage of user-interactive auth; returns the user ID.
export async function register(baseUrl, username) {
  const client = createClient({ baseUrl, fetchFn: recordingFetch(username), logger: silent });
  // Without auth the homeserver answers 401 with a session and the flows it offers.
  const challenge = await client.registerRequest({ username, password: PASSWORD }).then(
    (res) => assert.fail(`registration without auth succeeded: ${JSON.stringify(res)}`),
    (err) => err,
  );
  assert.equal(challenge.httpStatus, 401, `first /register: ${challenge}`);
  const { session, flows } = challenge.data;
  assert.ok(session, 'a UIA session id');
  assert.ok(flows.some((f) => f.stages.length === 1 && f.stages[0] === 'm.login.dummy'), JSON.stringify(flows));
  const res = await client.registerRequest({ username, password: PASSWORD, auth: { type: 'm.login.dummy', session } });
  assert.match(res.user_id, new RegExp(`^@${username}:`));
  assert.ok(res.access_token);
  return res.user_id;
}

/// Logs `username` in with m.login.password as a new device named `device`;
/// returns the session, as `createClient` takes it.
export async function login(baseUrl, username, device) {
  const anonymous = createClient({ baseUrl, fetchFn: recordingFetch(username), logger: silent });
  const res = await anonymous.loginRequest({
    type: 'm.login.password',
    identifier: { type: 'm.id.user', user: username },
    password: PASSWORD,
    initial_device_display_name: device,
  });
  assert.ok(res.access_token && res.device_id);
  return { userId: res.user_id, deviceId: res.device_id, accessToken: res.access_token };
}

/// Starts `client`'s sync loop with `options` and resolves once its first sync
/// is done; fails if the loop reports an error first.
export async function startSync(client, who, options) {
  const prepared = waitFor(client, ClientEvent.Sync, (state) => state === 'PREPARED', `${who}'s first sync`);
  const failed = waitFor(client, ClientEvent.Sync, (state) => state === 'ERROR', 'never').then(() => {
    throw new Error(`${who}'s sync loop reported ERROR`);
  });
  failed.catch(() => {}); // only raced below
  await client.startClient(options);
  await Promise.race([prepared, failed]);
}
