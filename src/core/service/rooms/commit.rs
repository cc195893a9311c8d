//! The write path: each event is checked and gathered into a [`Commit`], whose
//! writes land in one atomic batch. Everything an event reads that earlier events
//! of the same commit changed (room records, counters, events, state groups) is
//! read from the commit first, and nothing of it is visible to readers until the
//! batch has landed.

use crate::core::lock;
use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
};

use ruma::{
    canonical_json::{redact, CanonicalJsonObject, RedactedBecause},
    events::{
        room::member::MembershipState,
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
        StateEventType, TimelineEventType,
    },
    room_version_rules::RoomVersionRules,
    state_res::{auth_types_for_event, check_state_dependent_auth_rules, check_state_independent_auth_rules},
    EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde::Deserialize;

use super::{
    create_event_version, is_create, room_key_for_user, to_raw, topological_key, Outcome, RoomError, RoomRecord, Rooms,
    StreamPosition, UserMembership, BACKFILLED, COUNTERS, HELD_REDACTIONS, MAX_PREV_EVENTS, MEMBERSHIPS, META, OUTBOX,
    ROOMS, TIMELINE, TOPOLOGY,
};
use crate::{
    core::{
        pdu::{self, NewEvent, Pdu, Placement},
        service::{
            events::{EventRecord, Events, Replaces, StoredEvent, EVENTS},
            relations, room_key, search,
            state::{self, PendingGroup, State},
        },
    },
    store::{Batch, Direction, KeyRange, StoreError},
};

/// The state before an event, and where it is (or will be) stored.
pub(super) struct Before {
    pub(super) state: Arc<State>,
    pub(super) group: BeforeGroup,
}

pub(super) enum BeforeGroup {
    /// The state after the single prev state group, or after several equal ones.
    Stored(u64),
    /// A resolution of several prev states, to be stored as a group derived from
    /// `base` when the event is.
    Resolved { base: u64 },
}

impl Before {
    pub(super) fn empty() -> Self {
        Self { state: Arc::new(State::new()), group: BeforeGroup::Stored(0) }
    }
}

/// The writes of one commit, gathered event by event, and what they change:
/// later events of the same commit read it before the caches and the store, and
/// none of it is seen by readers until the commit lands. Creating a room, or
/// receiving a federation transaction, is one commit.
#[derive(Default)]
pub(super) struct Commit {
    pub(super) batch: Batch,
    /// The counters as read (for the precondition) and as advanced since.
    pub(super) counters: Option<(Counters, Counters)>,
    /// Room records as read (their stored bytes, for the preconditions) and as changed.
    pub(super) rooms: HashMap<OwnedRoomId, (Option<Vec<u8>>, Option<RoomRecord>)>,
    pub(super) events: HashMap<OwnedEventId, Arc<StoredEvent>>,
    /// Events the store was seen not to have when the commit began.
    pub(super) absent: std::collections::HashSet<OwnedEventId>,
    pub(super) groups: Vec<PendingGroup>,
    /// Targets whose redactions this commit holds, and releases.
    pub(super) held: Vec<OwnedEventId>,
    pub(super) released: Vec<OwnedEventId>,
    /// The timeline entries this commit adds, in stream order.
    pub(super) appended: Vec<(OwnedRoomId, StreamPosition, OwnedEventId)>,
    /// Local users whose memberships this commit changes.
    pub(super) members: Vec<OwnedUserId>,
    /// The outbox entries this commit writes.
    pub(super) outboxed: Vec<super::OutboxEntry>,
    /// Events nothing relates to once this commit lands: those made here,
    /// whose IDs did not exist before, and those received that its
    /// preconditions check.
    pub(super) childless: Vec<OwnedEventId>,
}

/// Where an event comes from, which decides what storing it changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Made here: refused rather than stored if the auth rules reject it.
    Local,
    /// Received new from another server: soft-failed if the current state
    /// does not allow it.
    Remote,
    /// From before the room reached this node (backfill): placed in the
    /// room's topological order only, changing neither its timeline, its
    /// current state, its forward extremities nor anyone's membership.
    History,
}

/// Stream and state group numbers as read at the start of a write.
#[derive(Clone, Copy)]
pub(super) struct Counters {
    pub(super) stream: u64,
    pub(super) state_group: u64,
    /// Whether the store holds them yet (a new node's do not exist).
    pub(super) stored: bool,
}

