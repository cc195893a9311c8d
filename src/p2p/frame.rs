//! Frames: one HTTP-shaped federation request or response between two nodes,
//! as it travels node ↔ relay ↔ node (and, later, page ↔ worker).
//!
//! Wire format, version 1 (one binary WebSocket message per frame):
//!
//! ```text
//! offset  size  field
//! 0       1     version (1)
//! 1       1     kind: 0 request, 1 response
//! 2       1     flags: bit 0 = the relay may keep it in the destination's mailbox
//! 3       8     id (u64 big-endian): chosen by the requester, echoed by the response
//! 11      32    origin: the sending node's ed25519 public key
//! 43      32    destination: the receiving node's ed25519 public key
//! 75      4     head length N (u32 big-endian)
//! 79      N     head, JSON: request {"method", "uri", "headers": [[name, value]...]},
//!               response {"status", "headers": [[name, value]...]}
//! 79+N    ...   body, raw bytes
//! ```
//!
//! Keys travel as bytes; a node's server name is its key in lowercase hex. A frame
//! carries no signature of its own: the request inside is signed with `X-Matrix`
//! exactly as the spec says, and the receiving core checks it like any federation
//! request. The relay checks only that `origin` is the key the connection proved.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use ruma::{OwnedServerName, ServerName};
use serde::{Deserialize, Serialize};

use crate::core::identity::{self, NodeKey};

pub const VERSION: u8 = 1;
/// Bytes before the head.
pub const PREFIX_LEN: usize = 79;
/// The largest frame a node sends or accepts; relays may set a lower limit.
pub const MAX_FRAME_BYTES: usize = (1 << 20) + 64 * 1024;

const KIND_REQUEST: u8 = 0;
const KIND_RESPONSE: u8 = 1;
const FLAG_MAILBOX: u8 = 1;

/// A node's ed25519 public key: the address frames are sent to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub [u8; 32]);

impl PeerKey {
    pub fn of(key: &NodeKey) -> Self {
        Self(key.public_key())
    }

    /// The key a glia server name spells, if it is one.
    pub fn from_server_name(name: &ServerName) -> Option<Self> {
        identity::verify_key(name).map(Self)
    }

    pub fn server_name(&self) -> OwnedServerName {
        ServerName::parse(self.to_string()).expect("64 hex digits are a server name")
    }
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PeerKey({self})")
    }
}

#[derive(Debug)]
pub struct Frame {
    pub id: u64,
    pub origin: PeerKey,
    pub destination: PeerKey,
    /// The relay may hold the frame for an offline destination: set on requests
    /// that can wait (`/send` transactions), not on those a user waits for.
    pub mailbox: bool,
    pub payload: Payload,
}

#[derive(Debug)]
pub enum Payload {
    Request(http::Request<Bytes>),
    Response(http::Response<Bytes>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame too short")]
    Truncated,
    #[error("frame version {0} is not supported (this node speaks {VERSION})")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame of {size} bytes is over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("bad frame head: {0}")]
    Head(String),
}

#[derive(Serialize, Deserialize)]
struct Head {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    headers: Vec<(String, String)>,
}

impl Frame {
    pub fn request(id: u64, origin: PeerKey, destination: PeerKey, request: http::Request<Bytes>) -> Self {
        Self { id, origin, destination, mailbox: false, payload: Payload::Request(request) }
    }

    /// The response to this request frame, going back to its origin.
    pub fn respond(&self, response: http::Response<Bytes>) -> Self {
        Self {
            id: self.id,
            origin: self.destination,
            destination: self.origin,
            mailbox: self.mailbox,
            payload: Payload::Response(response),
        }
    }

    pub fn encode(&self) -> Bytes {
        let (kind, head, body) = match &self.payload {
            Payload::Request(request) => (
                KIND_REQUEST,
                Head {
                    method: Some(request.method().to_string()),
                    uri: Some(request.uri().to_string()),
                    status: None,
                    headers: headers_of(request.headers()),
                },
                request.body(),
            ),
            Payload::Response(response) => (
                KIND_RESPONSE,
                Head {
                    method: None,
                    uri: None,
                    status: Some(response.status().as_u16()),
                    headers: headers_of(response.headers()),
                },
                response.body(),
            ),
        };
        let head = serde_json::to_vec(&head).expect("a head of strings serializes");
        let mut out = BytesMut::with_capacity(PREFIX_LEN + head.len() + body.len());
        out.put_u8(VERSION);
        out.put_u8(kind);
        out.put_u8(if self.mailbox { FLAG_MAILBOX } else { 0 });
        out.put_u64(self.id);
        out.put_slice(&self.origin.0);
        out.put_slice(&self.destination.0);
        out.put_u32(head.len() as u32);
        out.put_slice(&head);
        out.put_slice(body);
        out.freeze()
    }

    /// Reads only the fixed prefix, as a relay does to route a frame.
    pub fn route(bytes: &[u8]) -> Result<Route, FrameError> {
        if bytes.len() < PREFIX_LEN {
            return Err(FrameError::Truncated);
        }
        if bytes[0] != VERSION {
            return Err(FrameError::Version(bytes[0]));
        }
        if bytes[1] > KIND_RESPONSE {
            return Err(FrameError::Kind(bytes[1]));
        }
        let key = |at: usize| PeerKey(bytes[at..at + 32].try_into().expect("32 bytes"));
        Ok(Route {
            id: u64::from_be_bytes(bytes[3..11].try_into().expect("8 bytes")),
            response: bytes[1] == KIND_RESPONSE,
            mailbox: bytes[2] & FLAG_MAILBOX != 0,
            origin: key(11),
            destination: key(43),
        })
    }

