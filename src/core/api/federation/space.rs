//! A space of this node and its children, for another server whose user walks
//! the space's tree.

use ruma::api::federation::space::{get_hierarchy, SpaceHierarchyParentSummary};

use crate::core::{
    api::{
        client::{
            directory::summary,
            space::{may_see, Room, Viewer},
        },
        federation::membership::resident,
    },
    router::Origin,
    Error, Homeserver,
};

/// `GET /_matrix/federation/v1/hierarchy/{roomId}`
pub(crate) async fn hierarchy(
    hs: &Homeserver,
    Origin(origin): Origin,
    request: get_hierarchy::v1::Request,
) -> Result<get_hierarchy::v1::Response, Error> {
    let room_id = &request.room_id;
    let viewer = Viewer::Server(&origin);
    // The spec answers 404 alike for a room this node does not have and one
    // the asking server could not peek or join.
    let not_found = || Error::NotFound(format!("{room_id} is not known here"));
    // A room this node has left has state that may be stale.
    if !resident(hs, room_id).await? {
        return Err(not_found());
    }
    let state = hs.rooms().current_state(room_id).await?;
    let room = Room::local(hs, room_id, &state, request.suggested_only).await?;
    if !may_see(hs, viewer, &room.summary, Some(&state)).await? {
        return Err(not_found());
    }
    let (mut children, mut inaccessible) = (Vec::new(), Vec::new());
    for (child, _) in &room.children {
        let child_id = &child.state_key;
        // The spec leaves out the children this node cannot describe: the
        // asking server finds them through the child events' other servers.
        if !resident(hs, child_id).await? {
            continue;
        }
        let state = hs.rooms().current_state(child_id).await?;
        let summary = summary(hs, child_id, &state).await?;
        match may_see(hs, viewer, &summary, Some(&state)).await? {
            true => children.push(summary),
            false => inaccessible.push(child_id.clone()),
        }
    }
    let (summary, children_state) = room.into_parts();
    let mut response = get_hierarchy::v1::Response::new(SpaceHierarchyParentSummary::new(summary, children_state));
    response.children = children;
    response.inaccessible_children = inaccessible;
    Ok(response)
}
