//! Transactions from other servers: PDUs through the event engine, EDUs into the
//! ephemeral stores; and the EDUs this node sends for its own users.
//!
//! Key encoding: `federation_txns`: origin server name, 0, transaction ID → the
//! response given, as JSON, so a transaction handed over twice (a relay's
//! mailbox after a lost ack, say) is answered alike and applied once; and 0,
//! when it was answered (ms, u64 BE), the same key → empty, to forget answers
//! a week old ([`expiring`](crate::core::service::expiring)). Answers stored
//! before that index was kept have no entry in it, and stay.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::{stream, StreamExt, TryStreamExt};

use ruma::{
    api::federation::{
        event::{get_missing_events, get_room_state},
        transactions::send_transaction_message::v1,
    },
    canonical_json::CanonicalJsonObject,
    events::{receipt::ReceiptThread, room::member::MembershipState},
    presence::PresenceState,
    to_device::DeviceIdOrAllDevices,
    OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UInt, UserId,
};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};

use crate::{
    core::{
        api::client::{account_data::object, to_device::local_devices},
        pdu::{self, Pdu},
        router::Origin,
        service::{
            expiring::{Expiring, A_WEEK_MS},
            rooms::{Outcome, RoomError},
        },
        Error, Homeserver,
    },
    store::{Batch, StoreError},
};

pub(crate) const FEDERATION_TXNS: &str = "federation_txns";

/// Answers given: a server sends a transaction again only until it has one.
const ANSWERS: Expiring = Expiring { table: FEDERATION_TXNS, keep_for_ms: A_WEEK_MS };

const MAX_PDUS: usize = 50;
const MAX_EDUS: usize = 100;
/// Events asked for at once when a PDU's predecessors are missing.
const MISSING_LIMIT: u64 = 100;

/// `PUT /_matrix/federation/v1/send/{txnId}`
pub(crate) async fn send(hs: &Homeserver, Origin(origin): Origin, request: v1::Request) -> Result<v1::Response, Error> {
    if request.origin != origin {
        return Err(Error::Forbidden(format!("the transaction claims to be from {}", request.origin)));
    }
    if request.pdus.len() > MAX_PDUS || request.edus.len() > MAX_EDUS {
        return Err(Error::BadJson(format!("a transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs")));
    }
    let key = [origin.as_bytes(), b"\0", request.transaction_id.as_bytes()].concat();
    // PDUs of one room go to the engine together, in the order they came.
    let mut rooms: Vec<(OwnedRoomId, Vec<CanonicalJsonObject>)> = Vec::new();
    for raw in &request.pdus {
        let json: CanonicalJsonObject = match serde_json::from_str(raw.get()) {
            Ok(json) => json,
            Err(_) => continue, // Without an event ID there is nothing to answer for.
        };
        let Some(room_id) = json.get("room_id").and_then(|r| r.as_str()).and_then(|r| RoomId::parse(r).ok()) else {
            continue;
        };
        match rooms.iter_mut().find(|(id, _)| *id == room_id) {
            Some((_, pdus)) => pdus.push(json),
            None => rooms.push((room_id, vec![json])),
        }
    }
    // A transaction handed over again is answered as it was the first time.
    // With PDUs, whether it is new is a precondition of their commit, which
    // costs no round trip to the store of its own.
    if rooms.is_empty() {
        if let Some(done) = handled(hs, &key).await? {
            return Ok(done);
        }
    }

    let mut results = BTreeMap::new();
    for (room_id, pdus) in rooms {
        let mut ids = Vec::with_capacity(pdus.len());
        for json in &pdus {
            ids.push(event_id_of(hs, &room_id, json).await);
        }
        let new = Batch::new().expect(FEDERATION_TXNS, key.clone(), None);
        let outcomes = match receive(hs, &origin, &room_id, pdus, new).await {
            Err(Error::Room(RoomError::Store(StoreError::Conflict { table, .. }))) if table == FEDERATION_TXNS => {
                return handled(hs, &key).await?.ok_or_else(|| Error::internal("a handled transaction vanished"));
            }
            outcomes => outcomes?,
        };
        for (id, outcome) in ids.into_iter().zip(outcomes) {
            let Some(id) = id else { continue };
            results.insert(
                id,
                match outcome {
                    Ok(Outcome::Accepted | Outcome::Duplicate | Outcome::SoftFailed(_)) => Ok(()),
                    Ok(Outcome::Rejected(reason)) => Err(reason),
                    Err(err) => Err(err.to_string()),
                },
            );
        }
    }
    let edus = async {
        for edu in &request.edus {
            // An EDU that does not parse or does not check out is dropped: EDUs
            // have no answer, and the PDUs beside it still count.
            let _ = receive_edu(hs, &origin, edu.json()).await;
        }
    };
    // Old answers to forget are looked for meanwhile, at no round trip of its own.
    let now = hs.clock().now_millis();
    let (expired, ()) = futures_util::future::join(ANSWERS.expired(hs.store(), now), edus).await;

    let done = serde_json::to_vec(&Done { pdus: results.clone() }).map_err(Error::internal)?;
    hs.store().write(ANSWERS.keep(Batch::new(), key, done, now, expired?)).await?;
    Ok(v1::Response::new(results))
}

