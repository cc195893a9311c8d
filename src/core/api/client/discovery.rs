//! Server discovery, version negotiation, capabilities, and the endpoints
//! clients call at startup for features this node has nothing to offer yet.

use std::{collections::BTreeMap, time::Duration};

use ruma::{
    api::client::{
        authenticated_media::get_media_config as media_config_v1,
        discovery::{
            discover_homeserver::{self, HomeserverInfo},
            get_capabilities::{self, v3::RoomVersionStability},
            get_supported_versions,
        },
        media::get_media_config as media_config_v3,
        thirdparty::get_protocols,
        voip::get_turn_server_info,
    },
    api::OutgoingResponseExt,
    RoomVersionId, UInt,
};

use crate::core::{pdu::DEFAULT_ROOM_VERSION, service::accounts::Session, Error, Homeserver};

/// The Client-Server API versions glia serves: every endpoint these versions
/// require of a homeserver for accounts, rooms, messages and sync answers.
/// v1.4 and later are left out: clients take them to mean threads and other
/// APIs that come with later issues.
const VERSIONS: &[&str] =
    &["r0.0.1", "r0.1.0", "r0.2.0", "r0.3.0", "r0.4.0", "r0.5.0", "r0.6.0", "r0.6.1", "v1.1", "v1.2", "v1.3"];

/// The room versions the event engine implements.
const ROOM_VERSIONS: &[RoomVersionId] = &[RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];

/// `GET /_matrix/client/versions`
pub(crate) async fn versions(
    _hs: &Homeserver,
    _: Option<Session>,
    _request: get_supported_versions::Request,
) -> Result<get_supported_versions::Response, Error> {
    Ok(get_supported_versions::Response::new(VERSIONS.iter().map(|v| v.to_string()).collect()))
}

/// `GET /.well-known/matrix/client`: this same origin. The core sees only paths,
/// so the origin comes from the `Forwarded` header a shell adds (the Service
/// Worker knows its page's scheme) or from `Host` (the native node is plain HTTP).
pub(crate) fn well_known(request: &http::request::Parts) -> Result<http::Response<Vec<u8>>, Error> {
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    let forwarded = |key: &str| {
        header("forwarded")?.split(';').find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            k.eq_ignore_ascii_case(key).then(|| v.trim_matches('"').to_owned())
        })
    };
    let host = forwarded("host").or_else(|| header("host").map(str::to_owned));
    let host = host.ok_or_else(|| Error::NotFound("no Host header to tell this origin by".into()))?;
    let proto = forwarded("proto").unwrap_or_else(|| "http".into());
    let base_url = format!("{proto}://{host}");
    Ok(discover_homeserver::Response::new(HomeserverInfo::new(base_url)).try_into_http_response()?)
}

/// `GET /_matrix/client/v3/capabilities`
pub(crate) async fn capabilities(
    _hs: &Homeserver,
    _: Session,
    _request: get_capabilities::v3::Request,
) -> Result<get_capabilities::v3::Response, Error> {
    let mut capabilities = get_capabilities::v3::Capabilities::new();
    capabilities.change_password.enabled = true;
    capabilities.room_versions.default = DEFAULT_ROOM_VERSION;
    capabilities.room_versions.available =
        ROOM_VERSIONS.iter().map(|v| (v.clone(), RoomVersionStability::Stable)).collect();
    // Deprecated by `m.profile_fields` (v1.16), but what the v1.1-v1.3 clients read.
    #[allow(deprecated)]
    {
        capabilities.set_displayname.enabled = true;
        capabilities.set_avatar_url.enabled = true;
    }
    capabilities.thirdparty_id_changes.enabled = false;
    Ok(get_capabilities::v3::Response::new(capabilities))
}

/// `GET /_matrix/client/v3/voip/turnServer`: no TURN server here; WebRTC calls
/// between peers use whatever the browsers find.
pub(crate) async fn turn_server(
    _hs: &Homeserver,
    _: Session,
    _request: get_turn_server_info::v3::Request,
) -> Result<get_turn_server_info::v3::Response, Error> {
    Ok(get_turn_server_info::v3::Response::new(String::new(), String::new(), Vec::new(), Duration::from_secs(86_400)))
}

/// `GET /_matrix/client/v3/thirdparty/protocols`: no bridges.
pub(crate) async fn protocols(
    _hs: &Homeserver,
    _: Session,
    _request: get_protocols::v3::Request,
) -> Result<get_protocols::v3::Response, Error> {
    Ok(get_protocols::v3::Response::new(BTreeMap::new()))
}

fn upload_size(hs: &Homeserver) -> UInt {
    UInt::try_from(hs.limits().max_upload_bytes).unwrap_or(UInt::MAX)
}

/// `GET /_matrix/client/v1/media/config`
pub(crate) async fn media_config(
    hs: &Homeserver,
    _: Session,
    _request: media_config_v1::v1::Request,
) -> Result<media_config_v1::v1::Response, Error> {
    Ok(media_config_v1::v1::Response::new(upload_size(hs)))
}

/// The legacy media endpoints are deprecated, and still what clients of v1.10
/// and before call.
#[allow(deprecated)]
pub(crate) type LegacyMediaConfig = media_config_v3::v3::Request;

/// `GET /_matrix/media/v3/config`
pub(crate) async fn legacy_media_config(
    hs: &Homeserver,
    _: Session,
    _request: LegacyMediaConfig,
) -> Result<media_config_v3::v3::Response, Error> {
    Ok(media_config_v3::v3::Response::new(upload_size(hs)))
}
