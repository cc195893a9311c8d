//! An in-process network for tests: nodes in one process exchange encoded
//! frames through channels, with a relay's mailbox for nodes that are offline
//! and partitions that can be made and healed.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures_channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};

use super::{frame::Frame, Delivery, Inbound, PeerKey, Transport, TransportError};
use crate::core::lock;

#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    online: HashMap<PeerKey, UnboundedSender<Inbound>>,
    mailboxes: HashMap<PeerKey, Vec<Bytes>>,
    /// Pairs that cannot reach each other, smaller key first.
    cut: HashSet<(PeerKey, PeerKey)>,
    frames: u64,
    bytes: u64,
}

impl MemoryNetwork {
    pub fn new() -> Self {
        Self::default()
    }

    /// Brings `key` online: what its mailbox holds arrives first.
    pub fn connect(&self, key: PeerKey) -> (MemoryTransport, UnboundedReceiver<Inbound>) {
        let (tx, rx) = unbounded();
        let mut inner = lock(&self.inner);
        for frame in inner.mailboxes.remove(&key).unwrap_or_default() {
            let _ = tx.unbounded_send(Inbound::Frame(frame));
        }
        inner.online.insert(key, tx);
        (MemoryTransport { network: self.clone(), origin: key }, rx)
    }

    pub fn disconnect(&self, key: PeerKey) {
        lock(&self.inner).online.remove(&key);
    }

    /// Takes back frames a node received but did not handle before it went
    /// offline: those that may wait go to its mailbox, as a relay keeps the
    /// frames a node had not acked when it dropped.
    pub fn unhandled(&self, key: PeerKey, frames: impl IntoIterator<Item = Bytes>) {
        let mut inner = lock(&self.inner);
        for frame in frames {
            if Frame::route(&frame).is_ok_and(|route| route.mailbox) {
                inner.mailboxes.entry(key).or_default().push(frame);
            }
        }
    }

    /// Forgets what waits in `key`'s mailbox, as a relay that lost its disk would.
    pub fn lose_mailbox(&self, key: PeerKey) -> usize {
        lock(&self.inner).mailboxes.remove(&key).map_or(0, |frames| frames.len())
    }

    pub fn partition(&self, a: PeerKey, b: PeerKey) {
        lock(&self.inner).cut.insert(pair(a, b));
    }

    pub fn heal(&self, a: PeerKey, b: PeerKey) {
        lock(&self.inner).cut.remove(&pair(a, b));
    }

    /// Frames and bytes carried so far.
    pub fn carried(&self) -> (u64, u64) {
        let inner = lock(&self.inner);
        (inner.frames, inner.bytes)
    }
}

fn pair(a: PeerKey, b: PeerKey) -> (PeerKey, PeerKey) {
    if a < b {
        (a, b)
    } else {
        (b, a)
    }
}

pub struct MemoryTransport {
    network: MemoryNetwork,
    origin: PeerKey,
}

impl Transport for MemoryTransport {
    fn peers(&self) -> Vec<PeerKey> {
        lock(&self.network.inner).online.keys().copied().filter(|key| *key != self.origin).collect()
    }

    fn send(&self, destination: PeerKey, frame: Bytes) -> Result<(), TransportError> {
        let route = Frame::route(&frame).map_err(|err| TransportError { to: destination, reason: err.to_string() })?;
        let mut inner = lock(&self.network.inner);
        let fail = |reason: &str| TransportError { to: destination, reason: reason.into() };
        if !inner.online.contains_key(&self.origin) {
            return Err(fail("this node is offline"));
        }
        if route.origin != self.origin {
            return Err(fail("a node sends frames only as itself"));
        }
        if inner.cut.contains(&pair(self.origin, destination)) {
            return Err(fail("partitioned"));
        }
        if let Some(peer) = inner.online.get(&destination) {
            let len = frame.len() as u64;
            if peer.unbounded_send(Inbound::Frame(frame.clone())).is_ok() {
                inner.frames += 1;
                inner.bytes += len;
                return Ok(());
            }
        }
        let delivery = if route.mailbox {
            inner.mailboxes.entry(destination).or_default().push(frame);
            Delivery::Stored
        } else {
            Delivery::Failed("offline".into())
        };
        if let Some(me) = inner.online.get(&self.origin) {
            let _ = me.unbounded_send(Inbound::Delivery { to: destination, id: route.id, delivery });
        }
        Ok(())
    }
}
