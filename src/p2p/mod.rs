//! Peer-to-peer transport between glia nodes: the frame format, the relay's
//! control protocol, the `Transport` trait the core sends through, and an
//! in-process transport for tests.

pub mod frame;
pub mod memory;
pub mod relay;

pub use frame::{Frame, FrameError, Payload, PeerKey};

/// What a transport delivers to the node it serves.
#[derive(Debug)]
pub enum Inbound {
    /// A frame from another node, as it came off the wire.
    Frame(bytes::Bytes),
    /// What became of a frame this node sent, when the network knows before
    /// the destination answers.
    Delivery { to: PeerKey, id: u64, delivery: Delivery },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Kept in the destination's mailbox at a relay, which hands it over when
    /// the destination comes back.
    Stored,
    /// Cannot reach the destination now; the reason is for logs and errors.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
#[error("cannot send to {to}: {reason}")]
pub struct TransportError {
    pub to: PeerKey,
    pub reason: String,
}

/// Carries encoded frames to other nodes. Sending only queues: answers come
/// back as [`Inbound`] through whatever drives the node.
pub trait Transport: crate::store::SendSync {
    fn send(&self, destination: PeerKey, frame: bytes::Bytes) -> Result<(), TransportError>;

    /// The nodes this transport last learned are online, for listings that
    /// span the network (the room directory).
    fn peers(&self) -> Vec<PeerKey> {
        Vec::new()
    }
}
