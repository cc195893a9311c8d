//! Pagination tokens, opaque to clients.
//!
//! - `s{events}_{user}_{ephemeral}`: a `/sync` position: the event stream, the
//!   account data and receipts stream, and the typing and presence stream.
//! - `t{depth}_{stream}`: a gap in a room's topological order, for `/messages`
//!   and `/context`: the one just before the event at (depth, stream position),
//!   which need not exist. Paging backwards from it gives the events before that
//!   key; paging forwards, that key and those after.

use std::fmt;

use crate::core::{
    service::rooms::{StreamPosition, TopologicalPosition},
    Error, Homeserver,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SyncToken {
    pub events: u64,
    pub user: u64,
    pub ephemeral: u64,
}

impl SyncToken {
    pub fn parse(token: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidParam(format!("not a sync token: {token}"));
        let mut parts = token.strip_prefix('s').ok_or_else(bad)?.split('_').map(str::parse::<u64>);
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(events)), Some(Ok(user)), Some(Ok(ephemeral)), None) => Ok(Self { events, user, ephemeral }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for SyncToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}_{}_{}", self.events, self.user, self.ephemeral)
    }
}

/// The gap before `position`.
pub(crate) fn before(position: TopologicalPosition) -> String {
    format!("t{}_{}", position.0, position.1)
}

/// The gap after `position`: nothing sorts between it and the next stream position.
pub(crate) fn after(position: TopologicalPosition) -> String {
    before((position.0, position.1 + 1))
}

/// A `/messages` `from` or `to`: a topological token, or a sync token, which
/// stands for the gap after the room's last event at that point of the event
/// stream. `Ok(None)` for a sync token before anything in the room.
pub(crate) async fn room_position(
    hs: &Homeserver,
    room_id: &ruma::RoomId,
    token: &str,
) -> Result<Option<TopologicalPosition>, Error> {
    if let Some(rest) = token.strip_prefix('t') {
        let bad = || Error::InvalidParam(format!("not a pagination token: {token}"));
        let (depth, stream) = rest.split_once('_').ok_or_else(bad)?;
        return Ok(Some((depth.parse().map_err(|_| bad())?, stream.parse().map_err(|_| bad())?)));
    }
    let stream: StreamPosition = SyncToken::parse(token)?.events;
    // The gap after the room's last event at that point of the stream.
    let last = hs.rooms().timeline(room_id, Some(stream + 1), crate::store::Direction::Backward, 1).await?;
    Ok(last.first().map(|(stream, pdu)| (u64::from(pdu.depth), *stream + 1)))
}
