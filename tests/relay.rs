//! The relay on loopback: the protocol of `src/p2p/relay.rs` spoken by raw
//! WebSocket clients, and two real nodes federating through it with
//! `glia::native::peer`. Every wait is on a message, bounded by a timeout.

#![cfg(not(target_arch = "wasm32"))]

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use glia::{
    core::{identity::NodeKey, OsRandom, SystemClock, SCHEMA},
    native::{
        peer::{RelayClient, RelayClientConfig},
        relay::{self, Rate, Relay, RelayConfig},
    },
    p2p::{
        frame::{self, Frame},
        relay::{hello_message, Control, ErrorCode},
        PeerKey,
    },
    store::MemoryStore,
    Homeserver,
};
use ruma::serde::{base64::Standard, Base64};
use tokio::{net::TcpStream, sync::oneshot, task::JoinHandle};
use tokio_tungstenite::{
    tungstenite::{protocol::WebSocketConfig, Message},
    MaybeTlsStream, WebSocketStream,
};

const WAIT: Duration = Duration::from_secs(10);

struct TestRelay {
    url: String,
    relay: Relay,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestRelay {
    async fn start(dir: &Path, config: RelayConfig) -> Self {
        let relay = Relay::open(dir, config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(relay::run(listener, relay.clone(), async move {
            let _ = stopped.await;
        }));
        Self { url, relay, stop, task }
    }

    /// Stops the relay and waits until its store is closed.
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task).await.expect("relay stops in time").unwrap().unwrap();
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A node as the relay sees it: a key and a socket.
struct Client {
    key: NodeKey,
    socket: Socket,
}

#[derive(Debug, PartialEq)]
enum Got {
    Frame(Bytes),
    Control(Control),
    Closed,
}

fn key(seed: u8) -> NodeKey {
    NodeKey::from_seed(&[seed; 32])
}

fn peer(key: &NodeKey) -> PeerKey {
    PeerKey::of(key)
}

async fn open_socket(url: &str) -> Socket {
    let limit = Some(frame::MAX_FRAME_BYTES * 2);
    let config = WebSocketConfig::default().max_message_size(limit).max_frame_size(limit);
    tokio_tungstenite::connect_async_with_config(url, Some(config), true).await.unwrap().0
}

async fn next(socket: &mut Socket) -> Got {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next()).await.expect("a message from the relay in time");
        return match message {
            Some(Ok(Message::Binary(bytes))) => Got::Frame(bytes),
            Some(Ok(Message::Text(text))) => Got::Control(serde_json::from_str(text.as_str()).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => Got::Closed,
            Some(Ok(_)) => continue,
        };
    }
}

fn sign_hello(key: &NodeKey, nonce: &[u8]) -> String {
    Base64::<Standard>::new(key.sign(&hello_message(nonce))).encode()
}

async fn challenge(socket: &mut Socket) -> Vec<u8> {
    match next(socket).await {
        Got::Control(Control::Challenge { nonce }) => Base64::<Standard>::parse(nonce).unwrap().into_inner(),
        other => panic!("expected a challenge, got {other:?}"),
    }
}

async fn send_control(socket: &mut Socket, control: &Control) {
    socket.send(Message::Text(serde_json::to_string(control).unwrap().into())).await.unwrap();
}

impl Client {
    /// Connects and says hello; returns the client and the welcome's mailbox count.
    async fn connect(url: &str, key: NodeKey) -> (Self, u64) {
        let mut socket = open_socket(url).await;
        let nonce = challenge(&mut socket).await;
        let hello = Control::Hello { key: peer(&key).to_string(), sig: sign_hello(&key, &nonce) };
        send_control(&mut socket, &hello).await;
        match next(&mut socket).await {
            Got::Control(Control::Welcome { mailbox }) => (Self { key, socket }, mailbox),
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    fn me(&self) -> PeerKey {
        peer(&self.key)
    }

    async fn next(&mut self) -> Got {
        next(&mut self.socket).await
    }

    async fn frame(&mut self) -> Bytes {
        match self.next().await {
            Got::Frame(bytes) => bytes,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    async fn control(&mut self) -> Control {
        match self.next().await {
            Got::Control(control) => control,
            other => panic!("expected a control message, got {other:?}"),
        }
    }

    /// The next message, which must be an error with `code`; returns its `to` and `id`.
    async fn error(&mut self, code: ErrorCode) -> (Option<String>, Option<u64>) {
        match self.control().await {
            Control::Error { code: got, to, id, message } => {
                assert_eq!(got, code, "{message}");
                (to, id)
            }
            other => panic!("expected a {code:?} error, got {other:?}"),
        }
    }

    async fn send(&mut self, frame: Bytes) {
        self.socket.send(Message::Binary(frame)).await.unwrap();
    }

    async fn say(&mut self, control: &Control) {
        send_control(&mut self.socket, control).await;
    }

    /// Asks for the peer list: the relay answers messages in order, so once
    /// this returns, everything sent before it has been handled.
    async fn peers(&mut self) -> Vec<String> {
        self.say(&Control::Peers { keys: vec![] }).await;
        match self.control().await {
            Control::Peers { keys } => keys,
            other => panic!("expected peers, got {other:?}"),
        }
    }

    async fn ack(&mut self, frames: &[&Bytes]) {
        let frames = frames
            .iter()
            .map(|bytes| {
                let route = Frame::route(bytes).unwrap();
                (route.origin.to_string(), route.id)
            })
            .collect();
        self.say(&Control::Ack { frames }).await;
        self.peers().await;
    }

    /// Closes the connection and waits until the relay has seen it go.
    async fn close(mut self, relay: &TestRelay) {
        let _ = self.socket.close(None).await;
        let me = self.me();
        assert!(relay.relay.wait_until(WAIT, |relay| !relay.online().contains(&me)).await, "the relay saw the close");
    }
}

/// A request frame of about `body` bytes from `from` to `to`.
fn frame(from: &PeerKey, to: &PeerKey, id: u64, mailbox: bool, body: usize) -> Bytes {
    let request = http::Request::builder()
        .method("PUT")
        .uri(format!("/_matrix/federation/v1/send/{id}"))
        .body(Bytes::from(vec![b'x'; body]))
        .unwrap();
    let mut frame = Frame::request(id, *from, *to, request);
    frame.mailbox = mailbox;
    frame.encode()
}

fn config() -> RelayConfig {
    RelayConfig::default()
}

#[tokio::test]
async fn hellos_with_a_bad_signature_or_someone_elses_key_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path(), config()).await;
    let (alice, bob) = (key(1), key(2));

    let mut socket = open_socket(&relay.url).await;
    let nonce = challenge(&mut socket).await;
    let mut wrong_nonce = nonce.clone();
    wrong_nonce[0] ^= 1;
    let hello = Control::Hello { key: peer(&alice).to_string(), sig: sign_hello(&alice, &wrong_nonce) };
    send_control(&mut socket, &hello).await;
    assert!(matches!(next(&mut socket).await, Got::Control(Control::Error { code: ErrorCode::BadHello, .. })));
    assert!(matches!(next(&mut socket).await, Got::Closed));

    // Alice's valid signature, presented as Bob's key.
    let mut socket = open_socket(&relay.url).await;
    let nonce = challenge(&mut socket).await;
    let hello = Control::Hello { key: peer(&bob).to_string(), sig: sign_hello(&alice, &nonce) };
    send_control(&mut socket, &hello).await;
    assert!(matches!(next(&mut socket).await, Got::Control(Control::Error { code: ErrorCode::BadHello, .. })));
    assert!(matches!(next(&mut socket).await, Got::Closed));

    // A frame instead of a hello.
    let mut socket = open_socket(&relay.url).await;
    challenge(&mut socket).await;
    socket.send(Message::Binary(frame(&peer(&alice), &peer(&bob), 1, false, 1))).await.unwrap();
    assert!(matches!(next(&mut socket).await, Got::Control(Control::Error { code: ErrorCode::BadHello, .. })));

    assert!(relay.relay.online().is_empty());
    relay.stop().await;
}

#[tokio::test]
async fn two_nodes_exchange_frames_and_forged_or_oversized_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path(), config()).await;
    let (mut a, _) = Client::connect(&relay.url, key(1)).await;
    let (mut b, _) = Client::connect(&relay.url, key(2)).await;
    let (ka, kb) = (a.me(), b.me());

