//! Other servers asking for this node's users' devices and end-to-end
//! encryption keys, on behalf of their users.

use ruma::{
    api::federation::{
        device::get_devices::v1 as devices,
        keys::{claim_keys::v1 as claim, get_keys::v1 as query},
    },
    UInt,
};

use crate::core::{api::client::keys, router::Origin, Error, Homeserver};

/// `POST /_matrix/federation/v1/user/keys/query`
pub(crate) async fn query_keys(hs: &Homeserver, _: Origin, request: query::Request) -> Result<query::Response, Error> {
    let found = keys::local_keys(hs, request.device_keys, None).await?;
    let mut response = query::Response::new(found.device_keys);
    response.master_keys = found.master_keys;
    response.self_signing_keys = found.self_signing_keys;
    Ok(response)
}

/// `POST /_matrix/federation/v1/user/keys/claim`
pub(crate) async fn claim_keys(hs: &Homeserver, _: Origin, request: claim::Request) -> Result<claim::Response, Error> {
    Ok(claim::Response::new(keys::claim_local(hs, request.one_time_keys).await?))
}

/// `GET /_matrix/federation/v1/user/devices/{userId}`
pub(crate) async fn user_devices(
    hs: &Homeserver,
    _: Origin,
    request: devices::Request,
) -> Result<devices::Response, Error> {
    let user = request.user_id;
    if user.server_name() != hs.key().server_name() {
        return Err(Error::InvalidParam(format!("{user} is not a user of this server")));
    }
    let stream = UInt::new_saturating(hs.keys().stream(&user).await?);
    let found = keys::local_keys(hs, [(user.clone(), Vec::new())].into(), None).await?;
    let mut response = devices::Response::new(user.clone(), stream);
    for (device, keys) in found.device_keys.into_values().flatten() {
        let mut entry = devices::UserDevice::new(device.clone(), keys);
        entry.device_display_name = hs.accounts().device(&user, &device).await?.and_then(|d| d.display_name);
        response.devices.push(entry);
    }
    response.master_key = found.master_keys.into_values().next();
    response.self_signing_key = found.self_signing_keys.into_values().next();
    Ok(response)
}
