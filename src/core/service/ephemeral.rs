//! Typing notices and presence: kept in memory only, as they mean nothing after
//! a while. Changes are numbered in a stream that starts at the clock's time, so
//! positions keep growing across restarts and a client's `since` is never ahead.

use crate::core::lock;
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use ruma::{presence::PresenceState, OwnedRoomId, OwnedUserId, RoomId, UserId};

use super::notifier::Notifier;
use crate::core::Clock;

/// The longest a client may say it will keep typing.
const MAX_TYPING_MS: u64 = 120_000;

#[derive(Clone, Debug)]
pub struct Presence {
    pub state: PresenceState,
    pub status_msg: Option<String>,
    pub last_active: u64,
    pub stream: u64,
}

#[derive(Default)]
struct RoomTyping {
    /// Who is typing, until when (ms).
    users: HashMap<OwnedUserId, u64>,
    stream: u64,
}

pub struct Ephemeral {
    clock: Arc<dyn Clock>,
    notifier: Arc<Notifier>,
    stream: AtomicU64,
    typing: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
    presence: Mutex<HashMap<OwnedUserId, Presence>>,
}

impl Ephemeral {
    pub fn new(clock: Arc<dyn Clock>, notifier: Arc<Notifier>) -> Self {
        let start = clock.now_millis();
        Self {
            clock,
            notifier,
            stream: AtomicU64::new(start),
            typing: Default::default(),
            presence: Default::default(),
        }
    }

    pub fn position(&self) -> u64 {
        self.expire_typing();
        self.stream.load(Ordering::SeqCst)
    }

    fn next(&self) -> u64 {
        self.stream.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub fn set_typing(&self, room: &RoomId, user: &UserId, timeout_ms: Option<u64>) {
        let now = self.clock.now_millis();
        {
            let mut typing = lock(&self.typing);
            let room = typing.entry(room.to_owned()).or_default();
            let changed = match timeout_ms {
                Some(timeout) => room.users.insert(user.to_owned(), now + timeout.min(MAX_TYPING_MS)).is_none(),
                None => room.users.remove(user).is_some(),
            };
            if !changed {
                return;
            }
            room.stream = self.next();
        }
        self.notifier.notify();
    }

    /// Who types in `room`, if that changed after `since`.
    pub fn typing_since(&self, room: &RoomId, since: u64) -> Option<Vec<OwnedUserId>> {
        let typing = lock(&self.typing);
        let room = typing.get(room).filter(|r| r.stream > since)?;
        let mut users: Vec<_> = room.users.keys().cloned().collect();
        users.sort();
        Some(users)
    }

    /// When the next typing notice runs out, for long-polls to wake then.
    pub fn next_typing_expiry(&self) -> Option<u64> {
        lock(&self.typing).values().flat_map(|r| r.users.values().copied()).min()
    }

    /// Ends the notices that ran out, as a change others see.
    fn expire_typing(&self) {
        let now = self.clock.now_millis();
        let mut typing = lock(&self.typing);
        let mut expired = false;
        for room in typing.values_mut() {
            let before = room.users.len();
            room.users.retain(|_, until| *until > now);
            if room.users.len() != before {
                room.stream = self.next();
                expired = true;
            }
        }
        typing.retain(|_, room| !room.users.is_empty() || room.stream > 0);
        drop(typing);
        if expired {
            self.notifier.notify();
        }
    }

    /// Sets a user's presence; `true` if that changed it (not just its time).
    pub fn set_presence(&self, user: &UserId, state: PresenceState, status_msg: Option<Option<String>>) -> bool {
        let now = self.clock.now_millis();
        {
            let mut presence = lock(&self.presence);
            let old = presence.get(user);
            let status_msg = match status_msg {
                Some(msg) => msg,
                None => old.and_then(|p| p.status_msg.clone()),
            };
            if old.is_some_and(|p| p.state == state && p.status_msg == status_msg) {
                if let Some(p) = presence.get_mut(user) {
                    p.last_active = now;
                }
                return false;
            }
            let stream = self.next();
            presence.insert(user.to_owned(), Presence { state, status_msg, last_active: now, stream });
        }
        self.notifier.notify();
        true
    }

    /// Notes that the user is active, without changing their presence.
    pub fn touch(&self, user: &UserId) {
        if let Some(presence) = lock(&self.presence).get_mut(user) {
            presence.last_active = self.clock.now_millis();
        }
    }

    pub fn presence(&self, user: &UserId) -> Option<Presence> {
        lock(&self.presence).get(user).cloned()
    }

    /// Presence of `users` changed after `since`.
    pub fn presence_since(&self, users: &[OwnedUserId], since: u64) -> Vec<(OwnedUserId, Presence)> {
        let presence = lock(&self.presence);
        users
            .iter()
            .filter_map(|u| presence.get(u).filter(|p| p.stream > since).map(|p| (u.clone(), p.clone())))
            .collect()
    }
}
