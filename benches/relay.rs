//! The relay's figures on loopback: frames forwarded per second between two
//! nodes, round trips through it, and its disk mailbox (store, hand over).
//!
//! The relay runs on a thread of its own with a single-threaded runtime, so
//! the figures are for one core (its mailbox writes still commit on tokio's
//! blocking pool). Its rate limit and mailbox allowance are lifted: this
//! measures the relay, not its policy of 500 frames/s per connection.

use std::{
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use glia::{
    core::identity::NodeKey,
    native::relay::{self, Relay, RelayConfig},
    p2p::{
        frame::Frame,
        relay::{hello_message, Control},
        PeerKey,
    },
};
use ruma::serde::{base64::Standard, Base64};
use tokio::{net::TcpStream, sync::oneshot};
use tokio_tungstenite::{tungstenite::Message, MaybeTlsStream, WebSocketStream};

const FORWARDED: usize = 100_000;
const ROUND_TRIPS: usize = 10_000;
const STORED: usize = 20_000;
/// Small frames, like a federation request with a short JSON body.
const BODY: usize = 100;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (url_tx, url_rx) = std_mpsc::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let path = dir.path().to_owned();
    let relay_thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            // Forwarding outruns acks by more than a node's default mailbox
            // allowance: lift it too, or the run would measure refusals.
            let config =
                RelayConfig { rate: None, mailbox_frames: 1_000_000, mailbox_bytes: 1 << 30, ..RelayConfig::default() };
            let relay = Relay::open(&path, config).await.expect("open relay");
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            url_tx.send(format!("ws://{}/", listener.local_addr().expect("address"))).expect("send url");
            relay::run(listener, relay, async move {
                let _ = stopped.await;
            })
            .await
            .expect("relay runs");
        });
    });
    let url = url_rx.recv().expect("relay url");

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let rows = runtime.block_on(measure(&url));
    let _ = stop.send(());
    relay_thread.join().expect("relay thread");

    println!("| relay on one core, loopback | count | total ms | result |");
    println!("|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
}

async fn measure(url: &str) -> Vec<String> {
    let (a, b, c) = (NodeKey::from_seed(&[1; 32]), NodeKey::from_seed(&[2; 32]), NodeKey::from_seed(&[3; 32]));
    let (ka, kb, kc) = (PeerKey::of(&a), PeerKey::of(&b), PeerKey::of(&c));
    let mut rows = Vec::new();
    let size = frame(&ka, &kb, 0, false).len();

    let mut sa = connect(url, &a).await;
    let mut sb = connect(url, &b).await;
    let seconds = forward(&mut sa, &mut sb, &ka, &kb, false).await;
    rows.push(rate(&format!("forward A → B, {size}-byte frames"), FORWARDED, seconds));
    let seconds = forward(&mut sa, &mut sb, &ka, &kb, true).await;
    rows.push(rate("forward A → B, mailbox flag, acked by B", FORWARDED, seconds));

    let mut latencies = round_trips(&mut sa, &mut sb, &ka, &kb).await;
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    for (name, q) in [("p50", 0.5), ("p99", 0.99)] {
        rows.push(format!("| round trip A → B → A, {name} | {ROUND_TRIPS} | | {} µs |", at(q).as_micros()));
    }

    // C is offline: its frames go to the mailbox on disk, then over to C.
    let start = Instant::now();
    let (mut sink, mut source) = sa.split();
    let sending = async {
        for id in 0..STORED as u64 {
            sink.feed(Message::Binary(frame(&ka, &kc, id, true))).await.expect("send");
        }
        sink.flush().await.expect("flush");
    };
    let confirming = async {
        let mut stored = 0;
        while stored < STORED {
            if let Control::Stored { .. } = next_control(&mut source).await {
                stored += 1;
            }
        }
    };
    tokio::join!(sending, confirming);
    rows.push(rate("store for an offline node (until `stored`)", STORED, start.elapsed().as_secs_f64()));

    let start = Instant::now();
    let mut sc = connect(url, &c).await;
    let mut handed = 0;
    while handed < STORED {
        if let Some(Ok(Message::Binary(_))) = sc.next().await {
            handed += 1;
        }
    }
    rows.push(rate("hand a mailbox over from disk on connect", STORED, start.elapsed().as_secs_f64()));
    rows
}

