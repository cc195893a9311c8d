//! The rooms this node publishes, for other servers' users to find.

use ruma::{
    api::federation::directory::{get_public_rooms, get_public_rooms_filtered},
    directory::Filter,
};

use crate::core::{
    api::client::directory::{page_into, public_rooms_in, Scope},
    router::Origin,
    Error, Homeserver,
};

/// `GET /_matrix/federation/v1/publicRooms`
pub(crate) async fn public_rooms(
    hs: &Homeserver,
    _: Origin,
    request: get_public_rooms::v1::Request,
) -> Result<get_public_rooms::v1::Response, Error> {
    let since = request.since.as_deref();
    let page = public_rooms_in(hs, Scope::Node, request.limit, since, &Filter::new(), &request.room_network).await?;
    Ok(page_into!(get_public_rooms::v1::Response::new(), page))
}

/// `POST /_matrix/federation/v1/publicRooms`
pub(crate) async fn public_rooms_filtered(
    hs: &Homeserver,
    _: Origin,
    request: get_public_rooms_filtered::v1::Request,
) -> Result<get_public_rooms_filtered::v1::Response, Error> {
    let since = request.since.as_deref();
    let page = public_rooms_in(hs, Scope::Node, request.limit, since, &request.filter, &request.room_network).await?;
    Ok(page_into!(get_public_rooms_filtered::v1::Response::new(), page))
}
