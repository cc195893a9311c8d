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

/// An online user of this node with no activity for this long shows as
/// unavailable, and one who has stopped syncing for this long as offline
/// (clients long-poll for 30 s at most, so a live client never looks gone).
const IDLE_MS: u64 = 5 * 60_000;
const GONE_MS: u64 = 2 * 60_000;
/// Another node's user not heard of for this long shows as offline: that
/// node refreshes its online users' presence well within it.
const REMOTE_EXPIRY_MS: u64 = 30 * 60_000;
/// How often an online user's presence goes out unchanged, so other nodes
/// keep showing them online; and the least time between two updates of one
/// user, so a client flapping its presence does not flood the network.
pub(crate) const PRESENCE_REFRESH_MS: u64 = 20 * 60_000;
const PRESENCE_MIN_INTERVAL_MS: u64 = 2_000;

#[derive(Clone, Debug)]
pub struct Presence {
    pub state: PresenceState,
    pub status_msg: Option<String>,
    /// When the user last did something (ms).
    pub last_active: u64,
    /// When this node last heard from the user or of them (ms).
    seen: u64,
    /// Whether the user is another node's.
    remote: bool,
    pub stream: u64,
}

impl Presence {
    /// The presence as it stands at `now`: what was set, unless the user has
    /// since gone idle or quiet.
    fn at(mut self, now: u64) -> Self {
        let quiet = now.saturating_sub(self.seen);
        self.state = match (&self.state, self.remote) {
            (_, true) if quiet > REMOTE_EXPIRY_MS => PresenceState::Offline,
            (_, false) if quiet > GONE_MS => PresenceState::Offline,
            (PresenceState::Online, false) if now.saturating_sub(self.last_active) > IDLE_MS => {
                PresenceState::Unavailable
            }
            (state, _) => state.clone(),
        };
        self
    }
}

/// What was last sent to other nodes of a user's presence, and when.
struct Sent {
    state: PresenceState,
    status_msg: Option<String>,
    at: u64,
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
    sent: Mutex<HashMap<OwnedUserId, Sent>>,
    /// Users whose presence is to be sent to other nodes, and from when it may
    /// go (ms): at once, or when the rate limit lets it.
    held: Mutex<HashMap<OwnedUserId, u64>>,
    /// Wakes the task that sends them, without waking every `/sync`.
    held_changed: Notifier,
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
            sent: Default::default(),
            held: Default::default(),
            held_changed: Notifier::default(),
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

    /// Sets the presence of a user of this node, who is active now.
    pub fn set_presence(&self, user: &UserId, state: PresenceState, status_msg: Option<Option<String>>) {
        let now = self.clock.now_millis();
        self.update(user, state, status_msg, now, false);
    }

    /// Sets the presence of another node's user, active `ago` ms before now.
    pub fn set_remote_presence(&self, user: &UserId, state: PresenceState, status_msg: Option<String>, ago: u64) {
        let now = self.clock.now_millis();
        self.update(user, state, Some(status_msg), now.saturating_sub(ago), true);
    }

    fn update(
        &self,
        user: &UserId,
        state: PresenceState,
        status_msg: Option<Option<String>>,
        active: u64,
        remote: bool,
    ) {
        let now = self.clock.now_millis();
        {
            let mut presence = lock(&self.presence);
            let old = presence.get(user).map(|p| p.clone().at(now));
            let status_msg = match status_msg {
                Some(msg) => msg,
                None => old.as_ref().and_then(|p| p.status_msg.clone()),
            };
            let unchanged = old.as_ref().is_some_and(|p| p.state == state && p.status_msg == status_msg);
            // Only a change is news to clients; the times are kept either way.
            let stream = match (unchanged, &old) {
                (true, Some(old)) => old.stream,
                _ => self.next(),
            };
            let last_active = old.as_ref().map_or(active, |p| p.last_active.max(active));
            presence.insert(user.to_owned(), Presence { state, status_msg, last_active, seen: now, remote, stream });
            if unchanged {
                return;
            }
        }
        self.notifier.notify();
    }

    /// Notes that a user of this node is still there (syncing), and, if
    /// `active`, doing something.
    pub fn touch(&self, user: &UserId, active: bool) {
        let now = self.clock.now_millis();
        if let Some(presence) = lock(&self.presence).get_mut(user) {
            presence.seen = now;
            if active {
                presence.last_active = now;
            }
        }
    }