impl Counters {
    pub(super) fn encode(&self) -> [u8; 16] {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.stream.to_be_bytes());
        bytes[8..].copy_from_slice(&self.state_group.to_be_bytes());
        bytes
    }

    pub(super) fn decode(bytes: Option<Vec<u8>>) -> Result<Self, RoomError> {
        let Some(bytes) = bytes else { return Ok(Self { stream: 0, state_group: 0, stored: false }) };
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| RoomError::corrupt("the counters are not 16 bytes"))?;
        let (stream, group) = bytes.split_at(8);
        let number = |half: &[u8]| u64::from_be_bytes(half.try_into().unwrap_or_default());
        Ok(Self { stream: number(stream), state_group: number(group), stored: true })
    }
}

/// What the writer knows of the store between writes: read once, then kept
/// current by each commit under the write lock, so appending an event reads
/// nothing back. Cleared when a write fails, in case another writer moved on.
#[derive(Default)]
pub(super) struct Written {
    pub(super) counters: Option<Counters>,
    pub(super) rooms: HashMap<OwnedRoomId, RoomRecord>,
}

/// A local event waiting for the writer, and where its result goes.
pub(super) struct Queued {
    pub(super) room_id: OwnedRoomId,
    pub(super) sender: OwnedUserId,
    pub(super) event: NewEvent,
    pub(super) prev_events: Option<Vec<OwnedEventId>>,
    pub(super) also: Option<super::Also>,
    pub(super) result: futures_channel::oneshot::Sender<Result<Arc<Pdu>, RoomError>>,
}

/// Gives every queued sender the failure of their shared commit.
/// A local event built but not yet stored, with what storing it needs.
pub(super) struct Built {
    pub(super) room: RoomRecord,
    pub(super) rules: RoomVersionRules,
    pub(super) pdu: Pdu,
    pub(super) auths: HashMap<OwnedEventId, Arc<StoredEvent>>,
    pub(super) before: Before,
}

pub(super) fn fail_all(queued: Vec<Queued>, err: RoomError) {
    for q in queued {
        let err = match &err {
            // Each sender tells whether the precondition was its own.
            RoomError::Store(StoreError::Conflict { table, key }) => {
                StoreError::Conflict { table: table.clone(), key: key.clone() }
            }
            err => StoreError::Backend(format!("the commit failed: {err}")),
        };
        // A sender that stopped waiting has nobody to tell.
        let _ = q.result.send(Err(RoomError::Store(err)));
    }
}

/// Rooms whose records the writer keeps at most.
pub(super) const WRITTEN_ROOMS: usize = 256;

