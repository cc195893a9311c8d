//! `POST /search`: full-text search of the rooms the user is in, ranked or by
//! recency, with highlights, context, room state and groupings.
//!
//! Every word of the search term must occur (each as a prefix of an indexed
//! word, so "meet" finds "meeting"). Ranking weighs each word by its rarity
//! across the index and by how often the event holds it (BM25's term
//! saturation, without length normalisation: messages are short).
//!
//! Recent results are ordered by `origin_server_ts`, as their senders sent
//! them, not by when they reached this node: a message backfilled today from
//! last year comes after yesterday's.
//!
//! `next_batch` tokens: `o{n}` for ranked results (the n-th result onwards),
//! `s{ts}_{stream}` for recent ones (the results after that one), so new
//! messages do not shift the pages of a search by recency.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use ruma::{
    api::client::{
        filter::RoomEventFilter,
        search::search_events::{
            self,
            v3::{
                Criteria, EventContextResult, GroupingKey, OrderBy, ResultCategories, ResultGroup, ResultGroupMap,
                ResultRoomEvents, SearchKeys, SearchResult, UserProfile,
            },
        },
    },
    events::StateEventType,
    OwnedMxcUri, OwnedRoomId, UInt,
};

use super::{filter, format, membership::member_content, message, visibility::may_see};
use crate::core::{
    pdu::Pdu,
    service::{
        accounts::Session,
        search::{self, Posting, BODY, NAME, TOPIC},
    },
    Error, Homeserver,
};

const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 100;
/// Context events at most on each side of a result.
const MAX_CONTEXT: usize = 20;
/// BM25's term-frequency saturation.
const K1: f64 = 1.2;

/// `POST /_matrix/client/v3/search`
pub(crate) async fn search(
    hs: &Homeserver,
    session: Session,
    request: search_events::v3::Request,
) -> Result<search_events::v3::Response, Error> {
    let mut categories = ResultCategories::new();
    if let Some(criteria) = &request.search_categories.room_events {
        categories.room_events = room_events(hs, &session, criteria, request.next_batch.as_deref()).await?;
    }
    Ok(search_events::v3::Response::new(categories))
}

/// A candidate result: an event holding every word, with its rank.
struct Hit {
    stream: u64,
    origin_server_ts: u64,
    room_id: OwnedRoomId,
    rank: f64,
}

impl Hit {
    /// Where the hit is in a search by recency, newest last.
    fn recency(&self) -> (u64, u64) {
        (self.origin_server_ts, self.stream)
    }
}

