//! Registration, login and logout, the account's password and deactivation,
//! with user-interactive authentication where the spec asks for it.

use crate::core::lock;
use ruma::api::{
    client::{
        account::{change_password, deactivate, get_username_availability, register, whoami},
        session::{get_login_types, login, logout, logout_all},
        uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
    },
    error::{DeserializationError, ErrorKind, StandardErrorBody},
    IncomingRequest,
};

use ruma::events::room::member::MembershipState;

use crate::core::{
    service::accounts::{AccountError, Session},
    Error, Homeserver,
};

/// `GET /_matrix/client/v3/register/available`
pub(crate) async fn available(
    hs: &Homeserver,
    _: (),
    request: get_username_availability::v3::Request,
) -> Result<get_username_availability::v3::Response, Error> {
    hs.limits().register.check("available", hs.clock().now_millis())?;
    let user_id = hs.accounts().user_id(&request.username)?;
    match hs.accounts().user(&user_id).await? {
        Some(_) => Err(AccountError::UserInUse(user_id).into()),
        None => Ok(get_username_availability::v3::Response::new(true)),
    }
}

/// `POST /_matrix/client/v3/register`
pub(crate) async fn register(
    hs: &Homeserver,
    _: (),
    request: register::v3::Request,
) -> Result<register::v3::Response, Error> {
    if request.kind == register::RegistrationKind::Guest {
        return Err(Error::GuestAccessForbidden);
    }
    let accounts = hs.accounts();
    let user_id = match &request.username {
        Some(name) => accounts.user_id(name)?,
        None => accounts.user_id(&accounts.random_localpart())?,
    };
    // Refuse a taken name before the client goes through the stages.
    if accounts.user(&user_id).await?.is_some() {
        return Err(AccountError::UserInUse(user_id).into());
    }
    hs.uiaa().complete(request.auth.as_ref(), &[AuthType::Dummy], None, hs).await?;
    hs.limits().register.check("register", hs.clock().now_millis())?;
    let device = (!request.inhibit_login).then(|| (request.device_id.clone(), request.initial_device_display_name));
    let login = accounts.register(&user_id, request.password.as_deref(), device).await?;
    let mut response = register::v3::Response::new(user_id.clone());
    if let Some(login) = login {
        response.access_token = Some(login.access_token);
        response.device_id = Some(login.session.device_id);
    }
    Ok(response)
}

/// `GET /_matrix/client/v3/login`
pub(crate) async fn login_types(
    _hs: &Homeserver,
    _: (),
    _request: get_login_types::v3::Request,
) -> Result<get_login_types::v3::Response, Error> {
    let password = get_login_types::v3::LoginType::Password(Default::default());
    Ok(get_login_types::v3::Response::new(vec![password]))
}

/// Ruma's request `R`, whose body must be a JSON object with a string `type`:
/// ruma-client-api 0.25 panics parsing a login without one (it indexes the
/// map for it), so such a body is refused before ruma sees it.
pub(crate) struct Typed<R>(pub R);

crate::core::api::metadata_of_inner!(Typed);

impl<R: IncomingRequest> IncomingRequest for Typed<R> {
    type EndpointError = R::EndpointError;
    type OutgoingResponse = R::OutgoingResponse;

    fn try_from_http_request_inner(request: http::Request<&[u8]>, args: &[&str]) -> Result<Self, DeserializationError> {
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            _kind: String,
        }
        serde_json::from_slice::<Head>(request.body())?;
        R::try_from_http_request_inner(request, args).map(Self)
    }
}

/// `POST /_matrix/client/v3/login`
pub(crate) async fn login(
    hs: &Homeserver,
    _: (),
    Typed(request): Typed<login::v3::Request>,
) -> Result<login::v3::Response, Error> {
    let login::v3::LoginInfo::Password(password) = &request.login_info else {
        return Err(Error::Unknown("only m.login.password is supported".into()));
    };
    #[allow(deprecated)] // `user` is how older clients name the account.
    let name = match (&password.identifier, &password.user) {
        (Some(UserIdentifier::Matrix(id)), _) => id.user.clone(),
        (None, Some(user)) => user.clone(),
        _ => return Err(Error::Unknown("log in with a Matrix user identifier".into())),
    };
    let user_id = hs.accounts().user_id(&name).map_err(|_| AccountError::WrongPassword)?;
    hs.limits().login.check(user_id.as_str(), hs.clock().now_millis())?;
    let login = hs
        .accounts()
        .login(&user_id, &password.password, request.device_id, request.initial_device_display_name)
        .await?;
    Ok(login::v3::Response::new(user_id, login.access_token, login.session.device_id))
}

/// `POST /_matrix/client/v3/logout`
pub(crate) async fn logout(
    hs: &Homeserver,
    session: Session,
    _: logout::v3::Request,
) -> Result<logout::v3::Response, Error> {
    let deleted = hs.accounts().delete_devices(&session.user_id, &[session.device_id]).await?;
    super::device::forget(hs, &session.user_id, &deleted).await?;
    Ok(logout::v3::Response::new())
}

