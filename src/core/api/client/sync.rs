//! `GET /sync`: what changed for a user since a position in the node's streams,
//! waiting on the notifier until something does or the timeout runs out.
//!
//! A room shows up with its timeline after `since` (the latest `limit` events,
//! `limited` with a `prev_batch` if there were more), the state between `since`
//! and the start of that timeline, its ephemeral events (typing, receipts) and
//! account data. Rooms the user joined since, and every room on an initial sync,
//! come with their whole state at the start of the timeline.
//!
//! Beside rooms come the device's to-device messages, kept until a sync from
//! a later position acknowledges them, its one-time key counts, and whose
//! device lists changed or were left.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use futures_util::{
    future::{join, select, try_join4},
    stream, StreamExt, TryStreamExt,
};
use ruma::{
    api::client::{
        filter::{FilterDefinition, RoomEventFilter},
        sync::sync_events::{
            v3::{self, Filter as SyncFilter, InvitedRoom, JoinedRoom, LeftRoom, State, StateEvents},
            UnreadNotificationsCount,
        },
    },
    events::{room::member::MembershipState, StateEventType},
    presence::PresenceState,
    serde::Raw,
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt,
};
use serde_json::{json, value::to_raw_value, Value};

use super::{
    filter, format, keys, push,
    tokens::{self, SyncToken},
    visibility,
};
use crate::{
    core::{
        pdu::Pdu,
        service::{
            accounts::Session,
            keys::Available,
            rooms::{StreamPosition, UserMembership},
            state::State as RoomState,
            to_device::Message,
        },
        Error, Homeserver,
    },
    store::Direction,
};

/// Rooms a sync builds at once.
const ROOMS_AT_ONCE: usize = 16;

/// How a room appears in a sync, decided before it is built; with the account
/// data of the room that goes with it.
enum Build {
    Joined(Vec<Value>),
    Invited,
    Left(Vec<Value>),
}

enum Built {
    Joined(Option<v3::JoinedRoom>),
    Invited(v3::InvitedRoom),
    Left(v3::LeftRoom),
}

/// To-device messages per response, as the spec suggests.
const TO_DEVICE_AT_ONCE: usize = 100;

/// Timeline events per room when the filter names no limit.
const DEFAULT_LIMIT: usize = 10;

/// The most timeline events per room a filter may ask for.
const MAX_LIMIT: usize = 100;

/// The state types a client gets in an invite, to show the room before joining.
const INVITE_STATE: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.encryption",
];

/// The events of `state` an invite from `inviter` shows: [`INVITE_STATE`] and
/// the inviter's own membership, so the invitee sees who asks.
pub(crate) fn invite_state<'s>(state: &'s RoomState, inviter: &ruma::UserId) -> Vec<&'s ruma::EventId> {
    INVITE_STATE
        .iter()
        .map(|kind| ((*kind).into(), String::new()))
        .chain([(StateEventType::RoomMember, inviter.to_string())])
        .filter_map(|key| state.get(&key).map(|id| &**id))
        .collect()
}

