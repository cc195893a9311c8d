//! Push rules, kept as the user's `m.push_rules` account data (where clients
//! also read them from `/sync`), and the unread notification counts they give.

use ruma::{
    api::client::push::{
        delete_pushrule, get_pushrule, get_pushrule_actions, get_pushrule_enabled, get_pushrules_all,
        get_pushrules_global_scope, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
    },
    events::room::member::MembershipState,
    push::{Action, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    serde::Raw,
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
};
use serde_json::{json, Value};
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use super::membership::members_in;
use crate::{
    core::{
        pdu::Pdu,
        service::{accounts::Session, cache::Cache, relations, rooms::StreamPosition, user_data::Entry},
        Error, Homeserver,
    },
    store::Direction,
};

/// The account data type holding a user's push rules.
pub(crate) const PUSH_RULES: &str = "m.push_rules";

/// Unread events counted per room at most; clients show "99+" long before.
const MAX_COUNTED: usize = 1000;

/// Events read at a time while counting: few at first, as the newest are
/// often the user's own, then more.
const FIRST_COUNT_PAGE: usize = 4;
const MAX_COUNT_PAGE: usize = 64;

pub(crate) async fn ruleset(hs: &Homeserver, user: &UserId) -> Result<Ruleset, Error> {
    parse_ruleset(user, hs.user_data().account_data(user, None, PUSH_RULES).await?)
}

/// The rules of the user's push rules account data `entry`, or the defaults.
fn parse_ruleset(user: &UserId, entry: Option<Entry>) -> Result<Ruleset, Error> {
    match entry {
        Some(entry) => {
            #[derive(serde::Deserialize)]
            struct Content {
                global: Ruleset,
            }
            let content: Content = serde_json::from_str(entry.content.get()).map_err(Error::internal)?;
            Ok(content.global)
        }
        None => default_ruleset(user),
    }
}

/// The spec's server-default rules. ruma's follow the latest spec, which
/// dropped the rules matching display names, user names and "@room" (v1.17) in
/// favour of `m.mentions`; the clients of the versions glia serves (up to v1.3)
/// send no `m.mentions`, so those rules are put back where v1.3 has them.
pub(crate) fn default_ruleset(user: &UserId) -> Result<Ruleset, Error> {
    serde_json::from_value(default_rules(user)?).map_err(Error::internal)
}

/// [`default_ruleset`] as JSON, which is what a sync serves: building it
/// through `Ruleset` and back is most of what a first sync spends on it.
fn default_rules(user: &UserId) -> Result<Value, Error> {
    let highlight = json!(["notify", { "set_tweak": "sound", "value": "default" }, { "set_tweak": "highlight" }]);
    let mut rules = serde_json::to_value(Ruleset::server_default(user)).map_err(Error::internal)?;
    let insert_after = |list: &mut Value, after: &str, rule: Value| {
        // An empty kind is left out when serialized.
        if !list.is_array() {
            *list = Value::Array(Vec::new());
        }
        if let Some(list) = list.as_array_mut() {
            let at = list.iter().position(|r| r["rule_id"] == after).map_or(list.len(), |i| i + 1);
            list.insert(at, rule);
        }
    };
    insert_after(
        &mut rules["override"],
        ".m.rule.member_event",
        json!({
            "rule_id": ".m.rule.contains_display_name", "default": true, "enabled": true,
            "conditions": [{ "kind": "contains_display_name" }],
            "actions": highlight,
        }),
    );
    insert_after(
        &mut rules["override"],
        ".m.rule.is_room_mention",
        json!({
            "rule_id": ".m.rule.roomnotif", "default": true, "enabled": true,
            "conditions": [
                { "kind": "event_match", "key": "content.body", "pattern": "@room" },
                { "kind": "sender_notification_permission", "key": "room" },
            ],
            "actions": ["notify", { "set_tweak": "highlight" }],
        }),
    );
    insert_after(
        &mut rules["content"],
        "",
        json!({
            "rule_id": ".m.rule.contains_user_name", "default": true, "enabled": true,
            "pattern": user.localpart(),
            "actions": highlight,
        }),
    );
    Ok(rules)
}

async fn save(hs: &Homeserver, user: &UserId, rules: &Ruleset) -> Result<(), Error> {
    let content = serde_json::value::to_raw_value(&json!({ "global": rules })).map_err(Error::internal)?;
    hs.user_data().set_account_data(user, None, PUSH_RULES, content).await?;
    Ok(())
}

/// The `m.push_rules` account data event of a user who never changed theirs.
pub(crate) fn default_rules_event(user: &UserId) -> Result<Value, Error> {
    Ok(json!({ "type": PUSH_RULES, "content": { "global": default_rules(user)? } }))
}

fn not_found(rule_id: &str) -> Error {
    Error::NotFound(format!("no push rule {rule_id}"))
}

/// `GET /_matrix/client/v3/pushrules/`
pub(crate) async fn all(
    hs: &Homeserver,
    session: Session,
    _: get_pushrules_all::v3::Request,
) -> Result<get_pushrules_all::v3::Response, Error> {
    Ok(get_pushrules_all::v3::Response::new(ruleset(hs, &session.user_id).await?))
}

/// `GET /_matrix/client/v3/pushrules/global/`
pub(crate) async fn global(
    hs: &Homeserver,
    session: Session,
    _: get_pushrules_global_scope::v3::Request,
) -> Result<get_pushrules_global_scope::v3::Response, Error> {
    Ok(get_pushrules_global_scope::v3::Response::new(ruleset(hs, &session.user_id).await?))
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub(crate) async fn get(
    hs: &Homeserver,
    session: Session,
    request: get_pushrule::v3::Request,
) -> Result<get_pushrule::v3::Response, Error> {
    let rules = ruleset(hs, &session.user_id).await?;
    let rule = rules.get(request.kind, &request.rule_id).ok_or_else(|| not_found(&request.rule_id))?;
    Ok(get_pushrule::v3::Response::new(rule.to_owned().into()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub(crate) async fn set(
    hs: &Homeserver,
    session: Session,
    request: set_pushrule::v3::Request,
) -> Result<set_pushrule::v3::Response, Error> {
    let mut rules = ruleset(hs, &session.user_id).await?;
    rules.insert(request.rule, request.after.as_deref(), request.before.as_deref()).map_err(|err| match err {
        ruma::push::InsertPushRuleError::UnknownRuleId => Error::NotFound(err.to_string()),
        _ => Error::InvalidParam(err.to_string()),
    })?;
    save(hs, &session.user_id, &rules).await?;
    Ok(set_pushrule::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/pushrules/global/{kind}/{ruleId}`
pub(crate) async fn delete(
    hs: &Homeserver,
    session: Session,
    request: delete_pushrule::v3::Request,
) -> Result<delete_pushrule::v3::Response, Error> {
    let mut rules = ruleset(hs, &session.user_id).await?;
    rules.remove(request.kind, &request.rule_id).map_err(|err| match err {
        ruma::push::RemovePushRuleError::NotFound => not_found(&request.rule_id),
        _ => Error::Forbidden(err.to_string()),
    })?;
    save(hs, &session.user_id, &rules).await?;
    Ok(delete_pushrule::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub(crate) async fn get_enabled(
    hs: &Homeserver,
    session: Session,
    request: get_pushrule_enabled::v3::Request,
) -> Result<get_pushrule_enabled::v3::Response, Error> {
    let rules = ruleset(hs, &session.user_id).await?;
    let rule = rules.get(request.kind, &request.rule_id).ok_or_else(|| not_found(&request.rule_id))?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/enabled`
pub(crate) async fn set_enabled(
    hs: &Homeserver,
    session: Session,
    request: set_pushrule_enabled::v3::Request,
) -> Result<set_pushrule_enabled::v3::Response, Error> {
    let mut rules = ruleset(hs, &session.user_id).await?;
    rules.set_enabled(request.kind, &request.rule_id, request.enabled).map_err(|_| not_found(&request.rule_id))?;
    save(hs, &session.user_id, &rules).await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

/// `GET /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub(crate) async fn get_actions(
    hs: &Homeserver,
    session: Session,
    request: get_pushrule_actions::v3::Request,
) -> Result<get_pushrule_actions::v3::Response, Error> {
    let rules = ruleset(hs, &session.user_id).await?;
    let rule = rules.get(request.kind, &request.rule_id).ok_or_else(|| not_found(&request.rule_id))?;
    Ok(get_pushrule_actions::v3::Response::new(rule.actions().to_vec()))
}

/// `PUT /_matrix/client/v3/pushrules/global/{kind}/{ruleId}/actions`
pub(crate) async fn set_actions(
    hs: &Homeserver,
    session: Session,
    request: set_pushrule_actions::v3::Request,
) -> Result<set_pushrule_actions::v3::Response, Error> {
    let mut rules = ruleset(hs, &session.user_id).await?;
    rules.set_actions(request.kind, &request.rule_id, request.actions).map_err(|_| not_found(&request.rule_id))?;
    save(hs, &session.user_id, &rules).await?;
    Ok(set_pushrule_actions::v3::Response::new())
}

/// Unread counts as last computed for a user and room, so a sync counts only
/// what arrived since.
#[derive(Clone, Copy)]
struct Counted {
    read_upto: StreamPosition,
    counted_to: StreamPosition,
    notify: u32,
    highlight: u32,
}

pub struct UnreadCounts {
    counted: Cache<(OwnedUserId, OwnedRoomId), Counted>,
    /// Each user's push rules, parsed, with the stream position of the
    /// account data they were parsed from (0 for the defaults).
    rules: Cache<OwnedUserId, (u64, Arc<Ruleset>)>,
    /// What the push rules see of a room for a user, with the room's state
    /// group it was made from.
    contexts: Cache<(OwnedUserId, OwnedRoomId), (u64, Arc<PushConditionRoomCtx>)>,
}

/// (user, room) pairs whose counts are remembered, per cache generation.
const REMEMBERED: usize = 16_384;

impl Default for UnreadCounts {
    fn default() -> Self {
        Self { counted: Cache::new(REMEMBERED), rules: Cache::new(REMEMBERED), contexts: Cache::new(REMEMBERED) }
    }
}

impl UnreadCounts {
    /// The user's push rules, parsed once per change: counting reads them for
    /// every room with new events.
    pub(crate) async fn rules(&self, hs: &Homeserver, user: &UserId) -> Result<Arc<Ruleset>, Error> {
        let entry = hs.user_data().account_data(user, None, PUSH_RULES).await?;
        let version = entry.as_ref().map_or(0, |entry| entry.stream);
        match self.rules.get(user) {
            Some((parsed, rules)) if parsed == version => Ok(rules),
            _ => {
                let rules = Arc::new(parse_ruleset(user, entry)?);
                self.rules.insert(user.to_owned(), (version, rules.clone()), 1);
                Ok(rules)
            }
        }
    }

    /// What the push rules see of the room, made once per state of the room.
    /// One made while a commit lands may come from the newer state, and is
    /// made again for it.
    // In wasm ruma's context is neither `Send` nor `Sync`; the worker has one thread.
    #[allow(clippy::arc_with_non_send_sync)]
    pub(crate) async fn context(
        &self,
        hs: &Homeserver,
        user: &UserId,
        room_id: &RoomId,
    ) -> Result<Arc<PushConditionRoomCtx>, Error> {
        let group = hs.rooms().room(room_id).await?.state;
        let key = (user.to_owned(), room_id.to_owned());
        match self.contexts.get(&key) {
            Some((made, context)) if made == group => Ok(context),
            _ => {
                let context = Arc::new(push_context(hs, user, room_id).await?);
                self.contexts.insert(key, (group, context.clone()), 1);
                Ok(context)
            }
        }
    }
}

/// The events in `room_id` after the user's read receipt (and after their own
/// latest event: posting reads the room) that the push rules say notify them,
/// and how many of those highlight.
pub(crate) async fn unread(
    hs: &Homeserver,
    user: &UserId,
    room_id: &RoomId,
    now: StreamPosition,
) -> Result<(u32, u32), Error> {
    let read_upto = read_upto(hs, user, room_id).await?;
    let key = (user.to_owned(), room_id.to_owned());
    let cached = hs.unread_counts().counted.get(&key);
    // With the same receipt, only what came after the last count is new.
    let mut counted = match cached {
        Some(c) if c.read_upto == read_upto && c.counted_to <= now => c,
        _ => Counted { read_upto, counted_to: read_upto, notify: 0, highlight: 0 },
    };
    if counted.counted_to < now {
        let (mut counts, mut posted) = ((0, 0), false);
        let mut counter = Counter::new(hs, user, room_id);
        // Newest first, so that counting stops at the user's own latest event.
        let mut pages = NewestFirst::from(now);
        'scan: while let Some(page) = pages.next(hs, room_id).await? {
            for (position, pdu) in page {
                if position <= counted.counted_to {
                    break 'scan;
                }
                if pdu.sender == user {
                    posted = true;
                    break 'scan;
                }
                counter.count(&pdu, &mut counts).await?;
            }
        }
        let (notify, highlight) = counts;
        if posted {
            (counted.notify, counted.highlight) = (notify, highlight);
        } else {
            counted.notify += notify;
            counted.highlight += highlight;
        }
        counted.counted_to = now;
    }
    hs.unread_counts().counted.insert(key, counted, 1);
    Ok((counted.notify, counted.highlight))
}

/// What the user's push rules do with `pdu`: notifying, highlighting, or nothing.
pub(crate) async fn actions<'r>(
    hs: &Homeserver,
    rules: &'r Ruleset,
    context: &PushConditionRoomCtx,
    pdu: &Pdu,
) -> Result<&'r [Action], Error> {
    let raw: Raw<Value> = super::format::raw_event(hs, pdu, None).await?;
    Ok(rules.get_actions(&raw, context).await)
}

/// The stream position of the latest event the user's read receipts point at.
pub(crate) async fn read_upto(hs: &Homeserver, user: &UserId, room_id: &RoomId) -> Result<StreamPosition, Error> {
    let mut upto = 0;
    for receipt in hs.user_data().receipts_of(room_id, user).await? {
        if !matches!(receipt.kind.as_str(), "m.read" | "m.read.private")
            || receipt.thread.as_ref().is_some_and(|t| t != "main")
        {
            continue;
        }
        if let Some(event) = hs.rooms().event(&receipt.receipt.event_id).await? {
            upto = upto.max(event.record.stream.unwrap_or(0));
        }
    }
    Ok(upto)
}

async fn push_context(hs: &Homeserver, user: &UserId, room_id: &RoomId) -> Result<PushConditionRoomCtx, Error> {
    let state = hs.rooms().current_state(room_id).await?;
    let mut members = 0u32;
    let mut display_name = user.localpart().to_owned();
    for (pdu, content) in members_in(hs, &state).await? {
        if content.membership == MembershipState::Join {
            members += 1;
        }
        if pdu.state_key.as_deref() == Some(user.as_str()) {
            display_name = content.displayname.unwrap_or(display_name);
        }
    }
    let mut context = PushConditionRoomCtx::new(room_id.to_owned(), UInt::from(members), user.to_owned(), display_name);
    let levels = hs.rooms().power_levels_of(room_id).await?;
    context.power_levels = Some(PushConditionPowerLevelsCtx::from(levels));
    Ok(context)
}

/// Notification and highlight counts.
pub(crate) type Counts = (u32, u32);

/// [`unread`] for clients that follow threads: the main timeline's counts
/// and each thread's, every event counted against the receipts that cover
/// it (an unthreaded one covers every thread; a threaded one, its thread;
/// posting in a thread reads it).
pub(crate) async fn unread_by_thread(
    hs: &Homeserver,
    user: &UserId,
    room_id: &RoomId,
    now: StreamPosition,
) -> Result<(Counts, BTreeMap<OwnedEventId, Counts>), Error> {
    let mut unthreaded = 0;
    let mut threaded: HashMap<String, StreamPosition> = HashMap::new();
    for receipt in hs.user_data().receipts_of(room_id, user).await? {
        if !matches!(receipt.kind.as_str(), "m.read" | "m.read.private") {
            continue;
        }
        let Some(event) = hs.rooms().event(&receipt.receipt.event_id).await? else { continue };
        let position = event.record.stream.unwrap_or(0);
        match receipt.thread {
            None => unthreaded = unthreaded.max(position),
            Some(thread) => {
                let upto = threaded.entry(thread).or_default();
                *upto = (*upto).max(position);
            }
        }
    }
    let (mut main, mut threads): (Counts, BTreeMap<OwnedEventId, Counts>) = Default::default();
    let mut posted: HashSet<Option<OwnedEventId>> = HashSet::new();
    let mut counter = Counter::new(hs, user, room_id);
    let mut pages = NewestFirst::from(now);
    'scan: while let Some(page) = pages.next(hs, room_id).await? {
        for (position, pdu) in page {
            if position <= unthreaded {
                break 'scan;
            }
            let thread =
                relations::relation_of(&pdu).filter(|(kind, _)| kind == relations::THREAD).map(|(_, root)| root);
            let key = thread.as_ref().map_or("main", |root| root.as_str());
            if posted.contains(&thread) || threaded.get(key).is_some_and(|upto| position <= *upto) {
                continue;
            }
            if pdu.sender == user {
                posted.insert(thread);
                continue;
            }
            let counts = match thread {
                None => &mut main,
                Some(root) => threads.entry(root).or_default(),
            };
            counter.count(&pdu, counts).await?;
        }
    }
    // Threads with nothing to count are left out, as the spec allows.
    threads.retain(|_, counts| counts.0 > 0);
    Ok((main, threads))
}

/// A room's timeline newest first, for counting: a few events at first, as
/// the newest are often the user's own, then more, up to [`MAX_COUNTED`].
struct NewestFirst {
    cursor: StreamPosition,
    page_size: usize,
    seen: usize,
    done: bool,
}

impl NewestFirst {
    /// From stream position `now` down.
    fn from(now: StreamPosition) -> Self {
        Self { cursor: now + 1, page_size: FIRST_COUNT_PAGE, seen: 0, done: false }
    }

    async fn next(
        &mut self,
        hs: &Homeserver,
        room_id: &RoomId,
    ) -> Result<Option<Vec<(StreamPosition, Arc<Pdu>)>>, Error> {
        if self.done || self.seen >= MAX_COUNTED {
            return Ok(None);
        }
        let page = hs.rooms().timeline(room_id, Some(self.cursor), Direction::Backward, self.page_size).await?;
        self.done = page.len() < self.page_size;
        self.page_size = (self.page_size * 4).min(MAX_COUNT_PAGE);
        self.seen += page.len();
        match page.last() {
            Some((position, _)) => self.cursor = *position,
            None => return Ok(None),
        }
        Ok(Some(page))
    }
}

/// Counts the events the user's push rules say notify them (and those that
/// highlight), reading the rules and the room's context for the first event
/// that needs them.
struct Counter<'a> {
    hs: &'a Homeserver,
    user: &'a UserId,
    room_id: &'a RoomId,
    rules: Option<(Arc<Ruleset>, Arc<PushConditionRoomCtx>)>,
}

impl<'a> Counter<'a> {
    fn new(hs: &'a Homeserver, user: &'a UserId, room_id: &'a RoomId) -> Self {
        Self { hs, user, room_id, rules: None }
    }

    async fn count(&mut self, pdu: &Pdu, counts: &mut Counts) -> Result<(), Error> {
        if self.rules.is_none() {
            let (hs, user) = (self.hs, self.user);
            let counts = hs.unread_counts();
            self.rules = Some((counts.rules(hs, user).await?, counts.context(hs, user, self.room_id).await?));
        }
        let Some((rules, context)) = &self.rules else { return Ok(()) };
        let actions = actions(self.hs, rules, context, pdu).await?;
        if actions.iter().any(|a| a.should_notify()) {
            counts.0 += 1;
            counts.1 += u32::from(actions.iter().any(|a| a.is_highlight()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_serves_the_default_rules_as_the_ruleset_has_them() {
        let user = UserId::parse("@alice:example.org").unwrap();
        let served = default_rules_event(&user).unwrap();
        let ruleset = serde_json::to_value(default_ruleset(&user).unwrap()).unwrap();
        assert_eq!(served["content"]["global"], ruleset);
        assert!(served["content"]["global"]["content"].as_array().is_some_and(|rules| !rules.is_empty()));
    }
}
