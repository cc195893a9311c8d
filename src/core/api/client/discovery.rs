//! Server discovery and version negotiation.

use ruma::api::client::discovery::get_supported_versions;

use crate::core::{Error, Homeserver};

/// The Client-Server API versions glia serves. A version is listed only once every
/// endpoint it requires of a homeserver answers; none does yet, so clients see
/// honestly that this node cannot host them.
const VERSIONS: &[&str] = &[];

/// `GET /_matrix/client/versions`
pub(crate) async fn versions(
    _hs: &Homeserver,
    _request: get_supported_versions::Request,
) -> Result<get_supported_versions::Response, Error> {
    Ok(get_supported_versions::Response::new(VERSIONS.iter().map(|v| v.to_string()).collect()))
}