async fn room_events(
    hs: &Homeserver,
    session: &Session,
    criteria: &Criteria,
    next_batch: Option<&str>,
) -> Result<ResultRoomEvents, Error> {
    let by_rank = !matches!(criteria.order_by, Some(OrderBy::Recent));
    let start = Start::parse(next_batch, by_rank)?;
    let room_filter = &criteria.filter;
    let limit = room_filter
        .limit
        .map_or(DEFAULT_LIMIT, |l| usize::try_from(u64::from(l)).unwrap_or(MAX_LIMIT))
        .clamp(1, MAX_LIMIT);
    let keys = match &criteria.keys {
        None => BODY | NAME | TOPIC,
        Some(keys) => keys.iter().fold(0, |mask, key| {
            mask | match key {
                SearchKeys::ContentBody => BODY,
                SearchKeys::ContentName => NAME,
                SearchKeys::ContentTopic => TOPIC,
                _ => 0,
            }
        }),
    };
    let rooms: Vec<OwnedRoomId> = hs
        .rooms()
        .joined_rooms(&session.user_id)
        .await?
        .into_iter()
        .filter(|room_id| filter::room_allowed(room_filter.rooms.as_deref(), &room_filter.not_rooms, room_id))
        .collect();
    let words: BTreeSet<String> = search::terms(&criteria.search_term).collect();
    let mut result = ResultRoomEvents::new();
    if words.is_empty() || rooms.is_empty() || keys == 0 {
        result.count = Some(UInt::MIN);
        return Ok(result);
    }
    hs.search().catch_up(hs.rooms(), &rooms).await?;

    let (mut hits, highlights) = matches(hs, &words, &rooms, keys).await?;
    match by_rank {
        true => hits.sort_by(|a, b| b.rank.total_cmp(&a.rank).then(b.stream.cmp(&a.stream))),
        false => hits.sort_by_key(|hit| std::cmp::Reverse(hit.recency())),
    }
    result.count = Some(UInt::new_saturating(hits.len() as u64));
    result.highlights = highlights;

    let skip = match start {
        Start::Offset(offset) => offset,
        Start::Before(recency) => hits.iter().take_while(|h| h.recency() >= recency).count(),
    };
    let mut page: Vec<(&Hit, Arc<Pdu>)> = Vec::new();
    let mut reached = skip;
    for hit in &hits[skip.min(hits.len())..] {
        reached += 1;
        let Some(pdu) = hs.rooms().event_at(&hit.room_id, hit.stream).await? else { continue };
        if pdu.is_redacted()
            || !filter::room_event_matches(room_filter, &pdu)
            || !may_see(hs, &session.user_id, &pdu).await?
        {
            continue;
        }
        page.push((hit, pdu));
        if page.len() == limit {
            break;
        }
    }
    if let (true, Some((last, _))) = (reached < hits.len(), page.last()) {
        result.next_batch = Some(match by_rank {
            true => format!("o{reached}"),
            false => format!("s{}_{}", last.origin_server_ts, last.stream),
        });
    }

    format::prefetch(hs, page.iter().map(|(_, p)| &**p), session).await?;
    for (hit, pdu) in &page {
        let mut found = SearchResult::new();
        found.rank = by_rank.then_some(hit.rank);
        found.result = Some(format::raw_event(hs, pdu, Some(session)).await?);
        found.context = context(hs, session, criteria, pdu, hit.stream).await?;
        result.results.push(found);
    }
    if criteria.include_state == Some(true) {
        let rooms: BTreeSet<&OwnedRoomId> = page.iter().map(|(_, p)| &p.room_id).collect();
        for room_id in rooms {
            let state = hs.rooms().current_state(room_id).await?;
            let mut events = Vec::new();
            for id in state.values() {
                if let Some(event) = hs.rooms().event(id).await? {
                    events.push(format::raw_event(hs, &event.pdu, Some(session)).await?);
                }
            }
            result.state.insert(room_id.clone(), events);
        }
    }
    for grouping in &criteria.groupings.group_by {
        match grouping.key {
            Some(GroupingKey::RoomId) => {
                result.groups.insert(ResultGroupMap::RoomId(groups(&page, |p| p.room_id.clone())));
            }
            Some(GroupingKey::Sender) => {
                result.groups.insert(ResultGroupMap::Sender(groups(&page, |p| p.sender.clone())));
            }
            _ => {}
        }
    }
    Ok(result)
}

/// Where a page starts.
enum Start {
    Offset(usize),
    Before((u64, u64)),
}

impl Start {
    fn parse(token: Option<&str>, by_rank: bool) -> Result<Self, Error> {
        let Some(token) = token else {
            return Ok(match by_rank {
                true => Self::Offset(0),
                false => Self::Before((u64::MAX, u64::MAX)),
            });
        };
        let bad = || Error::InvalidParam(format!("not a search batch token: {token}"));
        match (by_rank, token.split_at_checked(1)) {
            (true, Some(("o", n))) => Ok(Self::Offset(n.parse().map_err(|_| bad())?)),
            (false, Some(("s", at))) => {
                let (ts, stream) = at.split_once('_').ok_or_else(bad)?;
                Ok(Self::Before((ts.parse().map_err(|_| bad())?, stream.parse().map_err(|_| bad())?)))
            }
            _ => Err(bad()),
        }
    }
}

