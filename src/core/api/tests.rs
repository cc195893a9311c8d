//! Every endpoint against bad input: each path the router knows, with its
//! variables filled by real and by nonsense values, bad query strings, and
//! bodies that are not JSON or are JSON of every wrong shape; for federation,
//! signed by a server of its own. Whatever comes back must be a Matrix error
//! (or a success): never a panic, a hang, or a 500, which would mean the input
//! reached a place that did not expect it.

use std::{panic::AssertUnwindSafe, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::FutureExt;
use http::Method;
use ruma::api::{
    federation::authentication::{XMatrix, XMatrixSigningInput},
    path_builder::PathBuilder,
    Metadata,
};
use serde_json::{json, Value};

use crate::{
    core::{
        identity::NodeKey,
        testing::{call, register},
        Homeserver, OsRandom, SystemClock, SCHEMA,
    },
    store::MemoryStore,
};

/// The method and path templates of every endpoint.
fn endpoints() -> Vec<(Method, Vec<&'static str>)> {
    macro_rules! list {
        ($($request:ty => $handler:path,)*) => {
            vec![$((
                <$request as Metadata>::METHOD,
                <$request as Metadata>::PATH_BUILDER.all_paths().collect::<Vec<_>>(),
            ),)*]
        };
    }
    [super::endpoints!(list), super::streamed_endpoints!(list)].concat()
}

/// Values for a path variable: real ones where the node has one, then
/// nonsense. The `n`-th request of a template takes the `n`-th of each.
fn values(variable: &str, real: &Real) -> Vec<String> {
    let long = "x".repeat(5000);
    let mut values = match variable.to_lowercase().replace('_', "").trim_matches(['{', '}']) {
        "roomid" | "roomidoralias" => vec![real.room.clone(), "!nope:example.org".into(), "#nope:example.org".into()],
        "userid" => vec![real.user.clone(), "@nope:example.org".into()],
        "eventid" => vec![real.event.clone(), "$nope".into()],
        "servername" => vec![real.server.clone(), "example.org".into()],
        _ => vec!["m.room.message".into()],
    };
    values.extend(["x".into(), "%FF%FE".into(), "%00".into(), "".into(), long]);
    values.into_iter().map(|v| encode_segment(&v)).collect()
}

/// Percent-encodes what a path segment cannot hold, leaving `%` escapes given
/// on purpose as they are.
fn encode_segment(value: &str) -> String {
    value.replace('#', "%23").replace('!', "%21").replace('@', "%40").replace(':', "%3A").replace('$', "%24")
}

const QUERIES: [&str; 4] = [
    "",
    "?limit=-1&from=zzz&to=%FF&dir=q&since=zzz&filter=%7B&timeout=0&server_name=%FF&via=x&order_by=x\
     &width=-5&height=99999999999999999999&method=x&allow_remote=x&timeout_ms=x&ts=x&user_id=x&kind=x",
    // Well formed, at the edges: huge limits and positions, filters asking the impossible.
    "?limit=4294967296&from=s18446744073709551615&to=t0_0&dir=b&since=s18446744073709551615_0&timeout=0\
     &filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A-5%7D%2C%22rooms%22%3A%5B1%5D%7D%7D\
     &width=1&height=1&max_depth=4294967296&suggested_only=true&recurse=true&ts=18446744073709551615",
    "?from=0&to=18446744073709551615&dir=f&limit=0&since=0&full_state=true&set_presence=x&timeout=0\
     &filter=0&include_all_networks=true&third_party_instance_id=x&via=example.org&server_name=example.org",
];

/// JSON of every wrong shape: what the keys endpoints take, with types they
/// do not; and a federation transaction of broken PDUs and EDUs.
fn bodies(real: &Real) -> Vec<Bytes> {
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let wrong = r#"{
        "room_id": 5, "user_id": [], "event_id": {}, "body": {}, "msgtype": 1, "content": "x", "limit": -1,
        "events": [1, "x"], "pdus": [1, {}], "edus": "x", "device_keys": 1, "one_time_keys": { "a": 1 },
        "fallback_keys": [], "messages": { "@a:b": 1 }, "auth": { "type": 5 }, "username": {}, "password": 1,
        "identifier": "x", "type": ["m.login.password"], "invite": "x", "initial_state": [1],
        "power_level_content_override": 1, "filter": "x", "visibility": 5,
        "search_categories": { "room_events": { "search_term": 1 } }, "displayname": [], "avatar_url": 1,
        "m.relates_to": "x", "reason": 1, "score": "x", "keys": 1, "signatures": "x", "rooms": 1,
        "sessions": [], "version": 1, "algorithm": {}, "auth_data": 1, "pushkey": 1, "kind": 1, "app_id": [],
        "data": "x", "lang": 1, "state_key": 1
    }"#;
    let numbers = r#"{ "limit": 1e300, "timeout": 18446744073709551616, "depth": -1 }"#;
    // Right at the top, wrong beneath: a tagged shape missing what its tag needs.
    let tagged = r#"{ "type": "m.login.password", "identifier": { "type": "m.id.user" },
        "auth": { "type": "m.login.dummy" }, "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2" }"#;
    [&b""[..], b"{", b"[]", b"null", b"{}", b"\"x\"", deep.as_bytes()]
        .into_iter()
        .chain([wrong, numbers, tagged].map(str::as_bytes))
        .map(Bytes::copy_from_slice)
        .chain([Bytes::from(transaction(real).to_string())])
        .collect()
}