    pub fn decode(bytes: Bytes) -> Result<Self, FrameError> {
        if bytes.len() > MAX_FRAME_BYTES {
            return Err(FrameError::TooLarge { size: bytes.len(), limit: MAX_FRAME_BYTES });
        }
        let route = Self::route(&bytes)?;
        let head_len = u32::from_be_bytes(bytes[75..79].try_into().expect("4 bytes")) as usize;
        let body_at =
            PREFIX_LEN.checked_add(head_len).filter(|end| *end <= bytes.len()).ok_or(FrameError::Truncated)?;
        let head: Head =
            serde_json::from_slice(&bytes[PREFIX_LEN..body_at]).map_err(|err| FrameError::Head(err.to_string()))?;
        let body = bytes.slice(body_at..);
        let bad = |what: &dyn std::fmt::Display| FrameError::Head(what.to_string());
        let payload = match bytes[1] {
            KIND_REQUEST => {
                let method = head.method.ok_or_else(|| bad(&"a request needs a method"))?;
                let uri = head.uri.ok_or_else(|| bad(&"a request needs a uri"))?;
                let mut request = http::Request::new(body);
                *request.method_mut() = Method::from_bytes(method.as_bytes()).map_err(|e| bad(&e))?;
                *request.uri_mut() = uri.parse::<Uri>().map_err(|e| bad(&e))?;
                *request.headers_mut() = header_map(head.headers)?;
                Payload::Request(request)
            }
            _ => {
                let status = head.status.ok_or_else(|| bad(&"a response needs a status"))?;
                let mut response = http::Response::new(body);
                *response.status_mut() = StatusCode::from_u16(status).map_err(|e| bad(&e))?;
                *response.headers_mut() = header_map(head.headers)?;
                Payload::Response(response)
            }
        };
        Ok(Self { id: route.id, origin: route.origin, destination: route.destination, mailbox: route.mailbox, payload })
    }
}

/// A frame's addressing, read without parsing the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub id: u64,
    /// A response (to the request of the same id), not a request.
    pub response: bool,
    pub mailbox: bool,
    pub origin: PeerKey,
    pub destination: PeerKey,
}

fn headers_of(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect()
}

fn header_map(headers: Vec<(String, String)>) -> Result<HeaderMap, FrameError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| FrameError::Head(e.to_string()))?;
        let value = HeaderValue::from_str(&value).map_err(|e| FrameError::Head(e.to_string()))?;
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (PeerKey, PeerKey) {
        (PeerKey([1; 32]), PeerKey([2; 32]))
    }

    #[test]
    fn requests_and_responses_survive_the_wire() {
        let (a, b) = keys();
        let request = http::Request::builder()
            .method("PUT")
            .uri("/_matrix/federation/v1/send/1?x=%20y")
            .header("authorization", "X-Matrix origin=\"a\"")
            .body(Bytes::from_static(b"{\"pdus\":[]}"))
            .unwrap();
        let mut frame = Frame::request(7, a, b, request);
        frame.mailbox = true;
        let decoded = Frame::decode(frame.encode()).unwrap();
        assert_eq!((decoded.id, decoded.origin, decoded.destination, decoded.mailbox), (7, a, b, true));
        let Payload::Request(request) = &decoded.payload else { panic!("not a request") };
        assert_eq!(request.method(), Method::PUT);
        assert_eq!(request.uri(), "/_matrix/federation/v1/send/1?x=%20y");
        assert_eq!(request.headers()["authorization"], "X-Matrix origin=\"a\"");
        assert_eq!(request.body().as_ref(), b"{\"pdus\":[]}");

        let response = decoded.respond(http::Response::builder().status(403).body(Bytes::from_static(b"no")).unwrap());
        let back = Frame::decode(response.encode()).unwrap();
        assert_eq!((back.id, back.origin, back.destination), (7, b, a));
        let Payload::Response(response) = back.payload else { panic!("not a response") };
        assert_eq!((response.status(), response.body().as_ref()), (StatusCode::FORBIDDEN, &b"no"[..]));
    }

    #[test]
    fn broken_frames_are_errors_not_panics() {
        let (a, b) = keys();
        let good = Frame::request(1, a, b, http::Request::new(Bytes::new())).encode();
        for cut in 0..good.len() {
            let _ = Frame::decode(good.slice(..cut));
        }
        assert_eq!(Frame::decode(good.slice(..10)).unwrap_err(), FrameError::Truncated);
        let mut other = good.to_vec();
        other[0] = 9;
        assert_eq!(Frame::decode(other.into()).unwrap_err(), FrameError::Version(9));
        let mut lying = good.to_vec();
        lying[75..79].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(Frame::decode(lying.into()).unwrap_err(), FrameError::Truncated);
        let huge = Bytes::from(vec![1u8; MAX_FRAME_BYTES + 1]);
        assert!(matches!(Frame::decode(huge), Err(FrameError::TooLarge { .. })));
    }
}
