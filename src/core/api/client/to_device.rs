//! Send-to-device messaging: messages straight to devices, outside rooms,
//! which end-to-end encryption uses to share room keys. Messages for users of
//! other servers leave as one `m.direct_to_device` EDU per server, queued
//! durably.

use std::collections::BTreeMap;

use ruma::{
    api::client::to_device::send_event_to_device, to_device::DeviceIdOrAllDevices, OwnedServerName, OwnedUserId, UserId,
};
use serde_json::{json, value::RawValue};

use super::account_data::object;
use crate::core::{service::accounts::Session, Error, Homeserver};

type Messages = BTreeMap<OwnedUserId, BTreeMap<DeviceIdOrAllDevices, Box<RawValue>>>;

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
pub(crate) async fn send(
    hs: &Homeserver,
    session: Session,
    request: send_event_to_device::v3::Request,
) -> Result<send_event_to_device::v3::Response, Error> {
    let kind = request.event_type.to_string();
    let scope = format!("sendToDevice/{kind}");
    let (user, device) = (&session.user_id, &session.device_id);
    // The same on every retry, so a receiver that got a message already can
    // tell it again when a retry sends it twice.
    let message_id = format!("{device}.{}", request.txn_id);
    hs.transactions()
        .once_without_event(user, device, &scope, &request.txn_id, |also| async move {
            let mut local = Vec::new();
            let mut remote: BTreeMap<OwnedServerName, Messages> = BTreeMap::new();
            for (target_user, targets) in request.messages {
                if target_user.server_name() != hs.key().server_name() {
                    let messages = remote.entry(target_user.server_name().to_owned()).or_default();
                    for (target, content) in targets {
                        let content = object(content.json())?;
                        messages.entry(target_user.clone()).or_default().insert(target, content);
                    }
                    continue;
                }
                for (target, content) in targets {
                    let content = object(content.json())?;
                    let devices = local_devices(hs, &target_user, target).await?;
                    local.extend(devices.into_iter().map(|id| (target_user.clone(), id, content.clone())));
                }
            }
            // Queued before the local write, which records the transaction: a
            // failure between the two sends the EDUs again on the client's
            // retry, with the same message ID.
            for (server, messages) in remote {
                let edu = json!({
                    "edu_type": "m.direct_to_device",
                    "content": { "sender": user, "type": kind, "message_id": message_id, "messages": messages },
                });
                hs.sender().queue_durable_edu(hs, &[server], &edu).await?;
            }
            Ok::<_, Error>(hs.to_device().send(hs.user_data(), user, &kind, local, also).await?)
        })
        .await?;
    Ok(send_event_to_device::v3::Response::new())
}

/// The devices of this node's `user` that `target` names. Messages for devices
/// that do not exist would wait forever, so they are dropped.
pub(crate) async fn local_devices(
    hs: &Homeserver,
    user: &UserId,
    target: DeviceIdOrAllDevices,
) -> Result<Vec<ruma::OwnedDeviceId>, Error> {
    Ok(match target {
        DeviceIdOrAllDevices::AllDevices => hs.accounts().devices(user).await?.into_iter().map(|(id, _)| id).collect(),
        DeviceIdOrAllDevices::DeviceId(id) => match hs.accounts().device(user, &id).await? {
            Some(_) => vec![id],
            None => Vec::new(),
        },
    })
}