impl Rooms {
    pub(super) fn written(&self) -> std::sync::MutexGuard<'_, Written> {
        lock(&self.written)
    }

    /// The room's record as `c` has it, for a writer holding the write lock.
    pub(super) async fn room_for_write(
        &self,
        c: &mut Commit,
        room_id: &RoomId,
    ) -> Result<Option<RoomRecord>, RoomError> {
        if let Some((_, room)) = c.rooms.get(room_id) {
            return Ok(room.clone());
        }
        let room = self.committed_room(room_id).await?;
        let stored = room.as_ref().map(serde_json::to_vec).transpose().map_err(RoomError::corrupt)?;
        c.rooms.insert(room_id.to_owned(), (stored, room.clone()));
        Ok(room)
    }

    pub(super) fn remember_room(&self, room_id: &RoomId, room: RoomRecord) {
        Self::keep_room(&mut self.written(), room_id, room);
    }

    /// Keeps a record read from the store while `begun` commits had begun,
    /// unless another has begun since (it may have changed the record) or the
    /// writer has its own copy.
    pub(super) fn remember_room_read(&self, room_id: &RoomId, room: &RoomRecord, begun: u64) {
        let mut written = self.written();
        if self.commits.load(Ordering::SeqCst) == begun && !written.rooms.contains_key(room_id) {
            Self::keep_room(&mut written, room_id, room.clone());
        }
    }

    fn keep_room(written: &mut Written, room_id: &RoomId, room: RoomRecord) {
        if written.rooms.len() >= WRITTEN_ROOMS {
            written.rooms.clear();
        }
        written.rooms.insert(room_id.to_owned(), room);
    }

    /// The stream and state group counters as `c` has advanced them.
    pub(super) async fn counters(&self, c: &mut Commit) -> Result<Counters, RoomError> {
        if let Some((_, counters)) = c.counters {
            return Ok(counters);
        }
        let cached = self.written().counters;
        let counters = match cached {
            Some(counters) => counters,
            None => Counters::decode(self.store().get(META, COUNTERS).await?)?,
        };
        c.counters = Some((counters, counters));
        Ok(counters)
    }

    /// Writes `c` in one batch, guarded by preconditions on every room record and
    /// on the counters it changed, then lets readers see it.
    pub(super) async fn commit(&self, c: Commit) -> Result<(), RoomError> {
        let mut batch = c.batch;
        let mut rooms = Vec::new();
        for (room_id, (stored, room)) in c.rooms {
            let Some(room) = room else { continue };
            let bytes = serde_json::to_vec(&room).map_err(RoomError::corrupt)?;
            if stored.as_ref() != Some(&bytes) {
                batch = batch.expect(ROOMS, room_id.as_bytes(), stored).put(ROOMS, room_id.as_bytes(), bytes);
                rooms.push((room_id, room));
            }
        }
        let counters = c.counters.filter(|(read, now)| read.encode() != now.encode() || !read.stored);
        if let Some((read, now)) = counters {
            batch = batch.expect(META, COUNTERS, read.stored.then(|| read.encode().to_vec())).put(
                META,
                COUNTERS,
                now.encode(),
            );
        }
        self.commits.fetch_add(1, Ordering::SeqCst);
        if let Err(err) = self.store().write(batch).await {
            *self.written() = Written::default();
            self.tails.clear();
            // The outbox entries may have landed after all.
            self.forget_outboxed();
            // Some memberships may have landed after all.
            for user in &c.members {
                self.memberships.remove(user);
            }
            return Err(err.into());
        }
        if let Some(outboxed) = lock(&self.outboxed).as_mut() {
            outboxed.extend(c.outboxed);
        }
        for (room_id, position, event_id) in c.appended {
            self.tails.append(&room_id, position, event_id);
        }
        for user in &c.members {
            self.memberships.remove(user);
        }
        if let Some((_, now)) = counters {
            self.written().counters = Some(Counters { stored: true, ..now });
        }
        for (room_id, room) in rooms {
            self.remember_room(&room_id, room);
        }
        for group in c.groups {
            self.groups.committed(group);
        }
        if let Some(targets) = lock(&self.held).as_mut() {
            targets.extend(c.held);
            for target in &c.released {
                targets.remove(target);
            }
        }
        // Before forgetting parents, in case one was stored here too.
        self.relations.childless(c.childless);
        self.relations.wrote(c.events.values().filter_map(|e| Some(relations::relation_of(&e.pdu)?.1)));
        for event in c.events.into_values() {
            self.events.remember(event);
        }
        self.notifier.notify();
        Ok(())
    }

    pub(super) async fn send_queued(&self, mut queued: Vec<Queued>) {
        let mut c = Commit::default();
        let mut results = Vec::with_capacity(queued.len());
        for q in &mut queued {
            let result = self.send_in(&mut c, &q.room_id, &q.sender, &q.event, q.prev_events.clone()).await;
            if let (Ok(pdu), Some(also)) = (&result, q.also.take()) {
                c.batch.ops.extend(also(pdu).ops);
            }
            match result {
                // A refusal gathers nothing: the others still go out.
                Err(err) if err.is_internal() => return fail_all(queued, err),
                result => results.push(result),
            }
        }
        match self.commit(c).await {
            Ok(()) => queued.into_iter().zip(results).for_each(|(q, result)| drop(q.result.send(result))),
            Err(err) => fail_all(queued, err),
        }
    }

    pub(super) async fn send_in(
        &self,
        c: &mut Commit,
        room_id: &RoomId,
        sender: &UserId,
        event: &NewEvent,
        prev_events: Option<Vec<OwnedEventId>>,
    ) -> Result<Arc<Pdu>, RoomError> {
        let Built { room, rules, pdu, auths, before } = self.build_in(c, room_id, sender, event, prev_events).await?;
        let stored = self.insert(c, Some(room), &rules, pdu, &auths, before, Arrival::Local).await?;
        c.childless.push(stored.pdu.event_id.clone());
        Ok(stored.pdu.clone())
    }

    /// Builds and signs a local event after `prev_events` (the room's forward
    /// extremities if `None`), reading what it needs into `c` but storing nothing.
    pub(super) async fn build_in(
        &self,
        c: &mut Commit,
        room_id: &RoomId,
        sender: &UserId,
        event: &NewEvent,
        prev_events: Option<Vec<OwnedEventId>>,
    ) -> Result<Built, RoomError> {
        let room = self.room_for_write(c, room_id).await?.ok_or_else(|| RoomError::UnknownRoom(room_id.to_owned()))?;
        let rules = pdu::rules(&room.version)?;
        let prev_events = prev_events.unwrap_or_else(|| {
            let mut extremities = room.extremities.clone();
            extremities.sort_by_key(|e| std::cmp::Reverse(e.1));
            extremities.into_iter().take(MAX_PREV_EVENTS).map(|(id, _)| id).collect()
        });
        let prevs = self.events_or_missing(c, &prev_events).await?;
        let depth = prevs.values().map(|e| e.pdu.depth).max().unwrap_or_default().saturating_add(UInt::from(1u32));
        let before = self.state_before(c, &rules, room_id, &prevs).await?;

        let auth_types = auth_types_for_event(
            &event.kind,
            sender,
            event.state_key.as_deref(),
            &to_raw(&event.content)?,
            &rules.authorization,
        )
        .map_err(RoomError::Invalid)?;
        let auth_events: Vec<OwnedEventId> =
            auth_types.iter().filter_map(|key| before.state.get(key).cloned()).collect();
        let placement = Placement {
            room_id: Some(room_id),
            prev_events: &prev_events,
            auth_events: &auth_events,
            depth,
            origin_server_ts: self.now(),
        };
        let pdu = pdu::build(&self.key, &rules, sender, event, placement)?;
        let auths = self.events_or_missing(c, &auth_events).await?;
        Ok(Built { room, rules, pdu, auths, before })
    }

    /// The rules of the room: its own version's if the node has the room, else
    /// those of the version the create event among `pdus` names, which may start
    /// it here. `None` when neither is known.
    pub(super) async fn room_rules(
        &self,
        c: &mut Commit,
        room_id: &RoomId,
        pdus: &[CanonicalJsonObject],
    ) -> Result<Option<RoomVersionRules>, RoomError> {
        let version = match self.room_for_write(c, room_id).await? {
            Some(room) => Some(room.version),
            None => pdus.iter().find(|json| is_create(json)).map(create_event_version).transpose()?,
        };
        Ok(version.as_ref().map(pdu::rules).transpose()?)
    }

    /// The checks of [`Rooms::receive`] that need the room, for a PDU whose hashes
    /// and signatures are already verified.
    pub(super) async fn insert_remote(
        &self,
        c: &mut Commit,
        room: Option<RoomRecord>,
        rules: &RoomVersionRules,
        pdu: Pdu,
    ) -> Result<Outcome, RoomError> {
        if self.event_in(c, &pdu.event_id).await?.is_some() {
            return Ok(Outcome::Duplicate);
        }
        if pdu.repeats_an_event() {
            return Err(RoomError::Invalid("prev_events and auth_events must not repeat an event".into()));
        }
        let prevs = self.events_or_missing(c, &pdu.prev_events).await?;
        let auths = self.events_or_missing(c, &pdu.auth_events).await?;
        if let Some(other) = prevs.values().chain(auths.values()).find(|e| e.pdu.room_id != pdu.room_id) {
            return Err(RoomError::WrongRoom { expected: pdu.room_id.clone(), found: other.pdu.room_id.clone() });
        }
        let before = match &room {
            Some(_) => self.state_before(c, rules, &pdu.room_id, &prevs).await?,
            None => Before::empty(),
        };
        let stored = self.insert(c, room, rules, pdu, &auths, before, Arrival::Remote).await?;
        Ok(match (&stored.record.rejected, &stored.record.soft_failed) {
            (Some(reason), _) => Outcome::Rejected(reason.clone()),
            (None, Some(reason)) => Outcome::SoftFailed(reason.clone()),
            (None, None) => Outcome::Accepted,
        })
    }

    /// Checks `pdu` against the auth rules and gathers into `c` everything stored
    /// for it. Local events that fail are refused, not stored. Nothing is
    /// gathered before the checks pass, so a refusal leaves `c` as it was.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn insert(
        &self,
        c: &mut Commit,
        room: Option<RoomRecord>,
        rules: &RoomVersionRules,
        mut pdu: Pdu,
        auths: &HashMap<OwnedEventId, Arc<StoredEvent>>,
        before: Before,
        arrival: Arrival,
    ) -> Result<Arc<StoredEvent>, RoomError> {
        let local = arrival == Arrival::Local;
        let rejected = self.authorize(c, rules, &pdu, auths, &before.state, !local).await?;
        // A rejected local event is refused, not stored; so is a rejected create
        // event, which must not claim the room for whatever version it names.
        if let (true, Some(reason)) = (local || room.is_none(), &rejected) {
            return Err(RoomError::Forbidden(reason.clone()));
        }
        let before_stored = match before.group {
            BeforeGroup::Stored(group) => Some(group),
            BeforeGroup::Resolved { .. } => None,
        };
        // Only a new event from another server is checked at the current state.
        let current = match &room {
            Some(room) if arrival == Arrival::Remote && Some(room.state) != before_stored => {
                Some(self.load_group(c, room.state).await?)
            }
            _ => None,
        };
        let soft_failed = match (&rejected, current) {
            (None, Some(current)) => self.authorize(c, rules, &pdu, auths, &current, false).await?,
            _ => None,
        };
        pdu.rejected = rejected.is_some();
        let pdu = Arc::new(pdu);
        let visible = rejected.is_none() && soft_failed.is_none();

        // From here on `c` changes: a failure now is internal and drops the commit.
        let before_group = match before.group {
            BeforeGroup::Stored(group) => group,
            BeforeGroup::Resolved { base } => self.save_group(c, base, before.state.clone()).await?,
        };
        // The state after: the state before, plus the event if it is accepted state.
        let (after_group, after_state) = match (pdu.state_entry(), &rejected) {
            (Some(entry), None) => {
                let mut after = (*before.state).clone();
                after.insert(entry, pdu.event_id.clone());
                let after = Arc::new(after);
                (self.save_group(c, before_group, after.clone()).await?, after)
            }
            _ => (before_group, before.state.clone()),
        };

        let mut new_room = match &room {
            Some(room) => room.clone(),
            None => RoomRecord {
                version: create_event_version(&pdu.json)?,
                state: 0,
                extremities: vec![],
                stream: 0,
                backfilled: 0,
            },
        };
        let mut stream = None;
        if visible {
            let mut counters = self.counters(c).await?;
            counters.stream += 1;
            stream = Some(counters.stream);
            if let Some((_, now)) = &mut c.counters {
                now.stream = counters.stream;
            }
        }
        if let (Some(stream), false) = (stream, arrival == Arrival::History) {
            new_room.stream = stream;
            new_room.extremities.retain(|(id, _)| !pdu.prev_events.contains(id));
            new_room.extremities.push((pdu.event_id.clone(), pdu.depth));
            new_room.state = if new_room.extremities.len() == 1 {
                after_group
            } else {
                let mut forks = Vec::new();
                for (id, _) in &new_room.extremities {
                    forks.push(if *id == pdu.event_id {
                        after_state.clone()
                    } else {
                        let group = self.event_or_corrupt(c, id).await?.record.state_after;
                        self.load_group(c, group).await?
                    });
                }
                let resolved = self.resolve(c, rules, &pdu.room_id, &forks, Some(&pdu)).await?;
                self.save_group(c, after_group, Arc::new(resolved)).await?
            };
        }

        let mut record = EventRecord {
            room_id: pdu.room_id.clone(),
            version: new_room.version.clone(),
            pdu: pdu.json.clone(),
            rejected,
            soft_failed,
            state_before: before_group,
            state_after: after_group,
            stream,
            replaces: pdu.state_entry().map(|entry| Replaces { event_id: before.state.get(&entry).cloned() }),
        };
        // Redactions that came before this event apply to it now.
        let mut redacted_now = false;
        if record.rejected.is_none() {
            for held in self.held_redactions(c, &pdu).await? {
                let redaction = self.event_or_corrupt(c, &held).await?;
                let state = self.load_group(c, redaction.record.state_before).await?;
                if self.may_redact(c, rules, &state, &redaction.pdu, &pdu).await? {
                    record.pdu = redacted(rules, &redaction.pdu, record.pdu)?;
                    redacted_now = true;
                }
                let key = held_key(&pdu.room_id, &pdu.event_id, Some(&held));
                c.batch = std::mem::take(&mut c.batch).delete(HELD_REDACTIONS, key);
            }
        }
        let pdu = match redacted_now {
            false => pdu,
            true => StoredEvent::from_record(pdu.event_id.clone(), record.clone())?.pdu,
        };
        let mut batch = Events::write(std::mem::take(&mut c.batch), &pdu, &record)?;
        if let Some(stream) = stream {
            let topological = room_key(&pdu.room_id, &topological_key((u64::from(pdu.depth), stream)));
            batch = batch.put(TOPOLOGY, topological, pdu.event_id.as_bytes());
            // Backfilled events too: an old message shows its edits, thread and
            // references, and lists its reactions, once both are here.
            batch = relations::index(batch, &pdu, stream);
        }
        if let (Some(stream), Arrival::History) = (stream, arrival) {
            new_room.backfilled = stream;
            batch = batch.put(BACKFILLED, room_key(&pdu.room_id, &stream.to_be_bytes()), pdu.event_id.as_bytes());
        }
        if let (Some(stream), false) = (stream, arrival == Arrival::History) {
            c.appended.push((pdu.room_id.clone(), stream, pdu.event_id.clone()));
            // This node's events go to the room's other servers: the sender takes
            // them from here, so one that lands is sent even after a crash.
            if pdu.sender.server_name() == self.key.server_name() {
                let entry = (stream.to_be_bytes().to_vec(), room_key(&pdu.room_id, pdu.event_id.as_bytes()));
                batch = batch.put(OUTBOX, entry.0.clone(), entry.1.clone());
                c.outboxed.push(entry);
            }
            batch = batch.put(TIMELINE, room_key(&pdu.room_id, &stream.to_be_bytes()), pdu.event_id.as_bytes());
        }
        let member = self.local_member(&pdu).filter(|_| arrival != Arrival::History);
        if let (Some(stream), Some(member), None) = (stream, member, &record.rejected) {
            let membership = UserMembership { membership: member.1, stream, event_id: pdu.event_id.clone() };
            let value = serde_json::to_vec(&membership).map_err(RoomError::corrupt)?;
            batch = batch.put(MEMBERSHIPS, room_key_for_user(&member.0, Some(&pdu.room_id)), value);
            c.members.push(member.0);
        }
        c.batch = batch;
        if let (Some(target), true) = (&pdu.redacts, visible) {
            match self.event_in(c, target).await? {
                Some(target) if target.pdu.room_id == pdu.room_id && target.record.rejected.is_none() => {
                    if self.may_redact(c, rules, &before.state, &pdu, &target.pdu).await? {
                        let record = EventRecord {
                            pdu: redacted(rules, &pdu, target.record.pdu.clone())?,
                            ..target.record.clone()
                        };
                        let mut batch = std::mem::take(&mut c.batch);
                        if let Some(stream) = target.record.stream {
                            batch = search::unindex(batch, &target.pdu, stream);
                        }
                        let target = StoredEvent::from_record(target.pdu.event_id.clone(), record)?;
                        let bytes = serde_json::to_vec(&target.record).map_err(RoomError::corrupt)?;
                        c.batch = batch.put(EVENTS, target.pdu.event_id.as_bytes(), bytes);
                        c.events.insert(target.pdu.event_id.clone(), Arc::new(target));
                    }
                }
                Some(_) => {}
                // Held until the target arrives, as the spec asks.
                None => {
                    let key = held_key(&pdu.room_id, target, Some(&pdu.event_id));
                    c.batch = std::mem::take(&mut c.batch).put(HELD_REDACTIONS, key, Vec::new());
                    c.held.push(target.clone());
                }
            }
        }
        // A backfilled event changes its room's record only by its position.
        if arrival != Arrival::History || stream.is_some() {
            c.rooms.entry(pdu.room_id.clone()).or_insert((None, None)).1 = Some(new_room);
        }
        let stored = Arc::new(StoredEvent { pdu, record });
        c.events.insert(stored.pdu.event_id.clone(), stored.clone());
        Ok(stored)
    }

    /// The user and membership of a member event about a user of this node.
    fn local_member(&self, pdu: &Pdu) -> Option<(OwnedUserId, MembershipState)> {
        pdu.member().filter(|(user, _)| user.server_name() == self.key.server_name())
    }

    /// The reason `pdu` is not authorized, if it is not: the state-independent
    /// rules and those at its auth events (for remote events; a local event's auth
    /// events come from `state` itself), then the rules at `state`.
    pub(super) async fn authorize(
        &self,
        c: &Commit,
        rules: &RoomVersionRules,
        pdu: &Pdu,
        auths: &HashMap<OwnedEventId, Arc<StoredEvent>>,
        state: &State,
        check_auth_events: bool,
    ) -> Result<Option<String>, RoomError> {
        let rules_auth = &rules.authorization;
        if check_auth_events {
            // Since v12 the create event is not among the auth events, but the rules read it.
            let create = match EventId::parse(format!("${}", pdu.room_id.strip_sigil())) {
                Ok(id) if rules_auth.room_create_event_id_as_room_id => self.event_in(c, &id).await?,
                _ => None,
            };
            let fetch =
                |id: &EventId| auths.get(id).or(create.as_ref().filter(|c| c.pdu.event_id == id)).map(|e| &*e.pdu);
            if let Err(reason) = check_state_independent_auth_rules(rules_auth, pdu, fetch) {
                return Ok(Some(reason));
            }
            let by_key: HashMap<(StateEventType, String), &Pdu> =
                auths.values().chain(create.as_ref()).filter_map(|e| Some((e.pdu.state_entry()?, &*e.pdu))).collect();
            if let Err(reason) = check_state_dependent_auth_rules(rules_auth, pdu, |kind, key| {
                by_key.get(&(kind.clone(), key.to_owned())).copied()
            }) {
                return Ok(Some(reason));
            }
        } else if pdu.kind == TimelineEventType::RoomCreate {
            if let Err(reason) = check_state_independent_auth_rules(rules_auth, pdu, |_: &EventId| None::<&Pdu>) {
                return Ok(Some(reason));
            }
        }

        let keys =
            match auth_types_for_event(&pdu.kind, &pdu.sender, pdu.state_key.as_deref(), &pdu.content, rules_auth) {
                Ok(keys) => keys,
                Err(reason) => return Ok(Some(reason)),
            };
        let mut at_state = HashMap::new();
        for key in keys.iter().chain([&(StateEventType::RoomCreate, String::new())]) {
            if let Some(id) = state.get(key) {
                at_state.insert(key.clone(), self.event_or_corrupt(c, id).await?);
            }
        }
        let fetch = |kind: &StateEventType, key: &str| at_state.get(&(kind.clone(), key.to_owned())).map(|e| &*e.pdu);
        Ok(check_state_dependent_auth_rules(rules_auth, pdu, fetch).err())
    }

    /// Whether `redaction` (accepted, with `state` before it) may redact `target`.
    /// The auth rules let every redaction through since room version 3; whether
    /// one applies is for the server to decide, as here: the same sender, or a
    /// sender with the power to redact the events of others.
    pub(super) async fn may_redact(
        &self,
        c: &Commit,
        rules: &RoomVersionRules,
        state: &State,
        redaction: &Pdu,
        target: &Pdu,
    ) -> Result<bool, RoomError> {
        Ok(target.room_id == redaction.room_id
            && (target.sender == redaction.sender
                || self.power_levels(c, rules, state).await?.user_can_redact_event_of_other(&redaction.sender)))
    }

    /// The redactions held for `target`, which arrived before it. The targets
    /// with held redactions are kept in memory, so the common case reads nothing.
    pub(super) async fn held_redactions(&self, c: &mut Commit, target: &Pdu) -> Result<Vec<OwnedEventId>, RoomError> {
        if lock(&self.held).is_none() {
            let entries = self.store().scan(HELD_REDACTIONS, KeyRange::all(), Direction::Forward, usize::MAX).await?;
            let targets =
                entries.iter().filter_map(|(key, _)| held_key_parts(key).map(|(_, target, _)| target)).collect();
            *lock(&self.held) = Some(targets);
        }
        let stored = lock(&self.held).as_ref().is_some_and(|targets| targets.contains(&target.event_id));
        let mut held = Vec::new();
        if stored {
            let prefix = held_key(&target.room_id, &target.event_id, None);
            let entries =
                self.store().scan(HELD_REDACTIONS, KeyRange::prefix(&prefix), Direction::Forward, usize::MAX).await?;
            for (key, _) in entries {
                held.extend(held_key_parts(&key).map(|(_, _, redaction)| redaction));
            }
        }
        // Held in this same commit, not yet in the store.
        let in_commit = c.events.values().filter(|e| {
            e.pdu.redacts.as_ref() == Some(&target.event_id)
                && e.record.rejected.is_none()
                && e.record.soft_failed.is_none()
        });
        held.extend(in_commit.map(|e| e.pdu.event_id.clone()));
        if !held.is_empty() {
            c.released.push(target.event_id.clone());
        }
        held.sort();
        held.dedup();
        Ok(held)
    }

    /// The power levels in force in `state`, as the room version reads them.
    pub(super) async fn power_levels(
        &self,
        c: &Commit,
        rules: &RoomVersionRules,
        state: &State,
    ) -> Result<RoomPowerLevels, RoomError> {
        let create = self.state_entry(c, state, &StateEventType::RoomCreate, "").await?;
        let levels = self.state_entry(c, state, &StateEventType::RoomPowerLevels, "").await?;
        let source: RoomPowerLevelsSource =
            levels.and_then(|e| serde_json::from_str::<RoomPowerLevelsEventContent>(e.pdu.content.get()).ok()).into();
        #[derive(Deserialize)]
        struct Creators {
            #[serde(default)]
            additional_creators: Vec<OwnedUserId>,
        }
        let creators: Vec<OwnedUserId> = create
            .map(|e| {
                let extra = serde_json::from_str::<Creators>(e.pdu.content.get())
                    .map(|c| c.additional_creators)
                    .unwrap_or_default();
                std::iter::once(e.pdu.sender.clone()).chain(extra).collect()
            })
            .unwrap_or_default();
        Ok(RoomPowerLevels::new(source, &rules.authorization, creators))
    }

    /// The state before an event whose `prev_events` are `prevs`: the state after
    /// each, resolved when they differ.
    pub(super) async fn state_before(
        &self,
        c: &Commit,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        prevs: &HashMap<OwnedEventId, Arc<StoredEvent>>,
    ) -> Result<Before, RoomError> {
        let mut groups: Vec<u64> = prevs.values().map(|e| e.record.state_after).collect();
        groups.sort_unstable();
        groups.dedup();
        let Some(&first) = groups.first() else {
            return Err(RoomError::Invalid("only a create event may have no prev_events".into()));
        };
        if groups.len() == 1 {
            return Ok(Before { state: self.load_group(c, first).await?, group: BeforeGroup::Stored(first) });
        }
        let mut forks = Vec::new();
        for group in &groups {
            forks.push(self.load_group(c, *group).await?);
        }
        let resolved = Arc::new(self.resolve(c, rules, room_id, &forks, None).await?);
        Ok(Before { state: resolved, group: BeforeGroup::Resolved { base: first } })
    }

    /// State resolution, seeing the events `c` gathered and `new`, which is not
    /// even in `c` yet.
    pub(super) async fn resolve(
        &self,
        c: &Commit,
        rules: &RoomVersionRules,
        room_id: &RoomId,
        forks: &[Arc<State>],
        new: Option<&Arc<Pdu>>,
    ) -> Result<State, RoomError> {
        let gathered: Vec<Arc<Pdu>> = c.events.values().map(|e| e.pdu.clone()).chain(new.cloned()).collect();
        state::resolve(self.store(), &self.events, rules, room_id, forks, &gathered).await
    }

    pub(super) async fn load_group(&self, c: &Commit, group: u64) -> Result<Arc<State>, RoomError> {
        match c.groups.iter().find(|g| g.id == group) {
            Some(pending) => Ok(pending.state.clone()),
            None => self.groups.load(self.store(), group).await,
        }
    }

    /// Gathers `state` into `c` as a group derived from `base`, and returns the
    /// group that holds it (`base` itself if nothing changed).
    pub(super) async fn save_group(&self, c: &mut Commit, base: u64, state: Arc<State>) -> Result<u64, RoomError> {
        let mut counters = self.counters(c).await?;
        let batch = std::mem::take(&mut c.batch);
        let (batch, group, pending) =
            self.groups.save(self.store(), batch, base, &c.groups, state, &mut counters.state_group).await?;
        c.batch = batch;
        c.groups.extend(pending);
        if let Some((_, now)) = &mut c.counters {
            now.state_group = counters.state_group;
        }
        Ok(group)
    }

    pub(super) async fn event_in(&self, c: &Commit, id: &EventId) -> Result<Option<Arc<StoredEvent>>, RoomError> {
        match c.events.get(id) {
            Some(event) => Ok(Some(event.clone())),
            None if c.absent.contains(id) => Ok(None),
            None => self.events.get(self.store(), id).await,
        }
    }

    pub(super) async fn events_or_missing(
        &self,
        c: &Commit,
        ids: &[OwnedEventId],
    ) -> Result<HashMap<OwnedEventId, Arc<StoredEvent>>, RoomError> {
        let (mut found, mut missing) = (HashMap::new(), Vec::new());
        for id in ids {
            match self.event_in(c, id).await? {
                Some(event) => drop(found.insert(id.clone(), event)),
                None => missing.push(id.clone()),
            }
        }
        if missing.is_empty() {
            Ok(found)
        } else {
            Err(RoomError::MissingEvents(missing))
        }
    }

    pub(super) async fn event_or_corrupt(&self, c: &Commit, id: &EventId) -> Result<Arc<StoredEvent>, RoomError> {
        self.event_in(c, id).await?.ok_or_else(|| RoomError::Corrupt(format!("{id} is referenced but not stored")))
    }
}