/// The answer given to the transaction stored at `key`, if it was handled.
async fn handled(hs: &Homeserver, key: &[u8]) -> Result<Option<v1::Response>, Error> {
    let Some(done) = hs.store().get(FEDERATION_TXNS, key).await? else { return Ok(None) };
    let done: Done = serde_json::from_slice(&done).map_err(Error::internal)?;
    Ok(Some(v1::Response::new(done.pdus)))
}

#[derive(serde::Serialize, Deserialize)]
struct Done {
    #[serde(with = "pdu_results")]
    pdus: BTreeMap<OwnedEventId, Result<(), String>>,
}

mod pdu_results {
    use std::collections::BTreeMap;

    use ruma::OwnedEventId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        results: &BTreeMap<OwnedEventId, Result<(), String>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let errors: BTreeMap<&OwnedEventId, Option<&String>> =
            results.iter().map(|(id, r)| (id, r.as_ref().err())).collect();
        errors.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<OwnedEventId, Result<(), String>>, D::Error> {
        let errors = BTreeMap::<OwnedEventId, Option<String>>::deserialize(d)?;
        Ok(errors.into_iter().map(|(id, e)| (id, e.map_or(Ok(()), Err))).collect())
    }
}

/// The event ID a PDU has under its room's version, if the node knows the room.
async fn event_id_of(hs: &Homeserver, room_id: &RoomId, json: &CanonicalJsonObject) -> Option<OwnedEventId> {
    let version = hs.rooms().room(room_id).await.ok()?.version;
    pdu::event_id(json, &pdu::rules(&version).ok()?).ok()
}

/// Hands PDUs to the engine; those whose predecessors this node lacks are
/// tried again after asking `origin` for what is missing, and, if the gap is
/// wider than one answer spans, placed on the state `origin` says they follow,
/// as the spec says.
pub(crate) async fn receive(
    hs: &Homeserver,
    origin: &ServerName,
    room_id: &RoomId,
    pdus: Vec<CanonicalJsonObject>,
    also: Batch,
) -> Result<Vec<Result<Outcome, RoomError>>, Error> {
    // A room arrives by a join or an invite, never by a transaction: otherwise
    // any server could fill this node with rooms of its making.
    if let Err(err) = hs.rooms().room(room_id).await {
        return match err {
            RoomError::UnknownRoom(_) => {
                Ok(stream::iter(pdus).then(|json| withdraw_invite(hs, room_id, json)).collect().await)
            }
            err => Err(err.into()),
        };
    }
    let mut outcomes = hs.rooms().receive_all_with(room_id, pdus.clone(), also).await?;
    let gaps = |outcomes: &[Result<Outcome, RoomError>]| -> Vec<usize> {
        (0..outcomes.len()).filter(|i| matches!(outcomes[*i], Err(RoomError::MissingEvents(_)))).collect()
    };
    let missing = gaps(&outcomes);
    if missing.is_empty() {
        return Ok(outcomes);
    }
    let mut latest = Vec::new();
    for i in &missing {
        latest.extend(event_id_of(hs, room_id, &pdus[*i]).await);
    }
    let earliest: Vec<OwnedEventId> =
        hs.rooms().room(room_id).await?.extremities.into_iter().map(|(id, _)| id).collect();
    let mut request = get_missing_events::v1::Request::new(room_id.to_owned(), earliest, latest);
    request.limit = UInt::new_saturating(MISSING_LIMIT);
    if let Ok(found) = hs.federation().request(origin, request, false).await {
        // Oldest first, so each one's predecessors land before it.
        let mut fetched: Vec<CanonicalJsonObject> =
            found.events.iter().filter_map(|raw| serde_json::from_str(raw.get()).ok()).collect();
        fetched.sort_by_key(|json| json.get("depth").and_then(|d| d.as_integer()).map(i64::from).unwrap_or_default());
        hs.rooms().receive_all(room_id, fetched).await?;
        let retried = hs.rooms().receive_all(room_id, missing.iter().map(|i| pdus[*i].clone()).collect()).await?;
        for (i, outcome) in missing.into_iter().zip(retried) {
            outcomes[i] = outcome;
        }
    }
    for i in gaps(&outcomes) {
        let Some(event_id) = event_id_of(hs, room_id, &pdus[i]).await else { continue };
        let request = get_room_state::v1::Request::new(event_id, room_id.to_owned());
        let Ok(state) = hs.federation().request(origin, request, false).await else { continue };
        let parse = |raws: &[Box<RawValue>]| -> Vec<CanonicalJsonObject> {
            raws.iter().filter_map(|raw| serde_json::from_str(raw.get()).ok()).collect()
        };
        let (given, chain) = (parse(&state.pdus), parse(&state.auth_chain));
        outcomes[i] = hs.rooms().receive_with_state(room_id, pdus[i].clone(), given, chain).await;
    }
    Ok(outcomes)
}

