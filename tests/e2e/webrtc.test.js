// Two browser nodes, each in a network namespace of its own with the relay in
// a third (tests/e2e/netns.js): once both are online their transports open a
// WebRTC data channel and frames skip the relay (www/direct.js); when it
// closes, frames go through the relay again, those it had in flight at once,
// and the channel comes back.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { messages, onPath, peerOf, person, say, shareRoom, startGlia } from './browser.js';
import { createNetwork, netnsUnavailable } from './netns.js';

const skip = netnsUnavailable() ?? false;
if (skip) console.log(`webrtc.test.js: skipping, ${skip}`);
let network, glia, relayData, roomId;
const people = {};

before(async () => {
  if (skip) return;
  network = createNetwork(['relay', 'alice', 'bob']);
  const { hosts } = network;
  relayData = await mkdtemp(path.join(tmpdir(), 'glia-e2e-relay-'));
  const listen = `${hosts.relay.address}:0`;
  glia = await startGlia(['serve', '--listen', listen, '--root', 'dist', '--relay-data', relayData], { host: hosts.relay });
  people.alice = await person(glia.url, 'alice', { host: hosts.alice });
  people.bob = await person(glia.url, 'bob', { host: hosts.bob });
});

after(async () => {
  await people.alice?.browser.close();
  await people.bob?.browser.close();
  glia?.stop();
  network?.remove();
  if (relayData) await rm(relayData, { recursive: true, force: true });
});

test('once both are online, frames go over a data channel', { skip }, async () => {
  const { alice, bob } = people;
  roomId = await shareRoom(alice, bob, 'Direct');
  await onPath(alice, bob, 'direct');
  await onPath(bob, alice, 'direct');
  const [sent, received] = [await peerOf(alice, bob), await peerOf(bob, alice)];
  await say(alice, roomId, 'direct 1', 'd1');
  assert.deepEqual(await messages(bob, roomId, 'direct', 1), ['direct 1']);
  const [sentNow, receivedNow] = [await peerOf(alice, bob), await peerOf(bob, alice)];
  assert.ok(sentNow.sent.direct > sent.sent.direct, 'alice sent on the channel');
  assert.equal(sentNow.sent.relayed, sent.sent.relayed, 'and nothing through the relay');
  assert.ok(receivedNow.received.direct > received.received.direct, 'bob received on the channel');
});

test('the channel closes: messages go through the relay, and the channel comes back', { skip }, async () => {
  const { alice, bob } = people;
  await alice.page.evaluate((key) => window.gliaTransport.closeDirect(key), bob.node);
  await onPath(alice, bob, 'relayed');
  await onPath(bob, alice, 'relayed');
  const before = await peerOf(alice, bob);
  await say(alice, roomId, 'fallback 1', 'f1');
  assert.deepEqual(await messages(bob, roomId, 'fallback', 1), ['fallback 1']);
  assert.ok((await peerOf(alice, bob)).sent.relayed > before.sent.relayed, 'alice sent through the relay');
  await onPath(alice, bob, 'direct');
  await onPath(bob, alice, 'direct');
});

test('a transaction in flight on a channel that closes goes through the relay at once', { skip }, async () => {
  const { alice, bob } = people;
  // Bob's page loses the transaction that came on the channel, as if the
  // channel had broken under it (it is the node that answers, not the page).
  await bob.page.evaluate((marker) => {
    const post = ServiceWorker.prototype.postMessage;
    ServiceWorker.prototype.postMessage = function (message, transfer) {
      if (message?.glia === 'frame' && new TextDecoder().decode(message.bytes).includes(marker)) {
        ServiceWorker.prototype.postMessage = post;
        window.gliaLost = true;
        return;
      }
      return post.call(this, message, transfer);
    };
  }, 'in flight 1');
  const sent = await peerOf(alice, bob);
  await say(alice, roomId, 'in flight 1', 'i1');
  await bob.page.waitForFunction(() => window.gliaLost, null, { timeout: 10_000 });
  assert.ok((await peerOf(alice, bob)).sent.direct > sent.sent.direct, 'it went on the channel');

  const before = await peerOf(alice, bob);
  await alice.page.evaluate((key) => window.gliaTransport.closeDirect(key), bob.node);
  assert.ok((await peerOf(alice, bob)).sent.relayed > before.sent.relayed, 'alice sent it again through the relay');
  // Well before the node's own 10 s timeout would have sent it again.
  assert.deepEqual(await messages(bob, roomId, 'in flight', 1, { timeout: 5_000 }), ['in flight 1']);
});
