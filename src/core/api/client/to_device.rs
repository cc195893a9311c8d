//! Send-to-device messaging: messages straight to devices, outside rooms,
//! which end-to-end encryption uses to share room keys.

use ruma::{api::client::to_device::send_event_to_device, to_device::DeviceIdOrAllDevices};

use super::account_data::object;
use crate::core::{service::accounts::Session, Error, Homeserver};

/// `PUT /_matrix/client/v3/sendToDevice/{eventType}/{txnId}`
pub(crate) async fn send(
    hs: &Homeserver,
    session: Session,
    request: send_event_to_device::v3::Request,
) -> Result<send_event_to_device::v3::Response, Error> {
    let kind = request.event_type.to_string();
    let scope = format!("sendToDevice/{kind}");
    let (user, device) = (&session.user_id, &session.device_id);
    hs.transactions()
        .once_without_event(user, device, &scope, &request.txn_id, |also| async move {
            let mut local = Vec::new();
            for (target_user, targets) in request.messages {
                if target_user.server_name() != hs.key().server_name() {
                    // Federation hook: messages for users of other servers are
                    // to go out as `m.direct_to_device` EDUs (one per server,
                    // with this request's message ID); until then, none leaves.
                    continue;
                }
                for (target, content) in targets {
                    let content = object(content.json())?;
                    // Messages for devices that do not exist would wait forever.
                    let devices = match target {
                        DeviceIdOrAllDevices::AllDevices => {
                            hs.accounts().devices(&target_user).await?.into_iter().map(|(id, _)| id).collect()
                        }
                        DeviceIdOrAllDevices::DeviceId(id) => match hs.accounts().device(&target_user, &id).await? {
                            Some(_) => vec![id],
                            None => Vec::new(),
                        },
                    };
                    local.extend(devices.into_iter().map(|id| (target_user.clone(), id, content.clone())));
                }
            }
            Ok::<_, Error>(hs.to_device().send(hs.user_data(), user, &kind, local, also).await?)
        })
        .await?;
    Ok(send_event_to_device::v3::Response::new())
}