    let there = frame(&ka, &kb, 1, false, 100);
    a.send(there.clone()).await;
    assert_eq!(b.frame().await, there);
    let back = frame(&kb, &ka, 1, true, 5000);
    b.send(back.clone()).await;
    assert_eq!(a.frame().await, back);

    // Bob's key as the origin, on Alice's connection.
    a.send(frame(&kb, &ka, 7, false, 10)).await;
    assert_eq!(a.error(ErrorCode::WrongOrigin).await, (Some(ka.to_string()), Some(7)));

    let huge = frame(&ka, &kb, 8, false, frame::MAX_FRAME_BYTES);
    assert!(huge.len() > frame::MAX_FRAME_BYTES);
    a.send(huge).await;
    assert_eq!(a.error(ErrorCode::FrameTooLarge).await, (Some(kb.to_string()), Some(8)));

    a.send(Bytes::from_static(b"\x01 not a frame")).await;
    a.error(ErrorCode::BadMessage).await;
    a.say(&Control::Welcome { mailbox: 3 }).await;
    a.error(ErrorCode::BadMessage).await;

    // Still connected and forwarding after all that.
    let after = frame(&ka, &kb, 9, false, 10);
    a.send(after.clone()).await;
    assert_eq!(b.frame().await, after);
    relay.stop().await;
}

#[tokio::test]
async fn a_mailbox_keeps_frames_for_an_offline_node_until_it_acks_them() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path(), config()).await;
    let (mut a, _) = Client::connect(&relay.url, key(1)).await;
    let (ka, kb) = (a.me(), peer(&key(2)));

    // Without the mailbox flag an offline destination is an error.
    a.send(frame(&ka, &kb, 1, false, 10)).await;
    assert_eq!(a.error(ErrorCode::Offline).await, (Some(kb.to_string()), Some(1)));

    let kept = frame(&ka, &kb, 2, true, 10);
    a.send(kept.clone()).await;
    assert_eq!(a.control().await, Control::Stored { to: kb.to_string(), id: 2 });
    // Sent again (a retry after a lost `stored`): kept once.
    a.send(kept.clone()).await;
    assert_eq!(a.control().await, Control::Stored { to: kb.to_string(), id: 2 });
    assert_eq!(relay.relay.mailbox_len(&kb), 1);

    let (mut b, waiting) = Client::connect(&relay.url, key(2)).await;
    assert_eq!((waiting, b.frame().await), (1, kept.clone()));
    b.close(&relay).await;

    // Not acked: handed over again.
    let (mut b, waiting) = Client::connect(&relay.url, key(2)).await;
    assert_eq!((waiting, b.frame().await), (1, kept.clone()));
    b.ack(&[&kept]).await;
    b.close(&relay).await;

    let (mut b, waiting) = Client::connect(&relay.url, key(2)).await;
    assert_eq!(waiting, 0);
    assert_eq!(relay.relay.mailbox_len(&kb), 0);
    let live = frame(&ka, &kb, 3, false, 10);
    a.send(live.clone()).await;
    assert_eq!(b.frame().await, live, "nothing else was waiting");
    relay.stop().await;
}