/// The events of `rooms` holding every word in one of `keys`, ranked, and the
/// indexed words that matched (for clients to highlight).
async fn matches(
    hs: &Homeserver,
    words: &BTreeSet<String>,
    rooms: &[OwnedRoomId],
    keys: u8,
) -> Result<(Vec<Hit>, Vec<String>), Error> {
    let total = hs.search().indexed_events().await?.max(1) as f64;
    let mut scores: Option<HashMap<u64, Hit>> = None;
    let mut highlights = BTreeSet::new();
    for word in words {
        let postings: Vec<Posting> = hs
            .search()
            .postings(word)
            .await?
            .into_iter()
            .filter(|p| p.keys & keys != 0 && rooms.contains(&p.room_id))
            .collect();
        // An event may hold several words with this prefix: count it once, summing.
        let mut per_event: HashMap<u64, (f64, Posting)> = HashMap::new();
        for posting in postings {
            highlights.insert(posting.term.clone());
            let count = f64::from(posting.count);
            per_event.entry(posting.stream).or_insert((0.0, posting)).0 += count;
        }
        let idf = (1.0 + (total - per_event.len() as f64 + 0.5) / (per_event.len() as f64 + 0.5)).ln();
        let weight = |count: f64| idf * count * (K1 + 1.0) / (count + K1);
        scores = Some(match scores {
            None => per_event
                .into_iter()
                .map(|(stream, (count, posting))| {
                    let Posting { origin_server_ts, room_id, .. } = posting;
                    (stream, Hit { stream, origin_server_ts, room_id, rank: weight(count) })
                })
                .collect(),
            Some(mut scores) => {
                scores.retain(|stream, _| per_event.contains_key(stream));
                for (stream, hit) in &mut scores {
                    hit.rank += weight(per_event[stream].0);
                }
                scores
            }
        });
    }
    let hits = scores.unwrap_or_default().into_values().collect();
    Ok((hits, highlights.into_iter().collect()))
}

/// The events around a result, as the criteria ask, with their senders' profiles.
async fn context(
    hs: &Homeserver,
    session: &Session,
    criteria: &Criteria,
    pdu: &Pdu,
    stream: u64,
) -> Result<EventContextResult, Error> {
    let asked = &criteria.event_context;
    let limit = |l: UInt| usize::try_from(u64::from(l)).unwrap_or(MAX_CONTEXT).min(MAX_CONTEXT);
    let (before_limit, after_limit) = (limit(asked.before_limit), limit(asked.after_limit));
    let mut context = EventContextResult::new();
    if before_limit == 0 && after_limit == 0 && !asked.include_profile {
        return Ok(context);
    }
    let position = (u64::from(pdu.depth), stream);
    let none = RoomEventFilter::default();
    let around = message::around(hs, &session.user_id, pdu, position, (before_limit, after_limit), &none).await?;
    (context.start, context.end) = (Some(around.start), Some(around.end));
    let mut senders = BTreeSet::from([pdu.sender.clone()]);
    for (_, event) in &around.before {
        senders.insert(event.sender.clone());
        context.events_before.push(format::raw_event(hs, event, Some(session)).await?);
    }
    for (_, event) in &around.after {
        senders.insert(event.sender.clone());
        context.events_after.push(format::raw_event(hs, event, Some(session)).await?);
    }
    if asked.include_profile {
        let state = hs.rooms().current_state(&pdu.room_id).await?;
        for sender in senders {
            let Some(member) = hs.rooms().state_event_in(&state, &StateEventType::RoomMember, sender.as_str()).await?
            else {
                continue;
            };
            let content = member_content(&member.content);
            let mut profile = UserProfile::new();
            profile.displayname = content.displayname;
            profile.avatar_url = content.avatar_url.map(OwnedMxcUri::from);
            context.profile_info.insert(sender, profile);
        }
    }
    Ok(context)
}

/// The page's results grouped by `key`, groups ordered by their best result.
fn groups<K: Ord>(page: &[(&Hit, Arc<Pdu>)], key: impl Fn(&Pdu) -> K) -> BTreeMap<K, ResultGroup> {
    let mut groups: BTreeMap<K, ResultGroup> = BTreeMap::new();
    for (position, (_, pdu)) in page.iter().enumerate() {
        let group = groups.entry(key(pdu)).or_default();
        group.order.get_or_insert(UInt::new_saturating(position as u64 + 1));
        group.results.push(pdu.event_id.clone());
    }
    groups
}
