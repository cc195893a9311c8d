//! Rooms that live on other servers first: events built here for another
//! server to take (join templates, invites), invites to rooms this node does not
//! have, and joining a room from the state a resident server hands over.
//!
//! A join brings the room's state and auth chain without the history between
//! them: those events are stored as outliers (checked against their own auth
//! events, with no place in the timeline), and the join event's state before is
//! the state the resident server gave.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    canonical_json::CanonicalJsonObject,
    events::{room::member::MembershipState, StateEventType},
    serde::Raw,
    OwnedEventId, OwnedUserId, RoomId, RoomVersionId, UserId,
};
use serde::{Deserialize, Serialize};

use super::{
    commit::{Arrival, Before, BeforeGroup, Commit},
    room_key_for_user, Outcome, RoomError, RoomRecord, Rooms, UserMembership, MEMBERSHIPS,
};
use crate::core::{
    pdu::{self, NewEvent, Pdu},
    service::{
        events::{EventRecord, Events, StoredEvent},
        state::State,
    },
};

pub(crate) const INVITES: &str = "invites";

/// An invite to a room this node does not have: what a client sees of it.
#[derive(Serialize, Deserialize)]
pub struct RemoteInvite {
    pub version: RoomVersionId,
    pub event: CanonicalJsonObject,
    /// The stripped state the inviting server sent, for the client to show.
    pub state: Vec<Raw<serde_json::Value>>,
}

impl RemoteInvite {
    /// Who sent the invite, whose server is the one to answer it through.
    pub fn inviter(&self) -> Option<OwnedUserId> {
        self.event.get("sender").and_then(|s| s.as_str()).and_then(|s| UserId::parse(s).ok())
    }
}

impl Rooms {
    /// Builds and signs an event as a local send would, against the room's
    /// current extremities, without storing it: for another server to sign too
    /// (an invite), or as a template (a join for a remote user). Refused if the
    /// auth rules refuse it now.
    pub async fn prepare(&self, room_id: &RoomId, sender: &UserId, event: &NewEvent) -> Result<Pdu, RoomError> {
        let _write = self.write.lock().await;
        let mut c = Commit::default();
        let built = self.build_in(&mut c, room_id, sender, event, None).await?;
        if let Some(reason) =
            self.authorize(&c, &built.rules, &built.pdu, &built.auths, &built.before.state, false).await?
        {
            return Err(RoomError::Forbidden(reason));
        }
        Ok(built.pdu)
    }

