//! Peer-to-peer transport between glia nodes: frames, the peer table and the
//! `Transport` trait. Arrives with federation; the module is the boundary the
//! core's outbound frame queue will cross.
