//! Everything that can go wrong while answering a request, and the one place where
//! it becomes a Matrix error response.

use http::StatusCode;
use ruma::api::{
    error::{DeserializationError, ErrorBody, ErrorKind, FromHttpRequestError, IntoHttpError, StandardErrorBody},
    OutgoingResponseExt,
};

use super::body::BodyError;
use super::service::{
    accounts::AccountError, backup::BackupError, federation::FederationError, media::MediaError, rooms::RoomError,
};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unrecognized request: {method} {path}")]
    Unrecognized { method: http::Method, path: String },
    #[error("{path} does not accept {method}")]
    MethodNotAllowed { method: http::Method, path: String },
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("request body is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("request is malformed: {0}")]
    BadJson(String),
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    #[error("{0}")]
    Unknown(String),
    #[error("this endpoint needs an access token")]
    MissingToken,
    /// A federation request without a valid `X-Matrix` signature.
    #[error("{0}")]
    Unauthorized(String),
    #[error("unknown or expired access token")]
    UnknownToken,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("guest access is not enabled on this node")]
    GuestAccessForbidden,
    #[error("too many requests; try again in {retry_after_ms} ms")]
    LimitExceeded { retry_after_ms: u64 },
    /// User-interactive authentication: the stages still to complete, answered
    /// as the spec's 401 body rather than a standard error.
    #[error("additional authentication is required")]
    Uiaa(Box<ruma::api::client::uiaa::UiaaInfo>),
    #[error("the room alias {0} is taken")]
    AliasInUse(String),
    #[error("the room alias {0} is taken")]
    RoomInUse(String),
    #[error("{0} is managed by the server: use its own endpoint")]
    ServerManaged(String),
    #[error("unsupported room version: {0}")]
    UnsupportedRoomVersion(String),
    #[error("this node does not support room version {0}")]
    IncompatibleRoomVersion(ruma::RoomVersionId),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error(transparent)]
    Room(#[from] RoomError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Media(#[from] MediaError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A request this node made to another server on a client's behalf failed.
    #[error(transparent)]
    Federation(#[from] FederationError),
    #[error("could not build the response: {0}")]
    Response(#[from] IntoHttpError),
    /// A failure that valid input cannot cause.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn internal(err: impl std::fmt::Display) -> Self {
        Self::Internal(err.to_string())
    }

    /// Sorts ruma's parse failures into the spec's error codes: `M_NOT_JSON` when
    /// the body is not JSON at all, `M_BAD_JSON` when it is JSON of the wrong shape,
    /// `M_INVALID_PARAM` for the query string and path.
    pub(crate) fn from_request(err: FromHttpRequestError, body: &[u8]) -> Self {
        use DeserializationError::{Ident, Json, Query};
        match err {
            FromHttpRequestError::Deserialization(Json(_)) => {
                match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                    Err(not_json) => Self::NotJson(not_json),
                    Ok(_) => Self::BadJson(err.to_string()),
                }
            }
            FromHttpRequestError::Deserialization(Query(_) | Ident(_)) => Self::InvalidParam(err.to_string()),
            _ => Self::BadJson(err.to_string()),
        }
    }

    fn status_and_kind(&self) -> (StatusCode, ErrorKind) {
        match self {
            Self::Unrecognized { .. } => (StatusCode::NOT_FOUND, ErrorKind::Unrecognized),
            Self::MethodNotAllowed { .. } => (StatusCode::METHOD_NOT_ALLOWED, ErrorKind::Unrecognized),
            Self::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::TooLarge),
            Self::Body(_) => (StatusCode::BAD_REQUEST, ErrorKind::Unknown),
            Self::NotJson(_) => (StatusCode::BAD_REQUEST, ErrorKind::NotJson),
            Self::BadJson(_) => (StatusCode::BAD_REQUEST, ErrorKind::BadJson),
            Self::InvalidParam(_) => (StatusCode::BAD_REQUEST, ErrorKind::InvalidParam),
            Self::Unknown(_) => (StatusCode::BAD_REQUEST, ErrorKind::Unknown),
            Self::MissingToken => (StatusCode::UNAUTHORIZED, ErrorKind::MissingToken),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorKind::Unauthorized),
            Self::UnknownToken => (StatusCode::UNAUTHORIZED, ErrorKind::UnknownToken(Default::default())),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorKind::Forbidden),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, ErrorKind::NotFound),
            Self::GuestAccessForbidden => (StatusCode::FORBIDDEN, ErrorKind::GuestAccessForbidden),
            Self::LimitExceeded { retry_after_ms } => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorKind::LimitExceeded({
                    let mut data = ruma::api::error::LimitExceededErrorData::new();
                    data.retry_after =
                        Some(ruma::api::error::RetryAfter::Delay(std::time::Duration::from_millis(*retry_after_ms)));
                    data
                }),
            ),
            Self::Uiaa(_) => (StatusCode::UNAUTHORIZED, ErrorKind::Forbidden),
            Self::AliasInUse(_) => (StatusCode::CONFLICT, ErrorKind::Unknown),
            Self::ServerManaged(_) => (StatusCode::METHOD_NOT_ALLOWED, ErrorKind::BadJson),
            Self::RoomInUse(_) => (StatusCode::BAD_REQUEST, ErrorKind::RoomInUse),
            Self::UnsupportedRoomVersion(_) => (StatusCode::BAD_REQUEST, ErrorKind::UnsupportedRoomVersion),
            Self::IncompatibleRoomVersion(version) => (
                StatusCode::BAD_REQUEST,
                ErrorKind::IncompatibleRoomVersion(ruma::api::error::IncompatibleRoomVersionErrorData::new(
                    version.clone(),
                )),
            ),
            Self::Account(err) => match err {
                AccountError::UserInUse(_) => (StatusCode::BAD_REQUEST, ErrorKind::UserInUse),
                AccountError::InvalidUsername(_) => (StatusCode::BAD_REQUEST, ErrorKind::InvalidUsername),
                AccountError::WrongPassword => (StatusCode::FORBIDDEN, ErrorKind::Forbidden),
                AccountError::UnknownDevice(_) => (StatusCode::NOT_FOUND, ErrorKind::NotFound),
                AccountError::Corrupt(_) | AccountError::Store(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Unknown)
                }
            },
            Self::Room(err) => match err {
                RoomError::UnknownRoom(_) => (StatusCode::NOT_FOUND, ErrorKind::NotFound),
                RoomError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorKind::Forbidden),
                RoomError::Pdu(crate::core::pdu::PduError::TooLarge) => {
                    (StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::TooLarge)
                }
                RoomError::Pdu(_) | RoomError::Invalid(_) | RoomError::WrongRoom { .. } => {
                    (StatusCode::BAD_REQUEST, ErrorKind::BadJson)
                }
                RoomError::MissingEvents(_) => (StatusCode::NOT_FOUND, ErrorKind::NotFound),
                RoomError::Resolution(_) | RoomError::Corrupt(_) | RoomError::Store(_) => {
                    (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Unknown)
                }
            },
            Self::Backup(err) => match err {
                BackupError::NoVersion(_) => (StatusCode::NOT_FOUND, ErrorKind::NotFound),
                BackupError::NotCurrent { current, .. } => (
                    StatusCode::FORBIDDEN,
                    ErrorKind::WrongRoomKeysVersion(ruma::api::error::WrongRoomKeysVersionErrorData::new(
                        current.clone(),
                    )),
                ),
                BackupError::Invalid(_) => (StatusCode::BAD_REQUEST, ErrorKind::InvalidParam),
                // Only the store and corrupt data fail inside a backup.
                BackupError::Room(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Unknown),
            },
            Self::Media(err) => match err {
                MediaError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorKind::NotFound),
                MediaError::NotYetUploaded(_) => (StatusCode::GATEWAY_TIMEOUT, ErrorKind::NotYetUploaded),
                MediaError::CannotOverwrite(_) => (StatusCode::CONFLICT, ErrorKind::CannotOverwriteMedia),
                MediaError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorKind::Forbidden),
                MediaError::NotAnImage(_) => (StatusCode::BAD_REQUEST, ErrorKind::Unknown),
                MediaError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::TooLarge),
                MediaError::Room(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Unknown),
            },
            // A name that is no glia node's can never be asked: the caller's mistake.
            Self::Federation(FederationError::NotGlia(_)) => (StatusCode::BAD_REQUEST, ErrorKind::InvalidParam),
            Self::Federation(_) => (StatusCode::BAD_GATEWAY, ErrorKind::Unknown),
            Self::Store(_) | Self::Response(_) | Self::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Unknown)
            }
        }
    }

    /// The spec's standard error response: `{"errcode": ..., "error": ...}`.
    pub(crate) fn into_response(self) -> http::Response<Vec<u8>> {
        if let Self::Uiaa(info) = &self {
            if let Ok(body) = serde_json::to_vec(info) {
                let mut response = http::Response::new(body);
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
                return response;
            }
        }
        let (status, kind) = self.status_and_kind();
        let body = ErrorBody::Standard(StandardErrorBody::new(kind, self.to_string()));
        ruma::api::error::Error::new(status, body).try_into_http_response().unwrap_or_else(|_| {
            // Serializing a standard error body cannot fail; keep a plain 500 anyway
            // rather than a panic.
            let mut response = http::Response::new(br#"{"errcode":"M_UNKNOWN","error":"internal error"}"#.to_vec());
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_error(body: &[u8]) -> FromHttpRequestError {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Login {
            user: String,
        }
        FromHttpRequestError::Deserialization(serde_json::from_slice::<Login>(body).unwrap_err().into())
    }

    fn errcode(err: Error) -> (u16, String) {
        let response = err.into_response();
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
        (response.status().as_u16(), body["errcode"].as_str().unwrap().to_owned())
    }

    #[test]
    fn body_errors_tell_not_json_from_bad_json() {
        for body in [&b"{"[..], b"\xff\xfe", b"user=x"] {
            assert_eq!(errcode(Error::from_request(json_error(body), body)), (400, "M_NOT_JSON".into()));
        }
        for body in [&br#"{"user": 5}"#[..], b"[]", br#"{}"#] {
            assert_eq!(errcode(Error::from_request(json_error(body), body)), (400, "M_BAD_JSON".into()));
        }
    }

    #[test]
    fn failed_requests_to_other_servers_are_502_unknown() {
        let remote = FederationError::Remote { server: "b".into(), status: 500, body: "oops".into() };
        assert_eq!(errcode(Error::Federation(remote)), (502, "M_UNKNOWN".into()));
        assert_eq!(errcode(Error::Federation(FederationError::Timeout("b".into()))), (502, "M_UNKNOWN".into()));
        let not_glia = FederationError::NotGlia("example.org".into());
        assert_eq!(errcode(Error::Federation(not_glia)), (400, "M_INVALID_PARAM".into()));
    }

    #[test]
    fn storage_failures_are_500_unknown() {
        let err = Error::Store(StoreError::Backend("disk on fire".into()));
        assert_eq!(errcode(err), (500, "M_UNKNOWN".into()));
    }
}
