//! The latest entries of rooms' timelines, in memory: every `/sync` reads the
//! end of every room it shows, and in a browser each of those reads would be an
//! IndexedDB transaction. A tail is read from the store once, by a reader
//! holding the write lock, and from then on kept whole by the writer, which
//! appends what each commit adds; so a tail never misses a committed event.

use crate::core::lock;
use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
};

use ruma::{OwnedEventId, OwnedRoomId, RoomId};

use super::StreamPosition;

/// Entries kept per room: more than a sync's timeline limit and the first
/// pages of unread counting.
const TAIL: usize = 64;

/// Rooms whose tails are kept before starting over.
const ROOMS: usize = 4096;

struct Tail {
    /// Oldest first.
    entries: VecDeque<(StreamPosition, OwnedEventId)>,
    /// Whether the entries are the room's whole timeline.
    whole: bool,
}

#[derive(Default)]
pub(super) struct Tails {
    rooms: Mutex<HashMap<OwnedRoomId, Tail>>,
}

impl Tails {
    pub(super) fn has(&self, room_id: &RoomId) -> bool {
        lock(&self.rooms).contains_key(room_id)
    }

    /// Up to `limit` entries before `from` (or the latest), newest first, if
    /// the tail holds them all: `None` when the store must be asked.
    pub(super) fn before(
        &self,
        room_id: &RoomId,
        from: Option<StreamPosition>,
        limit: usize,
    ) -> Option<Vec<(StreamPosition, OwnedEventId)>> {
        let rooms = lock(&self.rooms);
        let tail = rooms.get(room_id)?;
        let page: Vec<_> = tail
            .entries
            .iter()
            .rev()
            .filter(|(position, _)| from.is_none_or(|from| *position < from))
            .take(limit)
            .cloned()
            .collect();
        // Short pages are whole only if nothing older was left out of the tail.
        (page.len() == limit || tail.whole).then_some(page)
    }

    /// The room's latest entries as read from the store, newest first, read
    /// while holding the write lock: `TAIL` of them, or fewer for a room that
    /// has no more.
    pub(super) fn fill(&self, room_id: &RoomId, newest_first: Vec<(StreamPosition, OwnedEventId)>) {
        let whole = newest_first.len() < TAIL;
        let mut rooms = lock(&self.rooms);
        if rooms.len() >= ROOMS {
            rooms.clear();
        }
        rooms.insert(room_id.to_owned(), Tail { entries: newest_first.into_iter().rev().collect(), whole });
    }

    /// Appends a committed entry to the room's tail, if it has one.
    pub(super) fn append(&self, room_id: &RoomId, position: StreamPosition, event_id: OwnedEventId) {
        if let Some(tail) = lock(&self.rooms).get_mut(room_id) {
            tail.entries.push_back((position, event_id));
            if tail.entries.len() > TAIL {
                tail.entries.pop_front();
                tail.whole = false;
            }
        }
    }

    /// Forgets every tail: after a failed write, what landed is unknown.
    pub(super) fn clear(&self) {
        lock(&self.rooms).clear();
    }

    pub(super) const fn size() -> usize {
        TAIL
    }
}

#[cfg(test)]
mod tests {
    use ruma::{owned_event_id, room_id};

    use super::*;

    #[test]
    fn a_tail_answers_only_what_it_holds_whole() {
        let tails = Tails::default();
        let room = room_id!("!a:b");
        assert_eq!(tails.before(room, None, 1), None, "no tail yet");
        tails.fill(room, vec![(2, owned_event_id!("$2")), (1, owned_event_id!("$1"))]);
        assert_eq!(tails.before(room, None, 5).unwrap().len(), 2, "a short room's tail is the whole timeline");
        tails.append(room, 3, owned_event_id!("$3"));
        let page = tails.before(room, Some(3), 1).unwrap();
        assert_eq!(page, vec![(2, owned_event_id!("$2"))]);

        for position in 4..(4 + TAIL as u64) {
            tails.append(room, position, owned_event_id!("$x"));
        }
        assert_eq!(tails.before(room, None, TAIL).unwrap().len(), TAIL);
        assert_eq!(tails.before(room, Some(5), 3), None, "older than the tail: the store must answer");
    }
}