    /// Records an invite of a local user to a room this node does not have.
    /// `event` is the invite, already signed by both servers.
    pub async fn remote_invite(
        &self,
        version: RoomVersionId,
        event: CanonicalJsonObject,
        state: Vec<Raw<serde_json::Value>>,
    ) -> Result<(), RoomError> {
        let rules = pdu::rules(&version)?;
        let pdu = Pdu::from_remote(event.clone(), &rules)?;
        let user = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok());
        let Some(user) = user.filter(|u| u.server_name() == self.key.server_name()) else {
            return Err(RoomError::Invalid("the invite is not for a user of this node".into()));
        };
        let invite =
            serde_json::to_vec(&RemoteInvite { version: version.clone(), event, state }).map_err(RoomError::corrupt)?;
        self.remote_membership(&user, pdu, version, MembershipState::Invite, |batch, key| {
            batch.put(INVITES, key, invite)
        })
        .await
    }

    /// Records that `user`'s invite to a room this node does not have is over,
    /// with `out`: the leave by which they refused it (which the inviting
    /// server took), or the kick or ban that withdrew it.
    pub async fn forget_remote_invite(&self, user: &UserId, out: &Pdu) -> Result<(), RoomError> {
        let invite = self.remote_invite_of(user, &out.room_id).await?;
        let version = invite.ok_or_else(|| RoomError::Invalid(format!("no invite of {user} to answer")))?.version;
        let forget = |batch: crate::store::Batch, key| batch.delete(INVITES, key);
        let membership = out.member().map_or(MembershipState::Leave, |(_, membership)| membership);
        self.remote_membership(user, out.clone(), version, membership, forget).await
    }

    /// Stores `pdu` (a member event of `user` in a room this node does not have)
    /// with no place in any timeline, and `user`'s membership at a new stream
    /// position so their next sync sees it.
    async fn remote_membership(
        &self,
        user: &UserId,
        pdu: Pdu,
        version: RoomVersionId,
        membership: MembershipState,
        also: impl FnOnce(crate::store::Batch, Vec<u8>) -> crate::store::Batch,
    ) -> Result<(), RoomError> {
        let _write = self.write.lock().await;
        let mut c = Commit::default();
        let mut counters = self.counters(&mut c).await?;
        counters.stream += 1;
        if let Some((_, now)) = &mut c.counters {
            now.stream = counters.stream;
        }
        let record = EventRecord {
            room_id: pdu.room_id.clone(),
            version,
            pdu: pdu.json.clone(),
            rejected: None,
            soft_failed: None,
            state_before: 0,
            state_after: 0,
            stream: None,
            replaces: None,
        };
        let key = room_key_for_user(user, Some(&pdu.room_id));
        let membership = UserMembership { membership, stream: counters.stream, event_id: pdu.event_id.clone() };
        let membership = serde_json::to_vec(&membership).map_err(RoomError::corrupt)?;
        let batch =
            Events::write(std::mem::take(&mut c.batch), &pdu, &record)?.put(MEMBERSHIPS, key.clone(), membership);
        c.batch = also(batch, key);
        c.members.push(user.to_owned());
        let pdu = Arc::new(pdu);
        c.events.insert(pdu.event_id.clone(), Arc::new(StoredEvent { pdu, record }));
        self.commit(c).await
    }

    /// The invite of `user` to a room this node does not have, if any.
    pub async fn remote_invite_of(&self, user: &UserId, room_id: &RoomId) -> Result<Option<RemoteInvite>, RoomError> {
        let bytes = self.store().get(INVITES, &room_key_for_user(user, Some(room_id))).await?;
        bytes.map(|b| serde_json::from_slice(&b)).transpose().map_err(RoomError::corrupt)
    }

    /// Joins a room from a resident server's answer to `send_join`: the room's
    /// state before the join and its auth chain become outliers, then the join
    /// lands on that state. Every event's signatures and hashes are checked, and
    /// each against its own auth events.
    pub async fn join_remote(
        &self,
        version: &RoomVersionId,
        join: CanonicalJsonObject,
        state: Vec<CanonicalJsonObject>,
        auth_chain: Vec<CanonicalJsonObject>,
    ) -> Result<Outcome, RoomError> {
        self.land_on_state(version, join, state, auth_chain, true).await
    }

    /// Takes an event whose predecessors this node could not get, on the state
    /// before it that another server gave (`/state`): a gap in the room's
    /// history, closed as a join is. The event then goes through every check a
    /// received event does, the current state's included.
    pub async fn receive_with_state(
        &self,
        room_id: &RoomId,
        event: CanonicalJsonObject,
        state: Vec<CanonicalJsonObject>,
        auth_chain: Vec<CanonicalJsonObject>,
    ) -> Result<Outcome, RoomError> {
        let version = self.room(room_id).await?.version;
        self.land_on_state(&version, event, state, auth_chain, false).await
    }

    async fn land_on_state(
        &self,
        version: &RoomVersionId,
        event: CanonicalJsonObject,
        state: Vec<CanonicalJsonObject>,
        auth_chain: Vec<CanonicalJsonObject>,
        join: bool,
    ) -> Result<Outcome, RoomError> {
        let rules = pdu::rules(version)?;
        let event = Pdu::from_remote(event, &rules)?;
        let room_id = event.room_id.clone();
        let _write = self.write.lock().await;
        let mut c = Commit::default();
        let existing = self.room_for_write(&mut c, &room_id).await?;
        let (group, before) = self.land_state(&mut c, version, &room_id, state, auth_chain).await?;

        let room = match (join, existing) {
            // A join starts the room here afresh: its one extremity is the join.
            (true, existing) => RoomRecord {
                version: version.clone(),
                state: group,
                extremities: vec![],
                stream: existing.as_ref().map_or(0, |r| r.stream),
                backfilled: existing.map_or(0, |r| r.backfilled),
            },
            (false, Some(existing)) => existing,
            (false, None) => return Err(RoomError::UnknownRoom(room_id)),
        };
        if self.event_in(&c, &event.event_id).await?.is_some() {
            return Ok(Outcome::Duplicate);
        }
        let auths = self.events_or_missing(&c, &event.auth_events).await?;
        let before = Before { state: before, group: BeforeGroup::Stored(group) };
        let stored = self.insert(&mut c, Some(room), &rules, event, &auths, before, Arrival::Remote).await?;
        let outcome = match (&stored.record.rejected, &stored.record.soft_failed) {
            (Some(reason), _) if join => return Err(RoomError::Forbidden(reason.clone())),
            (Some(reason), _) => Outcome::Rejected(reason.clone()),
            (None, Some(reason)) => Outcome::SoftFailed(reason.clone()),
            (None, None) => Outcome::Accepted,
        };
        if join {
            // The invite is answered: the room is here now.
            let key = room_key_for_user(&stored.pdu.sender, Some(&room_id));
            c.batch = std::mem::take(&mut c.batch).delete(INVITES, key);
        }
        self.commit(c).await?;
        Ok(outcome)
    }

    /// Gathers into `c` the state another server says holds before an event
    /// of `room_id` and that state's auth chain: the events new here become
    /// outliers, each checked against its own auth events, and the accepted
    /// state events among `state` are the state returned, with its group.
    pub(super) async fn land_state(
        &self,
        c: &mut Commit,
        version: &RoomVersionId,
        room_id: &RoomId,
        state: Vec<CanonicalJsonObject>,
        auth_chain: Vec<CanonicalJsonObject>,
    ) -> Result<(u64, Arc<State>), RoomError> {
        let rules = pdu::rules(version)?;
        let mut outliers = HashMap::new();
        let mut state_ids = Vec::new();
        let given = state.into_iter().map(|json| (true, json)).chain(auth_chain.into_iter().map(|json| (false, json)));
        for (in_state, json) in given {
            // One bad event among the room's does not stop the join; the rules
            // below decide what becomes of the events that cite it.
            let Ok(pdu) = Pdu::from_remote(json, &rules) else { continue };
            if pdu.room_id != room_id {
                return Err(RoomError::WrongRoom { expected: room_id.to_owned(), found: pdu.room_id });
            }
            if in_state && pdu.is_state() {
                state_ids.push(pdu.event_id.clone());
            }
            outliers.insert(pdu.event_id.clone(), pdu);
        }

        let create_id = rules
            .authorization
            .room_create_event_id_as_room_id
            .then(|| OwnedEventId::try_from(format!("${}", room_id.strip_sigil())).ok())
            .flatten();
        // Outliers in an order where each one's auth events come first.
        let mut stored: HashMap<OwnedEventId, Arc<StoredEvent>> = HashMap::new();
        let mut left: Vec<Pdu> = outliers.into_values().collect();
        left.sort_by_key(|p| p.depth);
        let mut outlier_pdus = Vec::new();
        loop {
            let before = left.len();
            let mut waiting = Vec::new();
            for pdu in left {
                // Events stored already keep their place: only new ones are outliers.
                if let Some(known) = self.event_in(c, &pdu.event_id).await? {
                    stored.insert(pdu.event_id.clone(), known);
                    continue;
                }
                let mut auths = HashMap::new();
                let mut ready = true;
                for id in &pdu.auth_events {
                    match stored.get(id).cloned().or(self.event_in(c, id).await?) {
                        Some(event) => drop(auths.insert(id.clone(), event)),
                        None => ready = false,
                    }
                }
                if !ready {
                    waiting.push(pdu);
                    continue;
                }
                let mut at_auth: State =
                    auths.values().filter_map(|e| Some((e.pdu.state_entry()?, e.pdu.event_id.clone()))).collect();
                // Since v12 the create event is no auth event, but the rules read it.
                if let Some(create) = create_id.as_ref().filter(|id| stored.contains_key(*id)) {
                    at_auth.entry((StateEventType::RoomCreate, String::new())).or_insert_with(|| create.clone());
                }
                let rejected = self.authorize(c, &rules, &pdu, &auths, &at_auth, true).await?;
                let event = self.outlier(c, version, pdu, rejected)?;
                stored.insert(event.pdu.event_id.clone(), event.clone());
                outlier_pdus.push(event);
            }
            left = waiting;
            if left.is_empty() || left.len() == before {
                break;
            }
        }
        // The state before: the accepted events among those given.
        let mut before = State::new();
        for id in &state_ids {
            let Some(event) = stored.get(id) else { continue };
            if event.record.rejected.is_none() {
                before.insert(
                    (event.pdu.kind.to_string().into(), event.pdu.state_key.clone().unwrap_or_default()),
                    id.clone(),
                );
            }
        }
        let before = Arc::new(before);
        let group = self.save_group(c, 0, before.clone()).await?;
        for event in outlier_pdus {
            let record = EventRecord { state_before: group, state_after: group, ..event.record.clone() };
            c.batch = Events::write(std::mem::take(&mut c.batch), &event.pdu, &record)?;
            c.events.insert(event.pdu.event_id.clone(), Arc::new(StoredEvent { pdu: event.pdu.clone(), record }));
        }
        Ok((group, before))
    }

    /// An event with no place in the timeline, gathered into `c`.
    fn outlier(
        &self,
        c: &mut Commit,
        version: &RoomVersionId,
        mut pdu: Pdu,
        rejected: Option<String>,
    ) -> Result<Arc<StoredEvent>, RoomError> {
        pdu.rejected = rejected.is_some();
        let record = EventRecord {
            room_id: pdu.room_id.clone(),
            version: version.clone(),
            pdu: pdu.json.clone(),
            rejected,
            soft_failed: None,
            state_before: 0,
            state_after: 0,
            stream: None,
            replaces: None,
        };
        let event = Arc::new(StoredEvent { pdu: Arc::new(pdu), record });
        c.events.insert(event.pdu.event_id.clone(), event.clone());
        Ok(event)
    }
}
