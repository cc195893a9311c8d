//! The `glia` command itself: argument errors, `glia node`, `glia serve` and
//! `glia relay` on real sockets at `127.0.0.1:0`.

#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{request, Glia};
use futures_util::{SinkExt, StreamExt};
use glia::{
    core::identity::NodeKey,
    p2p::{
        relay::{hello_message, Control},
        PeerKey,
    },
};
use ruma::serde::{base64::Standard, Base64};
use tokio_tungstenite::tungstenite::Message;

fn glia(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_glia")).args(args).output().unwrap()
}

#[test]
fn bad_arguments_get_a_usage_error() {
    for args in [
        &[][..],
        &["fly"],
        &["node", "--listen", "not-an-address"],
        &["serve", "--bogus"],
        &["node", "--relay", "http://not-a-websocket"],
        &["relay", "--listen", "nowhere"],
    ] {
        let out = glia(args);
        assert_eq!(out.status.code(), Some(2), "glia {args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // clap names the mistake and points at `--help` (or prints the usage).
        assert!(
            stderr.contains("Usage: glia") || stderr.contains("error: ") && stderr.contains("--help"),
            "glia {args:?}: {stderr}"
        );
    }
}

#[test]
fn serve_refuses_a_folder_without_a_built_app() {
    let dir = tempfile::tempdir().unwrap();
    let out = glia(&["serve", "--listen", "127.0.0.1:0", "--root", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("index.html is missing") && stderr.contains("scripts/build-web"), "{stderr}");
}

#[test]
fn serve_hands_out_the_app_with_worker_headers_and_wasm_mime_type() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pkg")).unwrap();
    for (file, contents) in [
        ("index.html", &b"<!doctype html>"[..]),
        ("sw.js", b"// worker"),
        ("pkg/glia.js", b"// glue"),
        ("pkg/glia_bg.wasm", b"\0asm\x01\0\0\0"),
    ] {
        std::fs::write(dir.path().join(file), contents).unwrap();
    }
    let relay_data = tempfile::tempdir().unwrap();
    let mut glia = Glia::start(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--root",
        dir.path().to_str().unwrap(),
        "--relay-data",
        relay_data.path().to_str().unwrap(),
    ]);
    let relay = glia.next_url("ws://");
    assert_eq!(relay, format!("ws://{}/_glia/relay", glia.addr));
    assert!(matches!(first_words(&relay), Control::Challenge { .. }));
    assert!(relay_data.path().join("relay.redb").is_file());

    let wasm = request(&glia.addr, "GET", "/pkg/glia_bg.wasm", b"");
    assert_eq!(wasm.status, 200);
    assert_eq!(wasm.header("content-type"), Some("application/wasm"));
    assert_eq!(wasm.body, b"\0asm\x01\0\0\0");
    assert_eq!(wasm.header("cache-control"), Some("no-cache"));

    // The worker asks for its wasm under its build: kept for good.
    let built = request(&glia.addr, "GET", "/pkg/glia_bg.wasm?v=0123", b"");
    assert_eq!(built.header("cache-control"), Some("public, max-age=31536000, immutable"));
    assert_eq!(built.body, b"\0asm\x01\0\0\0");
    assert_eq!(request(&glia.addr, "GET", "/pkg/missing.wasm?v=0123", b"").header("cache-control"), Some("no-cache"));

    let worker = request(&glia.addr, "GET", "/sw.js", b"");
    assert_eq!(worker.header("service-worker-allowed"), Some("/"));
    assert!(worker.header("content-type").unwrap().contains("javascript"));

    let index = request(&glia.addr, "GET", "/", b"");
    assert_eq!((index.status, index.body.as_slice()), (200, &b"<!doctype html>"[..]));
    assert_eq!(request(&glia.addr, "GET", "/missing.js", b"").status, 404);
}

#[test]
fn node_answers_versions_and_keeps_its_store_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let glia = Glia::start(&["node", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()]);

    let versions = request(&glia.addr, "GET", "/_matrix/client/versions", b"");
    assert_eq!(versions.status, 200);
    assert!(versions.header("server").unwrap().starts_with("glia/"));
    assert!(versions.json()["versions"].is_array());
    assert!(data.join("glia.redb").is_file());

    let unknown = request(&glia.addr, "GET", "/_matrix/client/v3/nope", b"");
    assert_eq!((unknown.status, unknown.json()["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")));
}

#[test]
fn node_refuses_oversized_bodies_with_a_matrix_error() {
    let dir = tempfile::tempdir().unwrap();
    let glia = Glia::start(&["node", "--listen", "127.0.0.1:0", "--data", dir.path().to_str().unwrap()]);
    let body = vec![b' '; glia::core::MAX_BODY_BYTES + 1];
    let res = request(&glia.addr, "POST", "/_matrix/client/v3/login", &body);
    assert_eq!(res.status, 413);
    assert_eq!(res.json()["errcode"], "M_TOO_LARGE");
    assert_eq!(res.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn node_reports_an_unusable_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    let out = glia(&["node", "--listen", "127.0.0.1:0", "--data", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a-file"));
}

/// What a relay says to a new connection.
fn first_words(url: &str) -> Control {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        next_control(&mut socket).await
    })
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_control(socket: &mut Socket) -> Control {
    let message = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap();
    serde_json::from_str(message.to_text().unwrap()).unwrap()
}

#[test]
fn relay_announces_its_url_and_keeps_its_mailbox_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let relay =
        Glia::start_announcing(&["relay", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()], "ws://");
    assert!(matches!(first_words(&format!("ws://{}/", relay.addr)), Control::Challenge { .. }));
    assert!(data.join("relay.redb").is_file());
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn node_connects_to_the_relays_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let relay_data = dir.path().join("relay");
    let relay =
        Glia::start_announcing(&["relay", "--listen", "127.0.0.1:0", "--data", relay_data.to_str().unwrap()], "ws://");
    let url = format!("ws://{}/", relay.addr);
    let node_data = dir.path().join("node");
    let mut node = Killed(
        Command::new(env!("CARGO_BIN_EXE_glia"))
            .args(["node", "--listen", "127.0.0.1:0", "--data", node_data.to_str().unwrap(), "--relay", &url])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The node says so on stderr once the relay has welcomed it.
    let mut stderr = BufReader::new(node.0.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the node exited");
        if line.contains(&format!("relay {url}: connected")) {
            break;
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let peers = runtime.block_on(async {
        let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let Control::Challenge { nonce } = next_control(&mut socket).await else { panic!("no challenge") };
        let key = NodeKey::from_seed(&[5; 32]);
        let nonce = Base64::<Standard>::parse(nonce).unwrap().into_inner();
        let sig = Base64::<Standard>::new(key.sign(&hello_message(&nonce))).encode();
        let hello = Control::Hello { key: PeerKey::of(&key).to_string(), sig };
        socket.send(Message::Text(serde_json::to_string(&hello).unwrap().into())).await.unwrap();
        assert!(matches!(next_control(&mut socket).await, Control::Welcome { .. }));
        let peers = serde_json::to_string(&Control::Peers { keys: vec![] }).unwrap();
        socket.send(Message::Text(peers.into())).await.unwrap();
        match next_control(&mut socket).await {
            Control::Peers { keys } => keys,
            other => panic!("expected peers, got {other:?}"),
        }
    });
    assert_eq!(peers.len(), 2, "the node and this client: {peers:?}");
}
