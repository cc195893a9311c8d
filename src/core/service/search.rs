//! Full-text search over message bodies, room names and topics: an inverted
//! index kept in the store, filled from the rooms' timelines.
//!
//! The index is built behind the write path, not in it: sending a message
//! stays one small commit, and before a search the rooms searched are brought
//! up to date in large batches (cheap in IndexedDB, where per-put costs are
//! small and per-commit costs are not). The index can be rebuilt from the
//! timelines at any time, so nothing is lost if a catch-up is cut short.
//!
//! Key encodings:
//! - `search_postings`: term (lowercase UTF-8), 0, stream position (8 bytes
//!   big-endian) → which keys held it (1 byte: [`BODY`], [`NAME`], [`TOPIC`]),
//!   how often (1 byte), the event's length in words (2 bytes big-endian), its
//!   `origin_server_ts` (8 bytes big-endian), then the room ID. One term's
//!   postings are one prefix range, in stream order; so are all terms starting
//!   with a prefix.
//! - `search_indexed`: room ID → the stream position indexed up to (8 bytes);
//!   the empty key → how many events are indexed in all (8 bytes).
//!
//! (Schema 13 named these anew, for the timestamps: the index of an older
//! node is dropped on upgrade and built again from the rooms.)

use std::{collections::HashMap, sync::Arc};

use ruma::OwnedRoomId;
use serde_json::Value;

use super::rooms::{RoomError, Rooms};
use crate::{
    core::{pdu::Pdu, Homeserver},
    store::{Batch, Direction, KeyRange, Store},
};

pub(crate) const SEARCH: &str = "search_postings";
pub(crate) const SEARCH_PROGRESS: &str = "search_indexed";

/// Which content key of an event a term was found in, as a bit.
pub(crate) const BODY: u8 = 1;
pub(crate) const NAME: u8 = 2;
pub(crate) const TOPIC: u8 = 4;

/// How long the background indexer lets new events settle before indexing
/// them, and how long after start-up it first does.
const SETTLE_MS: u64 = 250;
const STARTUP_MS: u64 = 10_000;
/// Events indexed per commit while catching up.
const CATCH_UP_BATCH: usize = 500;
/// Longer words are not indexed (nor searched): keys stay small, and no one
/// searches for a base64 blob.
const MAX_TERM_CHARS: usize = 40;

/// The words of `text` as the index keeps them: lowercase runs of letters and
/// digits.
pub(crate) fn terms(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty() && word.chars().count() <= MAX_TERM_CHARS)
        .map(str::to_lowercase)
}

/// The searchable text of an event, by key.
fn fields(pdu: &Pdu) -> Vec<(u8, String)> {
    let (key, field) = match pdu.kind.to_string().as_str() {
        "m.room.message" => (BODY, "body"),
        "m.room.name" => (NAME, "name"),
        "m.room.topic" => (TOPIC, "topic"),
        _ => return Vec::new(),
    };
    let Ok(content) = serde_json::from_str::<Value>(pdu.content.get()) else { return Vec::new() };
    match content.get(field).and_then(Value::as_str) {
        Some(text) => vec![(key, text.to_owned())],
        None => Vec::new(),
    }
}

/// One event holding a term.
#[derive(Clone, Debug)]
pub struct Posting {
    pub term: String,
    pub stream: u64,
    pub keys: u8,
    pub count: u8,
    pub words: u16,
    pub origin_server_ts: u64,
    pub room_id: OwnedRoomId,
}

impl Posting {
    fn decode(key: &[u8], value: &[u8]) -> Result<Self, RoomError> {
        let corrupt = || RoomError::corrupt("a bad search index entry");
        let split = key.len().checked_sub(9).filter(|at| key[*at] == 0).ok_or_else(corrupt)?;
        let term = std::str::from_utf8(&key[..split]).map_err(|_| corrupt())?.to_owned();
        let stream = u64::from_be_bytes(key[split + 1..].try_into().map_err(|_| corrupt())?);
        let (head, room) = value.split_at_checked(12).ok_or_else(corrupt)?;
        let room_id = std::str::from_utf8(room).ok().and_then(|r| r.try_into().ok()).ok_or_else(corrupt)?;
        Ok(Self {
            term,
            stream,
            keys: head[0],
            count: head[1],
            words: u16::from_be_bytes([head[2], head[3]]),
            origin_server_ts: u64::from_be_bytes(head[4..].try_into().map_err(|_| corrupt())?),
            room_id,
        })
    }
}

pub struct Search {
    store: Arc<dyn Store>,
    /// One catch-up at a time, so progress only moves forward.
    catching_up: async_lock::Mutex<()>,
}

