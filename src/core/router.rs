//! Turns an `http::Request` into one of ruma's typed requests, calls its handler,
//! and turns the result (or the error) back into an `http::Response` with the
//! headers every response carries.

use std::{future::Future, pin::Pin};

use bytes::Bytes;
use http::{header, HeaderValue, Method};
use percent_encoding::percent_decode_str;
use ruma::api::{
    auth_scheme::{
        AccessToken, AccessTokenOptional, AppserviceTokenOptional, AuthScheme, NoAccessToken, NoAuthentication,
    },
    path_builder::PathBuilder,
    IncomingRequest, IncomingRequestExt, Metadata,
};

use ruma::{
    api::federation::authentication::ServerSignatures,
    serde::Base64,
    signatures::{PublicKeyMap, PublicKeySet},
    OwnedServerName,
};

use super::{
    api::{answer::Respond, endpoints},
    body::Body,
    identity::{self, KEY_ID},
    service::accounts::Session,
    Error, Homeserver, SERVER,
};
use crate::p2p::PeerKey;

/// The largest request body the core accepts but for media uploads, which are
/// stored as they arrive, up to a limit of their own. JSON requests are far
/// smaller.
pub const MAX_BODY_BYTES: usize = 1 << 20;

pub(super) async fn handle(hs: &Homeserver, request: http::Request<Body>) -> http::Response<Body> {
    if request.method() == Method::OPTIONS {
        // CORS preflight. The spec forbids running endpoint logic for OPTIONS:
        // the headers `finish` adds are the whole answer.
        return finish(http::Response::new(Body::from(Bytes::new())));
    }
    // On the heap: the future of every handler is in it, and a node answering
    // another in the same task (tests, in-process meshes) nests them.
    let answer = Box::pin(route(hs, request)).await;
    finish(answer.unwrap_or_else(|err| err.into_response().map(Body::from)))
}

/// The response for a request a shell refused before the core saw it (a body
/// over [`MAX_BODY_BYTES`], say), with the same headers as every other.
pub fn error_response(err: Error) -> http::Response<Bytes> {
    finish(err.into_response().map(Bytes::from))
}

/// Adds the headers every response carries.
fn finish<B>(response: http::Response<B>) -> http::Response<B> {
    let (mut parts, body) = response.into_parts();
    // Client-Server API, "Web Browser Clients"; HEAD too, since every GET answers it.
    let headers = &mut parts.headers;
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
    headers.insert(header::SERVER, HeaderValue::from_static(SERVER));
    // Nothing the node serves is a page: media opened directly (an uploaded
    // HTML file, say) runs no script and loads nothing, and any origin may
    // embed media, as the spec asks.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "sandbox; default-src 'none'; style-src 'unsafe-inline'; media-src 'self'; img-src 'self'",
        ),
    );
    headers.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    http::Response::from_parts(parts, body)
}

type Answer = Result<http::Response<Body>, Error>;

/// One endpoint's work as a future of its own, polled through a vtable the
/// optimizer cannot see through. Awaited in place, every handler's future
/// would be inlined into [`route`]'s: one function of half a megabyte of
/// wasm, which the browser compiles on a worker's first request (about 100 ms
/// of every cold start), where this way it compiles only the endpoints used.
/// `Send` natively, where requests run on a thread pool.
#[cfg(not(target_arch = "wasm32"))]
#[inline(never)]
fn apart<'a>(answer: impl Future<Output = Answer> + Send + 'a) -> Pin<Box<dyn Future<Output = Answer> + Send + 'a>> {
    Box::pin(answer)
}
#[cfg(target_arch = "wasm32")]
#[inline(never)]
fn apart<'a>(answer: impl Future<Output = Answer> + 'a) -> Pin<Box<dyn Future<Output = Answer> + 'a>> {
    Box::pin(answer)
}