#[tokio::test]
async fn frames_a_node_did_not_ack_before_dropping_go_to_its_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path(), config()).await;
    let (mut a, _) = Client::connect(&relay.url, key(1)).await;
    let (mut b, _) = Client::connect(&relay.url, key(2)).await;
    let (ka, kb) = (a.me(), b.me());

    let (acked, unacked, unflagged) =
        (frame(&ka, &kb, 1, true, 10), frame(&ka, &kb, 2, true, 10), frame(&ka, &kb, 3, false, 10));
    for frame in [&acked, &unacked, &unflagged] {
        a.send(frame.clone()).await;
        assert_eq!(&b.frame().await, frame);
    }
    b.ack(&[&acked]).await;
    b.close(&relay).await;
    // Its sender hears it is stored, as for a frame that came after the drop.
    assert_eq!(a.control().await, Control::Stored { to: kb.to_string(), id: 2 });

    let (mut b, waiting) = Client::connect(&relay.url, key(2)).await;
    assert_eq!((waiting, b.frame().await), (1, unacked));
    relay.stop().await;
}

#[tokio::test]
async fn a_restarted_relay_still_has_its_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path(), config()).await;
    let (mut a, _) = Client::connect(&relay.url, key(1)).await;
    let (mut c, _) = Client::connect(&relay.url, key(3)).await;
    let (ka, kb, kc) = (a.me(), peer(&key(2)), c.me());

    let stored: Vec<Bytes> = (0..50).map(|id| frame(&ka, &kb, id, true, 1000 + id as usize)).collect();
    for frame in &stored {
        a.send(frame.clone()).await;
    }
    for id in 0..50 {
        assert_eq!(a.control().await, Control::Stored { to: kb.to_string(), id });
    }
    // Carol is online and has not acked this one when the relay stops.
    let in_flight = frame(&ka, &kc, 99, true, 10);
    a.send(in_flight.clone()).await;
    assert_eq!(c.frame().await, in_flight);
    relay.stop().await;
    // Stored as the relay stops: alice may hear so before her own link ends.
    let stored_first = Got::Control(Control::Stored { to: kc.to_string(), id: 99 });
    let next = match a.next().await {
        got if got == stored_first => a.next().await,
        got => got,
    };
    assert!(matches!(next, Got::Closed));

    let relay = TestRelay::start(dir.path(), config()).await;
    let (mut b, waiting) = Client::connect(&relay.url, key(2)).await;
    assert_eq!(waiting, 50);
    for frame in &stored {
        assert_eq!(&b.frame().await, frame);
    }
    let (mut c, waiting) = Client::connect(&relay.url, key(3)).await;
    assert_eq!((waiting, c.frame().await), (1, in_flight));
    relay.stop().await;

    // Expired while the relay was down: gone.
    let expiring = RelayConfig { mailbox_max_age: Duration::ZERO, ..config() };
    let relay = TestRelay::start(dir.path(), expiring).await;
    assert_eq!(relay.relay.mailbox_len(&kb), 0);
    relay.stop().await;
}