/// `json` redacted by `redaction`, as the room version says, keeping the
/// redaction as `redacted_because`.
fn redacted(
    rules: &RoomVersionRules,
    redaction: &Pdu,
    json: CanonicalJsonObject,
) -> Result<CanonicalJsonObject, RoomError> {
    // Clients see `redacted_because` as an event, which needs its ID; the
    // federation format leaves it out.
    let mut because = redaction.json.clone();
    because.insert("event_id".into(), redaction.event_id.as_str().into());
    let because = RedactedBecause::from_json(because);
    redact(json, &rules.redaction, Some(because)).map_err(RoomError::corrupt)
}

/// A `held_redactions` key, or without `redaction` the prefix of a target's keys.
fn held_key(room_id: &RoomId, target: &EventId, redaction: Option<&EventId>) -> Vec<u8> {
    let suffix = [target.as_bytes(), b"\0", redaction.map_or(&b""[..], |r| r.as_bytes())].concat();
    room_key(room_id, &suffix)
}

/// Room ID, target and redaction from a `held_redactions` key.
fn held_key_parts(key: &[u8]) -> Option<(&str, OwnedEventId, OwnedEventId)> {
    let text = std::str::from_utf8(key).ok()?;
    let mut parts = text.split('\0');
    let (room, target, redaction) = (parts.next()?, parts.next()?, parts.next()?);
    Some((room, EventId::parse(target).ok()?, EventId::parse(redaction).ok()?))
}
