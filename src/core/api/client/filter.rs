//! Event filters: stored per user, or sent inline, and applied to timelines.

use ruma::{
    api::client::filter::{create_filter, get_filter, Filter, RoomEventFilter, UrlFilter},
    RoomId, UserId,
};

use crate::core::{pdu::Pdu, service::accounts::Session, Error, Homeserver};

/// `POST /_matrix/client/v3/user/{userId}/filter`
pub(crate) async fn create(
    hs: &Homeserver,
    session: Session,
    request: create_filter::v3::Request,
) -> Result<create_filter::v3::Response, Error> {
    own(&session, &request.user_id)?;
    let bytes = serde_json::to_vec(&request.filter).map_err(Error::internal)?;
    Ok(create_filter::v3::Response::new(hs.user_data().create_filter(&session.user_id, &bytes).await?))
}

/// `GET /_matrix/client/v3/user/{userId}/filter/{filterId}`
pub(crate) async fn get(
    hs: &Homeserver,
    session: Session,
    request: get_filter::v3::Request,
) -> Result<get_filter::v3::Response, Error> {
    own(&session, &request.user_id)?;
    let bytes = hs.user_data().filter(&session.user_id, &request.filter_id).await?;
    let bytes = bytes.ok_or_else(|| Error::NotFound(format!("no filter {}", request.filter_id)))?;
    Ok(get_filter::v3::Response::new(serde_json::from_slice(&bytes).map_err(Error::internal)?))
}

/// Users read and write only their own filters (and account data).
pub(crate) fn own(session: &Session, user_id: &UserId) -> Result<(), Error> {
    match session.user_id == user_id {
        true => Ok(()),
        false => Err(Error::Forbidden(format!("{} cannot act for {user_id}", session.user_id))),
    }
}

/// Whether a `types`/`not_types` pattern matches: `*` stands for any sequence
/// of characters. Matched on bytes in linear-time-per-star fashion, so a
/// client's pattern cannot make it slow.
fn type_matches(pattern: &str, kind: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), kind.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((star_p, star_s)) = star {
            // Let the last star swallow one more byte and try again.
            pi = star_p + 1;
            si = star_s + 1;
            star = Some((star_p, star_s + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

fn kind_and_sender_match(
    types: Option<&[String]>,
    not_types: &[String],
    senders: Option<&[ruma::OwnedUserId]>,
    not_senders: &[ruma::OwnedUserId],
    pdu: &Pdu,
) -> bool {
    let kind = pdu.kind.to_string();
    types.is_none_or(|types| types.iter().any(|t| type_matches(t, &kind)))
        && !not_types.iter().any(|t| type_matches(t, &kind))
        && senders.is_none_or(|senders| senders.contains(&pdu.sender))
        && !not_senders.contains(&pdu.sender)
}

pub(crate) fn room_event_matches(filter: &RoomEventFilter, pdu: &Pdu) -> bool {
    let has_url = serde_json::from_str::<serde_json::Value>(pdu.content.get()).is_ok_and(|c| c.get("url").is_some());
    let url_ok = match filter.url_filter {
        Some(UrlFilter::EventsWithUrl) => has_url,
        Some(UrlFilter::EventsWithoutUrl) => !has_url,
        None => true,
    };
    url_ok
        && kind_and_sender_match(
            filter.types.as_deref(),
            &filter.not_types,
            filter.senders.as_deref(),
            &filter.not_senders,
            pdu,
        )
}

pub(crate) fn room_allowed(
    rooms: Option<&[ruma::OwnedRoomId]>,
    not_rooms: &[ruma::OwnedRoomId],
    room: &RoomId,
) -> bool {
    rooms.is_none_or(|rooms| rooms.iter().any(|r| r == room)) && !not_rooms.iter().any(|r| r == room)
}

/// Whether an event type passes a plain (non-room) filter.
pub(crate) fn type_allowed(filter: &Filter, kind: &str) -> bool {
    filter.types.as_ref().is_none_or(|types| types.iter().any(|t| type_matches(t, kind)))
        && !filter.not_types.iter().any(|t| type_matches(t, kind))
}

#[cfg(test)]
mod tests {
    use super::type_matches;

    #[test]
    fn wildcards_match_prefixes_and_suffixes() {
        assert!(type_matches("m.room.*", "m.room.message"));
        assert!(type_matches("*", "anything"));
        assert!(type_matches("m.room.message", "m.room.message"));
        assert!(!type_matches("m.room.*", "m.reaction"));
        assert!(!type_matches("m.room.message", "m.room.messages"));
        assert!(type_matches("*.message", "m.room.message"));
    }
}