/// A PDU of a room this node does not have can only be a kick or ban of a
/// user of this node still invited to it: the invite is withdrawn. Taken
/// from the server that sent the invite, under its signature; anything else
/// is of an unknown room.
async fn withdraw_invite(hs: &Homeserver, room_id: &RoomId, json: CanonicalJsonObject) -> Result<Outcome, RoomError> {
    let unknown = || RoomError::UnknownRoom(room_id.to_owned());
    let user = json.get("state_key").and_then(|k| k.as_str()).and_then(|k| UserId::parse(k).ok());
    let Some(user) = user.filter(|user| user.server_name() == hs.key().server_name()) else { return Err(unknown()) };
    let Some(invite) = hs.rooms().remote_invite_of(&user, room_id).await? else { return Err(unknown()) };
    let inviter = invite.inviter();
    let pdu = Pdu::from_remote(json, &pdu::rules(&invite.version)?)?;
    let out = matches!(pdu.member(), Some((target, MembershipState::Leave | MembershipState::Ban)) if target == user);
    if pdu.room_id != room_id || !out || inviter.is_none_or(|inviter| inviter.server_name() != pdu.sender.server_name())
    {
        return Err(unknown());
    }
    hs.rooms().forget_remote_invite(&user, &pdu).await?;
    Ok(Outcome::Accepted)
}

#[derive(Deserialize)]
struct Edu<'a> {
    edu_type: String,
    #[serde(borrow)]
    content: &'a RawValue,
}

