//! `POST /user_directory/search`: the users the searcher can find, which are
//! this node's users (their profiles are public), the members of rooms the
//! searcher is in and of rooms published in the directory, and, when the
//! term is a whole user ID of another node, that user as their node tells.

use std::collections::BTreeMap;

use ruma::{
    api::{client::user_directory::search_users, federation::query::get_profile_information},
    events::room::member::MembershipState,
    OwnedMxcUri, OwnedUserId, UserId,
};

use super::membership::members_in;
use crate::core::{service::accounts::Session, Error, Homeserver};

const MAX_LIMIT: usize = 50;

/// What a user is found by, and shown with.
#[derive(Clone, Default)]
struct Profile {
    display_name: Option<String>,
    avatar_url: Option<String>,
}

/// `POST /_matrix/client/v3/user_directory/search`
pub(crate) async fn search(
    hs: &Homeserver,
    session: Session,
    request: search_users::v3::Request,
) -> Result<search_users::v3::Response, Error> {
    let limit = usize::try_from(u64::from(request.limit)).unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
    let term = request.search_term.trim().to_lowercase();
    let mut known: BTreeMap<OwnedUserId, Profile> = BTreeMap::new();
    for (user_id, record) in hs.accounts().users().await? {
        if !record.deactivated {
            known.insert(user_id, Profile { display_name: record.displayname, avatar_url: record.avatar_url });
        }
    }
    let mut rooms = hs.rooms().joined_rooms(&session.user_id).await?;
    rooms.extend(hs.directory().published().await?);
    rooms.sort();
    rooms.dedup();
    for room_id in rooms {
        let state = hs.rooms().current_state(&room_id).await?;
        for (pdu, member) in members_in(hs, &state).await? {
            let Some(user_id) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok()) else { continue };
            if member.membership == MembershipState::Join {
                // A node's own record of its users wins over member events.
                known
                    .entry(user_id)
                    .or_insert(Profile { display_name: member.displayname, avatar_url: member.avatar_url });
            }
        }
    }
    if let Ok(user_id) = UserId::parse(request.search_term.trim()) {
        if !known.contains_key(&user_id) && user_id.server_name() != hs.key().server_name() {
            if let Some(profile) = remote_profile(hs, &user_id).await {
                known.insert(user_id, profile);
            }
        }
    }

    let mut found: Vec<(OwnedUserId, Profile)> = known.into_iter().filter(|(id, p)| matches(&term, id, p)).collect();
    // Exact and display-name matches first, then by user ID, as a stable order.
    found.sort_by_key(|(id, p)| (id.as_str().to_lowercase() != term, !name_matches(&term, p), id.clone()));
    let limited = found.len() > limit;
    let results = found
        .into_iter()
        .take(limit)
        .map(|(user_id, profile)| {
            let mut user = search_users::v3::User::new(user_id);
            user.display_name = profile.display_name;
            user.avatar_url = profile.avatar_url.map(OwnedMxcUri::from);
            user
        })
        .collect();
    Ok(search_users::v3::Response::new(results, limited))
}

/// Whether the display name has a word starting with every word of `term`.
fn name_matches(term: &str, profile: &Profile) -> bool {
    let Some(name) = &profile.display_name else { return false };
    let name = name.to_lowercase();
    let words: Vec<&str> = name.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).collect();
    let mut wanted = term.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).peekable();
    wanted.peek().is_some() && wanted.all(|w| words.iter().any(|word| word.starts_with(w)))
}

fn matches(term: &str, user_id: &UserId, profile: &Profile) -> bool {
    !term.is_empty() && (user_id.as_str().to_lowercase().contains(term) || name_matches(term, profile))
}

/// The profile of a user of another node, asked of that node; `None` when it
/// does not answer.
async fn remote_profile(hs: &Homeserver, user_id: &UserId) -> Option<Profile> {
    let ask = get_profile_information::v1::Request::new(user_id.to_owned());
    let answer = hs.federation().request(user_id.server_name(), ask, false).await.ok()?;
    let text = |field: &str| answer.get(field).and_then(|v| v.as_str()).map(str::to_owned);
    Some(Profile { display_name: text("displayname"), avatar_url: text("avatar_url") })
}