impl Search {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, catching_up: async_lock::Mutex::new(()) }
    }

    /// Indexes what `rooms` hold beyond what the index has (their timelines,
    /// and what was backfilled into them), `CATCH_UP_BATCH` events a commit.
    pub async fn catch_up(&self, timelines: &Rooms, rooms: &[OwnedRoomId]) -> Result<(), RoomError> {
        let _one = self.catching_up.lock().await;
        let keys: Vec<&[u8]> = rooms.iter().map(|r| r.as_bytes()).chain([&b""[..]]).collect();
        let mut progress = self.store.get_many(SEARCH_PROGRESS, &keys).await?;
        let mut total = number(progress.pop().flatten())?;
        for (room_id, indexed) in rooms.iter().zip(progress) {
            let mut indexed = number(indexed)?;
            // Most rooms searched have had nothing new since the last search.
            let room = timelines.room(room_id).await?;
            if room.stream.max(room.backfilled) <= indexed {
                continue;
            }
            loop {
                let page = timelines.readable_after(room_id, indexed, CATCH_UP_BATCH).await?;
                let Some((last, _)) = page.last() else { break };
                indexed = *last;
                let mut batch = Batch::new();
                for (stream, pdu) in &page {
                    let postings = postings_of(pdu);
                    total += u64::from(!postings.is_empty());
                    for (term, value) in postings {
                        batch = batch.put(SEARCH, posting_key(&term, *stream), value);
                    }
                }
                let batch = batch.put(SEARCH_PROGRESS, room_id.as_bytes(), indexed.to_be_bytes()).put(
                    SEARCH_PROGRESS,
                    Vec::new(),
                    total.to_be_bytes(),
                );
                self.store.write(batch).await?;
                if page.len() < CATCH_UP_BATCH {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Keeps the index close behind the timelines, so that a search seldom
    /// has much to catch up on: after new events, once they have stopped
    /// coming for a moment, so that a burst is indexed in one go and the
    /// writes clients wait for go first. Not in the node's first seconds,
    /// while a client's first `/sync` is under way (in the browser, a worker
    /// just woken); a search catches up by itself anyway.
    pub async fn run(&self, hs: &Homeserver) {
        hs.clock().sleep(STARTUP_MS).await;
        loop {
            hs.notifier().listen().await;
            hs.clock().sleep(SETTLE_MS).await;
            if let Ok(rooms) = hs.rooms().all().await {
                // A store that fails now may not later; the next event retries.
                let _ = self.catch_up(hs.rooms(), &rooms).await;
            }
        }
    }

    /// How many events the index holds, for weighing terms by their rarity.
    pub async fn indexed_events(&self) -> Result<u64, RoomError> {
        number(self.store.get(SEARCH_PROGRESS, b"").await?)
    }

    /// Every posting of every term starting with `prefix`, in stream order.
    pub async fn postings(&self, prefix: &str) -> Result<Vec<Posting>, RoomError> {
        let entries =
            self.store.scan(SEARCH, KeyRange::prefix(prefix.as_bytes()), Direction::Forward, usize::MAX).await?;
        entries.iter().map(|(key, value)| Posting::decode(key, value)).collect()
    }
}

fn number(bytes: Option<Vec<u8>>) -> Result<u64, RoomError> {
    match bytes {
        None => Ok(0),
        Some(bytes) => {
            Ok(u64::from_be_bytes(bytes.try_into().map_err(|_| RoomError::corrupt("a bad search progress entry"))?))
        }
    }
}

/// `batch` with the index entries of the event at `stream` deleted: it was
/// redacted, and its words must not be found. (If the index had not reached
/// it yet, it indexes the redacted event, which has none.)
pub(crate) fn unindex(batch: Batch, pdu: &Pdu, stream: u64) -> Batch {
    postings_of(pdu).into_iter().fold(batch, |batch, (term, _)| batch.delete(SEARCH, posting_key(&term, stream)))
}

fn posting_key(term: &str, stream: u64) -> Vec<u8> {
    [term.as_bytes(), &[0], &stream.to_be_bytes()].concat()
}

/// The index entries of one event: each distinct term with its value.
fn postings_of(pdu: &Pdu) -> Vec<(String, Vec<u8>)> {
    let mut terms: HashMap<String, (u8, u8)> = HashMap::new();
    let mut words = 0u16;
    for (key, text) in fields(pdu) {
        for term in self::terms(&text) {
            words = words.saturating_add(1);
            let entry = terms.entry(term).or_default();
            entry.0 |= key;
            entry.1 = entry.1.saturating_add(1);
        }
    }
    terms
        .into_iter()
        .map(|(term, (keys, count))| {
            let ts = u64::from(pdu.origin_server_ts.0);
            let value = [&[keys, count][..], &words.to_be_bytes(), &ts.to_be_bytes(), pdu.room_id.as_bytes()].concat();
            (term, value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::terms;

    #[test]
    fn terms_are_lowercase_words_of_letters_and_digits() {
        let words: Vec<String> = terms("Hello, wörld! It's 2026 -- ÜBER cool.").collect();
        assert_eq!(words, ["hello", "wörld", "it", "s", "2026", "über", "cool"]);
        assert_eq!(terms(&"x".repeat(41)).count(), 0);
    }
}
