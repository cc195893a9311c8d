//! What a node says of itself to other servers.

use ruma::api::federation::discovery::get_server_version::v1;

use crate::core::{Error, Homeserver};

/// `GET /_matrix/federation/v1/version`
pub(crate) async fn version(_: &Homeserver, _: (), _: v1::Request) -> Result<v1::Response, Error> {
    let mut server = v1::Server::new();
    server.name = Some("glia".into());
    server.version = Some(env!("CARGO_PKG_VERSION").into());
    let mut response = v1::Response::new();
    response.server = Some(server);
    Ok(response)
}