#[tokio::test]
async fn rate_connection_and_mailbox_limits_answer_with_errors() {
    let dir = tempfile::tempdir().unwrap();
    let limits = RelayConfig {
        rate: Some(Rate { per_second: 0.001, burst: 5.0 }),
        connections_per_key: 2,
        mailbox_frames: 2,
        ..config()
    };
    let relay = TestRelay::start(dir.path(), limits).await;
    let (mut a, _) = Client::connect(&relay.url, key(1)).await;
    let (b1, _) = Client::connect(&relay.url, key(2)).await;
    let (mut b2, _) = Client::connect(&relay.url, key(2)).await;
    let (ka, kb, kc) = (a.me(), b1.me(), peer(&key(3)));

    // A third connection for Bob's key is one too many.
    let mut socket = open_socket(&relay.url).await;
    let nonce = challenge(&mut socket).await;
    send_control(&mut socket, &Control::Hello { key: kb.to_string(), sig: sign_hello(&key(2), &nonce) }).await;
    assert!(matches!(
        next(&mut socket).await,
        Got::Control(Control::Error { code: ErrorCode::TooManyConnections, .. })
    ));

    // Frames go to the newest connection.
    let first = frame(&ka, &kb, 1, false, 10);
    a.send(first.clone()).await;
    assert_eq!(b2.frame().await, first);

    // Carol's mailbox takes two frames.
    for id in [2, 3] {
        a.send(frame(&ka, &kc, id, true, 10)).await;
        assert_eq!(a.control().await, Control::Stored { to: kc.to_string(), id });
    }
    a.send(frame(&ka, &kc, 4, true, 10)).await;
    assert_eq!(a.error(ErrorCode::MailboxFull).await, (Some(kc.to_string()), Some(4)));

    // Alice's fifth message spends her burst; the sixth is refused.
    let fifth = frame(&ka, &kb, 5, false, 10);
    a.send(fifth.clone()).await;
    assert_eq!(b2.frame().await, fifth);
    a.send(frame(&ka, &kb, 6, false, 10)).await;
    assert_eq!(a.error(ErrorCode::RateLimited).await, (Some(kb.to_string()), Some(6)));
    a.say(&Control::Peers { keys: vec![] }).await;
    a.error(ErrorCode::RateLimited).await;
    drop(b1);
    relay.stop().await;
}