async fn route(hs: &Homeserver, request: http::Request<Body>) -> Answer {
    let path = request.uri().path().to_owned();
    let (parts, body) = request.into_parts();
    // Set when an endpoint has this path but not this method: 405 rather than 404.
    let mut path_known = false;

    macro_rules! dispatch_streamed {
        ($($request:ty => $handler:path,)*) => {$(
            if let Some(args) = match_path(<$request as Metadata>::PATH_BUILDER.all_paths(), &path) {
                if accepts(<$request as Metadata>::METHOD, &parts.method) {
                    return apart(async move {
                        let (identity, typed) = parse::<$request>(hs, parts, Bytes::new(), &args).await?;
                        $handler(hs, identity, typed, body).await?.respond()
                    })
                    .await;
                }
                path_known = true;
            }
        )*};
    }

    super::api::streamed_endpoints!(dispatch_streamed);

    let body = body.collect(MAX_BODY_BYTES).await?;
    if path == "/.well-known/matrix/client" && matches!(parts.method, Method::GET | Method::HEAD) {
        return super::api::client::discovery::well_known(&parts).map(|response| response.map(Body::from));
    }

    macro_rules! dispatch {
        ($($request:ty => $handler:path,)*) => {$(
            if let Some(args) = match_path(<$request as Metadata>::PATH_BUILDER.all_paths(), &path) {
                if accepts(<$request as Metadata>::METHOD, &parts.method) {
                    return apart(async move {
                        let (identity, typed) = parse::<$request>(hs, parts, body, &args).await?;
                        $handler(hs, identity, typed).await?.respond()
                    })
                    .await;
                }
                path_known = true;
            }
        )*};
    }

    endpoints!(dispatch);

    let method = parts.method;
    Err(if path_known { Error::MethodNotAllowed { method, path } } else { Error::Unrecognized { method, path } })
}

/// ruma answers `HEAD` on every `GET` endpoint.
fn accepts(endpoint: Method, received: &Method) -> bool {
    endpoint == received || (endpoint == Method::GET && received == Method::HEAD)
}

/// The raw (still percent-encoded) path arguments if `path` matches one of the
/// endpoint's templates, whose variable segments are written `{name}`.
fn match_path(templates: impl Iterator<Item = &'static str>, path: &str) -> Option<Vec<&str>> {
    templates.into_iter().find_map(|template| {
        let mut args = Vec::new();
        let mut segments = path.split('/');
        for expected in template.split('/') {
            let segment = match segments.next() {
                Some(segment) => segment,
                // "When an empty string, the trailing slash on this endpoint is
                // optional": an empty state key may be left off the end.
                None if expected == "{state_key}" => "",
                None => return None,
            };
            if expected.starts_with('{') {
                args.push(segment);
            } else if expected != segment {
                return None;
            }
        }
        segments.next().is_none().then_some(args)
    })
}

/// What a handler learns of who is asking, by the endpoint's authentication
/// scheme: a [`Session`] where an access token is required, maybe one where it
/// is optional, the requesting server for federation, nothing where none is read.
pub(crate) trait Identify: AuthScheme {
    type Identity;
    fn identify(hs: &Homeserver, request: &http::Request<Bytes>)
        -> impl Future<Output = Result<Self::Identity, Error>>;
}

impl Identify for AccessToken {
    type Identity = Session;
    async fn identify(hs: &Homeserver, request: &http::Request<Bytes>) -> Result<Session, Error> {
        session::<Self>(hs, request, Some).await?.ok_or(Error::MissingToken)
    }
}

impl Identify for AccessTokenOptional {
    type Identity = Option<Session>;
    async fn identify(hs: &Homeserver, request: &http::Request<Bytes>) -> Result<Option<Session>, Error> {
        session::<Self>(hs, request, |token| token).await
    }
}

/// Schemes that identify nobody. An application service's token would, but
/// glia hosts none, so registration is open to all alike. A token that is not
/// live is refused even where none is needed, as the spec says; an
/// authorization of another kind (a server's `X-Matrix`, asking for this
/// node's keys) names no session and is let be.
macro_rules! anonymous {
    ($($scheme:ty),*) => {$(
        impl Identify for $scheme {
            type Identity = ();
            async fn identify(hs: &Homeserver, request: &http::Request<Bytes>) -> Result<(), Error> {
                match session::<AccessTokenOptional>(hs, request, |token| token).await {
                    Err(Error::MissingToken) => Ok(()),
                    other => other.map(drop),
                }
            }
        }
    )*};
}

anonymous!(NoAuthentication, NoAccessToken, AppserviceTokenOptional);

/// The session of the request's access token, if it carries one.
async fn session<A: AuthScheme>(
    hs: &Homeserver,
    request: &http::Request<Bytes>,
    token: impl FnOnce(A::Output) -> Option<String>,
) -> Result<Option<Session>, Error> {
    let output = A::extract_authentication(request).map_err(|_| Error::MissingToken)?;
    match token(output) {
        Some(token) => Ok(Some(hs.accounts().session(&token).await?.ok_or(Error::UnknownToken)?)),
        None => Ok(None),
    }
}

