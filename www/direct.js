// Direct links to other nodes: one RTCDataChannel per peer, negotiated through
// the relays' `signal` messages, so frames between two online nodes skip the
// relay's hop. The relay stays underneath: a frame goes direct only while the
// channel is open, and requests a channel took but never answered go again
// through the relay when it closes, instead of waiting out the node's timeout.
//
// The lower key offers and the higher only answers, so offers never cross:
// every exchange between two nodes brings a frame to each side (a request and
// its response), so the lower one always hears of the other.

const KIND_REQUEST = 0;
const KIND_RESPONSE = 1;
/// Past this, negotiation has failed (with host candidates only, ICE can take
/// half a minute to say so).
const OPEN_TIMEOUT_MS = 10_000;
const RETRY_START_MS = 1_000;
const RETRY_MAX_MS = 60_000;
/// The node gives up on a request after 30 s: resending it later is pointless.
const INFLIGHT_MS = 30_000;

/// `signal(to, data)` sends signalling through a relay (false if none is up),
/// `relay(bytes)` a frame, `receive(bytes)` hands a frame that came direct to
/// the node, and `changed()` hears when a peer appears or changes path.
///
/// Signals: `{ link, description }` (the offer, then the answer), `{ link,
/// candidate }`, and `{ link, bye: true }` when a side drops a link. `link`
/// names the attempt, so signals of an older one are told apart and ignored.
export function directLinks({ iceServers, signal, relay, receive, changed }) {
  const peers = new Map();
  // Some browsers turn WebRTC off; then every frame goes through the relay.
  const webrtc = typeof RTCPeerConnection === 'function';

  const peer = (key) => {
    let p = peers.get(key);
    if (!p) {
      const counts = () => ({ direct: 0, relayed: 0 });
      p = { key, path: 'relayed', link: null, retryAt: 0, retryMs: RETRY_START_MS, sent: counts(), received: counts() };
      peers.set(key, p);
      changed();
    }
    return p;
  };

  const open = (p, id) => {
    const pc = new RTCPeerConnection({ iceServers });
    const link = { id, pc, channel: null, inflight: new Map(), queue: Promise.resolve() };
    link.timer = setTimeout(() => drop(p, link), OPEN_TIMEOUT_MS);
    link.signal = (data) => signal(p.key, { link: id, ...data }) || drop(p, link);
    pc.onicecandidate = ({ candidate }) => candidate && link.signal({ candidate: candidate.toJSON() });
    pc.onconnectionstatechange = () => {
      if (['disconnected', 'failed', 'closed'].includes(pc.connectionState)) drop(p, link);
    };
    p.link = link;
    return link;
  };

  const attach = (p, link, channel) => {
    link.channel = channel;
    channel.binaryType = 'arraybuffer';
    channel.onopen = () => {
      clearTimeout(link.timer);
      p.path = 'direct';
      changed();
    };
    channel.onclose = () => drop(p, link);
    channel.onmessage = ({ data }) => {
      const bytes = new Uint8Array(data);
      const frame = route(bytes);
      // DTLS proved the other end is the key the relay signalled for.
      if (frame.origin !== p.key) return;
      p.received.direct++;
      answered(p, frame);
      receive(bytes);
    };
  };

  // Runs one step of negotiation after the ones before it: signals arrive in
  // order, and each must see the description the previous one set.
  const step = (p, link, work) => {
    link.queue = link.queue.then(work).catch(() => drop(p, link));
  };

  const dial = (p, me) => {
    if (!webrtc || p.link || me > p.key || Date.now() < p.retryAt) return;
    const link = open(p, crypto.randomUUID());
    attach(p, link, link.pc.createDataChannel('glia'));
    step(p, link, async () => {
      await link.pc.setLocalDescription();
      link.signal({ description: link.pc.localDescription.toJSON() });
    });
  };

  /// Closes a link and tells the peer, through the relay and so before the
  /// requests the link carried unanswered, which go through the relay next:
  /// the peer then answers them there, not on a channel it thinks still open.
  const drop = (p, link) => {
    if (p.link !== link) return;
    p.link = null;
    clearTimeout(link.timer);
    link.pc.close();
    if (p.path === 'direct') {
      // It worked and broke (a tab closed, a network changed): the next frame
      // dials again, and a peer that went away refuses the signal.
      p.retryAt = 0;
      p.retryMs = RETRY_START_MS;
    } else {
      // It never opened: the peers may not reach each other, so wait longer
      // each time before the next try.
      p.retryAt = Date.now() + p.retryMs;
      p.retryMs = Math.min(p.retryMs * 2, RETRY_MAX_MS);
    }
    p.path = 'relayed';
    changed();
    signal(p.key, { link: link.id, bye: true });
    for (const { bytes } of link.inflight.values()) {
      p.sent.relayed++;
      relay(bytes);
    }
  };

  const answered = (p, frame) => {
    if (frame.kind === KIND_RESPONSE) p.link?.inflight.delete(frame.id);
  };

  return {
    /// Sends a frame this node made: on the channel to its destination if one
    /// is open and takes a message that big, else through the relay (and then
    /// starts on a channel).
    send(bytes, frame) {
      const p = peer(frame.destination);
      const channel = p.link?.channel;
      if (channel?.readyState === 'open' && bytes.byteLength <= maxMessage(p.link)) {
        try {
          channel.send(bytes);
          p.sent.direct++;
          if (frame.kind === KIND_REQUEST) track(p.link, frame.id, bytes);
          return;
        } catch {
          // The channel's buffer is full or it just closed: the relay takes it.
        }
      }
      p.sent.relayed++;
      relay(bytes);
      dial(p, frame.origin);
    },

    /// A frame that came through a relay.
    relayed(frame) {
      const p = peer(frame.origin);
      p.received.relayed++;
      answered(p, frame);
      dial(p, frame.destination);
    },

    /// A `signal` from `from`. An offer starts a new link in place of any
    /// other: the offerer starts afresh each time it dials.
    signalled(from, data) {
      const p = peer(from);
      if (!webrtc) {
        // Spares the offerer its wait for a link that will never come.
        if (data?.description) signal(from, { link: data.link, bye: true });
        return;
      }
      if (data?.description?.type === 'offer' && p.link?.id !== data.link) {
        if (p.link) drop(p, p.link);
        const link = open(p, data.link);
        link.pc.ondatachannel = ({ channel }) => attach(p, link, channel);
      }
      const link = p.link;
      if (!link || link.id !== data?.link) return;
      if (data.bye) return drop(p, link);
      step(p, link, async () => {
        if (data.description) {
          await link.pc.setRemoteDescription(data.description);
          if (data.description.type === 'offer') {
            await link.pc.setLocalDescription();
            link.signal({ description: link.pc.localDescription.toJSON() });
          }
        } else if (data.candidate) {
          await link.pc.addIceCandidate(data.candidate);
        }
      });
    },

    /// The relay could not pass a signal to `key` (gone offline).
    refused(key) {
      const p = peers.get(key);
      if (p?.link) drop(p, p.link);
    },

    /// Closes the link to `key` as if it had broken.
    close(key) {
      const p = peers.get(key);
      if (p?.link) drop(p, p.link);
    },

    /// The peers this tab has exchanged frames with; with `counts`, how many
    /// frames went each way on each path.
    list({ counts = false } = {}) {
      return [...peers.values()].map(({ key, path, sent, received }) =>
        (counts ? { key, path, sent: { ...sent }, received: { ...received } } : { key, path }));
    },
  };
}

/// The largest message a link's channel takes (both ends agree on it).
function maxMessage(link) {
  return link?.pc.sctp?.maxMessageSize ?? 0;
}

/// Keeps a request sent on `link` until its response comes, dropping those the
/// node has given up on.
function track(link, id, bytes) {
  const now = Date.now();
  for (const [old, { at }] of link.inflight) {
    if (now - at < INFLIGHT_MS) break;
    link.inflight.delete(old);
  }
  link.inflight.set(id, { bytes, at: now });
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/// What a frame's prefix says (src/p2p/frame.rs): kind, whether a relay may
/// keep it, id, and origin and destination keys in hex.
export function route(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return {
    kind: bytes[1],
    mailbox: (bytes[2] & 1) === 1,
    id: Number(view.getBigUint64(3)),
    origin: hex(bytes.subarray(11, 43)),
    destination: hex(bytes.subarray(43, 75)),
  };
}