#[derive(Debug, thiserror::Error)]
enum EduError {
    #[error("malformed EDU: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{0} is not a user of the sending server")]
    NotFromOrigin(OwnedUserId),
    #[error("{0} is not in the room")]
    NotInRoom(OwnedUserId),
    #[error(transparent)]
    Room(#[from] RoomError),
    #[error(transparent)]
    Node(#[from] Error),
}

async fn receive_edu(hs: &Homeserver, origin: &ServerName, edu: &RawValue) -> Result<(), EduError> {
    let edu: Edu = serde_json::from_str(edu.get())?;
    let from_origin = |user: &UserId| match user.server_name() == origin {
        true => Ok(()),
        false => Err(EduError::NotFromOrigin(user.to_owned())),
    };
    match edu.edu_type.as_str() {
        "m.typing" => {
            #[derive(Deserialize)]
            struct Typing {
                room_id: OwnedRoomId,
                user_id: OwnedUserId,
                typing: bool,
            }
            let typing: Typing = serde_json::from_str(edu.content.get())?;
            from_origin(&typing.user_id)?;
            joined(hs, &typing.room_id, &typing.user_id).await?;
            let timeout = typing.typing.then_some(TYPING_TIMEOUT_MS);
            hs.ephemeral().set_typing(&typing.room_id, &typing.user_id, timeout);
        }
        "m.receipt" => {
            #[derive(Deserialize)]
            struct Receipt {
                event_ids: Vec<OwnedEventId>,
                #[serde(default)]
                data: ReceiptData,
            }
            #[derive(Deserialize, Default)]
            struct ReceiptData {
                #[serde(default)]
                thread_id: Option<String>,
            }
            type Receipts = BTreeMap<OwnedRoomId, BTreeMap<String, BTreeMap<OwnedUserId, Receipt>>>;
            let rooms: Receipts = serde_json::from_str(edu.content.get())?;
            for (room_id, kinds) in rooms {
                // Private receipts never leave their server.
                let Some(users) = kinds.get("m.read") else { continue };
                for (user, receipt) in users {
                    from_origin(user)?;
                    joined(hs, &room_id, user).await?;
                    let Some(event_id) = receipt.event_ids.last() else { continue };
                    let thread = receipt.data.thread_id.as_deref();
                    hs.user_data().set_receipt(&room_id, user, "m.read", thread, event_id.clone()).await?;
                }
            }
        }
        "m.presence" => {
            #[derive(Deserialize)]
            struct Presence {
                push: Vec<Update>,
            }
            #[derive(Deserialize)]
            struct Update {
                user_id: OwnedUserId,
                presence: PresenceState,
                #[serde(default)]
                status_msg: Option<String>,
                #[serde(default)]
                last_active_ago: u64,
            }
            let presence: Presence = serde_json::from_str(edu.content.get())?;
            for update in presence.push {
                from_origin(&update.user_id)?;
                let (user, ago) = (&update.user_id, update.last_active_ago);
                hs.ephemeral().set_remote_presence(user, update.presence, update.status_msg, ago);
            }
        }
        "m.direct_to_device" => {
            #[derive(Deserialize)]
            struct Direct {
                sender: OwnedUserId,
                #[serde(rename = "type")]
                kind: String,
                message_id: String,
                messages: BTreeMap<OwnedUserId, BTreeMap<DeviceIdOrAllDevices, Box<RawValue>>>,
            }
            let direct: Direct = serde_json::from_str(edu.content.get())?;
            from_origin(&direct.sender)?;
            let mut local = Vec::new();
            for (user, targets) in direct.messages {
                if user.server_name() != hs.key().server_name() {
                    continue;
                }
                for (target, content) in targets {
                    let content = object(&content)?;
                    for device in local_devices(hs, &user, target).await? {
                        local.push((user.clone(), device, content.clone()));
                    }
                }
            }
            let now = hs.clock().now_millis();
            hs.to_device()
                .receive(hs.user_data(), &direct.sender, &direct.message_id, &direct.kind, local, now)
                .await?;
        }
        // This node keeps no copy of other servers' device lists: it tells its
        // clients to ask again, and they ask the user's server.
        "m.device_list_update" | "m.signing_key_update" => {
            #[derive(Deserialize)]
            struct Update {
                user_id: OwnedUserId,
            }
            let update: Update = serde_json::from_str(edu.content.get())?;
            from_origin(&update.user_id)?;
            hs.keys().remote_changed(hs.user_data(), &update.user_id).await?;
        }
        _ => {}
    }
    Ok(())
}

/// How long a remote user's typing notice lasts: the spec has no timeout in
/// the EDU, and servers resend while the user types.
const TYPING_TIMEOUT_MS: u64 = 30_000;

async fn joined(hs: &Homeserver, room_id: &RoomId, user: &UserId) -> Result<(), EduError> {
    match hs.rooms().membership(room_id, user).await? {
        Some(MembershipState::Join) => Ok(()),
        _ => Err(EduError::NotInRoom(user.to_owned())),
    }
}

/// Tells the room's other servers that a user of this node types, or stopped.
pub(crate) async fn send_typing(hs: &Homeserver, room_id: &RoomId, user: &UserId, typing: bool) -> Result<(), Error> {
    let edu = json!({
        "edu_type": "m.typing",
        "content": { "room_id": room_id, "user_id": user, "typing": typing },
    });
    queue_in_room(hs, room_id, &edu).await
}

/// Tells the room's other servers of a user's public read receipt.
pub(crate) async fn send_receipt(
    hs: &Homeserver,
    room_id: &RoomId,
    user: &UserId,
    thread: &ReceiptThread,
    event_id: &ruma::EventId,
) -> Result<(), Error> {
    let mut data = json!({ "ts": hs.clock().now_millis() });
    if let Some(thread) = thread.as_str() {
        data["thread_id"] = thread.into();
    }
    let edu = json!({
        "edu_type": "m.receipt",
        "content": { room_id.as_str(): { "m.read": { user.as_str(): { "event_ids": [event_id], "data": data } } } },
    });
    queue_in_room(hs, room_id, &edu).await
}

/// Tells the nodes sharing a room with `user` of their presence, when it is
/// news to them or due for a refresh (see
/// [`crate::core::service::ephemeral::Ephemeral::presence_to_send`]).
pub(crate) async fn send_presence(hs: &Homeserver, user: &UserId) -> Result<(), Error> {
    let Some(presence) = hs.ephemeral().presence_to_send(user) else { return Ok(()) };
    let servers = servers_sharing_rooms_with(hs, user).await?;
    if servers.is_empty() {
        return Ok(());
    }
    let ago = hs.clock().now_millis().saturating_sub(presence.last_active);
    let edu = json!({
        "edu_type": "m.presence",
        "content": { "push": [{
            "user_id": user,
            "presence": presence.state,
            "status_msg": presence.status_msg,
            "last_active_ago": ago,
            "currently_active": presence.state == PresenceState::Online,
        }] },
    });
    hs.sender().queue_edu(&servers, &edu);
    Ok(())
}

/// Sends the presence news announced or held for the rate limit, when it may
/// go, forever: the shell runs it beside the node.
pub(crate) async fn send_held_presence(hs: &Homeserver) {
    loop {
        let listener = hs.ephemeral().listen_held();
        let (due, next) = hs.ephemeral().held_presence();
        for user in due {
            // A store that fails now may not later; the next sync retries.
            let _ = send_presence(hs, &user).await;
        }
        match next {
            Some(at) => {
                let wait = at.saturating_sub(hs.clock().now_millis()).max(1);
                futures_util::future::select(listener, hs.clock().sleep(wait)).await;
            }
            None => listener.await,
        }
    }
}

/// Rooms whose servers [`servers_sharing_rooms_with`] looks up at once.
const ROOMS_AT_ONCE: usize = 16;

/// The other servers with a user joined to a room this node's `user` is in.
pub(crate) async fn servers_sharing_rooms_with(hs: &Homeserver, user: &UserId) -> Result<Vec<OwnedServerName>, Error> {
    let rooms = hs.rooms().rooms_of(user).await?;
    // On IndexedDB each room's reads are round trips: overlap them.
    let mut lookups = Vec::new();
    for (room_id, membership) in rooms.iter() {
        if membership.membership == MembershipState::Join {
            lookups.push(hs.sender().servers_in(hs, room_id));
        }
    }
    let in_rooms: Vec<_> = stream::iter(lookups).buffer_unordered(ROOMS_AT_ONCE).try_collect().await?;
    Ok(in_rooms.iter().flat_map(|servers| servers.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect())
}

async fn queue_in_room(hs: &Homeserver, room_id: &RoomId, edu: &Value) -> Result<(), Error> {
    let servers = hs.sender().servers_in(hs, room_id).await?;
    if !servers.is_empty() {
        hs.sender().queue_edu(&servers, edu);
    }
    Ok(())
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use std::sync::{atomic::Ordering, Arc};

    use ruma::{server_name, MilliSecondsSinceUnixEpoch};

    use super::*;
    use crate::{
        core::{service::tests::FixedClock, OsRandom, SCHEMA},
        store::{Direction, KeyRange, MemoryStore},
    };

    /// Answers to another server's transactions are kept for a week, to
    /// answer its resends alike, then forgotten.
    #[tokio::test]
    async fn answers_are_kept_for_a_week() {
        let clock = Arc::new(FixedClock(1_700_000_000_000.into()));
        let hs = Homeserver::open(Arc::new(MemoryStore::new(SCHEMA)), clock.clone(), Arc::new(OsRandom)).await.unwrap();
        let origin = server_name!("elsewhere.example");
        let transact = |txn: &str| {
            let request = v1::Request::new(txn.into(), origin.to_owned(), MilliSecondsSinceUnixEpoch::now());
            send(&hs, Origin(origin.to_owned()), request)
        };
        let kept = || async {
            let entries = hs.store().scan(FEDERATION_TXNS, KeyRange::all(), Direction::Forward, usize::MAX).await;
            let keys = entries.unwrap().into_iter().map(|(key, _)| key);
            keys.filter(|key| key.first() != Some(&0)).collect::<Vec<_>>()
        };
        let key = |txn: &str| [origin.as_bytes(), b"\0", txn.as_bytes()].concat();

        transact("one").await.unwrap();
        assert_eq!(kept().await, vec![key("one")]);
        clock.0.fetch_add(ANSWERS.keep_for_ms + 1, Ordering::Relaxed);
        transact("two").await.unwrap();
        assert_eq!(kept().await, vec![key("two")], "a week on, the first answer is forgotten");
        let all = hs.store().scan(FEDERATION_TXNS, KeyRange::all(), Direction::Forward, usize::MAX).await.unwrap();
        assert_eq!(all.len(), 2, "one answer and its place in time");
    }
}