/// The node a request came from when it arrived in a frame: its `X-Matrix`
/// origin must be the same node, so a peer cannot pass on another's request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FrameOrigin(pub PeerKey);

/// The server whose `X-Matrix` signature a federation request carries, checked
/// against the key its name spells.
pub(crate) struct Origin(pub OwnedServerName);

impl Identify for ServerSignatures {
    type Identity = Origin;
    async fn identify(hs: &Homeserver, request: &http::Request<Bytes>) -> Result<Origin, Error> {
        let unauthorized = |why: &str| Error::Unauthorized(why.to_owned());
        let auth = Self::extract_authentication(request)
            .map_err(|err| Error::Unauthorized(format!("no valid X-Matrix authorization: {err}")))?;
        let key = identity::verify_key(&auth.origin)
            .ok_or_else(|| unauthorized("the origin is not a glia server name, so its key is unknown"))?;
        if auth.key.as_str() != KEY_ID {
            return Err(unauthorized("glia nodes sign with ed25519:glia only"));
        }
        match request.extensions().get() {
            Some(FrameOrigin(from)) if from.0 != key => {
                return Err(unauthorized("the request is signed by another node than the one that sent it"));
            }
            // Frames were counted as they came in.
            Some(_) => {}
            None => hs.limits().federation.check(auth.origin.as_str(), hs.clock().now_millis())?,
        }
        let keys = PublicKeyMap::from([(
            auth.origin.to_string(),
            PublicKeySet::from([(KEY_ID.to_owned(), Base64::new(key.to_vec()))]),
        )]);
        auth.verify_http_request(request, hs.key().server_name(), &keys)
            .map_err(|err| Error::Unauthorized(format!("bad X-Matrix signature: {err}")))?;
        Ok(Origin(auth.origin))
    }
}

/// Who is asking, and ruma's request `R` made of the request's head and `body`.
async fn parse<R>(
    hs: &Homeserver,
    parts: http::request::Parts,
    body: Bytes,
    raw_args: &[&str],
) -> Result<(<R::Authentication as Identify>::Identity, R), Error>
where
    R: IncomingRequest,
    R::Authentication: Identify,
{
    let request = http::Request::from_parts(parts, body);
    let identity = R::Authentication::identify(hs, &request).await?;
    let args = raw_args
        .iter()
        .map(|arg| percent_decode_str(arg).decode_utf8())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| Error::InvalidParam(format!("path segment is not UTF-8 once decoded: {err}")))?;
    let args: Vec<&str> = args.iter().map(|arg| arg.as_ref()).collect();
    let (parts, body) = request.into_parts();
    let typed = R::try_from_http_request(http::Request::from_parts(parts, body.as_ref()), &args)
        .map_err(|err| Error::from_request(err, &body))?;
    Ok((identity, typed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_whole_paths() {
        let templates = || ["/_matrix/client/v3/rooms/{roomId}/send/{eventType}/{txnId}"].into_iter();
        assert_eq!(
            match_path(templates(), "/_matrix/client/v3/rooms/%21a%3Ab/send/m.room.message/1"),
            Some(vec!["%21a%3Ab", "m.room.message", "1"])
        );
        assert_eq!(match_path(templates(), "/_matrix/client/v3/rooms/x/send/y"), None);
        assert_eq!(match_path(templates(), "/_matrix/client/v3/rooms/x/send/y/z/extra"), None);
        assert_eq!(match_path(templates(), "/_matrix/client/v3/rooms/x/state/y/z"), None);

        let state = || ["/_matrix/client/v3/rooms/{room_id}/state/{event_type}/{state_key}"].into_iter();
        assert_eq!(
            match_path(state(), "/_matrix/client/v3/rooms/r/state/m.room.topic"),
            Some(vec!["r", "m.room.topic", ""])
        );
        assert_eq!(
            match_path(state(), "/_matrix/client/v3/rooms/r/state/m.room.topic/"),
            Some(vec!["r", "m.room.topic", ""])
        );
        assert_eq!(match_path(state(), "/_matrix/client/v3/rooms/r/state"), None);
    }
}
