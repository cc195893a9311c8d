//! Publishing the node's signing key.
//!
//! A glia server's key is its name, so peers never need this; it is served in the
//! spec's shape for tools and servers that look keys up the usual way.

use ruma::{
    api::federation::discovery::get_server_keys::v2,
    canonical_json::{to_canonical_value, CanonicalJsonValue},
    serde::{base64::Standard, Base64, Raw},
    signatures::sign_json,
};
use serde_json::json;

use crate::core::{identity::KEY_ID, Error, Homeserver};

/// How long peers may cache the key document: the key never changes.
const VALIDITY_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// `GET /_matrix/key/v2/server`
pub(crate) async fn server_keys(hs: &Homeserver, _: (), _request: v2::Request) -> Result<v2::Response, Error> {
    let key = hs.key();
    let document = json!({
        "server_name": key.server_name(),
        "verify_keys": { KEY_ID: { "key": Base64::<Standard, _>::new(key.public_key()).encode() } },
        "old_verify_keys": {},
        "valid_until_ts": hs.clock().now_millis().saturating_add(VALIDITY_MS),
    });
    let CanonicalJsonValue::Object(mut document) = to_canonical_value(document).map_err(Error::internal)? else {
        return Err(Error::internal("the key document is not an object"));
    };
    sign_json(key.server_name().as_str(), key.key_pair(), &mut document).map_err(Error::internal)?;
    let raw = serde_json::value::to_raw_value(&document).map_err(Error::internal)?;
    Ok(v2::Response::new(Raw::from_json(raw)))
}