/// `GET /_matrix/client/v3/sync`
pub(crate) async fn sync(hs: &Homeserver, session: Session, request: v3::Request) -> Result<v3::Response, Error> {
    let since = request.since.as_deref().map(SyncToken::parse).transpose()?;
    let filter = match &request.filter {
        None => FilterDefinition::default(),
        Some(SyncFilter::FilterDefinition(filter)) => filter.clone(),
        Some(SyncFilter::FilterId(id)) => {
            let bytes = hs.user_data().filter(&session.user_id, id).await?;
            let bytes = bytes.ok_or_else(|| Error::InvalidParam(format!("no filter {id}")))?;
            serde_json::from_slice(&bytes).map_err(Error::internal)?
        }
        Some(_) => FilterDefinition::default(),
    };
    // Syncing marks an offline user online, but leaves a status the user set
    // (unavailable, say) alone, as Synapse does.
    let current = hs.ephemeral().presence(&session.user_id).map(|p| p.state);
    match request.set_presence {
        PresenceState::Online if matches!(current, None | Some(PresenceState::Offline)) => {
            hs.ephemeral().set_presence(&session.user_id, PresenceState::Online, None)
        }
        PresenceState::Unavailable => hs.ephemeral().set_presence(&session.user_id, PresenceState::Unavailable, None),
        _ => hs.ephemeral().touch(&session.user_id, false),
    }
    if let Some(since) = since {
        // The client has what the response that handed out `since` carried.
        hs.to_device().acknowledge(&session.user_id, &session.device_id, since.user).await?;
    }
    let timeout = request.timeout.map_or(0, |t| t.as_millis() as u64).min(hs.limits().long_poll_ms);
    let deadline = hs.clock().now_millis() + timeout;
    let sync = Sync { hs, session: &session, since, filter: &filter, full_state: request.full_state };
    // The user's presence goes to other servers once this request has read
    // its answer: finding who shares a room with the user reads every room's
    // state, which a first sync's own reads would otherwise queue behind.
    let mut announce = Some(&session.user_id);
    loop {
        // Listen before reading, so a change made while this request reads is
        // not missed by its wait.
        let listener = hs.notifier().listen();
        let now = SyncToken {
            events: hs.rooms().position().await?,
            user: hs.user_data().position().await?,
            ephemeral: hs.ephemeral().position(),
        };
        let response = sync.build(now).await?;
        if let Some(user) = announce.take() {
            hs.ephemeral().announce_presence(user);
        }
        let remaining = deadline.saturating_sub(hs.clock().now_millis());
        if since.is_none() || request.full_state || remaining == 0 || has_news(&response) {
            return Ok(response);
        }
        // Typing notices end on a timer, not a write: wake up for the next one.
        let wake = match hs.ephemeral().next_typing_expiry() {
            Some(at) => remaining.min(at.saturating_sub(hs.clock().now_millis()) + 1),
            None => remaining,
        };
        let sleep = hs.clock().sleep(wake);
        futures_util::pin_mut!(listener);
        // Whichever comes first; either way, look again.
        select(listener, sleep).await;
    }
}

/// The room's state after its last event at or before stream position `position`.
pub(crate) async fn state_after_position(
    hs: &Homeserver,
    room_id: &RoomId,
    position: StreamPosition,
) -> Result<Arc<RoomState>, Error> {
    let last = hs.rooms().timeline(room_id, Some(position + 1), Direction::Backward, 1).await?;
    let Some((_, pdu)) = last.first() else { return Ok(Arc::default()) };
    let event = hs.rooms().event(&pdu.event_id).await?;
    let group = event.map(|e| e.record.state_after);
    match group {
        Some(group) => Ok(hs.rooms().state_group(group).await?),
        None => Ok(Arc::default()),
    }
}

/// A state event as an invite shows it.
fn stripped(pdu: &Pdu) -> Result<Value, Error> {
    let content: Value = serde_json::from_str(pdu.content.get()).map_err(Error::internal)?;
    Ok(json!({ "type": pdu.kind.to_string(), "state_key": pdu.state_key, "content": content, "sender": pdu.sender }))
}

fn has_news(response: &v3::Response) -> bool {
    !response.rooms.is_empty()
        || !response.presence.is_empty()
        || !response.account_data.is_empty()
        || !response.to_device.is_empty()
        || !response.device_lists.is_empty()
}

struct Sync<'a> {
    hs: &'a Homeserver,
    session: &'a Session,
    since: Option<SyncToken>,
    filter: &'a FilterDefinition,
    full_state: bool,
}

