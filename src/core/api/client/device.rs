//! A user's devices: listing, naming and deleting them (which logs them out).

use ruma::{
    api::client::{
        device::{delete_device, delete_devices, get_device, get_devices, update_device, Device},
        uiaa::AuthType,
    },
    MilliSecondsSinceUnixEpoch, OwnedDeviceId, UInt, UserId,
};

use crate::core::{
    service::accounts::{AccountError, DeviceRecord, Session},
    Error, Homeserver,
};

fn device(device_id: OwnedDeviceId, record: DeviceRecord) -> Device {
    let mut device = Device::new(device_id);
    device.display_name = record.display_name;
    device.last_seen_ts = record.last_seen_ts.map(|ts| MilliSecondsSinceUnixEpoch(UInt::new_saturating(ts)));
    device
}

/// `GET /_matrix/client/v3/devices`
pub(crate) async fn list(
    hs: &Homeserver,
    session: Session,
    _: get_devices::v3::Request,
) -> Result<get_devices::v3::Response, Error> {
    let devices = hs.accounts().devices(&session.user_id).await?;
    Ok(get_devices::v3::Response::new(devices.into_iter().map(|(id, record)| device(id, record)).collect()))
}

/// `GET /_matrix/client/v3/devices/{deviceId}`
pub(crate) async fn get(
    hs: &Homeserver,
    session: Session,
    request: get_device::v3::Request,
) -> Result<get_device::v3::Response, Error> {
    let record = hs.accounts().device(&session.user_id, &request.device_id).await?;
    let record = record.ok_or_else(|| AccountError::UnknownDevice(request.device_id.clone()))?;
    Ok(get_device::v3::Response::new(device(request.device_id, record)))
}

/// `PUT /_matrix/client/v3/devices/{deviceId}`
pub(crate) async fn update(
    hs: &Homeserver,
    session: Session,
    request: update_device::v3::Request,
) -> Result<update_device::v3::Response, Error> {
    hs.accounts().rename_device(&session.user_id, &request.device_id, request.display_name).await?;
    Ok(update_device::v3::Response::new())
}

/// `DELETE /_matrix/client/v3/devices/{deviceId}`
pub(crate) async fn delete(
    hs: &Homeserver,
    session: Session,
    request: delete_device::v3::Request,
) -> Result<delete_device::v3::Response, Error> {
    if hs.accounts().device(&session.user_id, &request.device_id).await?.is_none() {
        return Err(AccountError::UnknownDevice(request.device_id).into());
    }
    hs.uiaa().complete(request.auth.as_ref(), &[AuthType::Password], Some(&session), hs).await?;
    let deleted = hs.accounts().delete_devices(&session.user_id, &[request.device_id]).await?;
    forget(hs, &session.user_id, &deleted).await?;
    Ok(delete_device::v3::Response::new())
}

/// `POST /_matrix/client/v3/delete_devices`
pub(crate) async fn delete_many(
    hs: &Homeserver,
    session: Session,
    request: delete_devices::v3::Request,
) -> Result<delete_devices::v3::Response, Error> {
    hs.uiaa().complete(request.auth.as_ref(), &[AuthType::Password], Some(&session), hs).await?;
    let deleted = hs.accounts().delete_devices(&session.user_id, &request.devices).await?;
    forget(hs, &session.user_id, &deleted).await?;
    Ok(delete_devices::v3::Response::new())
}

/// Drops what deleted devices leave behind: their keys (which other users'
/// devices then hear of), the to-device messages no one will fetch and the
/// pushers they set.
pub(crate) async fn forget(hs: &Homeserver, user: &UserId, deleted: &[OwnedDeviceId]) -> Result<(), Error> {
    if let Some(change) = hs.keys().forget_devices(hs.user_data(), user, deleted).await? {
        for device in deleted {
            super::keys::announce_device(hs, user, device, change, None).await?;
        }
    }
    hs.to_device().forget_devices(user, deleted).await?;
    hs.pushers().forget_devices(user, deleted).await?;
    Ok(())
}