/// Where a body names the server sending it: the one signing the request.
const ORIGIN: &str = "__origin__";

fn transaction(real: &Real) -> Value {
    let (room, user, event) = (&real.room, &real.user, &real.event);
    let pdus = [
        json!({}),
        json!({ "room_id": room, "type": "m.room.message" }),
        json!({
            "room_id": room, "sender": user, "type": "m.room.message", "content": [], "depth": -1,
            "prev_events": "x", "auth_events": [1], "origin_server_ts": "x", "hashes": {}, "signatures": 1,
        }),
        json!({
            "room_id": room, "sender": "@x:nope", "type": "m.room.member", "state_key": 5,
            "content": { "membership": 7 }, "depth": 1, "prev_events": [event], "auth_events": [event],
            "origin_server_ts": 1, "hashes": { "sha256": "x" }, "signatures": { "nope": { "ed25519:glia": "x" } },
        }),
    ];
    let mut receipts = serde_json::Map::new();
    receipts.insert(room.clone(), json!({ "m.read": { user: { "event_ids": 5 } } }));
    let edus = [
        json!({ "edu_type": "m.typing", "content": 1 }),
        json!({ "edu_type": "m.typing", "content": { "room_id": room, "user_id": 5, "typing": "x" } }),
        json!({ "edu_type": "m.receipt", "content": receipts }),
        json!({ "edu_type": "m.direct_to_device", "content": { "messages": { user: 1 }, "sender": 1 } }),
        json!({ "edu_type": "m.device_list_update", "content": { "user_id": user, "device_id": 1 } }),
        json!({ "edu_type": "m.presence", "content": { "push": [{ "user_id": 1 }] } }),
        json!({ "edu_type": "m.signing_key_update", "content": {} }),
        json!({ "edu_type": "x", "content": null }),
    ];
    json!({ "origin": ORIGIN, "origin_server_ts": 1, "pdus": pdus, "edus": edus, "event": pdus[3], "room_version": "12" })
}

/// What the node holds for path variables to name.
struct Real {
    room: String,
    user: String,
    event: String,
    server: String,
}

/// The answer to `request`, or what went wrong instead of one.
async fn answer(hs: &Homeserver, request: http::Request<Bytes>) -> Result<(u16, Bytes), String> {
    let answer = AssertUnwindSafe(hs.handle(request)).catch_unwind();
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Err(_) => Err("no answer in 10 s".into()),
        Ok(Err(_)) => Err("panicked".into()),
        Ok(Ok(response)) => Ok((response.status().as_u16(), response.into_body())),
    }
}

/// What is wrong with an answer, if anything.
fn judge(status: u16, body: &[u8]) -> Option<String> {
    if status >= 500 {
        return Some(format!("{status}: {}", String::from_utf8_lossy(body)));
    }
    if status >= 400 {
        let error: Value = serde_json::from_slice(body).unwrap_or_default();
        // User-interactive authentication asks for more with its flows.
        if status == 401 && error["flows"].is_array() {
            return None;
        }
        if !error["errcode"].as_str().is_some_and(|code| code.starts_with("M_")) {
            return Some(format!("{status} without a Matrix error: {}", String::from_utf8_lossy(body)));
        }
    }
    None
}