impl Sync<'_> {
    async fn build(&self, mut now: SyncToken) -> Result<v3::Response, Error> {
        let hs = self.hs;
        let user = &self.session.user_id;
        // A response hands out the user data stream only up to its last
        // to-device message, so that syncing from it acknowledges no more.
        let device = &self.session.device_id;
        let since_user = self.since.map_or(0, |s| s.user);
        // Read at once: on IndexedDB each is a round trip, and in a worker just
        // started, a slow one (a first touch of each table).
        let (pending, available, account_data, rooms) = try_join4(
            hs.to_device().pending(user, device, now.user, TO_DEVICE_AT_ONCE),
            hs.keys().available(user, device),
            hs.user_data().account_data_since(user, since_user),
            hs.rooms().rooms_of(user),
        )
        .await?;
        let (to_device, through) = pending;
        now.user = through;
        let mut response = v3::Response::new(now.to_string());
        let room_filter = &self.filter.room;
        self.encryption(&mut response, now, to_device, available).await?;

        // Account data of the user and of each room, changed since `since`.
        let mut room_account_data: HashMap<OwnedRoomId, Vec<Value>> = HashMap::new();
        for (room, kind, entry) in account_data {
            if entry.stream > now.user {
                continue;
            }
            let content: Value = serde_json::from_str(entry.content.get()).map_err(Error::internal)?;
            let event = json!({ "type": kind, "content": content });
            match room {
                Some(room) => room_account_data.entry(room).or_default().push(event),
                None if filter::type_allowed(&self.filter.account_data, &kind) => {
                    response.account_data.events.push(format::to_raw(&event)?);
                }
                None => {}
            }
        }
        // Push rules are account data clients read from sync; a new account has the defaults.
        if self.since.is_none() && hs.user_data().account_data(user, None, push::PUSH_RULES).await?.is_none() {
            response.account_data.events.push(format::to_raw(&push::default_rules_event(user)?)?);
        }

        // Which rooms to build and how, then the rooms built at once: on
        // IndexedDB each read is a round trip, and a room's reads overlap
        // other rooms' instead of queueing behind them.
        let mut members_seen = BTreeSet::new();
        let mut builds = Vec::new();
        for (room_id, membership) in rooms.iter() {
            if !filter::room_allowed(room_filter.rooms.as_deref(), &room_filter.not_rooms, room_id) {
                continue;
            }
            let since_events = self.since.map(|s| s.events);
            let changed_since = |since: Option<u64>| since.is_none_or(|since| membership.stream > since);
            let build = match membership.membership {
                MembershipState::Join => {
                    members_seen.insert(room_id.clone());
                    Build::Joined(room_account_data.remove(room_id).unwrap_or_default())
                }
                MembershipState::Invite if changed_since(since_events) && membership.stream <= now.events => {
                    Build::Invited
                }
                MembershipState::Leave | MembershipState::Ban
                    if membership.stream <= now.events
                        && (since_events.is_some_and(|s| membership.stream > s) || room_filter.include_leave) =>
                {
                    Build::Left(room_account_data.remove(room_id).unwrap_or_default())
                }
                _ => continue,
            };
            builds.push((room_id, membership, build));
        }
        let room_ids: Vec<&RoomId> = builds.iter().map(|(room_id, ..)| &***room_id).collect();
        hs.rooms().prefetch_rooms(&room_ids).await?;
        let mut rooms_built = Vec::with_capacity(builds.len());
        for (room_id, membership, build) in builds {
            rooms_built.push(self.room(room_id, membership, now, build));
        }
        let built: Vec<_> = stream::iter(rooms_built).buffered(ROOMS_AT_ONCE).try_collect().await?;
        for (room_id, room) in built {
            match room {
                Built::Joined(Some(joined)) => drop(response.rooms.join.insert(room_id, joined)),
                Built::Joined(None) => {}
                Built::Invited(invited) => drop(response.rooms.invite.insert(room_id, invited)),
                Built::Left(left) => drop(response.rooms.leave.insert(room_id, left)),
            }
        }
        self.presence(&mut response, &members_seen, now).await?;
        Ok(response)
    }

    /// The device's key counts, its to-device messages, and whose devices it
    /// must look at again or may forget since `since`.
    async fn encryption(
        &self,
        response: &mut v3::Response,
        now: SyncToken,
        to_device: Vec<Message>,
        available: Available,
    ) -> Result<(), Error> {
        let (hs, session) = (self.hs, self.session);
        response.device_one_time_keys_count = keys::client_counts(available.counts);
        response.device_unused_fallback_key_types = Some(available.unused_fallback);
        for message in to_device {
            response.to_device.events.push(Raw::from_json(to_raw_value(&message).map_err(Error::internal)?));
        }
        if let Some(since) = self.since {
            let (changed, left) = keys::device_list_changes(hs, &session.user_id, since, now).await?;
            response.device_lists.changed = changed.into_iter().collect();
            response.device_lists.left = left.into_iter().collect();
        }
        Ok(())
    }

    fn timeline_filter(&self) -> &RoomEventFilter {
        &self.filter.room.timeline
    }

    fn limit(&self) -> usize {
        self.timeline_filter()
            .limit
            .map_or(DEFAULT_LIMIT, |l| usize::try_from(l).unwrap_or(MAX_LIMIT))
            .clamp(1, MAX_LIMIT)
    }

    /// The room's events in the stream after `from` up to `to` that the user
    /// may see (those from `member_since` on are: the user has been joined
    /// since), the latest `limit` of them, and whether there were more.
    async fn timeline(
        &self,
        room_id: &RoomId,
        from: Option<StreamPosition>,
        to: StreamPosition,
        member_since: Option<StreamPosition>,
    ) -> Result<(Vec<(StreamPosition, Arc<Pdu>)>, bool), Error> {
        let limit = self.limit();
        let filter = self.timeline_filter();
        let mut events = Vec::new();
        let mut cursor = Some(to + 1);
        loop {
            let batch = self.hs.rooms().timeline(room_id, cursor, Direction::Backward, limit + 1).await?;
            let exhausted = batch.len() < limit + 1;
            for (position, pdu) in batch {
                if from.is_some_and(|from| position <= from) {
                    events.reverse();
                    return Ok((events, false));
                }
                cursor = Some(position);
                let visible = member_since.is_some_and(|since| position >= since)
                    || visibility::may_see(self.hs, &self.session.user_id, &pdu).await?;
                if visible && filter::room_event_matches(filter, &pdu) {
                    if events.len() == limit {
                        events.reverse();
                        return Ok((events, true));
                    }
                    events.push((position, pdu));
                }
            }
            if exhausted {
                events.reverse();
                return Ok((events, false));
            }
        }
    }

    async fn room(
        &self,
        room_id: &RoomId,
        membership: &UserMembership,
        now: SyncToken,
        build: Build,
    ) -> Result<(OwnedRoomId, Built), Error> {
        let room = match build {
            Build::Joined(account_data) => Built::Joined(self.joined(room_id, membership, now, account_data).await?),
            Build::Invited => Built::Invited(self.invited(room_id, membership).await?),
            Build::Left(account_data) => Built::Left(self.left(room_id, membership, account_data).await?),
        };
        Ok((room_id.to_owned(), room))
    }

    async fn joined(
        &self,
        room_id: &RoomId,
        membership: &UserMembership,
        now: SyncToken,
        account_data: Vec<Value>,
    ) -> Result<Option<JoinedRoom>, Error> {
        let hs = self.hs;
        let room = hs.rooms().room(room_id).await?;
        // A room joined since `since` comes whole, like on an initial sync.
        let since = self.since.filter(|s| membership.stream <= s.events);
        let since_events = since.map(|s| s.events);
        let full = since.is_none() || self.full_state;
        let new_events = full || since_events.is_some_and(|s| room.stream > s);
        let mut joined = JoinedRoom::new();
        let mut unread = None;

        if new_events {
            let (events, limited) = self.timeline(room_id, since_events, now.events, Some(membership.stream)).await?;
            joined.timeline.limited = limited;
            joined.timeline.prev_batch = Some(match events.first() {
                Some((position, first)) => tokens::before((u64::from(first.depth), *position)),
                None => now.to_string(),
            });
            // The state at the start of the timeline: all of it for a full
            // sync; what changed since `since` when the timeline skipped some
            // events; nothing otherwise, as the timeline itself holds the changes.
            let start = match events.first() {
                Some((_, first)) => hs.rooms().state_at(&first.event_id).await?.unwrap_or_default(),
                None => hs.rooms().current_state(room_id).await?,
            };
            let before = match since_events {
                _ if full => None,
                Some(since) if limited => Some(state_after_position(hs, room_id, since).await?),
                _ => Some(start.clone()),
            };
            let senders: BTreeSet<OwnedUserId> = events.iter().map(|(_, pdu)| pdu.sender.clone()).collect();
            let state = self.state_events(&start, before.as_deref(), &senders, full).await?;
            let timeline = events.iter().map(|(_, pdu)| pdu);
            // What formatting reads of the state and of the timeline, in one
            // read per table; the counts read other things: on IndexedDB their
            // reads overlap instead of queueing.
            let both = state.iter().chain(timeline.clone()).map(|pdu| &**pdu);
            let (prefetched, counts) =
                join(format::prefetch(hs, both, self.session), self.unread(room_id, now.events)).await;
            prefetched?;
            unread = Some(counts?);
            let mut state_events = StateEvents::new();
            state_events.events = self.formatted(state.iter()).await?;
            joined.state = State::Before(state_events);
            joined.timeline.events = self.formatted(timeline).await?;
            if full || limited || events.iter().any(|(_, pdu)| pdu.kind == ruma::events::TimelineEventType::RoomMember)
            {
                joined.summary = self.summary(room_id).await?;
            }
        }

        // Typing and receipts.
        let since_ephemeral = since.map_or(0, |s| s.ephemeral);
        if let Some(typing) = hs.ephemeral().typing_since(room_id, since_ephemeral) {
            if !(since.is_none() && typing.is_empty()) {
                let event = json!({ "type": "m.typing", "content": { "user_ids": typing } });
                joined.ephemeral.events.push(format::to_raw(&event)?);
            }
        }
        let receipts = hs.user_data().receipts_since(room_id, since.map_or(0, |s| s.user)).await?;
        let receipts: Vec<_> = receipts.into_iter().filter(|r| r.receipt.stream <= now.user).collect();
        if !receipts.is_empty() {
            let mut content: BTreeMap<String, BTreeMap<String, BTreeMap<String, Value>>> = BTreeMap::new();
            for r in receipts {
                // Private read receipts are for their owner only.
                if r.kind == "m.read.private" && r.user_id != self.session.user_id {
                    continue;
                }
                let mut receipt = json!({ "ts": r.receipt.ts });
                if let Some(thread) = &r.thread {
                    receipt["thread_id"] = thread.as_str().into();
                }
                content
                    .entry(r.receipt.event_id.to_string())
                    .or_default()
                    .entry(r.kind)
                    .or_default()
                    .insert(r.user_id.to_string(), receipt);
            }
            if !content.is_empty() {
                joined.ephemeral.events.push(format::to_raw(&json!({ "type": "m.receipt", "content": content }))?);
            }
        }
        for event in account_data {
            joined.account_data.events.push(format::to_raw(&event)?);
        }
        // The room's record can be ahead of `now` (a commit that landed while
        // this sync read): nothing up to `now` is news then either.
        let no_state = matches!(&joined.state, State::Before(state) if state.events.is_empty());
        let nothing_new = !new_events || (joined.timeline.events.is_empty() && no_state);
        let empty = nothing_new && joined.ephemeral.events.is_empty() && joined.account_data.events.is_empty();
        if since.is_some() && empty {
            return Ok(None);
        }
        // Counts change with new events and with the user's own receipts.
        (joined.unread_notifications, joined.unread_thread_notifications) = match unread {
            Some(unread) => unread,
            None => self.unread(room_id, now.events).await?,
        };
        Ok(Some(joined))
    }

    /// The events of the entries of `state` not in `before` (all of them
    /// without `before`), with lazy loading: members only for the timeline's
    /// senders and the user.
    async fn state_events(
        &self,
        state: &RoomState,
        before: Option<&RoomState>,
        senders: &BTreeSet<OwnedUserId>,
        full: bool,
    ) -> Result<Vec<Arc<Pdu>>, Error> {
        let filter = &self.filter.room.state;
        let lazy = !filter.lazy_load_options.is_disabled() || !self.timeline_filter().lazy_load_options.is_disabled();
        let mut ids = Vec::new();
        for (key, id) in state.iter() {
            if before.is_some_and(|before| before.get(key) == Some(id)) {
                continue;
            }
            if lazy && full && key.0 == StateEventType::RoomMember {
                let member = key.1.as_str();
                if member != self.session.user_id.as_str() && !senders.iter().any(|s| s.as_str() == member) {
                    continue;
                }
            }
            ids.push(&**id);
        }
        Ok(self
            .hs
            .rooms()
            .events(&ids)
            .await?
            .into_iter()
            .flatten()
            .filter(|event| filter::room_event_matches(filter, &event.pdu))
            .map(|event| event.pdu.clone())
            .collect())
    }

    /// Events in the sync format, with the transaction IDs of the user's own
    /// read in one go.
    async fn formatted<'p, T>(&self, pdus: impl Iterator<Item = &'p Arc<Pdu>> + Clone) -> Result<Vec<Raw<T>>, Error> {
        format::prefetch(self.hs, pdus.clone().map(|p| &**p), self.session).await?;
        let mut events = Vec::new();
        for pdu in pdus {
            events.push(format::sync_event(self.hs, pdu, self.session).await?);
        }
        Ok(events)
    }

    async fn summary(&self, room_id: &RoomId) -> Result<v3::RoomSummary, Error> {
        let state = self.hs.rooms().current_state(room_id).await?;
        let (mut joined, mut invited, mut heroes) = (0u32, 0u32, Vec::new());
        for (pdu, content) in super::membership::members_in(self.hs, &state).await? {
            match content.membership {
                MembershipState::Join => joined += 1,
                MembershipState::Invite => invited += 1,
                _ => continue,
            }
            if let Some(Ok(user)) = pdu.state_key.as_deref().map(ruma::UserId::parse) {
                if user != self.session.user_id {
                    heroes.push(user);
                }
            }
        }
        heroes.sort();
        heroes.truncate(5);
        let mut summary = v3::RoomSummary::new();
        summary.heroes = heroes;
        summary.joined_member_count = Some(joined.into());
        summary.invited_member_count = Some(invited.into());
        Ok(summary)
    }

    /// The room's unread counts, and each thread's if the filter asks for them.
    async fn unread(
        &self,
        room_id: &RoomId,
        now: StreamPosition,
    ) -> Result<(UnreadNotificationsCount, BTreeMap<OwnedEventId, UnreadNotificationsCount>), Error> {
        let user = &self.session.user_id;
        if !self.timeline_filter().unread_thread_notifications {
            return Ok((counts(push::unread(self.hs, user, room_id, now).await?), BTreeMap::new()));
        }
        let (main, threads) = push::unread_by_thread(self.hs, user, room_id, now).await?;
        Ok((counts(main), threads.into_iter().map(|(root, c)| (root, counts(c))).collect()))
    }

    async fn invited(&self, room_id: &RoomId, membership: &UserMembership) -> Result<InvitedRoom, Error> {
        let hs = self.hs;
        let mut room = InvitedRoom::new();
        if let Some(invite) = hs.rooms().remote_invite_of(&self.session.user_id, room_id).await? {
            // A room this node does not have: what the inviting server told of it.
            for event in invite.state {
                room.invite_state.events.push(ruma::serde::Raw::from_json(event.into_json()));
            }
            let event = hs.rooms().event(&membership.event_id).await?;
            if let Some(pdu) = event.map(|e| e.pdu.clone()) {
                room.invite_state.events.push(format::to_raw(&stripped(&pdu)?)?);
            }
            return Ok(room);
        }
        let Some(invite) = hs.rooms().event(&membership.event_id).await? else { return Ok(room) };
        let state = hs.rooms().current_state(room_id).await?;
        let ids = invite_state(&state, &invite.pdu.sender);
        for event in hs.rooms().events(&ids).await?.into_iter().flatten().chain([invite]) {
            room.invite_state.events.push(format::to_raw(&stripped(&event.pdu)?)?);
        }
        Ok(room)
    }

    /// A room the user left or was removed from: its timeline up to that event.
    /// An invite refused to a room this node never had has no timeline here.
    async fn left(
        &self,
        room_id: &RoomId,
        membership: &UserMembership,
        account_data: Vec<Value>,
    ) -> Result<LeftRoom, Error> {
        let mut room = LeftRoom::new();
        if let Err(crate::core::service::rooms::RoomError::UnknownRoom(_)) = self.hs.rooms().room(room_id).await {
            return Ok(room);
        }
        let since = self.since.map(|s| s.events);
        let (events, limited) = self.timeline(room_id, since, membership.stream, None).await?;
        room.timeline.limited = limited;
        room.timeline.prev_batch = events.first().map(|(s, pdu)| tokens::before((u64::from(pdu.depth), *s)));
        room.timeline.events = self.formatted(events.iter().map(|(_, pdu)| pdu)).await?;
        for event in account_data {
            room.account_data.events.push(format::to_raw(&event)?);
        }
        Ok(room)
    }

    /// Presence of the users sharing the rooms in `rooms` (and the user's own).
    async fn presence(
        &self,
        response: &mut v3::Response,
        rooms: &BTreeSet<OwnedRoomId>,
        now: SyncToken,
    ) -> Result<(), Error> {
        let since = self.since.map_or(0, |s| s.ephemeral);
        if rooms.is_empty() || now.ephemeral <= since || !filter::type_allowed(&self.filter.presence, "m.presence") {
            return Ok(());
        }
        let mut users = BTreeSet::from([self.session.user_id.clone()]);
        for room_id in rooms {
            let state = self.hs.rooms().current_state(room_id).await?;
            let members = state.keys().filter(|(kind, _)| *kind == StateEventType::RoomMember);
            users.extend(members.filter_map(|(_, key)| ruma::UserId::parse(key.as_str()).ok()));
        }
        let users: Vec<_> = users.into_iter().collect();
        let clock = self.hs.clock().now_millis();
        for (user, presence) in self.hs.ephemeral().presence_since(&users, since) {
            let mut content = json!({
                "presence": presence.state.as_str(),
                "last_active_ago": clock.saturating_sub(presence.last_active),
                "currently_active": presence.state == PresenceState::Online,
            });
            if let Some(msg) = presence.status_msg {
                content["status_msg"] = msg.into();
            }
            let event = json!({ "type": "m.presence", "sender": user, "content": content });
            response.presence.events.push(format::to_raw(&event)?);
        }
        Ok(())
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    };

    use crate::{
        core::{Clock, Homeserver, OsRandom, Sleep, SCHEMA},
        store::MemoryStore,
    };

    /// A clock whose sleeps end at once and move it on, so a long-poll's whole
    /// wait passes without the test waiting for it.
    struct Skipping(AtomicU64);

    impl Clock for Skipping {
        fn now_millis(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }

        fn sleep(&self, millis: u64) -> Sleep {
            self.0.fetch_add(millis, Ordering::SeqCst);
            Box::pin(std::future::ready(()))
        }
    }

    /// How long a `/sync` asking to wait 30 s with nothing new waits on `hs`.
    async fn waited(hs: &Homeserver, clock: &Skipping) -> u64 {
        let user = ruma::UserId::parse(format!("@alice:{}", hs.key().server_name())).unwrap();
        let login = hs.accounts().register(&user, Some("pw"), Some((None, None))).await.unwrap().unwrap();
        let sync = |query: String| {
            let request = http::Request::get(format!("/_matrix/client/v3/sync?{query}"))
                .header("authorization", format!("Bearer {}", login.access_token))
                .body(bytes::Bytes::new())
                .unwrap();
            hs.handle(request)
        };
        let first: serde_json::Value = serde_json::from_slice(sync("timeout=0".into()).await.body()).unwrap();
        let since = first["next_batch"].as_str().unwrap().to_owned();
        let start = clock.now_millis();
        let response = sync(format!("since={since}&timeout=30000")).await;
        assert_eq!(response.status(), 200);
        clock.now_millis() - start
    }

    #[tokio::test]
    async fn long_polls_wait_as_asked_up_to_the_nodes_cap() {
        for (cap, expected) in [(None, 30_000), (Some(20_000), 20_000)] {
            let clock = Arc::new(Skipping(AtomicU64::new(1_700_000_000_000)));
            let mut hs =
                Homeserver::open(Arc::new(MemoryStore::new(SCHEMA)), clock.clone(), Arc::new(OsRandom)).await.unwrap();
            if let Some(cap) = cap {
                hs.cap_long_polls(cap);
            }
            assert_eq!(waited(&hs, &clock).await, expected, "cap {cap:?}");
        }
    }
}

fn counts((notify, highlight): push::Counts) -> UnreadNotificationsCount {
    let mut counts = UnreadNotificationsCount::new();
    counts.notification_count = Some(UInt::from(notify));
    counts.highlight_count = Some(UInt::from(highlight));
    counts
}