#[tokio::test]
async fn signals_are_forwarded_and_peers_listed() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path(), config()).await;
    let (mut a, _) = Client::connect(&relay.url, key(1)).await;
    let (mut b, _) = Client::connect(&relay.url, key(2)).await;
    let (ka, kb, kc) = (a.me(), b.me(), peer(&key(3)));

    let offer = serde_json::json!({"type": "offer", "sdp": "v=0"});
    a.say(&Control::Signal { to: Some(kb.to_string()), from: None, data: offer.clone() }).await;
    assert_eq!(b.control().await, Control::Signal { to: None, from: Some(ka.to_string()), data: offer.clone() });

    a.say(&Control::Signal { to: Some(kc.to_string()), from: None, data: offer }).await;
    assert_eq!(a.error(ErrorCode::Offline).await.0, Some(kc.to_string()));

    let mut online = vec![ka.to_string(), kb.to_string()];
    online.sort();
    assert_eq!(a.peers().await, online);
    b.close(&relay).await;
    assert_eq!(a.peers().await, vec![ka.to_string()]);
    relay.stop().await;
}

async fn homeserver() -> Arc<Homeserver> {
    let store = Arc::new(MemoryStore::new(SCHEMA));
    Arc::new(Homeserver::open(store, Arc::new(SystemClock), Arc::new(OsRandom)).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_homeservers_federate_through_a_relay() {
    use ruma::api::federation::discovery::get_server_version::v1;

    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path(), config()).await;
    let (a, b) = (homeserver().await, homeserver().await);
    let often = RelayClientConfig { peers_every: Duration::from_millis(50), ..Default::default() };
    let links_a = RelayClient::start(a.clone(), vec![relay.url.clone()], often.clone());
    let links_b = RelayClient::start(b.clone(), vec![relay.url.clone()], often);
    assert!(links_a.wait_connected(1, WAIT).await && links_b.wait_connected(1, WAIT).await);
    assert!(links_a.status()[0].connected);
    // Each learns from the relay that the other is online, for the network's directory.
    let (a_key, b_key) = (PeerKey::of(a.key()), PeerKey::of(b.key()));
    assert!(links_a.wait_until(WAIT, |_| a.federation().peers() == [b_key]).await, "{:?}", a.federation().peers());
    assert!(links_b.wait_until(WAIT, |_| b.federation().peers() == [a_key]).await);

    let b_name = b.key().server_name().to_owned();
    let version = a.federation().request(&b_name, v1::Request::new(), false).await.unwrap();
    assert_eq!(version.server.unwrap().name.as_deref(), Some("glia"));
    let a_name = a.key().server_name().to_owned();
    let version = b.federation().request(&a_name, v1::Request::new(), true).await.unwrap();
    assert_eq!(version.server.unwrap().name.as_deref(), Some("glia"));
    // Each sent a request and answered one, and the links counted those frames.
    for links in [&links_a, &links_b] {
        let status = &links.status()[0];
        assert_eq!((status.sent.frames, status.received.frames), (2, 2), "{status:?}");
        assert!(status.sent.frame_bytes > 2 * glia::p2p::frame::PREFIX_LEN as u64, "{status:?}");
    }

    // Bob gone: a request that may wait is stored, one that may not fails at once.
    links_b.shutdown().await;
    assert!(relay.relay.wait_until(WAIT, |relay| !relay.online().contains(&b_key)).await);
    let err = a.federation().request(&b_name, v1::Request::new(), false).await.unwrap_err();
    assert!(err.to_string().contains("offline") || err.to_string().contains("not connected"), "{err}");
    let err = a.federation().request(&b_name, v1::Request::new(), true).await.unwrap_err();
    assert!(matches!(err, glia::core::service::federation::FederationError::Stored(_)), "{err}");

    // Bob back: he handles the stored request and acks it, and the relay forgets it.
    // (The mailbox may also hold the answer to Bob's own request, if he left
    // before his ack for it reached the relay.)
    assert!(relay.relay.mailbox_len(&b_key) >= 1);
    let links_b = RelayClient::start(b.clone(), vec![relay.url.clone()], RelayClientConfig::default());
    assert!(relay.relay.wait_until(WAIT, |relay| relay.mailbox_len(&b_key) == 0).await, "acked");
    assert_eq!(links_b.status()[0].welcomes, 1);

    links_a.shutdown().await;
    links_b.shutdown().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reconnects_when_its_relay_comes_back() {
    use ruma::api::federation::discovery::get_server_version::v1;

    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path(), config()).await;
    let addr = relay.url.trim_start_matches("ws://").trim_end_matches('/').to_owned();
    let (a, b) = (homeserver().await, homeserver().await);
    let fast = RelayClientConfig { backoff_start: Duration::from_millis(10), ..Default::default() };
    let links_a = RelayClient::start(a.clone(), vec![relay.url.clone()], fast.clone());
    let links_b = RelayClient::start(b.clone(), vec![relay.url.clone()], fast);
    assert!(links_a.wait_connected(1, WAIT).await && links_b.wait_connected(1, WAIT).await);

    relay.stop().await;
    // The same port again, so the nodes' URL still points at it.
    let relay = Relay::open(dir.path(), config()).await.unwrap();
    let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(relay::run(listener, relay, async move {
        let _ = stopped.await;
    }));
    let b_name = b.key().server_name().to_owned();
    for links in [&links_a, &links_b] {
        assert!(links.wait_until(WAIT, |s| s[0].connected && s[0].welcomes == 2).await, "{:?}", links.status());
    }
    a.federation().request(&b_name, v1::Request::new(), false).await.unwrap();
    links_a.shutdown().await;
    links_b.shutdown().await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// A request whose frame went out through a relay that then drops (stopped,
/// restarted, the network gone) will never be answered that way: it fails as
/// soon as the link drops (or the relay, stopping, says it stored the frame),
/// so the caller (the sender, retrying a transaction) need not wait out the
/// 30 s request timeout first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_fails_at_once_when_the_relay_it_went_through_drops() {
    use glia::core::service::federation::{FederationError, REQUEST_TIMEOUT_MS};
    use ruma::api::federation::discovery::get_server_version::v1;

    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(dir.path(), config()).await;
    let a = homeserver().await;
    let links = RelayClient::start(a.clone(), vec![relay.url.clone()], RelayClientConfig::default());
    assert!(links.wait_connected(1, WAIT).await);
    // B is online but never answers.
    let (mut b, _) = Client::connect(&relay.url, key(2)).await;
    let b_name = b.me().server_name();
    let asking = {
        let a = a.clone();
        tokio::spawn(async move { a.federation().request(&b_name, v1::Request::new(), true).await })
    };
    let request = Frame::decode(b.frame().await).unwrap();
    assert_eq!(request.origin, PeerKey::of(a.key()));

    // With the request in flight at B, the relay goes.
    relay.stop().await;
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(WAIT, asking).await.expect("the request ends well before its timeout").unwrap();
    // Or, where the stopping relay stored the frame B had not acked before
    // alice's link went, `stored`: either way at once.
    let ended = matches!(answer, Err(FederationError::Unreachable(_) | FederationError::Stored(_)));
    assert!(ended, "{answer:?}");
    assert!(started.elapsed().as_millis() < u128::from(REQUEST_TIMEOUT_MS) / 3, "{:?}", started.elapsed());
    links.shutdown().await;
}