/// An `X-Matrix` authorization of `request` by `key`, where its body is JSON
/// (or empty): a signature over a body that is not JSON cannot be made.
fn sign(key: &NodeKey, destination: &str, request: &http::Request<Bytes>) -> Option<http::HeaderValue> {
    let destination = ruma::ServerName::parse(destination).ok()?;
    let input = XMatrixSigningInput::new(key.server_name().to_owned(), destination, key.key_pair());
    XMatrix::sign_http_request(request, input).ok().map(|header| (&header).into())
}

#[tokio::test]
async fn every_endpoint_answers_bad_input_with_a_matrix_error_or_success() {
    let hs =
        Homeserver::open(Arc::new(MemoryStore::new(SCHEMA)), Arc::new(SystemClock), Arc::new(OsRandom)).await.unwrap();
    let user = "@alice:".to_owned() + hs.key().server_name().as_str();
    let mut token = register(&hs, "alice").await;
    let room = call(&hs, "POST", "/_matrix/client/v3/createRoom", Some(&token), json!({ "name": "Den" })).await;
    let room = room["room_id"].as_str().unwrap().to_owned();
    let send = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/1", encode_segment(&room));
    let sent = call(&hs, "PUT", &send, Some(&token), json!({ "msgtype": "m.text", "body": "hi" })).await;
    let real = Real {
        room,
        user,
        event: sent["event_id"].as_str().unwrap().to_owned(),
        server: hs.key().server_name().to_string(),
    };
    let destination = hs.key().server_name().to_string();

    let (bodies, mut failures, mut requests) = (bodies(&real), Vec::new(), 0);
    for (method, templates) in endpoints() {
        let federation =
            templates.iter().any(|t| t.starts_with("/_matrix/federation/") || t.starts_with("/_matrix/key/"));
        for template in templates {
            let variables: Vec<&str> = template.split('/').filter(|s| s.starts_with('{')).collect();
            let filled: Vec<Vec<String>> = variables.iter().map(|v| values(v, &real)).collect();
            let variants = filled.iter().map(Vec::len).max().unwrap_or(1);
            for variant in 0..variants {
                let mut path = template.to_owned();
                for (variable, values) in variables.iter().zip(&filled) {
                    path = path.replacen(variable, &values[variant % values.len()], 1);
                }
                let with_body = matches!(method, Method::POST | Method::PUT);
                let cases: Vec<(&str, Bytes)> = match with_body {
                    true => bodies.iter().map(|b| ("", b.clone())).collect(),
                    false => QUERIES.iter().map(|q| (*q, Bytes::new())).collect(),
                };
                for (query, body) in cases {
                    let uri = format!("{path}{query}");
                    // A new server each time, so no rate limit stops the requests early.
                    let server = federation.then(|| {
                        let mut seed = [0u8; 32];
                        crate::core::Random::fill(&OsRandom, &mut seed);
                        NodeKey::from_seed(&seed)
                    });
                    let body = match &server {
                        Some(server) => {
                            let origin = String::from_utf8_lossy(&body).replace(ORIGIN, server.server_name().as_str());
                            Bytes::from(origin)
                        }
                        None => body,
                    };
                    let Ok(mut request) = http::Request::builder().method(method.clone()).uri(&uri).body(body) else {
                        continue;
                    };
                    let authorization = match &server {
                        Some(server) => sign(server, &destination, &request),
                        None => Some(format!("Bearer {token}").parse().unwrap()),
                    };
                    if let Some(authorization) = authorization {
                        request.headers_mut().insert("authorization", authorization);
                    }
                    requests += 1;
                    match answer(&hs, request).await {
                        Ok((status, body)) => {
                            if let Some(wrong) = judge(status, &body) {
                                failures.push(format!("{method} {uri}: {wrong}"));
                            }
                        }
                        Err(wrong) => failures.push(format!("{method} {uri}: {wrong}")),
                    }
                }
                // Some endpoints (logging out) end the session: start another.
                let whoami = call(&hs, "GET", "/_matrix/client/v3/account/whoami", Some(&token), json!({})).await;
                if whoami["errcode"] == "M_UNKNOWN_TOKEN" {
                    let login = json!({ "type": "m.login.password", "user": "alice", "password": "correct horse" });
                    let body = call(&hs, "POST", "/_matrix/client/v3/login", None, login).await;
                    token = body["access_token"].as_str().expect("logged in again").to_owned();
                }
            }
        }
    }
    assert!(requests > 5000, "only {requests} requests");
    assert!(failures.is_empty(), "{} wrong answers:\n{}", failures.len(), failures.join("\n"));
}
