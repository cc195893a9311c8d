//! Requests to other nodes: signed with `X-Matrix` as the spec says, carried as
//! frames through the attached [`Transport`], and matched with their responses
//! by frame id.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use futures_channel::oneshot;
use futures_util::future::{select, Either};
use ruma::{
    api::{
        auth_scheme::{AuthScheme, NoAuthentication},
        federation::authentication::{ServerSignatures, XMatrixSigningInput},
        path_builder::SinglePath,
        IncomingResponseExt, OutgoingRequest, OutgoingRequestExt,
    },
    ServerName,
};

use crate::{
    core::{identity::NodeKey, lock, Clock, Random},
    p2p::{Delivery, Frame, Payload, PeerKey, Transport},
};

/// How long a request waits for its answer before the caller hears it failed.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// The same for a request the relay may keep: it answers at once either way
/// (forwarded, or `stored`), so silence this long means the frame was lost
/// (its destination dropped while holding it) and the sender should try again.
pub const MAILBOX_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("{0} is not a glia server name, so it cannot be reached peer to peer")]
    NotGlia(String),
    #[error("this node is not connected to any network")]
    Detached,
    #[error("cannot reach {0}")]
    Unreachable(String),
    /// Kept in a relay's mailbox for a destination that is offline: delivered
    /// later, answered never.
    #[error("{0} is offline; the request waits in its mailbox")]
    Stored(String),
    #[error("{0} did not answer in time")]
    Timeout(String),
    #[error("{server} answered {status}: {body}")]
    Remote { server: String, status: u16, body: String },
    #[error("cannot build the request: {0}")]
    Request(String),
    #[error("the answer is unusable: {0}")]
    Invalid(String),
}

/// A federation endpoint's request.
pub trait Outgoing: OutgoingRequest<PathBuilder = SinglePath, Authentication: Authenticate> {}
impl<R: OutgoingRequest<PathBuilder = SinglePath, Authentication: Authenticate>> Outgoing for R {}

/// How a node authenticates its requests under each scheme federation uses.
pub trait Authenticate: AuthScheme {
    fn input<'a>(key: &'a NodeKey, destination: &ServerName) -> Self::Input<'a>;
}

impl Authenticate for ServerSignatures {
    fn input<'a>(key: &'a NodeKey, destination: &ServerName) -> XMatrixSigningInput<'a> {
        XMatrixSigningInput::new(key.server_name().to_owned(), destination.to_owned(), key.key_pair())
    }
}

impl Authenticate for NoAuthentication {
    fn input(_: &NodeKey, _: &ServerName) {}
}

type Answer = Result<http::Response<Bytes>, FederationError>;

pub struct Federation {
    key: Arc<NodeKey>,
    clock: Arc<dyn Clock>,
    transport: Mutex<Option<Arc<dyn Transport>>>,
    pending: Mutex<HashMap<(PeerKey, u64), oneshot::Sender<Answer>>>,
    next_id: AtomicU64,
    lines: Arc<Lines>,
}

impl Federation {
    pub fn new(key: Arc<NodeKey>, clock: Arc<dyn Clock>, random: &dyn Random) -> Self {
        // Ids start anywhere, so a restarted node does not reuse the ids of
        // frames still in flight from before.
        let mut seed = [0u8; 8];
        random.fill(&mut seed);
        Self {
            key,
            clock,
            transport: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            // 52 bits: the relay's JSON control messages carry ids as numbers,
            // which a browser page reads as doubles.
            next_id: AtomicU64::new(u64::from_be_bytes(seed) >> 12),
            lines: Arc::default(),
        }
    }

    pub fn attach(&self, transport: Arc<dyn Transport>) {
        *lock(&self.transport) = Some(transport);
    }

    pub fn me(&self) -> PeerKey {
        PeerKey::of(&self.key)
    }

    /// Sends `request` to `destination` and waits for its typed answer. With
    /// `mailbox` set, a relay may keep it for an offline destination, and the
    /// caller hears [`FederationError::Stored`].
    pub async fn request<R: Outgoing>(
        &self,
        destination: &ServerName,
        request: R,
        mailbox: bool,
    ) -> Result<R::IncomingResponse, FederationError> {
        let response = self.send(destination, request, mailbox).await?;
        let (parts, body) = response.into_parts();
        R::IncomingResponse::try_from_http_response(http::Response::from_parts(parts.clone(), body.as_ref())).map_err(
            |err| FederationError::Remote {
                server: destination.to_string(),
                status: parts.status.as_u16(),
                body: match std::str::from_utf8(&body) {
                    Ok(text) if !text.is_empty() => text.chars().take(500).collect(),
                    _ => err.to_string(),
                },
            },
        )
    }