    /// A user's presence as it stands now.
    pub fn presence(&self, user: &UserId) -> Option<Presence> {
        let now = self.clock.now_millis();
        lock(&self.presence).get(user).map(|p| p.clone().at(now))
    }

    /// The presence of a user of this node to send to other nodes now, if it
    /// differs from what was last sent or is due for a refresh. Recorded as
    /// sent; news too soon after the last update is held for
    /// [`Ephemeral::held_presence`] instead.
    pub fn presence_to_send(&self, user: &UserId) -> Option<Presence> {
        let now = self.clock.now_millis();
        let presence = self.presence(user)?;
        let mut sent = lock(&self.sent);
        if let Some(last) = sent.get(user) {
            let news = last.state != presence.state || last.status_msg != presence.status_msg;
            let stale = presence.state != PresenceState::Offline && now.saturating_sub(last.at) >= PRESENCE_REFRESH_MS;
            if !news && !stale {
                return None;
            }
            if now.saturating_sub(last.at) < PRESENCE_MIN_INTERVAL_MS {
                lock(&self.held).insert(user.to_owned(), last.at + PRESENCE_MIN_INTERVAL_MS);
                self.held_changed.notify();
                return None;
            }
        }
        let record = Sent { state: presence.state.clone(), status_msg: presence.status_msg.clone(), at: now };
        sent.insert(user.to_owned(), record);
        Some(presence)
    }

    /// Has the presence of a user of this node sent to other nodes soon, if it
    /// is news or due for a refresh ([`Ephemeral::presence_to_send`] decides),
    /// by the task that sends [`Ephemeral::held_presence`]: finding the servers
    /// that share a room with the user reads every room's state, which a
    /// request (a client's first `/sync`, say) should not wait for.
    pub fn announce_presence(&self, user: &UserId) {
        let now = self.clock.now_millis();
        // A user held for the rate limit stays held until then.
        lock(&self.held).entry(user.to_owned()).or_insert(now);
        self.held_changed.notify();
    }

    /// A listener that wakes when [`Ephemeral::held_presence`] may have changed.
    pub fn listen_held(&self) -> event_listener::EventListener {
        self.held_changed.listen()
    }

    /// The users whose held news may go now, taken off the list, and when the
    /// next may (ms).
    pub fn held_presence(&self) -> (Vec<OwnedUserId>, Option<u64>) {
        let now = self.clock.now_millis();
        let mut held = lock(&self.held);
        let due: Vec<OwnedUserId> = held.iter().filter(|(_, at)| **at <= now).map(|(u, _)| u.clone()).collect();
        for user in &due {
            held.remove(user);
        }
        (due, held.values().min().copied())
    }