fn rate(what: &str, count: usize, seconds: f64) -> String {
    format!("| {what} | {count} | {:.1} | {:.0} frames/s |", seconds * 1000.0, count as f64 / seconds)
}

fn frame(from: &PeerKey, to: &PeerKey, id: u64, mailbox: bool) -> Bytes {
    let request = http::Request::builder()
        .method("PUT")
        .uri(format!("/_matrix/federation/v1/send/{id}"))
        .body(Bytes::from(vec![b'x'; BODY]))
        .expect("request");
    let mut frame = Frame::request(id, *from, *to, request);
    frame.mailbox = mailbox;
    frame.encode()
}

/// Sends `FORWARDED` frames from A to B (acking them when flagged); returns the
/// seconds from the first sent to the last received.
async fn forward(sa: &mut Socket, sb: &mut Socket, ka: &PeerKey, kb: &PeerKey, mailbox: bool) -> f64 {
    let frames: Vec<Bytes> = (0..FORWARDED as u64).map(|id| frame(ka, kb, id, mailbox)).collect();
    let start = Instant::now();
    let sending = async {
        for frame in frames {
            sa.feed(Message::Binary(frame)).await.expect("send");
        }
        sa.flush().await.expect("flush");
    };
    let receiving = async {
        let mut acks = Vec::new();
        let mut received = 0;
        while received < FORWARDED {
            let Some(Ok(message)) = sb.next().await else { panic!("B's connection ended") };
            if let Message::Binary(bytes) = message {
                received += 1;
                if mailbox {
                    let route = Frame::route(&bytes).expect("route");
                    acks.push((route.origin.to_string(), route.id));
                    if acks.len() == 256 || received == FORWARDED {
                        let ack = Control::Ack { frames: std::mem::take(&mut acks) };
                        sb.send(text(&ack)).await.expect("ack");
                    }
                }
            }
        }
    };
    tokio::join!(sending, receiving);
    start.elapsed().as_secs_f64()
}

/// A sends B a frame, B sends one back, one at a time.
async fn round_trips(sa: &mut Socket, sb: &mut Socket, ka: &PeerKey, kb: &PeerKey) -> Vec<Duration> {
    let (there, back) = (frame(ka, kb, 1, false), frame(kb, ka, 1, false));
    let mut latencies = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let start = Instant::now();
        sa.send(Message::Binary(there.clone())).await.expect("send");
        next_frame(sb).await;
        sb.send(Message::Binary(back.clone())).await.expect("send");
        next_frame(sa).await;
        latencies.push(start.elapsed());
    }
    latencies
}

async fn next_frame(socket: &mut Socket) -> Bytes {
    loop {
        match socket.next().await {
            Some(Ok(Message::Binary(bytes))) => return bytes,
            Some(Ok(_)) => continue,
            other => panic!("expected a frame, got {other:?}"),
        }
    }
}

async fn next_control<S>(source: &mut S) -> Control
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match source.next().await {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(text.as_str()).expect("control message"),
            Some(Ok(_)) => continue,
            other => panic!("expected a control message, got {other:?}"),
        }
    }
}

fn text(control: &Control) -> Message {
    Message::Text(serde_json::to_string(control).expect("serializes").into())
}

async fn connect(url: &str, key: &NodeKey) -> Socket {
    let (mut socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await.expect("connect");
    let Control::Challenge { nonce } = next_control(&mut socket).await else { panic!("no challenge") };
    let nonce = Base64::<Standard>::parse(nonce).expect("base64").into_inner();
    let sig = Base64::<Standard>::new(key.sign(&hello_message(&nonce))).encode();
    socket.send(text(&Control::Hello { key: PeerKey::of(key).to_string(), sig })).await.expect("hello");
    let Control::Welcome { .. } = next_control(&mut socket).await else { panic!("no welcome") };
    socket
}