/// `POST /_matrix/client/v3/logout/all`
pub(crate) async fn logout_all(
    hs: &Homeserver,
    session: Session,
    _: logout_all::v3::Request,
) -> Result<logout_all::v3::Response, Error> {
    let deleted = hs.accounts().delete_other_devices(&session.user_id, None).await?;
    super::device::forget(hs, &session.user_id, &deleted).await?;
    Ok(logout_all::v3::Response::new())
}

/// `GET /_matrix/client/v3/account/whoami`
pub(crate) async fn whoami(
    _hs: &Homeserver,
    session: Session,
    _: whoami::v3::Request,
) -> Result<whoami::v3::Response, Error> {
    let mut response = whoami::v3::Response::new(session.user_id, false);
    response.device_id = Some(session.device_id);
    Ok(response)
}

/// `POST /_matrix/client/v3/account/password`
pub(crate) async fn change_password(
    hs: &Homeserver,
    session: Option<Session>,
    request: change_password::v3::Request,
) -> Result<change_password::v3::Response, Error> {
    // Password resets by email would come without a token; there are none here.
    let session = session.ok_or(Error::MissingToken)?;
    hs.uiaa().complete(request.auth.as_ref(), &[AuthType::Password], Some(&session), hs).await?;
    hs.accounts().set_password(&session.user_id, &request.new_password).await?;
    if request.logout_devices {
        let deleted = hs.accounts().delete_other_devices(&session.user_id, Some(&session.device_id)).await?;
        super::device::forget(hs, &session.user_id, &deleted).await?;
    }
    Ok(change_password::v3::Response::new())
}

/// `POST /_matrix/client/v3/account/deactivate`
pub(crate) async fn deactivate(
    hs: &Homeserver,
    session: Option<Session>,
    request: deactivate::v3::Request,
) -> Result<deactivate::v3::Response, Error> {
    // Password resets by email would come without a token; there are none here.
    let session = session.ok_or(Error::MissingToken)?;
    hs.uiaa().complete(request.auth.as_ref(), &[AuthType::Password], Some(&session), hs).await?;
    // Leave every room first, while the account can still send.
    for (room_id, membership) in hs.rooms().rooms_of(&session.user_id).await?.iter() {
        if matches!(membership.membership, MembershipState::Join | MembershipState::Invite | MembershipState::Knock) {
            super::membership::change(hs, &session.user_id, room_id, &session.user_id, MembershipState::Leave, None)
                .await?;
        }
    }
    let deleted = hs.accounts().deactivate(&session.user_id).await?;
    super::device::forget(hs, &session.user_id, &deleted).await?;
    Ok(deactivate::v3::Response::new(ruma::api::client::account::ThirdPartyIdRemovalStatus::NoSupport))
}

/// User-interactive authentication sessions: which stages a request must pass,
/// and which sessions this node handed out.
#[derive(Default)]
pub struct Uiaa {
    sessions: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Sessions kept before the oldest are forgotten (clients then start over).
const UIAA_SESSIONS: usize = 1024;

impl Uiaa {
    /// Passes if `auth` completes the one stage of `flow`; otherwise the 401
    /// that tells the client what to do (with the error of a failed attempt).
    pub async fn complete(
        &self,
        auth: Option<&AuthData>,
        flow: &[AuthType],
        session: Option<&Session>,
        hs: &Homeserver,
    ) -> Result<(), Error> {
        let failure = match (auth, session) {
            (None, _) => None,
            (Some(AuthData::Dummy(dummy)), _) if flow.contains(&AuthType::Dummy) => match &dummy.session {
                Some(id) if self.take(id) => return Ok(()),
                _ => Some("unknown user-interactive authentication session".to_owned()),
            },
            (Some(AuthData::Password(password)), Some(session)) if flow.contains(&AuthType::Password) => {
                let UserIdentifier::Matrix(id) = &password.identifier else {
                    return Err(Error::Forbidden("authenticate with a Matrix user identifier".into()));
                };
                let claimed = hs.accounts().user_id(&id.user).ok();
                match claimed.as_ref() == Some(&session.user_id) {
                    false => Some("the identifier is not the logged-in user".to_owned()),
                    true => match hs.accounts().check_password(&session.user_id, &password.password).await {
                        Ok(()) => return Ok(()),
                        Err(AccountError::WrongPassword) => Some("wrong password".to_owned()),
                        Err(err) => return Err(err.into()),
                    },
                }
            }
            (Some(_), _) => Some("this authentication type is not offered here".to_owned()),
        };
        let mut info = UiaaInfo::new(vec![AuthFlow::new(flow.to_vec())]);
        info.session = Some(self.start(hs));
        info.auth_error = failure.map(|message| Box::new(StandardErrorBody::new(ErrorKind::Forbidden, message)));
        Err(Error::Uiaa(Box::new(info)))
    }

    fn start(&self, hs: &Homeserver) -> String {
        let id = hs.accounts().random_string(24);
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= UIAA_SESSIONS {
            sessions.clear();
        }
        sessions.insert(id.clone());
        id
    }

    fn take(&self, id: &str) -> bool {
        lock(&self.sessions).remove(id)
    }
}