    async fn send<R: Outgoing>(
        &self,
        destination: &ServerName,
        request: R,
        mailbox: bool,
    ) -> Result<http::Response<Bytes>, FederationError> {
        let to = PeerKey::from_server_name(destination).ok_or_else(|| FederationError::NotGlia(destination.into()))?;
        let signing = R::Authentication::input(&self.key, destination);
        let http: http::Request<Vec<u8>> =
            request.try_into_http_request("", signing, ()).map_err(|err| FederationError::Request(err.to_string()))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Frame::request(id, self.me(), to, http.map(Bytes::from));
        frame.mailbox = mailbox;
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert((to, id), tx);
        if let Err(err) = self.transmit(to, &frame) {
            lock(&self.pending).remove(&(to, id));
            return Err(err);
        }
        let timeout = self.clock.sleep(if mailbox { MAILBOX_TIMEOUT_MS } else { REQUEST_TIMEOUT_MS });
        match select(rx, timeout).await {
            Either::Left((Ok(answer), _)) => answer,
            Either::Left((Err(_), _)) => Err(FederationError::Unreachable(destination.into())),
            Either::Right(((), _)) => {
                lock(&self.pending).remove(&(to, id));
                Err(FederationError::Timeout(destination.into()))
            }
        }
    }

    /// The other nodes the network last said are online.
    pub fn peers(&self) -> Vec<PeerKey> {
        let me = self.me();
        let transport = lock(&self.transport).clone();
        transport.map(|t| t.peers()).unwrap_or_default().into_iter().filter(|key| *key != me).collect()
    }

    /// A place in line behind the transactions `origin` sent before, taken as
    /// a frame arrives.
    pub(crate) fn turn(&self, origin: PeerKey) -> Turn {
        let mut lines = lock(&self.lines.lines);
        let line = lines.entry(origin).or_default();
        line.next += 1;
        Turn { lines: self.lines.clone(), origin, number: line.next - 1 }
    }

    /// Hands an encoded frame to the transport.
    pub(crate) fn transmit(&self, to: PeerKey, frame: &Frame) -> Result<(), FederationError> {
        let transport = lock(&self.transport).clone().ok_or(FederationError::Detached)?;
        transport.send(to, frame.encode()).map_err(|err| FederationError::Unreachable(err.to_string()))
    }

    /// A response frame: wakes the request waiting for it, if any still is.
    pub(crate) fn answered(&self, frame: Frame) {
        if let Payload::Response(response) = frame.payload {
            if let Some(waiting) = lock(&self.pending).remove(&(frame.origin, frame.id)) {
                let _ = waiting.send(Ok(response));
            }
        }
    }

    /// What the network learned of a frame this node sent.
    pub(crate) fn delivered(&self, to: PeerKey, id: u64, delivery: Delivery) {
        if let Some(waiting) = lock(&self.pending).remove(&(to, id)) {
            let name = to.to_string();
            let _ = waiting.send(Err(match delivery {
                Delivery::Stored => FederationError::Stored(name),
                Delivery::Failed(reason) => FederationError::Unreachable(format!("{name}: {reason}")),
            }));
        }
    }
}

/// One line per origin of transactions: each is applied after those that came
/// before it, so a node's events land in the order it sent them (a mailbox
/// handed over at once included) rather than as gaps to fill.
#[derive(Default)]
pub(crate) struct Lines {
    lines: Mutex<HashMap<PeerKey, Line>>,
    moved: event_listener::Event,
}

#[derive(Default)]
struct Line {
    next: u64,
    serving: u64,
    /// Turns given up before they came (a request cancelled while waiting).
    abandoned: std::collections::BTreeSet<u64>,
}

pub struct Turn {
    lines: Arc<Lines>,
    origin: PeerKey,
    number: u64,
}

impl Turn {
    pub async fn wait(&self) {
        loop {
            let listener = self.lines.moved.listen();
            if lock(&self.lines.lines).get(&self.origin).is_none_or(|line| line.serving >= self.number) {
                return;
            }
            listener.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut lines = lock(&self.lines.lines);
        let Some(line) = lines.get_mut(&self.origin) else { return };
        if line.serving != self.number {
            line.abandoned.insert(self.number);
            return;
        }
        line.serving += 1;
        while line.abandoned.remove(&line.serving) {
            line.serving += 1;
        }
        drop(lines);
        self.lines.moved.notify(usize::MAX);
    }
}