    /// Presence of `users` changed after `since`.
    pub fn presence_since(&self, users: &[OwnedUserId], since: u64) -> Vec<(OwnedUserId, Presence)> {
        let now = self.clock.now_millis();
        let presence = lock(&self.presence);
        users
            .iter()
            .filter_map(|u| presence.get(u).filter(|p| p.stream > since).map(|p| (u.clone(), p.clone().at(now))))
            .collect()
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::sync::{atomic::Ordering, Arc};

    use ruma::{presence::PresenceState, UserId};

    use super::*;
    use crate::core::service::tests::FixedClock;

    const START: u64 = 1_700_000_000_000;

    fn ephemeral() -> (Ephemeral, Arc<FixedClock>) {
        let clock = Arc::new(FixedClock(START.into()));
        (Ephemeral::new(clock.clone(), Arc::default()), clock)
    }

    fn at(clock: &FixedClock, ms: u64) {
        clock.0.store(START + ms, Ordering::Relaxed);
    }

    #[test]
    fn presence_goes_idle_then_offline_unless_the_user_is_seen() {
        let (ephemeral, clock) = ephemeral();
        let alice = UserId::parse("@alice:a").unwrap();
        let state = |ephemeral: &Ephemeral| ephemeral.presence(&alice).unwrap().state;
        ephemeral.set_presence(&alice, PresenceState::Online, None);
        // Syncing keeps the user there, not active: idle shows as unavailable.
        for minute in 1..=6 {
            at(&clock, minute * 60_000);
            ephemeral.touch(&alice, false);
        }
        assert_eq!(state(&ephemeral), PresenceState::Unavailable);
        ephemeral.touch(&alice, true);
        assert_eq!(state(&ephemeral), PresenceState::Online);
        at(&clock, 6 * 60_000 + GONE_MS + 1_000);
        assert_eq!(state(&ephemeral), PresenceState::Offline);

        // Another node's user stays as told until that node goes quiet.
        let bob = UserId::parse("@bob:b").unwrap();
        ephemeral.set_remote_presence(&bob, PresenceState::Online, None, 10_000);
        let bob_now = ephemeral.presence(&bob).unwrap();
        assert_eq!(
            (bob_now.state, clock.0.load(Ordering::Relaxed) - bob_now.last_active >= 10_000),
            (PresenceState::Online, true)
        );
        at(&clock, 6 * 60_000 + GONE_MS + REMOTE_EXPIRY_MS + 5_000);
        assert_eq!(ephemeral.presence(&bob).unwrap().state, PresenceState::Offline);
    }

    #[test]
    fn updates_to_other_nodes_are_rate_limited_and_refreshed() {
        let (ephemeral, clock) = ephemeral();
        let alice = UserId::parse("@alice:a").unwrap();
        let sent = |ephemeral: &Ephemeral| ephemeral.presence_to_send(&alice).map(|p| p.state);
        assert_eq!(sent(&ephemeral), None, "nothing to send before any presence");
        ephemeral.set_presence(&alice, PresenceState::Online, None);
        assert_eq!(sent(&ephemeral), Some(PresenceState::Online));
        assert_eq!(sent(&ephemeral), None, "unchanged");
        // A flapping client: changes within the interval wait for the next chance.
        ephemeral.set_presence(&alice, PresenceState::Unavailable, None);
        ephemeral.set_presence(&alice, PresenceState::Online, None);
        ephemeral.set_presence(&alice, PresenceState::Unavailable, None);
        assert_eq!(sent(&ephemeral), None);
        let (due, next) = ephemeral.held_presence();
        assert!(due.is_empty() && next.is_some_and(|at| at >= START + PRESENCE_MIN_INTERVAL_MS), "{next:?}");
        at(&clock, PRESENCE_MIN_INTERVAL_MS + 10);
        assert_eq!(ephemeral.held_presence(), (vec![alice.clone()], None));
        assert_eq!(sent(&ephemeral), Some(PresenceState::Unavailable));
        ephemeral.set_presence(&alice, PresenceState::Online, None);
        at(&clock, 2 * PRESENCE_MIN_INTERVAL_MS + 20);
        assert_eq!(sent(&ephemeral), Some(PresenceState::Online));
        // Unchanged, it goes out again when due, so other nodes keep it.
        at(&clock, 2 * PRESENCE_MIN_INTERVAL_MS + 20 + PRESENCE_REFRESH_MS / 2);
        ephemeral.touch(&alice, true);
        assert_eq!(sent(&ephemeral), None);
        at(&clock, 2 * PRESENCE_MIN_INTERVAL_MS + 30 + PRESENCE_REFRESH_MS);
        ephemeral.touch(&alice, true);
        assert_eq!(sent(&ephemeral), Some(PresenceState::Online));
    }

    #[test]
    fn announced_presence_is_due_at_once_unless_the_rate_limit_holds_it() {
        let (ephemeral, clock) = ephemeral();
        let alice = UserId::parse("@alice:a").unwrap();
        ephemeral.set_presence(&alice, PresenceState::Online, None);
        let woken = ephemeral.listen_held();
        ephemeral.announce_presence(&alice);
        assert!(futures_util::FutureExt::now_or_never(woken).is_some(), "the sending task is woken");
        assert_eq!(ephemeral.held_presence(), (vec![alice.clone()], None));
        assert!(ephemeral.presence_to_send(&alice).is_some());

        // News too soon after is held; announcing it again does not bring it forward.
        ephemeral.set_presence(&alice, PresenceState::Unavailable, None);
        assert!(ephemeral.presence_to_send(&alice).is_none());
        ephemeral.announce_presence(&alice);
        let (due, next) = ephemeral.held_presence();
        assert!(due.is_empty() && next.is_some_and(|at| at >= START + PRESENCE_MIN_INTERVAL_MS), "{next:?}");
        at(&clock, PRESENCE_MIN_INTERVAL_MS + 10);
        assert_eq!(ephemeral.held_presence(), (vec![alice.clone()], None));
        assert_eq!(ephemeral.presence_to_send(&alice).map(|p| p.state), Some(PresenceState::Unavailable));
    }
}
