//! The homeserver's services over the store, one module per area.

pub mod accounts;
pub mod aliases;
pub mod backup;
pub(crate) mod cache;
pub mod directory;
pub mod ephemeral;
pub mod events;
pub(crate) mod expiring;
pub mod federation;
pub mod keys;
pub mod media;
pub(crate) mod memo;
pub mod notifier;
pub mod pushers;
pub mod relations;
pub mod reports;
pub mod rooms;
pub mod search;
pub mod sender;
pub mod state;
pub mod to_device;
pub mod transactions;
pub mod user_data;

/// `room_id`, a 0 byte, then `suffix`: the key layout of every per-room table.
/// Room IDs never contain a 0 byte, so one room's keys are one prefix range.
pub(crate) fn room_key(room_id: &ruma::RoomId, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(room_id.as_str().len() + 1 + suffix.len());
    key.extend_from_slice(room_id.as_bytes());
    key.push(0);
    key.extend_from_slice(suffix);
    key
}

#[cfg(all(test, not(target_arch = "wasm32")))]
pub(crate) mod tests;

#[cfg(all(test, target_arch = "wasm32"))]
mod browser_tests;
