//! The Client-Server API of `glia node` over real HTTP on loopback: every
//! endpoint the node lists under `client`, with the status codes, `errcode`s
//! and bodies the Matrix spec asks for. One node per area; the checks inside an
//! area run in order and build on each other.

#![cfg(not(target_arch = "wasm32"))]

mod common;

use std::{
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use common::{enc, request, request_with, Client, Glia, Response};
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";

fn start(data: &Path) -> Glia {
    Glia::start(&["node", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()])
}

/// A fresh node on a data directory of its own (kept as long as the guard).
fn node() -> (Glia, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (start(dir.path()), dir)
}

// --- Accounts -------------------------------------------------------------------

/// `POST /register` through its one user-interactive stage: the 401 with a
/// session, then the same body with `m.login.dummy` and that session.
#[track_caller]
fn register_with(addr: &str, mut body: Value) -> Response {
    let anon = Client::anonymous(addr);
    let challenge = anon.post("register", body.clone());
    assert_eq!(challenge.status, 401, "registration starts with a UIA challenge: {}", challenge.text());
    let session = challenge.json()["session"].as_str().expect("UIA session").to_owned();
    body["auth"] = json!({ "type": "m.login.dummy", "session": session });
    anon.post("register", body)
}

#[track_caller]
fn register(addr: &str, name: &str) -> Client {
    Client::from_login(addr, &register_with(addr, json!({ "username": name, "password": PASSWORD })).ok())
}

fn login(addr: &str, user: &str, password: &str) -> Response {
    let body = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user },
        "password": password,
    });
    Client::anonymous(addr).post("login", body)
}

#[track_caller]
fn login_client(addr: &str, user: &str) -> Client {
    Client::from_login(addr, &login(addr, user, PASSWORD).ok())
}

fn password_auth(client: &Client, password: &str, session: &str) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": client.user_id },
        "password": password,
        "session": session,
    })
}

/// The 401 a request behind `m.login.password` answers first: its flows and session.
#[track_caller]
fn password_challenge(response: &Response) -> String {
    assert_eq!(response.status, 401, "expected a UIA challenge: {}", response.text());
    let body = response.json();
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.password"] }]), "{body}");
    body["session"].as_str().expect("UIA session").to_owned()
}

/// `request` behind `m.login.password`: the challenge, then the body with `auth`.
#[track_caller]
fn with_password(client: &Client, method: &str, path: &str, mut body: Value) -> Response {
    let session = password_challenge(&client.request(method, path, Some(&body)));
    body["auth"] = password_auth(client, PASSWORD, &session);
    client.request(method, path, Some(&body))
}

fn server_name(client: &Client) -> String {
    client.user_id.split_once(':').unwrap().1.to_owned()
}

// --- Rooms and events -----------------------------------------------------------

static TXN: AtomicU64 = AtomicU64::new(0);

fn txn() -> String {
    format!("txn{}", TXN.fetch_add(1, Ordering::Relaxed))
}

#[track_caller]
fn create_room(client: &Client, body: Value) -> String {
    client.post("createRoom", body).ok()["room_id"].as_str().unwrap().to_owned()
}

fn send_event(client: &Client, room: &str, kind: &str, content: Value) -> Response {
    client.put(&format!("rooms/{}/send/{kind}/{}", enc(room), txn()), content)
}

/// Sends an `m.text` message and returns its event ID.
#[track_caller]
fn say(client: &Client, room: &str, body: &str) -> String {
    let content = json!({ "msgtype": "m.text", "body": body });
    send_event(client, room, "m.room.message", content).ok()["event_id"].as_str().unwrap().to_owned()
}

fn state(client: &Client, room: &str, kind: &str, key: &str) -> Response {
    client.get(&format!("rooms/{}/state/{kind}/{}", enc(room), enc(key)))
}

fn event(client: &Client, room: &str, event_id: &str) -> Response {
    client.get(&format!("rooms/{}/event/{}", enc(room), enc(event_id)))
}

#[track_caller]
fn join(client: &Client, room: &str) {
    client.post(&format!("rooms/{}/join", enc(room)), json!({})).ok();
}

#[track_caller]
fn membership(client: &Client, room: &str, user: &str) -> String {
    state(client, room, "m.room.member", user).ok()["membership"].as_str().unwrap().to_owned()
}

/// The `body` of each `m.room.message` in a list of events.
fn bodies(events: &Value) -> Vec<String> {
    let events = events.as_array().map(Vec::as_slice).unwrap_or_default();
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap().to_owned())
        .collect()
}

fn types(events: &Value) -> Vec<String> {
    let events = events.as_array().map(Vec::as_slice).unwrap_or_default();
    events.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
}

fn event_ids(events: &Value) -> Vec<String> {
    let events = events.as_array().map(Vec::as_slice).unwrap_or_default();
    events.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect()
}

fn joined_user_ids(client: &Client, room: &str) -> Vec<String> {
    let joined = client.get(&format!("rooms/{}/joined_members", enc(room))).ok();
    let mut users: Vec<String> = joined["joined"].as_object().unwrap().keys().cloned().collect();
    users.sort();
    users
}

#[track_caller]
fn messages(client: &Client, room: &str, query: &str) -> Value {
    client.get(&format!("rooms/{}/messages?{query}", enc(room))).ok()
}

#[track_caller]
fn sync(client: &Client, query: &str) -> Value {
    client.get(&format!("sync?{query}")).ok()
}

/// The rooms of one `rooms` section of a sync response (none if it is absent).
fn section(sync: &Value, name: &str) -> serde_json::Map<String, Value> {
    sync["rooms"][name].as_object().cloned().unwrap_or_default()
}

fn filter(value: Value) -> String {
    enc(&value.to_string())
}

// --- The tests ------------------------------------------------------------------

#[test]
fn discovery_and_request_handling() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let anon = Client::anonymous(addr);

    // Versions: v1.1 to v1.3 and nothing later, without a token.
    let versions = request(addr, "GET", "/_matrix/client/versions", b"").ok();
    let versions: Vec<&str> = versions["versions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for version in ["v1.1", "v1.2", "v1.3"] {
        assert!(versions.contains(&version), "{versions:?}");
    }
    for version in ["v1.4", "v1.5", "v1.11"] {
        assert!(!versions.contains(&version), "{versions:?}");
    }

    // Well-known: this origin, from the Host header.
    let well_known = request(addr, "GET", "/.well-known/matrix/client", b"").ok();
    assert_eq!(well_known["m.homeserver"]["base_url"], format!("http://{addr}"));
    let host = [("Host", "matrix.example.org:8448")];
    let well_known = request_with(addr, "GET", "/.well-known/matrix/client", &host, b"").ok();
    assert_eq!(well_known["m.homeserver"]["base_url"], "http://matrix.example.org:8448");

    // Endpoints behind a token refuse requests without one, or with a dead one.
    let bogus = Client { token: Some("glia_not_a_token".into()), ..anon.clone() };
    for path in [
        "account/whoami",
        "capabilities",
        "voip/turnServer",
        "thirdparty/protocols",
        "/_matrix/client/v1/media/config",
        "/_matrix/media/v3/config",
        "joined_rooms",
        "sync",
        "devices",
        "pushrules/",
    ] {
        anon.get(path).err(401, "M_MISSING_TOKEN");
        bogus.get(path).err(401, "M_UNKNOWN_TOKEN");
    }
    anon.post("createRoom", json!({})).err(401, "M_MISSING_TOKEN");

    let alice = register(addr, "alice");
    let token = alice.token.clone().unwrap();

    // The access token in the query string works like the header.
    let whoami = request(addr, "GET", &format!("/_matrix/client/v3/account/whoami?access_token={token}"), b"").ok();
    assert_eq!(whoami["user_id"], alice.user_id.as_str());

    let capabilities = alice.get("capabilities").ok()["capabilities"].clone();
    // Absent means enabled, for both.
    assert_ne!(capabilities["m.change_password"]["enabled"], false);
    assert_ne!(capabilities["m.set_displayname"]["enabled"], false);
    assert_eq!(capabilities["m.room_versions"]["default"], "12");
    for version in ["10", "11", "12"] {
        assert_eq!(capabilities["m.room_versions"]["available"][version], "stable", "{capabilities}");
    }
    assert_eq!(capabilities["m.room_versions"]["available"].as_object().unwrap().len(), 3);

    let turn = alice.get("voip/turnServer").ok();
    assert_eq!(turn["uris"], json!([]), "no TURN server here: {turn}");
    assert_eq!(alice.get("thirdparty/protocols").ok(), json!({}));
    // `glia node`'s default, 50 MiB.
    let limit = 50u64 << 20;
    assert_eq!(alice.get("/_matrix/client/v1/media/config").ok()["m.upload.size"], limit);
    assert_eq!(alice.get("/_matrix/media/v3/config").ok()["m.upload.size"], limit);

    // r0 paths answer as v3 does.
    let r0_login = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": "alice" },
        "password": PASSWORD,
    });
    let r0 = Client::from_login(addr, &anon.post("/_matrix/client/r0/login", r0_login).ok());
    assert_eq!(r0.get("/_matrix/client/r0/account/whoami").ok()["user_id"], alice.user_id.as_str());
    let room = create_room(&alice, json!({}));
    let path = format!("/_matrix/client/r0/rooms/{}/send/m.room.message/r0txn", enc(&room));
    let sent = r0.put(&path, json!({ "msgtype": "m.text", "body": "over r0" })).ok();
    let event_id = sent["event_id"].as_str().unwrap();
    assert_eq!(event(&alice, &room, event_id).ok()["content"]["body"], "over r0");
    let r0_sync = r0.get("/_matrix/client/r0/sync").ok();
    assert!(r0_sync["next_batch"].is_string());
    assert_eq!(bodies(&r0_sync["rooms"]["join"][&room]["timeline"]["events"]), ["over r0"]);

    // Bodies that are not JSON at all, and JSON of the wrong shape.
    anon.raw("POST", "login", br#"{"type": "m.login.password", "#).err(400, "M_NOT_JSON");
    alice.raw("POST", "createRoom", b"not json").err(400, "M_NOT_JSON");
    alice.raw("PUT", &format!("rooms/{}/send/m.room.message/{}", enc(&room), txn()), b"{").err(400, "M_NOT_JSON");
    let account_data = format!("user/{}/account_data/org.example.x", enc(&alice.user_id));
    alice.raw("PUT", &account_data, b"[1,").err(400, "M_NOT_JSON");
    anon.post("login", json!({ "type": "m.login.password", "identifier": 5, "password": 5 })).err(400, "M_BAD_JSON");
    alice.post("createRoom", json!({ "preset": 5 })).err(400, "M_BAD_JSON");
}

#[test]
fn registration_login_and_logout() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let anon = Client::anonymous(addr);

    // The first request gets the flows and a session, and no error.
    let challenge = anon.post("register", json!({}));
    assert_eq!(challenge.status, 401, "{}", challenge.text());
    let body = challenge.json();
    assert_eq!(body["flows"], json!([{ "stages": ["m.login.dummy"] }]));
    let session = body["session"].as_str().unwrap();
    assert!(!session.is_empty());
    assert!(body.get("errcode").is_none(), "{body}");

    let registered = anon
        .post(
            "register",
            json!({
                "username": "alice",
                "password": PASSWORD,
                "initial_device_display_name": "Alice's laptop",
                "auth": { "type": "m.login.dummy", "session": session },
            }),
        )
        .ok();
    let alice = Client::from_login(addr, &registered);
    assert!(alice.user_id.starts_with("@alice:"), "{registered}");
    let server = server_name(&alice);
    assert!(!alice.device_id.is_empty() && !alice.token.as_ref().unwrap().is_empty());
    let whoami = alice.get("account/whoami").ok();
    assert_eq!(whoami["user_id"], alice.user_id.as_str());
    assert_eq!(whoami["device_id"], alice.device_id.as_str());
    assert_ne!(whoami["is_guest"], true);
    let device = alice.get(&format!("devices/{}", alice.device_id)).ok();
    assert_eq!(device["display_name"], "Alice's laptop");

    // A session is good for one registration.
    let reused = anon.post(
        "register",
        json!({ "username": "mallory", "password": PASSWORD, "auth": { "type": "m.login.dummy", "session": session } }),
    );
    assert_eq!(reused.status, 401, "{}", reused.text());
    assert!(reused.json()["flows"].is_array());

    // A device ID of the client's choosing.
    let bob = register_with(addr, json!({ "username": "bob", "password": PASSWORD, "device_id": "BOBPHONE" })).ok();
    assert_eq!(bob["device_id"], "BOBPHONE");
    assert_eq!(bob["user_id"], format!("@bob:{server}"));
    // No username: the server picks one. inhibit_login: no session.
    let picked = register_with(addr, json!({ "password": PASSWORD })).ok();
    assert!(picked["user_id"].as_str().unwrap().starts_with('@') && picked["access_token"].is_string(), "{picked}");
    let quiet = register_with(addr, json!({ "username": "quiet", "password": PASSWORD, "inhibit_login": true })).ok();
    assert_eq!(quiet["user_id"], format!("@quiet:{server}"));
    assert!(quiet.get("access_token").is_none(), "{quiet}");
    login(addr, "quiet", PASSWORD).ok();

    // Taken, invalid and guest registrations.
    anon.post("register", json!({ "username": "alice", "password": PASSWORD })).err(400, "M_USER_IN_USE");
    let full_id = format!("@alice:{server}");
    anon.post("register", json!({ "username": full_id, "password": PASSWORD })).err(400, "M_USER_IN_USE");
    for name in ["not a name", "ünïcode", "@alice:elsewhere.example", "a\"b"] {
        anon.post("register", json!({ "username": name, "password": PASSWORD })).err(400, "M_INVALID_USERNAME");
    }
    anon.post("register?kind=guest", json!({})).err(403, "M_GUEST_ACCESS_FORBIDDEN");

    anon.get("register/available?username=alice").err(400, "M_USER_IN_USE");
    assert_eq!(anon.get("register/available?username=carol").ok(), json!({ "available": true }));
    anon.get("register/available?username=not%20a%20name").err(400, "M_INVALID_USERNAME");

    // Login: by localpart, by full user ID, by the legacy `user` field.
    let flows = anon.get("login").ok()["flows"].clone();
    assert!(flows.as_array().unwrap().iter().any(|f| f["type"] == "m.login.password"), "{flows}");
    let by_localpart = Client::from_login(addr, &login(addr, "alice", PASSWORD).ok());
    let by_user_id = Client::from_login(addr, &login(addr, &alice.user_id, PASSWORD).ok());
    let legacy = anon.post("login", json!({ "type": "m.login.password", "user": "alice", "password": PASSWORD }));
    let legacy = Client::from_login(addr, &legacy.ok());
    for session in [&by_localpart, &by_user_id, &legacy] {
        assert_eq!(session.user_id, alice.user_id);
        assert_ne!(session.token, alice.token);
        assert_ne!(session.device_id, alice.device_id);
        assert_eq!(session.get("account/whoami").ok()["device_id"], session.device_id.as_str());
    }
    let known_device = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": "alice" },
        "password": PASSWORD,
        "device_id": "DESKTOP",
        "initial_device_display_name": "Desktop",
    });
    let desktop = Client::from_login(addr, &anon.post("login", known_device).ok());
    assert_eq!(desktop.device_id, "DESKTOP");
    login(addr, "alice", "wrong password").err(403, "M_FORBIDDEN");
    login(addr, "nobody", PASSWORD).err(403, "M_FORBIDDEN");
    anon.post("login", json!({ "type": "m.login.token", "token": "abc" })).err(400, "M_UNKNOWN");

    let devices = alice.get("devices").ok()["devices"].clone();
    let mut ids: Vec<&str> = devices.as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap()).collect();
    ids.sort();
    let mut expected = vec![
        alice.device_id.as_str(),
        by_localpart.device_id.as_str(),
        by_user_id.device_id.as_str(),
        legacy.device_id.as_str(),
        "DESKTOP",
    ];
    expected.sort();
    assert_eq!(ids, expected);

    // Logout ends one session, and its device.
    assert_eq!(by_localpart.post("logout", json!({})).ok(), json!({}));
    by_localpart.get("account/whoami").err(401, "M_UNKNOWN_TOKEN");
    alice.get(&format!("devices/{}", by_localpart.device_id)).err(404, "M_NOT_FOUND");
    by_user_id.get("account/whoami").ok();

    // Logout from all devices ends every session of the user, the caller's too.
    assert_eq!(legacy.post("logout/all", json!({})).ok(), json!({}));
    for session in [&alice, &by_user_id, &legacy, &desktop] {
        session.get("account/whoami").err(401, "M_UNKNOWN_TOKEN");
    }
    let bob = Client::from_login(addr, &bob);
    bob.get("account/whoami").ok();
    let again = login_client(addr, "alice");
    assert_eq!(again.get("devices").ok()["devices"].as_array().unwrap().len(), 1);

    // Failed logins for one user run into the rate limit; other users do not.
    register(addr, "carol");
    let mut limited = None;
    for attempt in 0..200 {
        let response = login(addr, "carol", "guess");
        match response.status {
            403 => assert_eq!(response.json()["errcode"], "M_FORBIDDEN"),
            429 => {
                limited = Some((attempt, response));
                break;
            }
            _ => panic!("unexpected answer to a failed login: {} {}", response.status, response.text()),
        }
    }
    let (attempt, response) = limited.expect("no rate limit after 200 failed logins");
    assert!(attempt >= 3, "limited after only {attempt} attempts");
    let body = response.err(429, "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{body}");
    login(addr, "bob", PASSWORD).ok();

    // Without a login, no device and no token. (ruma's response type writes the
    // absent `device_id` as null rather than leaving it out.)
    assert!(quiet.get("device_id").is_none_or(|d| d.is_null()), "{quiet}");
    assert!(quiet.get("access_token").is_none(), "{quiet}");
}

#[test]
fn passwords_devices_and_deactivation() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let phone = login_client(addr, "alice");
    let tablet = login_client(addr, "alice");

    // Devices: list, get, rename.
    let devices = alice.get("devices").ok()["devices"].clone();
    let mut ids: Vec<&str> = devices.as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap()).collect();
    ids.sort();
    let mut expected = vec![alice.device_id.as_str(), phone.device_id.as_str(), tablet.device_id.as_str()];
    expected.sort();
    assert_eq!(ids, expected);
    assert_eq!(alice.get(&format!("devices/{}", phone.device_id)).ok()["device_id"], phone.device_id.as_str());
    alice.get("devices/NOSUCHDEVICE").err(404, "M_NOT_FOUND");
    // Devices are per user.
    bob.get(&format!("devices/{}", phone.device_id)).err(404, "M_NOT_FOUND");
    assert_eq!(alice.put(&format!("devices/{}", phone.device_id), json!({ "display_name": "Phone" })).ok(), json!({}));
    assert_eq!(alice.get(&format!("devices/{}", phone.device_id)).ok()["display_name"], "Phone");
    alice.put("devices/NOSUCHDEVICE", json!({ "display_name": "x" })).err(404, "M_NOT_FOUND");

    // Deleting a device takes the password, and logs it out.
    let path = format!("devices/{}", phone.device_id);
    let session = password_challenge(&alice.request("DELETE", &path, Some(&json!({}))));
    let wrong = alice.request("DELETE", &path, Some(&json!({ "auth": password_auth(&alice, "wrong", &session) })));
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    let wrong = wrong.json();
    assert_eq!(wrong["errcode"], "M_FORBIDDEN", "{wrong}");
    assert_eq!(wrong["flows"], json!([{ "stages": ["m.login.password"] }]));
    phone.get("account/whoami").ok();
    let deleted = alice.request("DELETE", &path, Some(&json!({ "auth": password_auth(&alice, PASSWORD, &session) })));
    assert_eq!(deleted.ok(), json!({}));
    phone.get("account/whoami").err(401, "M_UNKNOWN_TOKEN");
    alice.get(&path).err(404, "M_NOT_FOUND");
    alice.request("DELETE", "devices/NOSUCHDEVICE", Some(&json!({}))).err(404, "M_NOT_FOUND");
    // Another user's password does not pass.
    let session = password_challenge(&alice.request("DELETE", &format!("devices/{}", tablet.device_id), None));
    let auth = password_auth(&bob, PASSWORD, &session);
    let refused = alice.request("DELETE", &format!("devices/{}", tablet.device_id), Some(&json!({ "auth": auth })));
    assert_eq!(refused.status, 401, "{}", refused.text());
    tablet.get("account/whoami").ok();

    // Deleting several devices at once; unknown ones are skipped.
    let laptop = login_client(addr, "alice");
    let watch = login_client(addr, "alice");
    let body = json!({ "devices": [laptop.device_id, watch.device_id, "NOSUCHDEVICE"] });
    assert_eq!(with_password(&alice, "POST", "delete_devices", body).ok(), json!({}));
    laptop.get("account/whoami").err(401, "M_UNKNOWN_TOKEN");
    watch.get("account/whoami").err(401, "M_UNKNOWN_TOKEN");
    let devices = alice.get("devices").ok()["devices"].as_array().unwrap().len();
    assert_eq!(devices, 2);

    // Changing the password: the old one stops working, other devices are logged out.
    let session = password_challenge(&alice.post("account/password", json!({ "new_password": "new secret" })));
    let body = json!({ "new_password": "new secret", "auth": password_auth(&alice, "wrong", &session) });
    assert_eq!(alice.post("account/password", body).status, 401);
    let body = json!({ "new_password": "new secret", "auth": password_auth(&alice, PASSWORD, &session) });
    assert_eq!(alice.post("account/password", body).ok(), json!({}));
    alice.get("account/whoami").ok();
    tablet.get("account/whoami").err(401, "M_UNKNOWN_TOKEN");
    login(addr, "alice", PASSWORD).err(403, "M_FORBIDDEN");
    let kept = Client::from_login(addr, &login(addr, "alice", "new secret").ok());
    // With `logout_devices: false` the other devices stay.
    let session = password_challenge(&alice.post("account/password", json!({ "new_password": PASSWORD })));
    let body = json!({
        "new_password": PASSWORD,
        "logout_devices": false,
        "auth": password_auth(&alice, "new secret", &session),
    });
    alice.post("account/password", body).ok();
    kept.get("account/whoami").ok();

    // Deactivation: leaves the rooms, ends every session, keeps the name taken.
    let room = create_room(&alice, json!({ "preset": "public_chat" }));
    join(&bob, &room);
    assert_eq!(
        with_password(&alice, "POST", "account/deactivate", json!({})).ok()["id_server_unbind_result"],
        "no-support"
    );
    alice.get("account/whoami").err(401, "M_UNKNOWN_TOKEN");
    kept.get("account/whoami").err(401, "M_UNKNOWN_TOKEN");
    login(addr, "alice", PASSWORD).err(403, "M_FORBIDDEN");
    assert_eq!(membership(&bob, &room, &alice.user_id), "leave");
    let anon = Client::anonymous(addr);
    anon.post("register", json!({ "username": "alice", "password": PASSWORD })).err(400, "M_USER_IN_USE");
    anon.get("register/available?username=alice").err(400, "M_USER_IN_USE");
    bob.get(&format!("profile/{}", enc(&alice.user_id))).err(404, "M_NOT_FOUND");
}

#[test]
fn profiles_room_creation_and_aliases() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let server = server_name(&alice);
    let me = enc(&alice.user_id);

    // Profiles: a new user's display name is their localpart.
    assert_eq!(bob.get(&format!("profile/{me}")).ok(), json!({ "displayname": "alice" }));
    let room = create_room(&alice, json!({ "name": "Profiles" }));
    assert_eq!(
        alice.put(&format!("profile/{me}/displayname"), json!({ "displayname": "Alice Liddell" })).ok(),
        json!({})
    );
    assert_eq!(bob.get(&format!("profile/{me}/displayname")).ok(), json!({ "displayname": "Alice Liddell" }));
    let avatar = "mxc://example.org/alice";
    alice.put(&format!("profile/{me}/avatar_url"), json!({ "avatar_url": avatar })).ok();
    assert_eq!(bob.get(&format!("profile/{me}/avatar_url")).ok(), json!({ "avatar_url": avatar }));
    assert_eq!(bob.get(&format!("profile/{me}")).ok(), json!({ "displayname": "Alice Liddell", "avatar_url": avatar }));
    // The member events of the rooms she is in follow.
    let member = state(&alice, &room, "m.room.member", &alice.user_id).ok();
    assert_eq!(member["membership"], "join");
    assert_eq!(member["displayname"], "Alice Liddell");
    assert_eq!(member["avatar_url"], avatar);
    bob.put(&format!("profile/{me}/displayname"), json!({ "displayname": "Mallory" })).err(403, "M_FORBIDDEN");
    let nobody = enc(&format!("@nobody:{server}"));
    bob.get(&format!("profile/{nobody}")).err(404, "M_NOT_FOUND");
    bob.get(&format!("profile/{nobody}/displayname")).err(404, "M_NOT_FOUND");

    // Room versions.
    for version in ["10", "11", "12"] {
        let room = create_room(&alice, json!({ "room_version": version }));
        let create = state(&alice, &room, "m.room.create", "").ok();
        assert_eq!(create["room_version"], version);
        let levels = state(&alice, &room, "m.room.power_levels", "").ok();
        match version {
            "10" => {
                assert_eq!(create["creator"], alice.user_id.as_str());
                assert_eq!(levels["users"][&alice.user_id], 100);
            }
            "11" => {
                assert!(create.get("creator").is_none(), "{create}");
                assert_eq!(levels["users"][&alice.user_id], 100);
            }
            _ => {
                // Creators are implicitly privileged, and the room ID is the create event's.
                assert!(levels["users"].get(&alice.user_id).is_none(), "{levels}");
                let path = format!("rooms/{}/state/m.room.create/?format=event", enc(&room));
                let create = alice.get(&path).ok();
                assert_eq!(room[1..], create["event_id"].as_str().unwrap()[1..]);
                assert!(!room.contains(':'));
            }
        }
    }
    let default = create_room(&alice, json!({}));
    assert_eq!(state(&alice, &default, "m.room.create", "").ok()["room_version"], "12");
    alice.post("createRoom", json!({ "room_version": "9" })).err(400, "M_UNSUPPORTED_ROOM_VERSION");
    alice.post("createRoom", json!({ "room_version": "no.such.version" })).err(400, "M_UNSUPPORTED_ROOM_VERSION");

    // Presets.
    let public = create_room(&alice, json!({ "preset": "public_chat", "name": "Public", "topic": "Everyone welcome" }));
    assert_eq!(state(&alice, &public, "m.room.join_rules", "").ok()["join_rule"], "public");
    assert_eq!(state(&alice, &public, "m.room.history_visibility", "").ok()["history_visibility"], "shared");
    assert_eq!(state(&alice, &public, "m.room.guest_access", "").ok()["guest_access"], "forbidden");
    assert_eq!(state(&alice, &public, "m.room.name", "").ok(), json!({ "name": "Public" }));
    assert_eq!(state(&alice, &public, "m.room.topic", "").ok(), json!({ "topic": "Everyone welcome" }));
    let private = create_room(&alice, json!({ "preset": "private_chat" }));
    assert_eq!(state(&alice, &private, "m.room.join_rules", "").ok()["join_rule"], "invite");
    assert_eq!(state(&alice, &private, "m.room.guest_access", "").ok()["guest_access"], "can_join");
    let visible = create_room(&alice, json!({ "visibility": "public" }));
    assert_eq!(state(&alice, &visible, "m.room.join_rules", "").ok()["join_rule"], "public");
    let hidden = create_room(&alice, json!({}));
    assert_eq!(state(&alice, &hidden, "m.room.join_rules", "").ok()["join_rule"], "invite");

    // Trusted private chat with an invite, as a direct chat.
    let direct = create_room(
        &alice,
        json!({ "preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": true, "room_version": "11" }),
    );
    let invite = state(&alice, &direct, "m.room.member", &bob.user_id).ok();
    assert_eq!(invite["membership"], "invite");
    assert_eq!(invite["is_direct"], true);
    let levels = state(&alice, &direct, "m.room.power_levels", "").ok();
    assert_eq!(levels["users"][&bob.user_id], 100);
    assert_eq!(levels["users"][&alice.user_id], 100);
    assert_eq!(state(&alice, &direct, "m.room.join_rules", "").ok()["join_rule"], "invite");
    // Without is_direct, invites are plain.
    let group = create_room(&alice, json!({ "invite": [bob.user_id] }));
    let invite = state(&alice, &group, "m.room.member", &bob.user_id).ok();
    assert_eq!(invite["membership"], "invite");
    assert!(invite.get("is_direct").is_none(), "{invite}");

    // initial_state (overriding the preset), power levels override, creation content.
    let custom = create_room(
        &alice,
        json!({
            "preset": "public_chat",
            "initial_state": [
                { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } },
                { "type": "org.example.custom", "state_key": "key", "content": { "value": 1 } },
            ],
            "power_level_content_override": { "events_default": 50, "invite": 50 },
            "creation_content": { "m.federate": false },
        }),
    );
    assert_eq!(state(&alice, &custom, "m.room.history_visibility", "").ok()["history_visibility"], "joined");
    assert_eq!(state(&alice, &custom, "org.example.custom", "key").ok(), json!({ "value": 1 }));
    assert_eq!(state(&alice, &custom, "m.room.create", "").ok()["m.federate"], false);
    let levels = state(&alice, &custom, "m.room.power_levels", "").ok();
    assert_eq!(
        (levels["events_default"].clone(), levels["invite"].clone(), levels["ban"].clone()),
        (json!(50), json!(50), json!(50))
    );
    join(&bob, &custom);
    send_event(&bob, &custom, "m.room.message", json!({ "msgtype": "m.text", "body": "hi" })).err(403, "M_FORBIDDEN");
    let carol = register(addr, "carol");
    bob.post(&format!("rooms/{}/invite", enc(&custom)), json!({ "user_id": carol.user_id })).err(403, "M_FORBIDDEN");
    say(&alice, &custom, "only those with power speak");

    // room_alias_name: the alias and the canonical alias event.
    let lobby = create_room(&alice, json!({ "preset": "public_chat", "room_alias_name": "lobby" }));
    let alias = format!("#lobby:{server}");
    assert_eq!(state(&alice, &lobby, "m.room.canonical_alias", "").ok()["alias"], alias.as_str());
    let resolved = bob.get(&format!("directory/room/{}", enc(&alias))).ok();
    assert_eq!(resolved["room_id"], lobby.as_str());
    assert_eq!(resolved["servers"], json!([server]));
    alice.post("createRoom", json!({ "room_alias_name": "lobby" })).err(400, "M_ROOM_IN_USE");

    // The directory: create, resolve, list, delete.
    let extra = format!("#extra:{server}");
    let path = format!("directory/room/{}", enc(&extra));
    assert_eq!(alice.put(&path, json!({ "room_id": lobby })).ok(), json!({}));
    assert_eq!(alice.put(&path, json!({ "room_id": public })).status, 409);
    assert_eq!(bob.get(&path).ok()["room_id"], lobby.as_str());
    let mut aliases: Vec<String> =
        serde_json::from_value(alice.get(&format!("rooms/{}/aliases", enc(&lobby))).ok()["aliases"].clone()).unwrap();
    aliases.sort();
    assert_eq!(aliases, [extra.clone(), alias.clone()]);
    // Only members list a room's aliases, and bob may not remove alice's.
    bob.get(&format!("rooms/{}/aliases", enc(&lobby))).err(403, "M_FORBIDDEN");
    bob.delete(&path).err(403, "M_FORBIDDEN");
    join(&bob, &lobby);
    bob.delete(&path).err(403, "M_FORBIDDEN");
    assert_eq!(alice.delete(&path).ok(), json!({}));
    bob.get(&path).err(404, "M_NOT_FOUND");
    alice.delete(&path).err(404, "M_NOT_FOUND");
    bob.get(&format!("directory/room/{}", enc(&format!("#nothing:{server}")))).err(404, "M_NOT_FOUND");
    bob.get("directory/room/no-hash-sign").err(400, "M_INVALID_PARAM");
    let foreign = format!("directory/room/{}", enc("#x:elsewhere.example"));
    assert_eq!(alice.put(&foreign, json!({ "room_id": lobby })).status, 400);
    // A member's own alias is theirs to delete.
    let bobs = format!("directory/room/{}", enc(&format!("#bobs:{server}")));
    bob.put(&bobs, json!({ "room_id": lobby })).ok();
    assert_eq!(bob.delete(&bobs).ok(), json!({}));
}

#[test]
fn membership_changes() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let carol = register(addr, "carol");
    let dave = register(addr, "dave");
    let server = server_name(&alice);

    let town = create_room(&alice, json!({ "preset": "public_chat", "room_alias_name": "town", "name": "Town" }));
    say(&alice, &town, "before bob");
    // Join by ID and by alias; joining again changes nothing.
    assert_eq!(bob.post(&format!("rooms/{}/join", enc(&town)), json!({})).ok()["room_id"], town.as_str());
    let by_alias = carol.post(&format!("join/{}", enc(&format!("#town:{server}"))), json!({})).ok();
    assert_eq!(by_alias["room_id"], town.as_str());
    assert_eq!(carol.post(&format!("join/{}", enc(&town)), json!({})).ok()["room_id"], town.as_str());
    let member_event = |user: &str| {
        let path = format!("rooms/{}/state/m.room.member/{}?format=event", enc(&town), enc(user));
        alice.get(&path).ok()["event_id"].clone()
    };
    let before = member_event(&bob.user_id);
    join(&bob, &town);
    assert_eq!(member_event(&bob.user_id), before);
    carol.post(&format!("join/{}", enc(&format!("#nowhere:{server}"))), json!({})).err(404, "M_NOT_FOUND");
    assert_eq!(bob.get("joined_rooms").ok(), json!({ "joined_rooms": [town] }));
    let mut everyone = vec![alice.user_id.clone(), bob.user_id.clone(), carol.user_id.clone()];
    everyone.sort();
    assert_eq!(joined_user_ids(&bob, &town), everyone);
    let joined = bob.get(&format!("rooms/{}/joined_members", enc(&town))).ok();
    assert_eq!(joined["joined"][&bob.user_id]["display_name"], "bob");
    let members = bob.get(&format!("rooms/{}/members", enc(&town))).ok()["chunk"].clone();
    assert_eq!(members.as_array().unwrap().len(), 3);
    assert!(members
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["type"] == "m.room.member" && m["content"]["membership"] == "join"));

    // An invite-only room: no way in without an invite.
    let secret = create_room(&alice, json!({ "preset": "private_chat", "name": "Secret" }));
    dave.post(&format!("rooms/{}/join", enc(&secret)), json!({})).err(403, "M_FORBIDDEN");
    send_event(&dave, &secret, "m.room.message", json!({ "msgtype": "m.text", "body": "let me in" }))
        .err(403, "M_FORBIDDEN");
    for path in ["members", "joined_members", "state", "state/m.room.name/"] {
        dave.get(&format!("rooms/{}/{path}", enc(&secret))).err(403, "M_FORBIDDEN");
    }
    assert_eq!(
        alice.post(&format!("rooms/{}/invite", enc(&secret)), json!({ "user_id": dave.user_id })).ok(),
        json!({})
    );
    assert_eq!(membership(&alice, &secret, &dave.user_id), "invite");
    let invited = alice.get(&format!("rooms/{}/members?membership=invite", enc(&secret))).ok()["chunk"].clone();
    assert_eq!(
        invited.as_array().unwrap().iter().map(|m| m["state_key"].clone()).collect::<Vec<_>>(),
        [json!(dave.user_id)]
    );
    let not_invited = alice.get(&format!("rooms/{}/members?not_membership=invite", enc(&secret))).ok()["chunk"].clone();
    assert_eq!(
        not_invited.as_array().unwrap().iter().map(|m| m["state_key"].clone()).collect::<Vec<_>>(),
        [json!(alice.user_id)]
    );
    join(&dave, &secret);
    assert_eq!(dave.get("joined_rooms").ok(), json!({ "joined_rooms": [secret] }));
    alice.post(&format!("rooms/{}/invite", enc(&secret)), json!({ "user_id": dave.user_id })).err(403, "M_FORBIDDEN");
    // Only members invite.
    bob.post(&format!("rooms/{}/invite", enc(&secret)), json!({ "user_id": carol.user_id })).err(403, "M_FORBIDDEN");
    // An invite can be turned down by leaving.
    let declined = create_room(&alice, json!({ "invite": [carol.user_id] }));
    assert_eq!(membership(&alice, &declined, &carol.user_id), "invite");
    carol.post(&format!("rooms/{}/leave", enc(&declined)), json!({})).ok();
    assert_eq!(membership(&alice, &declined, &carol.user_id), "leave");

    // Kick: not without power; then by alice, with a reason.
    let kick = |by: &Client, user: &str| {
        by.post(&format!("rooms/{}/kick", enc(&town)), json!({ "user_id": user, "reason": "out" }))
    };
    kick(&bob, &carol.user_id).err(403, "M_FORBIDDEN");
    assert_eq!(kick(&alice, &carol.user_id).ok(), json!({}));
    let member = state(&alice, &town, "m.room.member", &carol.user_id).ok();
    assert_eq!((member["membership"].as_str(), member["reason"].as_str()), (Some("leave"), Some("out")));
    assert_eq!(carol.get("joined_rooms").ok(), json!({ "joined_rooms": [] }));
    let left = alice.get(&format!("rooms/{}/members?membership=leave", enc(&town))).ok()["chunk"].clone();
    assert_eq!(
        left.as_array().unwrap().iter().map(|m| m["state_key"].clone()).collect::<Vec<_>>(),
        [json!(carol.user_id)]
    );
    send_event(&carol, &town, "m.room.message", json!({ "msgtype": "m.text", "body": "still here?" }))
        .err(403, "M_FORBIDDEN");

    // Ban and unban.
    let ban = |by: &Client, user: &str| {
        by.post(&format!("rooms/{}/ban", enc(&town)), json!({ "user_id": user, "reason": "spam" }))
    };
    ban(&bob, &carol.user_id).err(403, "M_FORBIDDEN");
    assert_eq!(ban(&alice, &bob.user_id).ok(), json!({}));
    let member = state(&alice, &town, "m.room.member", &bob.user_id).ok();
    assert_eq!((member["membership"].as_str(), member["reason"].as_str()), (Some("ban"), Some("spam")));
    bob.post(&format!("rooms/{}/join", enc(&town)), json!({})).err(403, "M_FORBIDDEN");
    send_event(&bob, &town, "m.room.message", json!({ "msgtype": "m.text", "body": "hello?" })).err(403, "M_FORBIDDEN");
    alice.post(&format!("rooms/{}/invite", enc(&town)), json!({ "user_id": bob.user_id })).err(403, "M_FORBIDDEN");
    let unban = |by: &Client, user: &str| by.post(&format!("rooms/{}/unban", enc(&town)), json!({ "user_id": user }));
    carol.post(&format!("rooms/{}/join", enc(&town)), json!({})).ok();
    unban(&carol, &bob.user_id).err(403, "M_FORBIDDEN");
    assert_eq!(unban(&alice, &bob.user_id).ok(), json!({}));
    assert_eq!(membership(&alice, &town, &bob.user_id), "leave");
    join(&bob, &town);
    assert_eq!(joined_user_ids(&alice, &town), everyone);

    // Leave, then forget.
    assert_eq!(carol.post(&format!("rooms/{}/leave", enc(&town)), json!({})).ok(), json!({}));
    assert_eq!(membership(&alice, &town, &carol.user_id), "leave");
    assert_eq!(carol.get("joined_rooms").ok(), json!({ "joined_rooms": [] }));
    let include_leave = format!("filter={}", filter(json!({ "room": { "include_leave": true } })));
    assert!(section(&sync(&carol, &include_leave), "leave").contains_key(&town));
    dave.post(&format!("rooms/{}/forget", enc(&secret)), json!({})).err(400, "M_UNKNOWN");
    assert_eq!(carol.post(&format!("rooms/{}/forget", enc(&town)), json!({})).ok(), json!({}));
    assert!(!section(&sync(&carol, &include_leave), "leave").contains_key(&town));

    // Someone who left reads the history up to their leave, not after it.
    say(&alice, &town, "while bob is here");
    bob.post(&format!("rooms/{}/leave", enc(&town)), json!({})).ok();
    alice.put(&format!("rooms/{}/state/m.room.name/", enc(&town)), json!({ "name": "City" })).ok();
    let after = say(&alice, &town, "after bob left");
    let history = messages(&bob, &town, "dir=b&limit=50");
    assert_eq!(bodies(&history["chunk"]).first().map(String::as_str), Some("while bob is here"));
    event(&bob, &town, &after).err(404, "M_NOT_FOUND");

    // ... and the state as it was when they left (spec: GET /rooms/{roomId}/state
    // and /members).
    assert_eq!(state(&bob, &town, "m.room.name", "").ok(), json!({ "name": "Town" }));
    let members = bob.get(&format!("rooms/{}/members", enc(&town))).ok()["chunk"].clone();
    assert!(members.as_array().unwrap().iter().any(|m| m["state_key"] == bob.user_id.as_str()));
    let all = bob.get(&format!("rooms/{}/state", enc(&town))).ok();
    let name = all.as_array().unwrap().iter().find(|e| e["type"] == "m.room.name").unwrap().clone();
    assert_eq!(name["content"]["name"], "Town");

    // In a `shared` room, what was sent before one joined stays visible after
    // one leaves (spec, history visibility: "If history_visibility was set to
    // shared, and the user joined the room at any point after the event was
    // sent, allow").
    assert_eq!(bodies(&history["chunk"]).last().map(String::as_str), Some("before bob"));
}

#[test]
fn messages_state_and_history() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let carol = register(addr, "carol");
    let room = create_room(&alice, json!({ "preset": "public_chat" }));
    join(&bob, &room);
    let r = enc(&room);

    // Sending is idempotent per device and transaction ID.
    let content = json!({ "msgtype": "m.text", "body": "one" });
    let first = alice.put(&format!("rooms/{r}/send/m.room.message/same-txn"), content.clone()).ok()["event_id"].clone();
    let again = alice.put(&format!("rooms/{r}/send/m.room.message/same-txn"), content.clone()).ok()["event_id"].clone();
    assert_eq!(first, again);
    let other_device = login_client(addr, "alice");
    let other =
        other_device.put(&format!("rooms/{r}/send/m.room.message/same-txn"), content.clone()).ok()["event_id"].clone();
    assert_ne!(first, other);
    let first = first.as_str().unwrap();
    let fetched = event(&alice, &room, first).ok();
    assert_eq!(fetched["content"], content);
    assert_eq!(
        (fetched["type"].as_str(), fetched["sender"].as_str()),
        (Some("m.room.message"), Some(alice.user_id.as_str()))
    );
    assert_eq!((fetched["room_id"].as_str(), fetched["event_id"].as_str()), (Some(room.as_str()), Some(first)));
    assert_eq!(fetched["unsigned"]["transaction_id"], "same-txn");
    assert!(fetched["origin_server_ts"].is_u64());
    assert!(event(&other_device, &room, first).ok()["unsigned"].get("transaction_id").is_none());
    assert!(event(&bob, &room, first).ok()["unsigned"].get("transaction_id").is_none());
    let history =
        messages(&alice, &room, &format!("dir=b&limit=10&filter={}", filter(json!({ "types": ["m.room.message"] }))));
    assert_eq!(bodies(&history["chunk"]), ["one", "one"]);

    // Non-members neither send nor read.
    send_event(&carol, &room, "m.room.message", json!({ "msgtype": "m.text", "body": "hi" })).err(403, "M_FORBIDDEN");
    event(&carol, &room, first).err(404, "M_NOT_FOUND");
    carol.get(&format!("rooms/{r}/messages?dir=b")).err(403, "M_FORBIDDEN");
    event(&alice, &room, "$doesnotexist").err(404, "M_NOT_FOUND");
    let elsewhere = create_room(&alice, json!({}));
    event(&alice, &elsewhere, first).err(404, "M_NOT_FOUND");

    // State: set, read as content and as an event, list, replace.
    let set = alice.put(&format!("rooms/{r}/state/org.example.state/key1"), json!({ "a": 1 })).ok()["event_id"].clone();
    assert_eq!(state(&bob, &room, "org.example.state", "key1").ok(), json!({ "a": 1 }));
    let full = bob.get(&format!("rooms/{r}/state/org.example.state/key1?format=event")).ok();
    assert_eq!((full["type"].as_str(), full["state_key"].as_str()), (Some("org.example.state"), Some("key1")));
    assert_eq!((full["event_id"].clone(), full["content"].clone()), (set.clone(), json!({ "a": 1 })));
    assert_eq!(full["sender"], alice.user_id.as_str());
    let all = bob.get(&format!("rooms/{r}/state")).ok();
    let all = all.as_array().unwrap();
    assert!(all.iter().any(|e| e["type"] == "org.example.state" && e["state_key"] == "key1" && e["event_id"] == set));
    for kind in ["m.room.create", "m.room.power_levels", "m.room.join_rules"] {
        assert!(all.iter().any(|e| e["type"] == kind), "{kind} missing from the state");
    }
    let replaced =
        alice.put(&format!("rooms/{r}/state/org.example.state/key1"), json!({ "a": 2 })).ok()["event_id"].clone();
    let full = bob.get(&format!("rooms/{r}/state/org.example.state/key1?format=event")).ok();
    assert_eq!(full["event_id"], replaced);
    assert_eq!(full["unsigned"]["prev_content"], json!({ "a": 1 }));
    state(&bob, &room, "org.example.state", "nokey").err(404, "M_NOT_FOUND");
    state(&bob, &room, "m.room.topic", "").err(404, "M_NOT_FOUND");
    bob.put(&format!("rooms/{r}/state/m.room.name/"), json!({ "name": "Bob's" })).err(403, "M_FORBIDDEN");
    alice.put(&format!("rooms/{r}/state/org.example.state/key2"), json!(5)).err(400, "M_BAD_JSON");
    // The empty state key, with its trailing slash.
    alice.put(&format!("rooms/{r}/state/m.room.topic/"), json!({ "topic": "Topical" })).ok();
    assert_eq!(bob.get(&format!("rooms/{r}/state/m.room.topic/")).ok(), json!({ "topic": "Topical" }));

    // Redaction empties the target's content.
    let secret = say(&bob, &room, "my password is hunter2");
    let redaction = bob.put(&format!("rooms/{r}/redact/{}/{}", enc(&secret), txn()), json!({ "reason": "oops" })).ok();
    let redaction = redaction["event_id"].as_str().unwrap();
    let redacted = event(&alice, &room, &secret).ok();
    assert_eq!(redacted["content"], json!({}));
    let fetched = event(&alice, &room, redaction).ok();
    assert_eq!(fetched["type"], "m.room.redaction");
    assert_eq!(fetched["content"]["reason"], "oops");
    assert!(fetched["redacts"] == secret.as_str() || fetched["content"]["redacts"] == secret.as_str(), "{fetched}");
    // Moderators redact others' events.
    let rude = say(&bob, &room, "rude");
    alice.put(&format!("rooms/{r}/redact/{}/{}", enc(&rude), txn()), json!({})).ok();
    assert_eq!(event(&bob, &room, &rude).ok()["content"], json!({}));

    // /messages over a fresh room: m1 m2 m3 o1 m4 m5.
    let history_room = create_room(&alice, json!({ "preset": "public_chat" }));
    let h = &history_room;
    let ids: Vec<String> = ["m1", "m2", "m3"].iter().map(|b| say(&alice, h, b)).collect();
    let other =
        send_event(&alice, h, "org.example.other", json!({ "n": 1 })).ok()["event_id"].as_str().unwrap().to_owned();
    let ids: Vec<String> = ids.into_iter().chain(["m4", "m5"].iter().map(|b| say(&alice, h, b))).collect();
    let only_messages = filter(json!({ "types": ["m.room.message"] }));

    // Backwards in pages of two until there is no `end`.
    let (mut seen, mut from, mut pages) = (Vec::new(), None::<String>, Vec::new());
    for _ in 0..10 {
        let from_query = from.as_ref().map(|f| format!("&from={}", enc(f))).unwrap_or_default();
        let page = messages(&alice, h, &format!("dir=b&limit=2&filter={only_messages}{from_query}"));
        let chunk = bodies(&page["chunk"]);
        assert!(chunk.len() <= 2);
        assert!(page["start"].is_string());
        seen.extend(chunk.clone());
        pages.push((chunk, page["end"].as_str().map(str::to_owned)));
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["m5", "m4", "m3", "m2", "m1"], "{pages:?}");
    assert!(pages.last().unwrap().1.is_none(), "never ran out: {pages:?}");
    let (e1, e2) = (pages[0].1.clone().unwrap(), pages[1].1.clone().unwrap());
    // Forwards between two of those tokens: the events between them, in order.
    let between = messages(&alice, h, &format!("dir=f&from={}&to={}&filter={only_messages}", enc(&e2), enc(&e1)));
    assert_eq!(bodies(&between["chunk"]), ["m2", "m3"]);
    // Forwards from the room's start.
    let forwards = messages(&alice, h, &format!("dir=f&limit=10&filter={only_messages}"));
    assert_eq!(bodies(&forwards["chunk"]), ["m1", "m2", "m3", "m4", "m5"]);
    let unfiltered = messages(&alice, h, "dir=f&limit=100");
    assert_eq!(types(&unfiltered["chunk"])[0], "m.room.create");
    assert!(unfiltered["chunk"].as_array().unwrap().iter().any(|e| e["event_id"] == other.as_str()));
    let not_messages =
        messages(&alice, h, &format!("dir=b&limit=100&filter={}", filter(json!({ "not_types": ["m.room.message"] }))));
    let kinds = types(&not_messages["chunk"]);
    assert!(
        !kinds.iter().any(|k| k == "m.room.message") && kinds.contains(&"org.example.other".to_owned()),
        "{kinds:?}"
    );
    assert_eq!(kinds.last().unwrap(), "m.room.create");
    // Sync tokens work as `from`: prev_batch and next_batch.
    let synced = sync(&alice, &format!("filter={}", filter(json!({ "room": { "timeline": { "limit": 1 } } }))));
    let timeline = &synced["rooms"]["join"][h]["timeline"];
    assert_eq!(bodies(&timeline["events"]), ["m5"]);
    let prev_batch = timeline["prev_batch"].as_str().unwrap();
    assert_eq!(bodies(&messages(&alice, h, &format!("dir=b&limit=1&from={}", enc(prev_batch)))["chunk"]), ["m4"]);
    let next_batch = synced["next_batch"].as_str().unwrap();
    assert_eq!(bodies(&messages(&alice, h, &format!("dir=b&limit=1&from={}", enc(next_batch)))["chunk"]), ["m5"]);

    // /context around m2: one event each side, and tokens to go on from.
    let context = alice.get(&format!("rooms/{}/context/{}?limit=2", enc(h), enc(&ids[1]))).ok();
    assert_eq!(context["event"]["event_id"], ids[1].as_str());
    assert_eq!(event_ids(&context["events_before"]), [ids[0].clone()]);
    assert_eq!(event_ids(&context["events_after"]), [ids[2].clone()]);
    assert!(context["state"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str()));
    let start = context["start"].as_str().unwrap();
    let end = context["end"].as_str().unwrap();
    let before = messages(&alice, h, &format!("dir=b&limit=5&from={}&filter={only_messages}", enc(start)));
    assert_eq!(bodies(&before["chunk"]), Vec::<String>::new());
    let after = messages(&alice, h, &format!("dir=f&limit=1&from={}", enc(end)));
    assert_eq!(event_ids(&after["chunk"]), [other.as_str()]);
    // With a filter, around m3: two messages each side, newest first before it.
    let context = alice.get(&format!("rooms/{}/context/{}?limit=4&filter={only_messages}", enc(h), enc(&ids[2]))).ok();
    assert_eq!(bodies(&context["events_before"]), ["m2", "m1"]);
    assert_eq!(bodies(&context["events_after"]), ["m4", "m5"]);
    alice.get(&format!("rooms/{}/context/{}", enc(h), enc("$nope"))).err(404, "M_NOT_FOUND");

    // History visibility `joined`: nothing from before one joined.
    let joined_only = create_room(
        &alice,
        json!({ "preset": "public_chat", "initial_state": [
            { "type": "m.room.history_visibility", "content": { "history_visibility": "joined" } },
        ] }),
    );
    let early = say(&alice, &joined_only, "before carol");
    join(&carol, &joined_only);
    let late = say(&alice, &joined_only, "after carol");
    event(&carol, &joined_only, &early).err(404, "M_NOT_FOUND");
    assert_eq!(event(&carol, &joined_only, &late).ok()["content"]["body"], "after carol");
    assert_eq!(bodies(&messages(&carol, &joined_only, "dir=b&limit=50")["chunk"]), ["after carol"]);
    let context = carol.get(&format!("rooms/{}/context/{}?limit=10", enc(&joined_only), enc(&late))).ok();
    assert_eq!(bodies(&context["events_before"]), Vec::<String>::new());

    // The redaction is in the redacted event's unsigned data, as a client event.
    let redacted_because = event(&alice, &room, &secret).ok()["unsigned"]["redacted_because"].clone();
    assert_eq!(redacted_because["event_id"], redaction, "{redacted_because}");
    assert_eq!(redacted_because["type"], "m.room.redaction");
    for federation_key in ["auth_events", "prev_events", "hashes", "signatures", "depth"] {
        assert!(redacted_because.get(federation_key).is_none(), "{federation_key} in {redacted_because}");
    }

    // Only moderators redact other people's events.
    let keep = say(&alice, &room, "keep me");
    let attempt = bob.put(&format!("rooms/{r}/redact/{}/{}", enc(&keep), txn()), json!({}));
    attempt.err(403, "M_FORBIDDEN");
    assert_eq!(event(&alice, &room, &keep).ok()["content"]["body"], "keep me");

    // A transaction ID is scoped to the device and the request path: the same
    // one in another room, for another event type, or for a redaction is a new
    // request, not a retransmission.
    let reused = json!({ "msgtype": "m.text", "body": "elsewhere" });
    let elsewhere_event = alice.put(&format!("rooms/{}/send/m.room.message/same-txn", enc(&elsewhere)), reused).ok();
    assert_ne!(elsewhere_event["event_id"].as_str(), Some(first));
    assert_eq!(bodies(&messages(&alice, &elsewhere, "dir=b&limit=1")["chunk"]), ["elsewhere"]);
    let reaction = json!({ "m.relates_to": { "rel_type": "m.annotation", "event_id": first, "key": "👍" } });
    let reacted = alice.put(&format!("rooms/{r}/send/m.reaction/same-txn"), reaction).ok();
    assert_ne!(reacted["event_id"].as_str(), Some(first));
    let redacted = alice.put(&format!("rooms/{r}/redact/{}/same-txn", enc(first)), json!({})).ok();
    assert_ne!(redacted["event_id"].as_str(), Some(first));
    assert_eq!(event(&alice, &room, first).ok()["content"], json!({}));

    // The empty state key without the trailing slash, which the spec makes optional.
    alice.put(&format!("rooms/{r}/state/m.room.topic"), json!({ "topic": "No slash" })).ok();
    assert_eq!(bob.get(&format!("rooms/{r}/state/m.room.topic")).ok(), json!({ "topic": "No slash" }));
}

#[test]
fn sync_api() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let room = create_room(&alice, json!({ "preset": "public_chat", "name": "Sync room" }));
    join(&bob, &room);
    say(&alice, &room, "hello");

    // Initial sync: the room with its state and the latest of its timeline.
    let limit2 = format!("filter={}", filter(json!({ "room": { "timeline": { "limit": 2 } } })));
    let initial = sync(&bob, &limit2);
    let joined = &initial["rooms"]["join"][&room];
    let timeline = &joined["timeline"];
    assert_eq!(timeline["events"].as_array().unwrap().len(), 2);
    assert_eq!(bodies(&timeline["events"]), ["hello"]);
    assert_eq!(timeline["limited"], true);
    assert!(timeline["prev_batch"].is_string());
    let state_events = &joined["state"]["events"];
    let kinds = types(state_events);
    for kind in ["m.room.create", "m.room.name", "m.room.power_levels", "m.room.join_rules"] {
        assert!(kinds.contains(&kind.to_owned()), "{kind} not in the state: {kinds:?}");
    }
    let name = state_events.as_array().unwrap().iter().find(|e| e["type"] == "m.room.name").unwrap();
    assert_eq!(name["content"]["name"], "Sync room");
    assert_eq!(joined["summary"]["m.joined_member_count"], 2);
    let mut since = initial["next_batch"].as_str().unwrap().to_owned();

    // `since`: only what is new.
    say(&alice, &room, "new one");
    let next = sync(&bob, &format!("since={}", enc(&since)));
    let timeline = &next["rooms"]["join"][&room]["timeline"];
    assert_eq!(bodies(&timeline["events"]), ["new one"]);
    assert_eq!(timeline["events"].as_array().unwrap().len(), 1);
    assert_ne!(timeline["limited"], true);
    assert!(next["rooms"]["join"][&room]["state"]["events"].as_array().is_none_or(|e| e.is_empty()));
    since = next["next_batch"].as_str().unwrap().to_owned();

    // More than the limit: the latest, `limited`, and a prev_batch to page back
    // from; the state changed in the gap comes in `state`.
    alice.put(&format!("rooms/{}/state/m.room.topic/", enc(&room)), json!({ "topic": "Gap topic" })).ok();
    for body in ["a", "b", "c"] {
        say(&alice, &room, body);
    }
    let next = sync(&bob, &format!("since={}&{limit2}", enc(&since)));
    let timeline = &next["rooms"]["join"][&room]["timeline"];
    assert_eq!(bodies(&timeline["events"]), ["b", "c"]);
    assert_eq!(timeline["limited"], true);
    let gap_state = next["rooms"]["join"][&room]["state"]["events"].as_array().unwrap().clone();
    assert_eq!(types(&json!(gap_state)), ["m.room.topic"]);
    assert_eq!(gap_state[0]["content"]["topic"], "Gap topic");
    let prev_batch = timeline["prev_batch"].as_str().unwrap();
    assert_eq!(bodies(&messages(&bob, &room, &format!("dir=b&limit=1&from={}", enc(prev_batch)))["chunk"]), ["a"]);
    since = next["next_batch"].as_str().unwrap().to_owned();

    // A long-poll returns as soon as someone else sends.
    let (waiting, token) = (bob.clone(), since.clone());
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let response = sync(&waiting, &format!("since={}&timeout=20000", enc(&token)));
        (response, started.elapsed())
    });
    say(&alice, &room, "wake up");
    let (woken, waited) = poll.join().unwrap();
    assert_eq!(bodies(&woken["rooms"]["join"][&room]["timeline"]["events"]), ["wake up"]);
    assert!(waited < Duration::from_secs(20), "the long-poll waited {waited:?}");
    since = woken["next_batch"].as_str().unwrap().to_owned();

    // With nothing new it waits for the timeout and returns no rooms.
    let started = Instant::now();
    let quiet = sync(&bob, &format!("since={}&timeout=1500", enc(&since)));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1450), "returned after {waited:?}");
    for name in ["join", "invite", "leave"] {
        assert!(section(&quiet, name).is_empty(), "{quiet}");
    }
    since = quiet["next_batch"].as_str().unwrap().to_owned();

    // `full_state` gives the whole state even with `since`.
    let full = sync(&bob, &format!("since={}&full_state=true", enc(&since)));
    let kinds = types(&full["rooms"]["join"][&room]["state"]["events"]);
    assert!(kinds.contains(&"m.room.create".to_owned()), "{kinds:?}");

    // Invites show up with stripped state.
    let private = create_room(&alice, json!({ "preset": "private_chat", "name": "Invite only" }));
    alice.post(&format!("rooms/{}/invite", enc(&private)), json!({ "user_id": bob.user_id })).ok();
    let next = sync(&bob, &format!("since={}", enc(&since)));
    let invite = &next["rooms"]["invite"][&private]["invite_state"]["events"];
    let stripped = invite.as_array().expect("the invite in rooms.invite");
    let member =
        stripped.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()).unwrap();
    assert_eq!(member["content"]["membership"], "invite");
    assert_eq!(member["sender"], alice.user_id.as_str());
    let name = stripped.iter().find(|e| e["type"] == "m.room.name").unwrap();
    assert_eq!(name["content"]["name"], "Invite only");
    assert!(stripped.iter().any(|e| e["type"] == "m.room.create"));
    // And who asks: the inviter's own membership.
    let inviter = stripped.iter().find(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str());
    assert_eq!(inviter.expect("the inviter's membership")["content"]["membership"], "join");
    assert!(!section(&next, "join").contains_key(&private));
    since = next["next_batch"].as_str().unwrap().to_owned();

    // Joining moves it to rooms.join with its state.
    join(&bob, &private);
    let next = sync(&bob, &format!("since={}", enc(&since)));
    assert!(!section(&next, "invite").contains_key(&private));
    let joined = &next["rooms"]["join"][&private];
    let mut kinds = types(&joined["state"]["events"]);
    kinds.extend(types(&joined["timeline"]["events"]));
    assert!(kinds.contains(&"m.room.create".to_owned()) && kinds.contains(&"m.room.name".to_owned()), "{kinds:?}");
    since = next["next_batch"].as_str().unwrap().to_owned();

    // Leaving moves it to rooms.leave, the timeline ending with the leave.
    bob.post(&format!("rooms/{}/leave", enc(&private)), json!({})).ok();
    let next = sync(&bob, &format!("since={}", enc(&since)));
    assert!(!section(&next, "join").contains_key(&private));
    let left =
        next["rooms"]["leave"][&private]["timeline"]["events"].as_array().expect("the room in rooms.leave").clone();
    let last = left.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["state_key"].as_str()),
        (Some("m.room.member"), Some(bob.user_id.as_str()))
    );
    assert_eq!(last["content"]["membership"], "leave");
    since = next["next_batch"].as_str().unwrap().to_owned();

    // Account data, global and per room.
    let me = enc(&bob.user_id);
    bob.put(&format!("user/{me}/account_data/org.example.setting"), json!({ "theme": "dark" })).ok();
    bob.put(&format!("user/{me}/rooms/{}/account_data/org.example.room", enc(&room)), json!({ "pinned": true })).ok();
    let next = sync(&bob, &format!("since={}", enc(&since)));
    let global = next["account_data"]["events"].as_array().unwrap();
    assert!(
        global.iter().any(|e| e["type"] == "org.example.setting" && e["content"] == json!({ "theme": "dark" })),
        "{global:?}"
    );
    let per_room = next["rooms"]["join"][&room]["account_data"]["events"].as_array().unwrap();
    assert!(
        per_room.iter().any(|e| e["type"] == "org.example.room" && e["content"] == json!({ "pinned": true })),
        "{per_room:?}"
    );
    since = next["next_batch"].as_str().unwrap().to_owned();

    // Typing, as m.typing in the room's ephemeral events.
    let typing = format!("rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    alice.put(&typing, json!({ "typing": true, "timeout": 30000 })).ok();
    let next = sync(&bob, &format!("since={}", enc(&since)));
    let ephemeral = next["rooms"]["join"][&room]["ephemeral"]["events"].as_array().unwrap().clone();
    let typing_event = ephemeral.iter().find(|e| e["type"] == "m.typing").unwrap();
    assert_eq!(typing_event["content"]["user_ids"], json!([alice.user_id]));
    since = next["next_batch"].as_str().unwrap().to_owned();
    alice.put(&typing, json!({ "typing": false })).ok();
    let next = sync(&bob, &format!("since={}", enc(&since)));
    let ephemeral = next["rooms"]["join"][&room]["ephemeral"]["events"].as_array().unwrap().clone();
    let typing_event = ephemeral.iter().find(|e| e["type"] == "m.typing").unwrap();
    assert_eq!(typing_event["content"]["user_ids"], json!([]));
    since = next["next_batch"].as_str().unwrap().to_owned();

    // Receipts, as m.receipt; private ones only to their owner.
    let latest = say(&bob, &room, "read this");
    let next = sync(&bob, &format!("since={}", enc(&since)));
    since = next["next_batch"].as_str().unwrap().to_owned();
    alice.post(&format!("rooms/{}/receipt/m.read/{}", enc(&room), enc(&latest)), json!({})).ok();
    let next = sync(&bob, &format!("since={}", enc(&since)));
    let ephemeral = next["rooms"]["join"][&room]["ephemeral"]["events"].as_array().unwrap().clone();
    let receipt = ephemeral.iter().find(|e| e["type"] == "m.receipt").unwrap();
    assert!(receipt["content"][&latest]["m.read"][&alice.user_id]["ts"].is_u64(), "{receipt}");
    since = next["next_batch"].as_str().unwrap().to_owned();
    alice.post(&format!("rooms/{}/receipt/m.read.private/{}", enc(&room), enc(&latest)), json!({})).ok();
    let next = sync(&bob, &format!("since={}", enc(&since)));
    assert!(!next.to_string().contains("m.read.private"), "{next}");
    let own = sync(&alice, "");
    let ephemeral = own["rooms"]["join"][&room]["ephemeral"]["events"].as_array().unwrap().clone();
    let receipt = ephemeral.iter().find(|e| e["type"] == "m.receipt").unwrap();
    assert!(receipt["content"][&latest]["m.read.private"][&alice.user_id]["ts"].is_u64(), "{receipt}");

    // Unread notification counts in a room of two.
    alice.put(&format!("profile/{}/displayname", enc(&alice.user_id)), json!({ "displayname": "Alice Liddell" })).ok();
    let chat = create_room(&alice, json!({ "preset": "trusted_private_chat", "invite": [bob.user_id] }));
    join(&bob, &chat);
    say(&bob, &chat, "one");
    let two = say(&bob, &chat, "two");
    let counts = |sync: &Value| {
        let counts = &sync["rooms"]["join"][&chat]["unread_notifications"];
        (counts["notification_count"].as_u64(), counts["highlight_count"].as_u64())
    };
    let initial = sync(&alice, "");
    assert_eq!(counts(&initial), (Some(2), Some(0)));
    let mut since = initial["next_batch"].as_str().unwrap().to_owned();
    // A read receipt clears them; what comes after counts again.
    alice.post(&format!("rooms/{}/receipt/m.read/{}", enc(&chat), enc(&two)), json!({})).ok();
    say(&bob, &chat, "three");
    let next = sync(&alice, &format!("since={}", enc(&since)));
    assert_eq!(counts(&next), (Some(1), Some(0)));
    assert_eq!(counts(&sync(&alice, "")), (Some(1), Some(0)));
    since = next["next_batch"].as_str().unwrap().to_owned();
    // A mention highlights.
    let mention = json!({ "msgtype": "m.text", "body": "ping", "m.mentions": { "user_ids": [alice.user_id] } });
    send_event(&bob, &chat, "m.room.message", mention).ok();
    let next = sync(&alice, &format!("since={}", enc(&since)));
    assert_eq!(counts(&next), (Some(2), Some(1)));
    since = next["next_batch"].as_str().unwrap().to_owned();
    // Her own message reads the room.
    say(&alice, &chat, "I'm here");
    let next = sync(&alice, &format!("since={}", enc(&since)));
    assert_eq!(counts(&next), (Some(0), Some(0)));
    since = next["next_batch"].as_str().unwrap().to_owned();

    // A stored filter by its ID.
    let filter_id = alice
        .post(&format!("user/{}/filter", enc(&alice.user_id)), json!({ "room": { "timeline": { "limit": 1 } } }))
        .ok();
    let filter_id = filter_id["filter_id"].as_str().unwrap();
    let filtered = sync(&alice, &format!("filter={}", enc(filter_id)));
    let timeline = &filtered["rooms"]["join"][&chat]["timeline"];
    assert_eq!(bodies(&timeline["events"]), ["I'm here"]);
    assert_eq!(timeline["limited"], true);

    // History visibility `joined`: sync does not hand out what came before the join.
    let joined_only = create_room(
        &alice,
        json!({ "preset": "public_chat", "initial_state": [
            { "type": "m.room.history_visibility", "content": { "history_visibility": "joined" } },
        ] }),
    );
    say(&alice, &joined_only, "before bob");
    join(&bob, &joined_only);
    say(&alice, &joined_only, "after bob");
    let synced = sync(&bob, "");
    assert_eq!(bodies(&synced["rooms"]["join"][&joined_only]["timeline"]["events"]), ["after bob"]);

    // Nor does a rescinded invite (bob never joined) open a `shared` room's history.
    let private = create_room(&alice, json!({ "preset": "private_chat" }));
    say(&alice, &private, "not for bob");
    alice.post(&format!("rooms/{}/invite", enc(&private)), json!({ "user_id": bob.user_id })).ok();
    alice.post(&format!("rooms/{}/kick", enc(&private)), json!({ "user_id": bob.user_id })).ok();
    assert_eq!(bodies(&messages(&bob, &private, "dir=b&limit=50")["chunk"]), Vec::<String>::new());
    let include_leave = format!("filter={}", filter(json!({ "room": { "include_leave": true } })));
    let synced = sync(&bob, &include_leave);
    assert_eq!(bodies(&synced["rooms"]["leave"][&private]["timeline"]["events"]), Vec::<String>::new());

    // Her display name in a message highlights (the server-default rule
    // .m.rule.contains_display_name of the versions glia advertises, v1.1-v1.3).
    say(&bob, &chat, "hey Alice Liddell, look at this");
    let next = sync(&alice, &format!("since={}", enc(&since)));
    assert_eq!(counts(&next), (Some(1), Some(1)));
    since = next["next_batch"].as_str().unwrap().to_owned();
    // It follows her new name, and her push rules as they change.
    say(&alice, &chat, "seen");
    alice.put(&format!("profile/{}/displayname", enc(&alice.user_id)), json!({ "displayname": "Queen" })).ok();
    say(&bob, &chat, "Hello Queen");
    let next = sync(&alice, &format!("since={}", enc(&since)));
    assert_eq!(counts(&next), (Some(1), Some(1)));
    since = next["next_batch"].as_str().unwrap().to_owned();
    let master = "pushrules/global/override/.m.rule.master/enabled";
    alice.put(master, json!({ "enabled": true })).ok();
    say(&bob, &chat, "Queen, muted");
    let next = sync(&alice, &format!("since={}", enc(&since)));
    assert_eq!(counts(&next), (Some(1), Some(1)));
}

#[test]
fn ephemeral_account_data_and_push_rules() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let carol = register(addr, "carol");
    let server = server_name(&alice);
    let room = create_room(&alice, json!({ "preset": "public_chat" }));
    join(&bob, &room);
    let r = enc(&room);
    let first = say(&alice, &room, "hello");
    let (a, b) = (enc(&alice.user_id), enc(&bob.user_id));

    // Typing.
    assert_eq!(
        alice.put(&format!("rooms/{r}/typing/{a}"), json!({ "typing": true, "timeout": 10000 })).ok(),
        json!({})
    );
    alice.put(&format!("rooms/{r}/typing/{b}"), json!({ "typing": true, "timeout": 10000 })).err(403, "M_FORBIDDEN");
    let c = enc(&carol.user_id);
    carol.put(&format!("rooms/{r}/typing/{c}"), json!({ "typing": true, "timeout": 10000 })).err(403, "M_FORBIDDEN");
    assert_eq!(alice.put(&format!("rooms/{r}/typing/{a}"), json!({ "typing": false })).ok(), json!({}));

    // Receipts: public, private, and the fully-read marker as room account data.
    let receipt = |client: &Client, kind: &str, event: &str| {
        client.post(&format!("rooms/{r}/receipt/{kind}/{}", enc(event)), json!({}))
    };
    assert_eq!(receipt(&bob, "m.read", &first).ok(), json!({}));
    assert_eq!(receipt(&bob, "m.read.private", &first).ok(), json!({}));
    assert_eq!(receipt(&bob, "m.fully_read", &first).ok(), json!({}));
    let fully_read = format!("user/{b}/rooms/{r}/account_data/m.fully_read");
    assert_eq!(bob.get(&fully_read).ok(), json!({ "event_id": first }));
    receipt(&carol, "m.read", &first).err(403, "M_FORBIDDEN");

    // Read markers: the fully-read marker and a read receipt at once.
    let second = say(&alice, &room, "second");
    let markers = json!({ "m.fully_read": second, "m.read": second });
    assert_eq!(bob.post(&format!("rooms/{r}/read_markers"), markers).ok(), json!({}));
    assert_eq!(bob.get(&fully_read).ok(), json!({ "event_id": second }));
    let synced = sync(&alice, "");
    let ephemeral = synced["rooms"]["join"][&room]["ephemeral"]["events"].as_array().unwrap().clone();
    let receipts = ephemeral.iter().find(|e| e["type"] == "m.receipt").unwrap();
    assert!(receipts["content"][&second]["m.read"][&bob.user_id]["ts"].is_u64(), "{receipts}");
    assert!(!receipts.to_string().contains("m.read.private"), "{receipts}");
    let own = sync(&bob, "");
    let room_data = own["rooms"]["join"][&room]["account_data"]["events"].as_array().unwrap().clone();
    let marker = room_data.iter().find(|e| e["type"] == "m.fully_read").unwrap();
    assert_eq!(marker["content"]["event_id"], second.as_str());

    // Presence.
    let presence = format!("presence/{a}/status");
    assert_eq!(alice.put(&presence, json!({ "presence": "online", "status_msg": "Busy" })).ok(), json!({}));
    let seen = bob.get(&presence).ok();
    assert_eq!((seen["presence"].as_str(), seen["status_msg"].as_str()), (Some("online"), Some("Busy")));
    assert!(seen["last_active_ago"].is_u64(), "{seen}");
    alice.put(&presence, json!({ "presence": "unavailable" })).ok();
    assert_eq!(bob.get(&presence).ok()["presence"], "unavailable");
    // Sync hands it to those who share a room.
    let synced = sync(&bob, "");
    let events = synced["presence"]["events"].as_array().unwrap().clone();
    let of_alice = events.iter().find(|e| e["type"] == "m.presence" && e["sender"] == alice.user_id.as_str()).unwrap();
    assert_eq!(of_alice["content"]["presence"], "unavailable");
    alice.put(&format!("presence/{b}/status"), json!({ "presence": "offline" })).err(403, "M_FORBIDDEN");
    bob.get(&format!("presence/{}/status", enc(&format!("@ghost:{server}")))).err(404, "M_NOT_FOUND");

    // Account data, global and per room, each the user's own.
    let global = format!("user/{a}/account_data/org.example.a");
    assert_eq!(alice.put(&global, json!({ "x": 1 })).ok(), json!({}));
    assert_eq!(alice.get(&global).ok(), json!({ "x": 1 }));
    alice.put(&global, json!({ "x": 2 })).ok();
    assert_eq!(alice.get(&global).ok(), json!({ "x": 2 }));
    alice.get(&format!("user/{a}/account_data/org.example.none")).err(404, "M_NOT_FOUND");
    bob.get(&global).err(403, "M_FORBIDDEN");
    bob.put(&global, json!({ "x": 3 })).err(403, "M_FORBIDDEN");
    alice.put(&global, json!([1])).err(400, "M_BAD_JSON");
    let per_room = format!("user/{a}/rooms/{r}/account_data/org.example.r");
    assert_eq!(alice.put(&per_room, json!({ "y": 2 })).ok(), json!({}));
    assert_eq!(alice.get(&per_room).ok(), json!({ "y": 2 }));
    bob.get(&per_room).err(403, "M_FORBIDDEN");
    // No inheritance between the two.
    alice.get(&format!("user/{a}/account_data/org.example.r")).err(404, "M_NOT_FOUND");
    alice.get(&format!("user/{a}/rooms/{r}/account_data/org.example.a")).err(404, "M_NOT_FOUND");
    alice.get(&format!("user/{a}/rooms/not-a-room/account_data/org.example.r")).err(400, "M_INVALID_PARAM");

    // Push rules: the server defaults.
    let all = alice.get("pushrules/").ok();
    let global_rules = &all["global"];
    let master =
        global_rules["override"].as_array().unwrap().iter().find(|r| r["rule_id"] == ".m.rule.master").unwrap();
    assert_eq!((master["enabled"].as_bool(), master["default"].as_bool()), (Some(false), Some(true)));
    assert!(global_rules["underride"].as_array().unwrap().iter().any(|r| r["rule_id"] == ".m.rule.message"));
    assert_eq!(alice.get("pushrules/global/").ok(), *global_rules);
    // A rule of the user's own: set, read, enable, change actions, delete.
    let rule = "pushrules/global/content/cake";
    assert_eq!(alice.put(rule, json!({ "pattern": "cake*lie", "actions": ["notify"] })).ok(), json!({}));
    let got = alice.get(rule).ok();
    assert_eq!(got["rule_id"], "cake");
    assert_eq!(got["pattern"], "cake*lie");
    assert_eq!(got["actions"], json!(["notify"]));
    assert_eq!((got["enabled"].as_bool(), got["default"].as_bool()), (Some(true), Some(false)));
    let content_rules = alice.get("pushrules/").ok()["global"]["content"].clone();
    assert!(content_rules.as_array().unwrap().iter().any(|r| r["rule_id"] == "cake"));
    assert_eq!(alice.get(&format!("{rule}/enabled")).ok(), json!({ "enabled": true }));
    assert_eq!(alice.put(&format!("{rule}/enabled"), json!({ "enabled": false })).ok(), json!({}));
    assert_eq!(alice.get(&format!("{rule}/enabled")).ok(), json!({ "enabled": false }));
    assert_eq!(alice.get(&format!("{rule}/actions")).ok(), json!({ "actions": ["notify"] }));
    let actions = json!(["notify", { "set_tweak": "sound", "value": "default" }]);
    assert_eq!(alice.put(&format!("{rule}/actions"), json!({ "actions": actions })).ok(), json!({}));
    assert_eq!(alice.get(&format!("{rule}/actions")).ok(), json!({ "actions": actions }));
    bob.get(rule).err(404, "M_NOT_FOUND");
    // Rules kept as m.push_rules account data, which sync hands out.
    let synced = sync(&alice, "");
    let rules = synced["account_data"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.push_rules")
        .unwrap()
        .clone();
    assert!(rules["content"]["global"]["content"].as_array().unwrap().iter().any(|r| r["rule_id"] == "cake"));
    assert_eq!(alice.delete(rule).ok(), json!({}));
    alice.get(rule).err(404, "M_NOT_FOUND");
    alice.delete(rule).err(404, "M_NOT_FOUND");
    alice.get(&format!("{rule}/enabled")).err(404, "M_NOT_FOUND");
    alice.put(&format!("{rule}/actions"), json!({ "actions": [] })).err(404, "M_NOT_FOUND");
    // Server defaults: their switch and actions change, they cannot be deleted.
    let master = "pushrules/global/override/.m.rule.master";
    alice.put(&format!("{master}/enabled"), json!({ "enabled": true })).ok();
    assert_eq!(alice.get(&format!("{master}/enabled")).ok(), json!({ "enabled": true }));
    alice.put(&format!("{master}/enabled"), json!({ "enabled": false })).ok();
    let refused = alice.delete(master);
    assert!((400..500).contains(&refused.status) && refused.json()["errcode"].is_string(), "{}", refused.text());
    assert_eq!(alice.get(master).ok()["rule_id"], ".m.rule.master");
    // Rule IDs starting with a dot are the server's; `before` must name a rule.
    assert_eq!(alice.put("pushrules/global/content/.mine", json!({ "pattern": "x", "actions": [] })).status, 400);
    let room_rule = format!("pushrules/global/room/{r}?before=nosuchrule");
    alice.put(&room_rule, json!({ "actions": ["notify"] })).err(404, "M_NOT_FOUND");
    alice.get("pushrules/global/override/nosuchrule").err(404, "M_NOT_FOUND");

    // Filters: stored per user, readable only by them.
    let definition = json!({
        "room": { "timeline": { "limit": 5, "types": ["m.room.message"] } },
        "presence": { "not_types": ["*"] },
    });
    let created = alice.post(&format!("user/{a}/filter"), definition.clone()).ok();
    let filter_id = created["filter_id"].as_str().unwrap();
    let stored = alice.get(&format!("user/{a}/filter/{}", enc(filter_id))).ok();
    assert_eq!(stored["room"]["timeline"], definition["room"]["timeline"]);
    assert_eq!(stored["presence"]["not_types"], json!(["*"]));
    bob.get(&format!("user/{a}/filter/{}", enc(filter_id))).err(403, "M_FORBIDDEN");
    bob.post(&format!("user/{a}/filter"), json!({})).err(403, "M_FORBIDDEN");
    alice.get(&format!("user/{a}/filter/999999")).err(404, "M_NOT_FOUND");

    // Values outside the spec's enums are refused, not stored for others to read.
    let dancing = alice.put(&format!("presence/{a}/status"), json!({ "presence": "dancing" }));
    assert_eq!(dancing.status, 400, "{}", dancing.text());
    assert_eq!(bob.get(&format!("presence/{a}/status")).ok()["presence"], "unavailable");
    let bogus = bob.post(&format!("rooms/{r}/receipt/m.bogus/{}", enc(&first)), json!({}));
    assert_eq!(bogus.status, 400, "{}", bogus.text());

    // Server-managed account data is refused through the generic endpoints
    // (spec: 405 M_BAD_JSON).
    alice.put(&format!("user/{a}/account_data/m.push_rules"), json!({ "global": {} })).err(405, "M_BAD_JSON");
    alice
        .put(&format!("user/{a}/rooms/{r}/account_data/m.fully_read"), json!({ "event_id": first }))
        .err(405, "M_BAD_JSON");
}

/// Device keys as a client uploads them for its own device; the node checks
/// their shape and that the device's ed25519 key signed them, not the signature.
fn device_keys(client: &Client) -> Value {
    let (user, device) = (&client.user_id, &client.device_id);
    json!({
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): "curve", format!("ed25519:{device}"): "ed" },
        "signatures": { user: { format!("ed25519:{device}"): "signature" } },
    })
}

/// A signed curve25519 key as a client uploads it.
fn signed_key(client: &Client, key: &str) -> Value {
    json!({ "key": key, "signatures": { &client.user_id: { format!("ed25519:{}", client.device_id): "sig" } } })
}

/// Claims one `signed_curve25519` key of `owner`'s device and returns its ID, if any.
#[track_caller]
fn claim(client: &Client, owner: &Client) -> Option<String> {
    let body = json!({ "one_time_keys": { &owner.user_id: { &owner.device_id: "signed_curve25519" } } });
    let claimed = client.post("keys/claim", body).ok();
    // Always there, empty or not: Hydrogen reads it without looking.
    assert!(claimed["failures"].is_object(), "{claimed}");
    let keys = claimed["one_time_keys"][&owner.user_id][&owner.device_id].as_object().cloned().unwrap_or_default();
    assert!(keys.len() <= 1, "one key per device: {claimed}");
    keys.keys().next().cloned()
}

fn changed(sync: &Value) -> Vec<String> {
    let changed = sync["device_lists"]["changed"].as_array().cloned().unwrap_or_default();
    changed.iter().map(|user| user.as_str().unwrap().to_owned()).collect()
}

#[test]
fn end_to_end_encryption_keys() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let carol = register(addr, "carol");
    let room = create_room(&alice, json!({ "preset": "public_chat" }));
    join(&bob, &room);
    let initial = sync(&bob, "");
    assert_eq!(initial["device_one_time_keys_count"], json!({ "signed_curve25519": 0 }));
    assert_eq!(initial["device_unused_fallback_key_types"], json!([]));
    let since = initial["next_batch"].as_str().unwrap().to_owned();

    // Only the session's own device's keys, signed by its ed25519 key.
    alice.post("keys/upload", json!({ "device_keys": device_keys(&bob) })).err(400, "M_INVALID_PARAM");
    let mut unsigned = device_keys(&alice);
    unsigned["signatures"] = json!({});
    alice.post("keys/upload", json!({ "device_keys": unsigned })).err(400, "M_INVALID_PARAM");
    alice.post("keys/upload", json!({ "device_keys": { "user_id": 5 } })).err(400, "M_BAD_JSON");
    alice.raw("POST", "keys/upload", b"{").err(400, "M_NOT_JSON");
    let mut bogus = alice.clone();
    bogus.token = Some("nope".into());
    bogus.post("keys/upload", json!({})).err(401, "M_UNKNOWN_TOKEN");
    bogus.post("keys/query", json!({ "device_keys": {} })).err(401, "M_UNKNOWN_TOKEN");

    let upload = json!({
        "device_keys": device_keys(&alice),
        "one_time_keys": {
            "signed_curve25519:AAAA": signed_key(&alice, "one"),
            "signed_curve25519:AAAB": signed_key(&alice, "two"),
        },
        "fallback_keys": { "signed_curve25519:FFFF": signed_key(&alice, "fallback") },
    });
    let counts = alice.post("keys/upload", upload.clone()).ok();
    assert_eq!(counts["one_time_key_counts"], json!({ "signed_curve25519": 2 }));
    // The same keys again are no new keys; another key under a known ID is refused.
    assert_eq!(alice.post("keys/upload", upload).ok()["one_time_key_counts"]["signed_curve25519"], 2);
    let clash = json!({ "one_time_keys": { "signed_curve25519:AAAA": signed_key(&alice, "other") } });
    alice.post("keys/upload", clash).err(400, "M_BAD_JSON");
    let synced = sync(&alice, "");
    assert_eq!(synced["device_one_time_keys_count"]["signed_curve25519"], 2);
    assert_eq!(synced["device_unused_fallback_key_types"], json!(["signed_curve25519"]));

    // Bob shares a room with Alice: her new keys show in his sync and in /keys/changes.
    let next = sync(&bob, &format!("since={since}&timeout=0"));
    assert_eq!(changed(&next), [alice.user_id.as_str()]);
    let now = next["next_batch"].as_str().unwrap();
    let changes = bob.get(&format!("keys/changes?from={since}&to={now}")).ok();
    assert_eq!(changes["changed"], json!([alice.user_id]));
    bob.get(&format!("keys/changes?from=nonsense&to={now}")).err(400, "M_INVALID_PARAM");

    // /keys/query: all of a user's devices, named ones, and other servers' users as failures.
    let query = json!({ "device_keys": { &alice.user_id: [], "@someone:example.org": [] } });
    let keys = bob.post("keys/query", query).ok();
    assert_eq!(keys["device_keys"][&alice.user_id][&alice.device_id], device_keys(&alice));
    assert!(keys["failures"]["example.org"].is_object(), "{keys}");
    let query = json!({ "device_keys": { &alice.user_id: ["NOSUCHDEVICE"], &carol.user_id: [] } });
    let keys = bob.post("keys/query", query).ok();
    assert_eq!(keys["device_keys"], json!({ &alice.user_id: {}, &carol.user_id: {} }));
    bob.put(&format!("devices/{}", bob.device_id), json!({ "display_name": "Bob's phone" })).ok();
    bob.post("keys/upload", json!({ "device_keys": device_keys(&bob) })).ok();
    let keys = alice.post("keys/query", json!({ "device_keys": { &bob.user_id: [&bob.device_id] } })).ok();
    let keys = &keys["device_keys"][&bob.user_id][&bob.device_id];
    assert_eq!(keys["unsigned"]["device_display_name"], "Bob's phone");
    assert_eq!(keys["signatures"], device_keys(&bob)["signatures"]);

    // Each one-time key is handed out once, then the fallback key, marked used.
    let first = claim(&bob, &alice).expect("a one-time key");
    let second = claim(&carol, &alice).expect("another one-time key");
    let mut both = [first, second];
    both.sort();
    assert_eq!(both, ["signed_curve25519:AAAA", "signed_curve25519:AAAB"]);
    assert_eq!(claim(&bob, &alice).as_deref(), Some("signed_curve25519:FFFF"));
    assert_eq!(claim(&carol, &alice).as_deref(), Some("signed_curve25519:FFFF"));
    assert_eq!(claim(&bob, &carol), None);
    let remote = json!({ "one_time_keys": { "@someone:example.org": { "DEVICE": "signed_curve25519" } } });
    assert!(bob.post("keys/claim", remote).ok()["failures"]["example.org"].is_object());
    let synced = sync(&alice, "");
    assert_eq!(synced["device_one_time_keys_count"], json!({ "signed_curve25519": 0 }));
    assert_eq!(synced["device_unused_fallback_key_types"], json!([]));
    let fresh = json!({ "fallback_keys": { "signed_curve25519:FFFG": signed_key(&alice, "fallbac2") } });
    alice.post("keys/upload", fresh).ok();
    assert_eq!(sync(&alice, "")["device_unused_fallback_key_types"], json!(["signed_curve25519"]));

    // Carol shares no room with Bob: her keys are none of his business.
    let since = sync(&bob, "")["next_batch"].as_str().unwrap().to_owned();
    carol.post("keys/upload", json!({ "device_keys": device_keys(&carol) })).ok();
    assert_eq!(changed(&sync(&bob, &format!("since={since}&timeout=0"))), Vec::<String>::new());

    // Alice's second device and its deletion show in Bob's device list changes,
    // and its keys go with it.
    let alice2 = login_client(addr, "alice");
    alice2.post("keys/upload", json!({ "device_keys": device_keys(&alice2) })).ok();
    let next = sync(&bob, &format!("since={since}&timeout=0"));
    assert_eq!(changed(&next), [alice.user_id.as_str()]);
    let since = next["next_batch"].as_str().unwrap().to_owned();
    alice2.post("logout", json!({})).ok();
    assert_eq!(changed(&sync(&bob, &format!("since={since}&timeout=0"))), [alice.user_id.as_str()]);
    let keys = bob.post("keys/query", json!({ "device_keys": { &alice.user_id: [] } })).ok();
    let devices: Vec<&String> = keys["device_keys"][&alice.user_id].as_object().unwrap().keys().collect();
    assert_eq!(devices, [&alice.device_id]);

    // Carol joining a room with Bob makes her devices his business; leaving
    // the only room they share, no longer.
    let since = sync(&bob, "")["next_batch"].as_str().unwrap().to_owned();
    join(&carol, &room);
    let next = sync(&bob, &format!("since={since}&timeout=0"));
    assert_eq!(changed(&next), [carol.user_id.as_str()]);
    let joined = next["next_batch"].as_str().unwrap().to_owned();
    carol.post(&format!("rooms/{}/leave", enc(&room)), json!({})).ok();
    let next = sync(&bob, &format!("since={joined}&timeout=0"));
    assert_eq!(next["device_lists"]["left"], json!([carol.user_id]));
    assert_eq!(changed(&next), Vec::<String>::new());
    let now = next["next_batch"].as_str().unwrap();
    let changes = bob.get(&format!("keys/changes?from={joined}&to={now}")).ok();
    assert_eq!(changes, json!({ "changed": [], "left": [carol.user_id] }));
    // Joined and gone again between two positions: nothing to tell.
    let changes = bob.get(&format!("keys/changes?from={since}&to={now}")).ok();
    assert_eq!(changes, json!({ "changed": [], "left": [] }));
}

/// A cross-signing key of `client`'s for `usage`, signed by their master key
/// (except the master key itself); the node checks the shape only.
fn cross_signing_key(client: &Client, usage: &str, name: &str) -> Value {
    let mut key = json!({ "user_id": client.user_id, "usage": [usage], "keys": { format!("ed25519:{name}"): name } });
    if usage != "master" {
        key["signatures"] = json!({ &client.user_id: { "ed25519:master": "by-master" } });
    }
    key
}

#[test]
fn cross_signing_keys_and_signatures() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let room = create_room(&alice, json!({ "preset": "public_chat" }));
    join(&bob, &room);
    alice.post("keys/upload", json!({ "device_keys": device_keys(&alice) })).ok();
    let since = sync(&bob, "")["next_batch"].as_str().unwrap().to_owned();

    // Bad keys change nothing.
    let master = cross_signing_key(&alice, "master", "master");
    let wrong_user = json!({ "master_key": cross_signing_key(&bob, "master", "master") });
    alice.post("keys/device_signing/upload", wrong_user).err(400, "M_INVALID_PARAM");
    let wrong_usage = json!({ "master_key": cross_signing_key(&alice, "self_signing", "master") });
    alice.post("keys/device_signing/upload", wrong_usage).err(400, "M_INVALID_PARAM");
    let unsigned = json!({ "master_key": master, "self_signing_key": cross_signing_key(&alice, "master", "x") });
    alice.post("keys/device_signing/upload", unsigned).err(400, "M_INVALID_PARAM");
    let mut not_by_master = cross_signing_key(&alice, "self_signing", "self");
    not_by_master["signatures"] = json!({ &alice.user_id: { "ed25519:other": "sig" } });
    let body = json!({ "master_key": master, "self_signing_key": not_by_master });
    alice.post("keys/device_signing/upload", body).err(400, "M_INVALID_PARAM");
    alice.post("keys/device_signing/upload", json!({ "master_key": { "user_id": 1 } })).err(400, "M_BAD_JSON");
    let orphan = json!({ "self_signing_key": cross_signing_key(&alice, "self_signing", "self") });
    alice.post("keys/device_signing/upload", orphan).err(400, "M_INVALID_PARAM");
    let keys = bob.post("keys/query", json!({ "device_keys": { &alice.user_id: [] } })).ok();
    assert!(keys["master_keys"].as_object().is_none_or(|k| k.is_empty()), "{keys}");

    // The first keys need no password (spec 1.11), and sending them again is
    // a retry, not a change; new keys then need the password.
    let keys = json!({
        "master_key": master,
        "self_signing_key": cross_signing_key(&alice, "self_signing", "self"),
        "user_signing_key": cross_signing_key(&alice, "user_signing", "user"),
    });
    alice.post("keys/device_signing/upload", keys.clone()).ok();
    alice.post("keys/device_signing/upload", keys.clone()).ok();
    let replaced = json!({ "self_signing_key": cross_signing_key(&alice, "self_signing", "self2") });
    let challenge = alice.post("keys/device_signing/upload", replaced.clone());
    password_challenge(&challenge);
    with_password(&alice, "POST", "keys/device_signing/upload", replaced.clone()).ok();

    // Bob sees Alice's master and self-signing keys, and that they changed;
    // only Alice sees her user-signing key.
    let next = sync(&bob, &format!("since={since}&timeout=0"));
    assert_eq!(changed(&next), [alice.user_id.as_str()]);
    let query = json!({ "device_keys": { &alice.user_id: [] } });
    let seen = bob.post("keys/query", query.clone()).ok();
    assert_eq!(seen["master_keys"][&alice.user_id], master);
    assert_eq!(seen["self_signing_keys"][&alice.user_id], replaced["self_signing_key"]);
    assert!(seen["user_signing_keys"].as_object().is_none_or(|k| k.is_empty()), "{seen}");
    let own = alice.post("keys/query", query).ok();
    assert_eq!(own["user_signing_keys"][&alice.user_id], keys["user_signing_key"]);

    // Alice signs her device with her self-signing key: everyone sees it.
    let mut signed = device_keys(&alice);
    signed["signatures"][&alice.user_id] = json!({ "ed25519:self2": "self-signed" });
    let answer = alice.post("keys/signatures/upload", json!({ &alice.user_id: { &alice.device_id: signed } })).ok();
    assert!(answer["failures"].as_object().is_none_or(|f| f.is_empty()), "{answer}");
    let seen = bob.post("keys/query", json!({ "device_keys": { &alice.user_id: [&alice.device_id] } })).ok();
    let signatures = &seen["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id];
    assert_eq!(signatures["ed25519:self2"], "self-signed", "{seen}");
    assert_eq!(signatures[format!("ed25519:{}", alice.device_id)], "signature", "the device's own signature stays");

    // Refused, each with its reason: another object than the key, no
    // signatures of the uploader's, a key that does not exist.
    let mut forged = device_keys(&alice);
    forged["keys"][format!("ed25519:{}", alice.device_id)] = json!("another key");
    forged["signatures"][&alice.user_id] = json!({ "ed25519:self2": "sig" });
    let unsigned = device_keys(&bob);
    let body = json!({
        &alice.user_id: { &alice.device_id: forged, "NOSUCHKEY": signed },
        &bob.user_id: { &bob.device_id: unsigned },
    });
    let answer = alice.post("keys/signatures/upload", body).ok();
    for (user, key) in
        [(&alice.user_id, &alice.device_id), (&alice.user_id, &"NOSUCHKEY".to_owned()), (&bob.user_id, &bob.device_id)]
    {
        assert_eq!(answer["failures"][user][key]["errcode"], "M_INVALID_SIGNATURE", "{user} {key}: {answer}");
    }
    let seen = bob.post("keys/query", json!({ "device_keys": { &alice.user_id: [&alice.device_id] } })).ok();
    let stored = &seen["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(stored["keys"], device_keys(&alice)["keys"], "a refused signature changes nothing");

    // Bob signs Alice's master key with his user-signing key: only he sees it.
    let bob_keys = json!({
        "master_key": cross_signing_key(&bob, "master", "master"),
        "user_signing_key": cross_signing_key(&bob, "user_signing", "bobuser"),
    });
    bob.post("keys/device_signing/upload", bob_keys).ok();
    let mut vouched = master.clone();
    vouched["signatures"] = json!({ &bob.user_id: { "ed25519:bobuser": "bob vouches" } });
    let answer = bob.post("keys/signatures/upload", json!({ &alice.user_id: { "master": vouched } })).ok();
    assert!(answer["failures"].as_object().is_none_or(|f| f.is_empty()), "{answer}");
    let query = json!({ "device_keys": { &alice.user_id: [] } });
    let seen = bob.post("keys/query", query.clone()).ok();
    assert_eq!(seen["master_keys"][&alice.user_id]["signatures"][&bob.user_id]["ed25519:bobuser"], "bob vouches");
    let own = alice.post("keys/query", query).ok();
    assert_eq!(own["master_keys"][&alice.user_id], master, "{own}");
}

/// A backed-up session key as a client uploads it (the server reads only the
/// three fields it ranks keys by).
fn backed_up(first_message_index: u64, forwarded_count: u64, is_verified: bool, data: &str) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": { "ephemeral": data, "ciphertext": data, "mac": data },
    })
}

#[test]
fn key_backup() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let algorithm = json!({
        "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
        "auth_data": { "public_key": "abcdefg", "signatures": {} },
    });
    let (room, other_room) = ("!room:example.org", "!other:example.org");

    alice.get("room_keys/version").err(404, "M_NOT_FOUND");
    alice.post("room_keys/version", json!({ "algorithm": 5 })).err(400, "M_BAD_JSON");
    alice.raw("POST", "room_keys/version", b"{").err(400, "M_NOT_JSON");
    let first = alice.post("room_keys/version", algorithm.clone()).ok()["version"].as_str().unwrap().to_owned();
    let info = alice.get("room_keys/version").ok();
    assert_eq!(info["version"], first.as_str());
    assert_eq!(info["algorithm"], algorithm["algorithm"]);
    assert_eq!(info["auth_data"], algorithm["auth_data"]);
    assert_eq!(info["count"], 0);
    bob.get("room_keys/version").err(404, "M_NOT_FOUND");
    bob.get(&format!("room_keys/version/{first}")).err(404, "M_NOT_FOUND");

    // Keys go into the current version, by session, by room, or all at once.
    let path = |rest: &str, version: &str| format!("room_keys/keys{rest}?version={version}");
    let put = alice.put(&path(&format!("/{}/s1", enc(room)), &first), backed_up(5, 1, false, "a"));
    let one = put.ok();
    assert_eq!(one["count"], 1);
    let sessions = json!({ "sessions": { "s2": backed_up(0, 0, false, "b") } });
    let two = alice.put(&path(&format!("/{}", enc(room)), &first), sessions).ok();
    assert_eq!(two["count"], 2);
    assert_ne!(two["etag"], one["etag"], "the etag moves with the keys");
    let rooms = json!({ "rooms": { other_room: { "sessions": { "s3": backed_up(0, 0, true, "c") } } } });
    assert_eq!(alice.put(&path("", &first), rooms).ok()["count"], 3);
    alice
        .put(&path("", &first), json!({ "rooms": { room: { "sessions": { "s4": { "first_message_index": "x" } } } } }))
        .err(400, "M_INVALID_PARAM");
    alice.put(&path("", "nonsense"), json!({ "rooms": {} })).err(404, "M_NOT_FOUND");
    alice.put(&path("", "99"), json!({ "rooms": {} })).err(404, "M_NOT_FOUND");

    // A stored key gives way only to a better one: verified, then an earlier
    // first message, then fewer forwards.
    let session = path(&format!("/{}/s1", enc(room)), &first);
    let etag = alice.get("room_keys/version").ok()["etag"].clone();
    for worse in [backed_up(6, 0, false, "worse"), backed_up(5, 2, false, "worse"), backed_up(5, 1, false, "same")] {
        alice.put(&session, worse).ok();
    }
    assert_eq!(alice.get(&session).ok()["session_data"]["ciphertext"], "a");
    assert_eq!(alice.get("room_keys/version").ok()["etag"], etag, "no change, no new etag");
    for (better, data) in [
        (backed_up(5, 0, false, "fewer"), "fewer"),
        (backed_up(4, 9, false, "earlier"), "earlier"),
        (backed_up(9, 9, true, "verified"), "verified"),
    ] {
        alice.put(&session, better).ok();
        assert_eq!(alice.get(&session).ok()["session_data"]["ciphertext"], data);
    }

    // Reading back: all, by room (none is no error), by session.
    let all = alice.get(&path("", &first)).ok();
    let mut found: Vec<String> = all["rooms"][room]["sessions"].as_object().unwrap().keys().cloned().collect();
    found.extend(all["rooms"][other_room]["sessions"].as_object().unwrap().keys().cloned());
    assert_eq!(found, ["s1", "s2", "s3"]);
    assert_eq!(alice.get(&path(&format!("/{}", enc("!none:example.org")), &first)).ok()["sessions"], json!({}));
    alice.get(&path(&format!("/{}/nosuch", enc(room)), &first)).err(404, "M_NOT_FOUND");
    bob.get(&path("", &first)).err(404, "M_NOT_FOUND");

    // A new version becomes current: the old one takes no more keys.
    let second = alice.post("room_keys/version", algorithm.clone()).ok()["version"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(alice.get("room_keys/version").ok()["version"], second.as_str());
    let stale = alice.put(&path(&format!("/{}/s5", enc(room)), &first), backed_up(0, 0, false, "d"));
    assert_eq!(stale.err(403, "M_WRONG_ROOM_KEYS_VERSION")["current_version"], second.as_str());
    assert_eq!(alice.get(&format!("room_keys/version/{first}")).ok()["count"], 3, "the old keys stay readable");

    // Updating: new auth data, the same algorithm, this version.
    let mut updated = algorithm.clone();
    updated["auth_data"]["public_key"] = json!("hijklmn");
    alice.put(&format!("room_keys/version/{second}"), updated.clone()).ok();
    assert_eq!(alice.get("room_keys/version").ok()["auth_data"]["public_key"], "hijklmn");
    let mut other_algorithm = updated.clone();
    other_algorithm["algorithm"] = json!("m.other");
    alice.put(&format!("room_keys/version/{second}"), other_algorithm).err(400, "M_INVALID_PARAM");
    let mut other_version = updated.clone();
    other_version["version"] = json!(first);
    alice.put(&format!("room_keys/version/{second}"), other_version).err(400, "M_INVALID_PARAM");
    alice.put("room_keys/version/99", updated).err(404, "M_NOT_FOUND");

    // Deleting keys, then versions: counts and etags follow; numbers are not reused.
    let deleted = alice.delete(&path(&format!("/{}/s2", enc(room)), &first)).ok();
    assert_eq!(deleted["count"], 2);
    assert_eq!(alice.delete(&path(&format!("/{}", enc(room)), &first)).ok()["count"], 1);
    assert_eq!(alice.delete(&path("", &first)).ok()["count"], 0);
    alice.delete(&format!("room_keys/version/{first}")).ok();
    alice.get(&format!("room_keys/version/{first}")).err(404, "M_NOT_FOUND");
    alice.delete(&format!("room_keys/version/{first}")).err(404, "M_NOT_FOUND");
    alice.delete(&format!("room_keys/version/{second}")).ok();
    alice.get("room_keys/version").err(404, "M_NOT_FOUND");
    let third = alice.post("room_keys/version", algorithm).ok()["version"].as_str().unwrap().to_owned();
    assert!(third != first && third != second, "{third}");
    assert_eq!(alice.get(&path("", &third)).ok()["rooms"], json!({}));
}

/// `bytes` uploaded as `content_type` to `path` (under `/_matrix/media/`) with
/// `client`'s token (if any).
fn upload(client: &Client, method: &str, path: &str, content_type: &str, bytes: &[u8]) -> Response {
    let auth = client.token.as_ref().map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", content_type)];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    request_with(&client.addr, method, &format!("/_matrix/media/{path}"), &headers, bytes)
}

/// A `width`×`height` PNG of a gradient.
fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbaImage::from_fn(width, height, |x, y| image::Rgba([x as u8, y as u8, 99, 255]));
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().unwrap();
    reader.into_dimensions().unwrap()
}

#[test]
fn media_repository() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let server = server_name(&alice);
    // An image, uploaded and read back whole through each download endpoint.
    let picture = png(400, 200);
    let uploaded = upload(&alice, "POST", "v3/upload?filename=cat.png", "image/png", &picture).ok();
    let uri = uploaded["content_uri"].as_str().unwrap();
    let media_id = uri.strip_prefix(&format!("mxc://{server}/")).expect("an mxc URI of this server");
    let download = format!("/_matrix/client/v1/media/download/{server}/{media_id}");
    let got = bob.get(&download);
    assert_eq!(got.status, 200, "{}", got.text());
    assert_eq!(got.body, picture);
    assert_eq!(got.header("content-type"), Some("image/png"));
    assert_eq!(got.header("content-disposition"), Some("inline; filename=cat.png"));
    assert!(got.header("content-security-policy").is_some_and(|csp| csp.contains("sandbox")));
    let named = bob.get(&format!("{download}/kitten.png"));
    assert_eq!(
        (named.body == picture, named.header("content-disposition")),
        (true, Some("inline; filename=kitten.png"))
    );
    // The legacy reads need no token; the authenticated ones do.
    let legacy = Client::anonymous(addr).get(&format!("/_matrix/media/v3/download/{server}/{media_id}"));
    assert_eq!((legacy.status, legacy.body == picture), (200, true));
    Client::anonymous(addr).get(&download).err(401, "M_MISSING_TOKEN");

    // Thumbnails: within the size, or cropped to it; made once and kept.
    let thumbnail = |query: &str| bob.get(&format!("/_matrix/client/v1/media/thumbnail/{server}/{media_id}?{query}"));
    let scaled = thumbnail("width=64&height=64&method=scale");
    assert_eq!((scaled.header("content-type"), dimensions(&scaled.body)), (Some("image/png"), (64, 32)));
    assert_eq!(dimensions(&thumbnail("width=64&height=64&method=crop").body), (64, 64));
    assert_eq!(thumbnail("width=64&height=64&method=scale").body, scaled.body);
    let legacy =
        Client::anonymous(addr).get(&format!("/_matrix/media/v3/thumbnail/{server}/{media_id}?width=32&height=32"));
    assert_eq!(dimensions(&legacy.body), (32, 16));
    thumbnail("width=abc&height=64").err(400, "M_INVALID_PARAM");

    // A file larger than a stored chunk comes back byte for byte; HTML is
    // never shown inline, and cannot be thumbnailed.
    let big: Vec<u8> = (0..700_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let uri = upload(&alice, "POST", "v3/upload", "application/octet-stream", &big).ok()["content_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = bob.get(&format!("/_matrix/client/v1/media/download/{}", uri.trim_start_matches("mxc://")));
    assert_eq!((got.body.len(), got.body == big), (big.len(), true));
    assert_eq!(got.header("content-length"), Some("700000"), "sent as read, its length told first");
    let page = upload(&alice, "POST", "v3/upload?filename=x.html", "text/html", b"<script>alert(1)</script>").ok();
    let page = page["content_uri"].as_str().unwrap().trim_start_matches("mxc://").to_owned();
    let got = bob.get(&format!("/_matrix/client/v1/media/download/{page}"));
    assert_eq!(got.header("content-disposition"), Some("attachment; filename=x.html"));
    bob.get(&format!("/_matrix/client/v1/media/thumbnail/{page}?width=10&height=10")).err(400, "M_UNKNOWN");
    bob.get(&format!("/_matrix/client/v1/media/download/{server}/nosuchmedia")).err(404, "M_NOT_FOUND");
    upload(&Client::anonymous(addr), "POST", "v3/upload", "image/png", &picture).err(401, "M_MISSING_TOKEN");

    // An ID reserved first, then uploaded to: by its owner only, and once.
    let reserved = alice.post("/_matrix/media/v1/create", json!({})).ok();
    assert!(reserved["unused_expires_at"].as_u64().is_some());
    let id = reserved["content_uri"].as_str().unwrap().trim_start_matches("mxc://").to_owned();
    bob.get(&format!("/_matrix/client/v1/media/download/{id}")).err(504, "M_NOT_YET_UPLOADED");
    upload(&bob, "PUT", &format!("v3/upload/{id}"), "text/plain", b"mine now").err(403, "M_FORBIDDEN");
    upload(&alice, "PUT", &format!("v3/upload/{id}"), "text/plain", b"hello").ok();
    upload(&alice, "PUT", &format!("v3/upload/{id}"), "text/plain", b"again").err(409, "M_CANNOT_OVERWRITE_MEDIA");
    upload(&alice, "PUT", &format!("v3/upload/{server}/neverreserved"), "text/plain", b"x").err(404, "M_NOT_FOUND");
    assert_eq!(bob.get(&format!("/_matrix/client/v1/media/download/{id}")).body, b"hello");
    // Reservations pile up no further than a burst allows.
    let refused = (0..40).find_map(|_| {
        let response = bob.post("/_matrix/media/v1/create", json!({}));
        (response.status != 200).then_some(response)
    });
    refused.expect("a burst of reservations is refused").err(429, "M_LIMIT_EXCEEDED");
    let preview = bob.get("/_matrix/client/v1/media/preview_url?url=https%3A%2F%2Fexample.org").ok();
    assert_eq!(preview, json!({}), "no previews: this node reaches no web site");
}

#[test]
fn uploads_over_the_configured_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let glia = Glia::start(&[
        "node",
        "--listen",
        "127.0.0.1:0",
        "--data",
        dir.path().to_str().unwrap(),
        "--max-upload-mib",
        "1",
    ]);
    let alice = register(&glia.addr, "alice");
    assert_eq!(alice.get("/_matrix/client/v1/media/config").ok()["m.upload.size"], 1 << 20);
    let file = vec![7u8; (1 << 20) + 1];
    upload(&alice, "POST", "v3/upload", "application/octet-stream", &file).err(413, "M_TOO_LARGE");
    upload(&alice, "POST", "v3/upload", "application/octet-stream", &file[..1 << 20]).ok();
}

fn to_device_events(sync: &Value) -> Vec<Value> {
    sync["to_device"]["events"].as_array().cloned().unwrap_or_default()
}

#[test]
fn send_to_device() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let bob2 = login_client(addr, "bob");
    let since = sync(&bob, "")["next_batch"].as_str().unwrap().to_owned();

    let send =
        |txn: &str, messages: Value| alice.put(&format!("sendToDevice/m.test/{txn}"), json!({ "messages": messages }));
    assert_eq!(send("one", json!({ &bob.user_id: { &bob.device_id: { "n": 1 } } })).ok(), json!({}));
    // A retried transaction sends nothing more.
    send("one", json!({ &bob.user_id: { &bob.device_id: { "n": 1 } } })).ok();
    send("two", json!({ &bob.user_id: { "*": { "n": 2 } }, "@someone:example.org": { "*": { "n": 3 } } })).ok();
    send("three", json!({ &bob.user_id: { "NOSUCHDEVICE": { "n": 4 } } })).ok();
    send("four", json!({ &bob.user_id: { &bob.device_id: "not an object" } })).err(400, "M_BAD_JSON");
    alice.raw("PUT", "sendToDevice/m.test/five", b"{").err(400, "M_NOT_JSON");
    let mut bogus = alice.clone();
    bogus.token = Some("nope".into());
    bogus.put("sendToDevice/m.test/six", json!({ "messages": {} })).err(401, "M_UNKNOWN_TOKEN");

    let expected = |n: u64| json!({ "sender": &alice.user_id, "type": "m.test", "content": { "n": n } });
    let first = sync(&bob, &format!("since={since}&timeout=0"));
    assert_eq!(to_device_events(&first), [expected(1), expected(2)]);
    // Not acknowledged until the client syncs from the batch that carried them.
    let again = sync(&bob, &format!("since={since}&timeout=0"));
    assert_eq!(to_device_events(&again), [expected(1), expected(2)]);
    let next = again["next_batch"].as_str().unwrap();
    assert_eq!(to_device_events(&sync(&bob, &format!("since={next}&timeout=0"))), Vec::<Value>::new());
    assert_eq!(to_device_events(&sync(&bob, "")), Vec::<Value>::new());
    // Bob's other device got the message for all his devices only.
    assert_eq!(to_device_events(&sync(&bob2, "")), [expected(2)]);

    // A message wakes a waiting sync.
    let since = sync(&bob, "")["next_batch"].as_str().unwrap().to_owned();
    let waiting = {
        let bob = bob.clone();
        std::thread::spawn(move || (Instant::now(), sync(&bob, &format!("since={since}&timeout=20000"))))
    };
    send("seven", json!({ &bob.user_id: { &bob.device_id: { "n": 7 } } })).ok();
    let (started, woken) = waiting.join().unwrap();
    assert_eq!(to_device_events(&woken), [expected(7)]);
    assert!(started.elapsed() < Duration::from_secs(15), "the sync waited out its timeout");

    // A deleted device's messages go with it.
    send("eight", json!({ &bob.user_id: { &bob2.device_id: { "n": 8 } } })).ok();
    bob2.post("logout", json!({})).ok();
    let bob2_again = login_client(addr, "bob");
    let first = sync(&bob2_again, "");
    assert_eq!(to_device_events(&first), Vec::<Value>::new());

    // At most 100 a response; the rest come with the next.
    for n in 0..101 {
        send(&format!("many{n}"), json!({ &bob.user_id: { &bob2_again.device_id: { "n": n } } })).ok();
    }
    let since = first["next_batch"].as_str().unwrap();
    let batch = sync(&bob2_again, &format!("since={since}&timeout=0"));
    assert_eq!(to_device_events(&batch), (0..100).map(expected).collect::<Vec<_>>());
    let since = batch["next_batch"].as_str().unwrap();
    assert_eq!(to_device_events(&sync(&bob2_again, &format!("since={since}&timeout=0"))), [expected(100)]);
}

#[test]
fn data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (room, token, event_ids) = {
        let glia = start(dir.path());
        let alice = register(&glia.addr, "alice");
        alice.put(&format!("profile/{}/displayname", enc(&alice.user_id)), json!({ "displayname": "Alice" })).ok();
        let room =
            create_room(&alice, json!({ "preset": "public_chat", "name": "Durable", "room_alias_name": "durable" }));
        let ids: Vec<String> = ["first", "second", "third"].iter().map(|b| say(&alice, &room, b)).collect();
        let me = enc(&alice.user_id);
        alice.put(&format!("user/{me}/account_data/org.example.kept"), json!({ "kept": true })).ok();
        // The node is killed when `glia` drops, without a chance to shut down cleanly.
        (room, alice.token.clone().unwrap(), ids)
    };
    let glia = start(dir.path());
    let addr = &glia.addr;
    let old = Client { addr: addr.clone(), token: Some(token), user_id: String::new(), device_id: String::new() };
    let user_id = old.get("account/whoami").ok()["user_id"].as_str().unwrap().to_owned();
    let server = user_id.split_once(':').unwrap().1.to_owned();
    let alice = login_client(addr, "alice");
    assert_eq!(alice.user_id, user_id);
    login(addr, "alice", "wrong").err(403, "M_FORBIDDEN");
    Client::anonymous(addr).get("register/available?username=alice").err(400, "M_USER_IN_USE");

    assert_eq!(alice.get("joined_rooms").ok(), json!({ "joined_rooms": [room] }));
    assert_eq!(state(&alice, &room, "m.room.name", "").ok(), json!({ "name": "Durable" }));
    let alias = enc(&format!("#durable:{server}"));
    assert_eq!(alice.get(&format!("directory/room/{alias}")).ok()["room_id"], room.as_str());
    let only_messages = filter(json!({ "types": ["m.room.message"] }));
    let history = messages(&alice, &room, &format!("dir=b&limit=10&filter={only_messages}"));
    assert_eq!(bodies(&history["chunk"]), ["third", "second", "first"]);
    assert_eq!(event(&alice, &room, &event_ids[0]).ok()["content"]["body"], "first");
    let me = enc(&alice.user_id);
    assert_eq!(alice.get(&format!("profile/{me}/displayname")).ok(), json!({ "displayname": "Alice" }));
    assert_eq!(alice.get(&format!("user/{me}/account_data/org.example.kept")).ok(), json!({ "kept": true }));

    // The room goes on where it stopped.
    say(&alice, &room, "fourth");
    let history = messages(&alice, &room, &format!("dir=b&limit=10&filter={only_messages}"));
    assert_eq!(bodies(&history["chunk"]), ["fourth", "third", "second", "first"]);
    let synced = sync(&alice, "");
    assert_eq!(bodies(&synced["rooms"]["join"][&room]["timeline"]["events"]).last().unwrap(), "fourth");
}

/// Sends an event relating to `parent` and returns its event ID.
#[track_caller]
fn relate(client: &Client, room: &str, kind: &str, rel_type: &str, parent: &str, mut content: Value) -> String {
    content["m.relates_to"] = json!({ "rel_type": rel_type, "event_id": parent });
    send_event(client, room, kind, content).ok()["event_id"].as_str().unwrap().to_owned()
}

fn text(body: &str) -> Value {
    json!({ "msgtype": "m.text", "body": body })
}

#[test]
fn relations_threads_and_bundled_aggregations() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let carol = register(addr, "carol");
    let room = create_room(&alice, json!({ "preset": "public_chat" }));
    join(&bob, &room);
    let v1 = |path: &str| format!("/_matrix/client/v1/rooms/{}/{path}", enc(&room));

    let root = say(&alice, &room, "root");
    let reply_bob = relate(&bob, &room, "m.room.message", "m.thread", &root, text("bob in thread"));
    let edit_bob = relate(&bob, &room, "m.room.message", "m.replace", &root, text("* not bob's to edit"));
    let reaction = relate(&bob, &room, "m.reaction", "m.annotation", &root, json!({}));
    let reference = relate(&bob, &room, "m.room.message", "m.reference", &root, text("see above"));
    let edit = relate(&alice, &room, "m.room.message", "m.replace", &root, text("* root, edited"));
    let reply_alice = relate(&alice, &room, "m.room.message", "m.thread", &root, text("alice in thread"));

    // Every child, most recent first; by relation type; by relation and event type.
    let relations = |query: &str| bob.get(&v1(&format!("relations/{}{query}", enc(&root)))).ok();
    let all = [
        reply_alice.as_str(),
        edit.as_str(),
        reference.as_str(),
        reaction.as_str(),
        edit_bob.as_str(),
        reply_bob.as_str(),
    ];
    assert_eq!(event_ids(&relations("")["chunk"]), all);
    assert_eq!(event_ids(&relations("/m.thread")["chunk"]), [reply_alice.as_str(), reply_bob.as_str()]);
    assert_eq!(event_ids(&relations("/m.annotation/m.reaction")["chunk"]), [reaction.as_str()]);
    assert_eq!(event_ids(&relations("/m.annotation/m.room.message")["chunk"]), Vec::<String>::new());
    assert_eq!(event_ids(&relations("?dir=f&limit=2")["chunk"]), [reply_bob.as_str(), edit_bob.as_str()]);

    // Pages of two, backwards and forwards, each naming the next.
    let mut pages = Vec::new();
    let mut next = Some(String::new());
    while let Some(from) = next {
        let query = if from.is_empty() { "?limit=2".to_owned() } else { format!("?limit=2&from={from}") };
        let page = relations(&query);
        pages.extend(event_ids(&page["chunk"]));
        next = page["next_batch"].as_str().map(str::to_owned);
    }
    assert_eq!(pages, all);
    let first = relations("?dir=f&limit=3");
    let rest = relations(&format!("?dir=f&from={}", first["next_batch"].as_str().unwrap()));
    assert_eq!(event_ids(&rest["chunk"]), [reference.as_str(), edit.as_str(), reply_alice.as_str()]);
    assert!(rest.get("next_batch").is_none(), "{rest}");
    // `to` stops a page: forwards from the start up to the third child's page.
    let to = first["next_batch"].as_str().unwrap();
    assert_eq!(
        event_ids(&relations(&format!("?dir=f&to={to}"))["chunk"]),
        [reply_bob.as_str(), edit_bob.as_str(), reaction.as_str()]
    );

    // Relations of relations, with `recurse`.
    join(&carol, &room);
    let nested = relate(&carol, &room, "m.reaction", "m.annotation", &reply_bob, json!({}));
    let recursed = relations("?recurse=true");
    assert_eq!(recursed["recursion_depth"], 3);
    assert_eq!(event_ids(&recursed["chunk"]).first(), Some(&nested));
    assert!(!event_ids(&relations("")["chunk"]).contains(&nested));

    // The root served anywhere bundles its thread, its latest edit by its own
    // sender, and its references.
    let check_bundle = |event: &Value, viewer_participated: bool| {
        let bundle = &event["unsigned"]["m.relations"];
        assert_eq!(bundle["m.thread"]["count"], 2, "{event}");
        assert_eq!(bundle["m.thread"]["latest_event"]["event_id"], reply_alice.as_str());
        assert_eq!(bundle["m.thread"]["current_user_participated"], viewer_participated);
        assert_eq!(bundle["m.replace"]["event_id"], edit.as_str());
        assert_eq!(bundle["m.reference"]["chunk"], json!([{ "event_id": reference }]));
        assert!(bundle.get("m.annotation").is_none());
    };
    check_bundle(&event(&bob, &room, &root).ok(), true);
    check_bundle(&event(&carol, &room, &root).ok(), false);
    let history = messages(&bob, &room, "dir=b&limit=50");
    check_bundle(history["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == root.as_str()).unwrap(), true);
    let synced = sync(&alice, "");
    let timeline = &section(&synced, "join")[room.as_str()]["timeline"]["events"];
    if let Some(synced_root) = timeline.as_array().unwrap().iter().find(|e| e["event_id"] == root.as_str()) {
        check_bundle(synced_root, true);
    }
    // Events without bundled relations carry none.
    assert!(event(&bob, &room, &reply_bob).ok()["unsigned"].get("m.relations").is_none());

    // Threads, by latest activity; a newer thread comes first, and an older
    // one moves up when it is replied to.
    let root2 = say(&bob, &room, "second root");
    relate(&bob, &room, "m.room.message", "m.thread", &root2, text("in the second thread"));
    let threads = |query: &str, client: &Client| client.get(&v1(&format!("threads{query}"))).ok();
    assert_eq!(event_ids(&threads("", &bob)["chunk"]), [root2.as_str(), root.as_str()]);
    relate(&alice, &room, "m.room.message", "m.thread", &root, text("back to the first"));
    let page = threads("?limit=1", &bob);
    assert_eq!(event_ids(&page["chunk"]), [root.as_str()]);
    assert_eq!(page["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["count"], 3);
    let page = threads(&format!("?limit=1&from={}", page["next_batch"].as_str().unwrap()), &bob);
    assert_eq!(event_ids(&page["chunk"]), [root2.as_str()]);
    assert!(threads(&format!("?from={}", page["next_batch"].as_str().unwrap()), &bob)["chunk"] == json!([]));
    assert_eq!(event_ids(&threads("?include=participated", &alice)["chunk"]), [root.as_str()]);
    assert_eq!(event_ids(&threads("?include=participated", &carol)["chunk"]), Vec::<String>::new());

    // A redacted child no longer relates.
    bob.put(&format!("rooms/{}/redact/{}/{}", enc(&room), enc(&reference), txn()), json!({})).ok();
    assert!(!event_ids(&relations("")["chunk"]).contains(&reference));

    // Unknown events, events of other rooms, bad tokens, rooms one cannot see.
    let other = create_room(&alice, json!({ "preset": "private_chat" }));
    let secret = say(&alice, &other, "secret");
    bob.get(&v1(&format!("relations/{}", enc(&secret)))).err(404, "M_NOT_FOUND");
    bob.get(&v1("relations/%24nope")).err(404, "M_NOT_FOUND");
    bob.get(&format!("/_matrix/client/v1/rooms/{}/relations/{}", enc(&other), enc(&secret))).err(404, "M_NOT_FOUND");
    bob.get(&v1(&format!("relations/{}?from=zzz", enc(&root)))).err(400, "M_INVALID_PARAM");
    bob.get(&v1("threads?from=r")).err(400, "M_INVALID_PARAM");
    bob.get("/_matrix/client/v1/rooms/!nope:example/threads").err(404, "M_NOT_FOUND");
}

#[test]
fn full_text_search() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    alice.put(&format!("profile/{}/displayname", enc(&user_id(&alice))), json!({ "displayname": "Alice A." })).ok();
    let room = create_room(&alice, json!({ "preset": "public_chat", "name": "Fox den" }));
    join(&bob, &room);
    let private = create_room(&alice, json!({ "preset": "private_chat" }));
    let quick_fox = say(&alice, &room, "The quick brown fox");
    let meeting = say(&bob, &room, "A quick meeting tomorrow");
    let notes = say(&alice, &room, "Meeting notes: fox, FOX and fox again");
    say(&alice, &room, "nothing to see here");
    let secret = say(&alice, &private, "the secret fox plan");

    let search = |client: &Client, criteria: Value, next: Option<&str>| {
        let path = next.map_or("search".to_owned(), |n| format!("search?next_batch={}", enc(n)));
        client.post(&path, json!({ "search_categories": { "room_events": criteria } })).ok()["search_categories"]
            ["room_events"]
            .clone()
    };
    let ids = |found: &Value| -> Vec<String> {
        found["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["result"]["event_id"].as_str().unwrap().to_owned())
            .collect()
    };

    // Ranked: the message saying "fox" most comes first; every word must occur;
    // words match as prefixes; names and topics are searched too.
    let fox = search(&alice, json!({ "search_term": "fox", "keys": ["content.body"] }), None);
    assert_eq!(ids(&fox)[0], notes);
    assert_eq!(fox["count"], 3);
    let mut sorted = ids(&fox);
    sorted.sort();
    let mut expected = vec![notes.clone(), quick_fox.clone(), secret.clone()];
    expected.sort();
    assert_eq!(sorted, expected);
    assert!(fox["results"][0]["rank"].as_f64().unwrap() > fox["results"][1]["rank"].as_f64().unwrap());
    assert_eq!(ids(&search(&alice, json!({ "search_term": "QUICK fox" }), None)), [quick_fox.as_str()]);
    let meet = search(&alice, json!({ "search_term": "meet", "order_by": "recent" }), None);
    assert_eq!(ids(&meet), [notes.as_str(), meeting.as_str()]);
    assert_eq!(meet["highlights"], json!(["meeting"]));
    let named = search(&alice, json!({ "search_term": "den" }), None);
    assert_eq!(named["results"][0]["result"]["type"], "m.room.name");
    assert_eq!(search(&alice, json!({ "search_term": "den", "keys": ["content.body"] }), None)["count"], 0);

    // Only rooms the searcher is in, narrowed by the filter.
    assert!(!ids(&search(&bob, json!({ "search_term": "fox" }), None)).contains(&secret));
    let only_private = json!({ "search_term": "fox", "filter": { "rooms": [private] } });
    assert_eq!(ids(&search(&alice, only_private, None)), [secret.as_str()]);
    let bobs = json!({ "search_term": "quick", "filter": { "senders": [user_id(&bob)] } });
    assert_eq!(ids(&search(&alice, bobs, None)), [meeting.as_str()]);

    // Pages of one, by rank and by recency, cover every result once.
    for order in ["rank", "recent"] {
        let criteria = json!({ "search_term": "fox", "order_by": order, "filter": { "limit": 1 } });
        let (mut seen, mut next) = (Vec::new(), None::<String>);
        loop {
            let page = search(&alice, criteria.clone(), next.as_deref());
            seen.extend(ids(&page));
            match page["next_batch"].as_str() {
                Some(token) => next = Some(token.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 4, "{order}: {seen:?}");
        seen.dedup();
        assert_eq!(seen.len(), 4, "{order}");
    }

    // Context with profiles, the rooms' state, groups by room.
    let criteria = json!({
        "search_term": "brown",
        "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true },
        "include_state": true,
        "groupings": { "group_by": [{ "key": "room_id" }] },
    });
    let found = search(&alice, criteria, None);
    let context = &found["results"][0]["context"];
    assert_eq!(context["events_after"][0]["event_id"], meeting.as_str());
    assert_eq!(context["events_before"].as_array().unwrap().len(), 1);
    assert_eq!(context["profile_info"][user_id(&alice)]["displayname"], "Alice A.", "{context}");
    assert!(context["start"].is_string() && context["end"].is_string());
    assert!(found["state"][&room].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));
    assert_eq!(found["groups"]["room_id"][&room]["results"], json!([quick_fox]));

    // New messages are found; redacted ones are not.
    let later = say(&bob, &room, "one more fox");
    assert!(ids(&search(&alice, json!({ "search_term": "fox" }), None)).contains(&later));
    alice.put(&format!("rooms/{}/redact/{}/{}", enc(&room), enc(&notes), txn()), json!({})).ok();
    assert!(!ids(&search(&alice, json!({ "search_term": "fox" }), None)).contains(&notes));

    // Nothing to search for finds nothing; a bad token is refused.
    assert_eq!(search(&alice, json!({ "search_term": " ,; " }), None)["count"], 0);
    alice
        .post("search?next_batch=s12", json!({ "search_categories": { "room_events": { "search_term": "fox" } } }))
        .err(400, "M_INVALID_PARAM");
    let recent = json!({ "search_categories": { "room_events": { "search_term": "fox", "order_by": "recent" } } });
    alice.post("search?next_batch=s12", recent).err(400, "M_INVALID_PARAM");
    alice.post("search", json!({ "search_categories": { "room_events": {} } })).err(400, "M_BAD_JSON");
}

fn user_id(client: &Client) -> String {
    client.get("account/whoami").ok()["user_id"].as_str().unwrap().to_owned()
}

#[test]
fn user_directory_search() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let carol = register(addr, "carol");
    let dave = register(addr, "dave");
    bob.put(&format!("profile/{}/displayname", enc(&user_id(&bob))), json!({ "displayname": "Bobby Tables" })).ok();
    let deactivated = register(addr, "bobcat");
    with_password(&deactivated, "POST", "account/deactivate", json!({})).ok();
    let room = create_room(&alice, json!({ "preset": "private_chat", "invite": [user_id(&carol)] }));
    join(&carol, &room);

    let search = |client: &Client, term: &str, limit: u64| {
        client.post("user_directory/search", json!({ "search_term": term, "limit": limit })).ok()
    };
    let found = |client: &Client, term: &str| -> Vec<String> {
        search(client, term, 10)["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["user_id"].as_str().unwrap().to_owned())
            .collect()
    };
    // By user ID or by any word of the display name, as a prefix; the node's
    // users are all found, deactivated ones are not.
    assert_eq!(found(&alice, "bob"), [user_id(&bob)]);
    assert_eq!(found(&alice, "tab"), [user_id(&bob)]);
    let bobby = &search(&alice, "bobby t", 10)["results"][0];
    assert_eq!(
        (bobby["user_id"].as_str().unwrap(), &bobby["display_name"]),
        (user_id(&bob).as_str(), &json!("Bobby Tables"))
    );
    assert_eq!(found(&dave, "carol"), [user_id(&carol)]);
    let everyone = search(&alice, &server_name(&alice), 2);
    assert_eq!((everyone["results"].as_array().unwrap().len(), &everyone["limited"]), (2, &json!(true)));
    assert_eq!(search(&alice, &server_name(&alice), 10)["limited"], false);
    assert!(found(&alice, "nobody-at-all").is_empty());
    assert!(found(&alice, "   ").is_empty());
    alice.post("user_directory/search", json!({ "limit": 3 })).err(400, "M_BAD_JSON");
}

// --- Spaces ---------------------------------------------------------------------

/// The room IDs of a hierarchy page, in order.
fn room_ids(page: &Value) -> Vec<String> {
    page["rooms"].as_array().unwrap().iter().map(|room| room["room_id"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn space_hierarchy() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let carol = register(addr, "carol");
    let server = server_name(&alice);
    let space_of = |name: &str| {
        create_room(&alice, json!({ "preset": "public_chat", "name": name, "creation_content": { "type": "m.space" } }))
    };
    let room_of = |body: Value| create_room(&alice, body);
    let space = space_of("Space");
    let sub = space_of("Subspace");
    let deep = room_of(json!({ "preset": "public_chat", "name": "Deep" }));
    let random = room_of(json!({ "preset": "public_chat", "name": "Random" }));
    let general = room_of(json!({ "preset": "public_chat", "name": "General", "topic": "Chat" }));
    let secret = room_of(json!({ "preset": "private_chat", "name": "Secret" }));
    let allow = json!([{ "type": "m.room_membership", "room_id": space }]);
    let members = room_of(json!({
        "preset": "private_chat",
        "name": "Members",
        "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "restricted", "allow": allow } }],
    }));
    let removed = room_of(json!({ "preset": "public_chat", "name": "Removed" }));
    let (space, sub, deep, random, general, secret, members, removed) = (
        space.as_str(),
        sub.as_str(),
        deep.as_str(),
        random.as_str(),
        general.as_str(),
        secret.as_str(),
        members.as_str(),
        removed.as_str(),
    );
    let add = |parent: &str, child: &str, content: Value| {
        alice.put(&format!("rooms/{}/state/m.space.child/{}", enc(parent), enc(child)), content).ok();
        // Children without an `order` come in the order of their events' timestamps.
        std::thread::sleep(Duration::from_millis(5));
    };
    add(space, random, json!({ "via": [server] }));
    add(space, general, json!({ "via": [server], "suggested": true }));
    add(space, sub, json!({ "via": [server], "order": "a" }));
    add(space, secret, json!({ "via": [server] }));
    add(space, members, json!({ "via": [server] }));
    // A child event without servers takes the room out of the space.
    add(space, removed, json!({}));
    add(sub, deep, json!({ "via": [server], "suggested": true }));
    // A loop back to the top, which the spec forbids but cannot prevent.
    add(sub, space, json!({ "via": [server] }));
    join(&bob, space);

    let hierarchy = |client: &Client, room: &str, query: &str| {
        client.get(&format!("/_matrix/client/v1/rooms/{}/hierarchy{query}", enc(room)))
    };
    // Depth first, each space's children in the spec's order: `order` first,
    // then by timestamp. Bob sees neither the private room nor, being in the
    // space, misses the restricted one; the loop ends where it began.
    let page = hierarchy(&bob, space, "").ok();
    assert_eq!(room_ids(&page), [space, sub, deep, random, general, members]);
    assert!(page.get("next_batch").is_none(), "{page}");
    let top = &page["rooms"][0];
    assert_eq!(top["name"], "Space");
    assert_eq!(top["room_type"], "m.space");
    // A summary without a join rule is of a public room.
    assert_eq!(top.get("join_rule").unwrap_or(&json!("public")), "public");
    assert_eq!(top["num_joined_members"], 2);
    assert_eq!((&top["world_readable"], &top["guest_can_join"]), (&json!(false), &json!(false)));
    let children: Vec<&str> =
        top["children_state"].as_array().unwrap().iter().map(|e| e["state_key"].as_str().unwrap()).collect();
    assert_eq!(children, [sub, random, general, secret, members]);
    let first = &top["children_state"][0];
    assert_eq!(first["type"], "m.space.child");
    assert_eq!(first["sender"], alice.user_id.as_str());
    assert_eq!(first["content"], json!({ "via": [server], "order": "a" }));
    assert!(first["origin_server_ts"].as_u64().is_some(), "{first}");
    assert!(first.get("event_id").is_none(), "children are stripped state: {first}");
    let general_room = &page["rooms"][4];
    assert_eq!((&general_room["name"], &general_room["topic"]), (&json!("General"), &json!("Chat")));
    assert_eq!(general_room["children_state"], json!([]));
    assert!(general_room.get("room_type").is_none(), "{general_room}");
    assert_eq!(page["rooms"][5]["join_rule"], "restricted");
    assert_eq!(page["rooms"][5]["allowed_room_ids"], json!([space]));

    // Whoever is in the private room sees it; who is in no allowed room does
    // not see the restricted one.
    let all = room_ids(&hierarchy(&alice, space, "").ok());
    assert_eq!(all, [space, sub, deep, random, general, secret, members]);
    assert_eq!(room_ids(&hierarchy(&carol, space, "").ok()), [space, sub, deep, random, general]);

    // Depth, and suggested rooms only.
    assert_eq!(room_ids(&hierarchy(&bob, space, "?max_depth=0").ok()), [space]);
    assert_eq!(room_ids(&hierarchy(&bob, space, "?max_depth=1").ok()), [space, sub, random, general, members]);
    let suggested = hierarchy(&bob, space, "?suggested_only=true").ok();
    assert_eq!(room_ids(&suggested), [space, general]);
    assert_eq!(suggested["rooms"][0]["children_state"].as_array().unwrap().len(), 1);

    // Pages of one, each naming the next; the options may not change on the way.
    let mut pages = Vec::new();
    let mut next = hierarchy(&bob, space, "?limit=1&max_depth=1").ok();
    loop {
        assert_eq!(next["rooms"].as_array().unwrap().len(), 1, "{next}");
        pages.extend(room_ids(&next));
        let Some(from) = next["next_batch"].as_str().map(str::to_owned) else { break };
        next = hierarchy(&bob, space, &format!("?limit=1&max_depth=1&from={}", enc(&from))).ok();
    }
    assert_eq!(pages, [space, sub, random, general, members]);
    let token = hierarchy(&bob, space, "?limit=2").ok()["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(
        room_ids(&hierarchy(&bob, space, &format!("?from={}", enc(&token))).ok()),
        [deep, random, general, members]
    );
    hierarchy(&bob, space, &format!("?from={}&suggested_only=true", enc(&token))).err(400, "M_INVALID_PARAM");
    hierarchy(&bob, space, &format!("?from={}&max_depth=1", enc(&token))).err(400, "M_INVALID_PARAM");
    hierarchy(&bob, space, "?from=nonsense").err(400, "M_INVALID_PARAM");
    hierarchy(&bob, space, "?limit=0").err(400, "M_INVALID_PARAM");

    // A room one may not see, and one that does not exist, are alike forbidden.
    hierarchy(&bob, secret, "").err(403, "M_FORBIDDEN");
    hierarchy(&bob, &format!("!nosuch:{server}"), "").err(403, "M_FORBIDDEN");
    // A room that is no space is the only room of its hierarchy.
    assert_eq!(room_ids(&hierarchy(&bob, general, "").ok()), [general]);
}

#[test]
fn thread_aware_unread_counts() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let room = create_room(&alice, json!({ "preset": "private_chat", "invite": [user_id(&bob)] }));
    join(&bob, &room);
    let root = say(&bob, &room, "root");
    relate(&bob, &room, "m.room.message", "m.thread", &root, text("first in thread"));
    let in_thread = relate(&bob, &room, "m.room.message", "m.thread", &root, text("second in thread"));
    let main = say(&bob, &room, "main again");

    let by_thread = filter(json!({ "room": { "timeline": { "unread_thread_notifications": true } } }));
    // (main timeline's count, the thread's count), as a thread-aware client sees them.
    let counts = || {
        let synced = sync(&alice, &format!("filter={by_thread}"));
        let joined = &section(&synced, "join")[&room];
        let thread = joined["unread_thread_notifications"][&root]["notification_count"].as_u64().unwrap_or(0);
        (joined["unread_notifications"]["notification_count"].as_u64().unwrap(), thread)
    };
    let total = || section(&sync(&alice, ""), "join")[&room]["unread_notifications"]["notification_count"].clone();
    assert_eq!(counts(), (2, 2));
    assert_eq!(total(), 4);

    let receipt = |event: &str, thread: Option<&str>| {
        let body = thread.map_or(json!({}), |t| json!({ "thread_id": t }));
        alice.post(&format!("rooms/{}/receipt/m.read/{}", enc(&room), enc(event)), body).ok();
    };
    // A receipt in the thread reads the thread; one in the main timeline, the rest.
    receipt(&in_thread, Some(&root));
    assert_eq!(counts(), (2, 0));
    receipt(&main, Some("main"));
    assert_eq!(counts(), (0, 0));
    relate(&bob, &room, "m.room.message", "m.thread", &root, text("third in thread"));
    say(&bob, &room, "and in main");
    assert_eq!(counts(), (1, 1));
    // Posting in the thread reads it; an unthreaded receipt reads everything.
    relate(&alice, &room, "m.room.message", "m.thread", &root, text("alice replies"));
    assert_eq!(counts(), (1, 0));
    let latest = relate(&bob, &room, "m.room.message", "m.thread", &root, text("fourth in thread"));
    assert_eq!(counts(), (1, 1));
    receipt(&latest, None);
    assert_eq!(counts(), (0, 0));
}

/// The node whose data is in `dir`, opened in this process once its `glia`
/// command has stopped: for what only the node's owner reads.
fn open_offline(dir: &Path) -> (tokio::runtime::Runtime, glia::Homeserver) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let hs = runtime.block_on(glia::native::node::open(dir)).unwrap();
    (runtime, hs)
}

const NOTIFY_URL: &str = "https://push.example.org/_matrix/push/v1/notify";

fn pusher(app_id: &str, pushkey: &str, device: &str) -> Value {
    json!({
        "kind": "http", "app_id": app_id, "pushkey": pushkey,
        "app_display_name": "Example", "device_display_name": device, "lang": "en",
        "data": { "url": NOTIFY_URL, "format": "event_id_only" },
    })
}

/// The (app ID, pushkey, device display name) of a user's pushers.
#[track_caller]
fn pushers_of(client: &Client) -> Vec<(String, String, String)> {
    let listed = client.get("pushers").ok();
    let pushers = listed["pushers"].as_array().unwrap().iter();
    let field = |p: &Value, name: &str| p[name].as_str().unwrap().to_owned();
    pushers.map(|p| (field(p, "app_id"), field(p, "pushkey"), field(p, "device_display_name"))).collect()
}

fn ids(app_id: &str, pushkey: &str, device: &str) -> (String, String, String) {
    (app_id.into(), pushkey.into(), device.into())
}

#[test]
fn pushers() {
    let dir = tempfile::tempdir().unwrap();
    let glia = start(dir.path());
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let app = "org.example.app.ios";
    assert_eq!(alice.get("pushers").ok(), json!({ "pushers": [] }));

    // Set, then listed as sent.
    let mut first = pusher(app, "key1", "Phone");
    first["profile_tag"] = json!("tag");
    first["data"]["custom"] = json!({ "kept": true });
    assert_eq!(alice.post("pushers/set", first.clone()).ok(), json!({}));
    assert_eq!(alice.get("pushers").ok(), json!({ "pushers": [first] }));
    let email = json!({
        "kind": "email", "app_id": "m.email", "pushkey": "alice@example.org",
        "app_display_name": "Email", "device_display_name": "Mailbox", "lang": "en", "data": {},
    });
    alice.post("pushers/set", email).ok();
    alice.post("pushers/set", pusher(app, "key2", "Tablet")).ok();
    assert_eq!(
        pushers_of(&alice),
        [ids("m.email", "alice@example.org", "Mailbox"), ids(app, "key1", "Phone"), ids(app, "key2", "Tablet")]
    );

    // The same app ID and pushkey replace the pusher.
    alice.post("pushers/set", pusher(app, "key2", "New tablet")).ok();
    assert_eq!(pushers_of(&alice)[2], ids(app, "key2", "New tablet"));
    assert_eq!(pushers_of(&alice).len(), 3);

    // Another user's pusher with the same IDs: beside it with `append`, in its place without.
    let mut appended = pusher(app, "key1", "Bob's phone");
    appended["append"] = json!(true);
    bob.post("pushers/set", appended).ok();
    assert_eq!(pushers_of(&bob), [ids(app, "key1", "Bob's phone")]);
    assert_eq!(pushers_of(&alice).len(), 3);
    bob.post("pushers/set", pusher(app, "key1", "Bob's phone")).ok();
    assert_eq!(pushers_of(&alice), [ids("m.email", "alice@example.org", "Mailbox"), ids(app, "key2", "New tablet")]);
    assert_eq!(pushers_of(&bob), [ids(app, "key1", "Bob's phone")]);
    // Replacing one's own pusher leaves the others' alone.
    alice.post("pushers/set", pusher(app, "key2", "Tablet")).ok();
    assert_eq!(pushers_of(&bob), [ids(app, "key1", "Bob's phone")]);

    // `kind: null` deletes; deleting what is not there is no error.
    let delete = |pushkey: &str| json!({ "kind": null, "app_id": app, "pushkey": pushkey });
    assert_eq!(bob.post("pushers/set", delete("key1")).ok(), json!({}));
    assert_eq!(bob.get("pushers").ok(), json!({ "pushers": [] }));
    bob.post("pushers/set", delete("key1")).ok();
    // Alice's key2 is hers alone: Bob deleting his does not touch it.
    assert_eq!(pushers_of(&alice).len(), 2);

    // The spec's limits: 64 characters of app ID, 512 bytes of pushkey.
    let long_app = "é".repeat(64);
    alice.post("pushers/set", pusher(&long_app, "k", "Phone")).ok();
    alice.post("pushers/set", pusher(&"a".repeat(65), "k", "Phone")).err(400, "M_INVALID_PARAM");
    alice.post("pushers/set", pusher(app, &"k".repeat(512), "Phone")).ok();
    alice.post("pushers/set", pusher(app, &"k".repeat(513), "Phone")).err(400, "M_INVALID_PARAM");
    alice.post("pushers/set", pusher(app, &"é".repeat(257), "Phone")).err(400, "M_INVALID_PARAM");
    alice
        .post("pushers/set", json!({ "kind": null, "app_id": "a".repeat(65), "pushkey": "k" }))
        .err(400, "M_INVALID_PARAM");
    // An http pusher needs a push gateway's URL.
    let mut no_url = pusher(app, "k", "Phone");
    no_url["data"] = json!({ "format": "event_id_only" });
    alice.post("pushers/set", no_url).err(400, "M_INVALID_PARAM");
    let mut wrong_path = pusher(app, "k", "Phone");
    wrong_path["data"]["url"] = json!("https://push.example.org/notify");
    alice.post("pushers/set", wrong_path).err(400, "M_INVALID_PARAM");
    let mut not_a_url = pusher(app, "k", "Phone");
    not_a_url["data"]["url"] = json!("push gateway");
    alice.post("pushers/set", not_a_url).err(400, "M_INVALID_PARAM");
    let mut unknown_kind = pusher(app, "k", "Phone");
    unknown_kind["kind"] = json!("carrier-pigeon");
    alice.post("pushers/set", unknown_kind).err(400, "M_INVALID_PARAM");
    alice.post("pushers/set", json!({ "app_id": app, "pushkey": "k" })).err(400, "M_BAD_JSON");
    Client::anonymous(addr).get("pushers").err(401, "M_MISSING_TOKEN");
    assert_eq!(pushers_of(&alice).len(), 4);

    // A device's pushers go with it.
    let phone = login_client(addr, "alice");
    phone.post("pushers/set", pusher(app, "phone-key", "Second phone")).ok();
    assert_eq!(pushers_of(&alice).len(), 5);
    with_password(&alice, "DELETE", &format!("devices/{}", phone.device_id), json!({})).ok();
    assert_eq!(pushers_of(&alice).len(), 4);
    assert!(!pushers_of(&alice).iter().any(|(_, key, _)| key == "phone-key"));
    let laptop = login_client(addr, "alice");
    laptop.post("pushers/set", pusher(app, "laptop-key", "Laptop")).ok();
    laptop.post("logout", json!({})).ok();
    assert_eq!(pushers_of(&alice).len(), 4);

    // And an account's with it.
    bob.post("pushers/set", pusher(app, "bob-key", "Bob's phone")).ok();
    with_password(&alice, "POST", "account/deactivate", json!({})).ok();
    let (alice_id, bob_id) = (alice.user_id.clone(), bob.user_id.clone());
    drop(glia);
    let (runtime, hs) = open_offline(dir.path());
    let left = |user: &str| {
        let user = ruma::UserId::parse(user).unwrap();
        runtime.block_on(hs.pushers().pushers(&user)).unwrap().len()
    };
    assert_eq!((left(&alice_id), left(&bob_id)), (0, 1));
}

/// The bodies of a `/notifications` page, and its `next_token`.
#[track_caller]
fn notification_page(client: &Client, query: &str) -> (Vec<String>, Option<String>) {
    let page = client.get(&format!("notifications?{query}")).ok();
    let events: Vec<Value> = page["notifications"].as_array().unwrap().iter().map(|n| n["event"].clone()).collect();
    (bodies(&Value::Array(events)), page["next_token"].as_str().map(str::to_owned))
}

/// Every notification, following `next_token` through pages of `limit`.
#[track_caller]
fn all_notifications(client: &Client, limit: usize) -> Vec<String> {
    let (mut all, mut next) = notification_page(client, &format!("limit={limit}"));
    while let Some(token) = next {
        let (page, after) = notification_page(client, &format!("limit={limit}&from={}", enc(&token)));
        assert!(page.len() <= limit);
        all.extend(page);
        next = after;
    }
    all
}

#[test]
fn notifications() {
    let (glia, _dir) = node();
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let carol = register(addr, "carol");
    assert_eq!(bob.get("notifications").ok(), json!({ "notifications": [] }));

    let room = create_room(&alice, json!({ "preset": "public_chat" }));
    let other = create_room(&alice, json!({ "preset": "public_chat" }));
    say(&alice, &room, "before bob joined");
    join(&bob, &room);
    join(&bob, &other);
    join(&carol, &room);
    say(&alice, &room, "one");
    let mention = say(&carol, &room, "hey bob");
    say(&bob, &room, "his own");
    say(&alice, &other, "elsewhere");
    say(&alice, &room, "three");

    // Newest first, across rooms; not one's own, nor what came before joining.
    let page = bob.get("notifications").ok();
    let listed = page["notifications"].as_array().unwrap();
    let events: Vec<Value> = listed.iter().map(|n| n["event"].clone()).collect();
    assert_eq!(bodies(&Value::Array(events)), ["three", "elsewhere", "hey bob", "one"]);
    assert!(page.get("next_token").is_none(), "{page}");
    let rooms: Vec<&str> = listed.iter().map(|n| n["room_id"].as_str().unwrap()).collect();
    assert_eq!(rooms, [&room, &other, &room, &room]);
    for n in listed {
        assert_eq!(n["read"], false, "{n}");
        assert!(n["actions"].as_array().unwrap().contains(&json!("notify")), "{n}");
        assert_eq!(n["ts"], n["event"]["origin_server_ts"], "{n}");
        assert!(n["event"]["event_id"].is_string() && n["event"].get("room_id").is_none(), "{n}");
        assert!(n.get("profile_tag").is_none(), "{n}");
    }
    let highlight = json!({ "set_tweak": "highlight" });
    assert!(listed[2]["actions"].as_array().unwrap().contains(&highlight), "{}", listed[2]);
    assert!(!listed[0]["actions"].as_array().unwrap().contains(&highlight), "{}", listed[0]);
    assert_eq!(notification_page(&bob, "only=highlight"), (vec!["hey bob".to_owned()], None));
    // Alice is notified of Carol's and Bob's messages, in her rooms only.
    assert_eq!(notification_page(&alice, "").0, ["his own", "hey bob"]);

    // `read` follows the read receipt, in its room only.
    bob.post(&format!("rooms/{}/receipt/m.read/{}", enc(&room), enc(&mention)), json!({})).ok();
    let page = bob.get("notifications").ok();
    let read: Vec<bool> = page["notifications"].as_array().unwrap().iter().map(|n| n["read"] == true).collect();
    assert_eq!(read, [false, false, true, true]);

    // Pages: each names the next, and together they are the whole list.
    let (first, next) = notification_page(&bob, "limit=3");
    assert_eq!(first, ["three", "elsewhere", "hey bob"]);
    let (rest, after) = notification_page(&bob, &format!("limit=3&from={}", enc(&next.unwrap())));
    assert_eq!((rest, after), (vec!["one".to_owned()], None));
    assert_eq!(all_notifications(&bob, 1), ["three", "elsewhere", "hey bob", "one"]);
    bob.get("notifications?from=nonsense").err(400, "M_INVALID_PARAM");
    Client::anonymous(addr).get("notifications").err(401, "M_MISSING_TOKEN");

    // The push rules decide: muted rooms notify of nothing.
    let muted = format!("pushrules/global/room/{}", enc(&other));
    bob.put(&muted, json!({ "actions": [] })).ok();
    assert_eq!(notification_page(&bob, "").0, ["three", "hey bob", "one"]);
    bob.delete(&muted).ok();

    // A page looks that far back in each room, and no further: past a long
    // run of events that do not notify, pages may come back short, and the
    // walk still finds every notification.
    let quiet = create_room(&alice, json!({ "preset": "public_chat" }));
    join(&bob, &quiet);
    say(&alice, &quiet, "signal");
    let noise = json!({
        "conditions": [{ "kind": "event_match", "key": "content.body", "pattern": "noise" }],
        "actions": [],
    });
    bob.put("pushrules/global/override/noise", noise).ok();
    for _ in 0..320 {
        say(&alice, &quiet, "noise");
    }
    let (first, next) = notification_page(&bob, "limit=10");
    assert!(first.is_empty() && next.is_some(), "{first:?} {next:?}");
    let all = all_notifications(&bob, 10);
    assert_eq!(all, ["signal", "three", "elsewhere", "hey bob", "one"]);
}

#[test]
fn reporting() {
    let dir = tempfile::tempdir().unwrap();
    let glia = start(dir.path());
    let addr = &glia.addr;
    let alice = register(addr, "alice");
    let bob = register(addr, "bob");
    let carol = register(addr, "carol");
    let server = server_name(&alice);
    let room = create_room(
        &alice,
        json!({
            "preset": "public_chat",
            "initial_state": [
                { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } },
            ],
        }),
    );
    let hidden = say(&alice, &room, "said before bob joined");
    join(&bob, &room);
    let rude = say(&alice, &room, "something rude");
    let elsewhere = create_room(&alice, json!({ "preset": "public_chat" }));
    let other_event = say(&alice, &elsewhere, "elsewhere");

    // An event: by a member of its room who may see it.
    let report = |client: &Client, room: &str, event: &str, body: Value| {
        client.post(&format!("rooms/{}/report/{}", enc(room), enc(event)), body)
    };
    assert_eq!(report(&bob, &room, &rude, json!({ "reason": "rude" })).ok(), json!({}));
    report(&bob, &room, &rude, json!({})).ok();
    // `score` was dropped from the spec (v1.18): it is not read.
    report(&bob, &room, &rude, json!({ "reason": "scored", "score": -500 })).ok();
    report(&carol, &room, &rude, json!({ "reason": "not a member" })).err(404, "M_NOT_FOUND");
    report(&bob, &room, &hidden, json!({ "reason": "not visible" })).err(404, "M_NOT_FOUND");
    report(&bob, &room, &other_event, json!({ "reason": "wrong room" })).err(404, "M_NOT_FOUND");
    report(&bob, &room, &format!("$nosuchevent:{server}"), json!({})).err(404, "M_NOT_FOUND");
    report(&bob, &format!("!nosuch:{server}"), &rude, json!({})).err(404, "M_NOT_FOUND");
    report(&bob, &room, "not-an-event-id", json!({})).err(400, "M_INVALID_PARAM");

    // A room: any the node knows, member or not.
    let report_room =
        |client: &Client, room: &str, body: Value| client.post(&format!("rooms/{}/report", enc(room)), body);
    assert_eq!(report_room(&carol, &room, json!({ "reason": "bad room" })).ok(), json!({}));
    report_room(&carol, &format!("!nosuch:{server}"), json!({ "reason": "x" })).err(404, "M_NOT_FOUND");

    // A user: any of this node's, and anyone elsewhere.
    let report_user =
        |client: &Client, user: &str, body: Value| client.post(&format!("users/{}/report", enc(user)), body);
    assert_eq!(report_user(&carol, &alice.user_id, json!({ "reason": "" })).ok(), json!({}));
    report_user(&carol, "@someone:example.org", json!({ "reason": "remote" })).ok();
    report_user(&carol, &format!("@nosuchuser:{server}"), json!({ "reason": "x" })).err(404, "M_NOT_FOUND");
    report_user(&carol, &alice.user_id, json!({})).err(400, "M_BAD_JSON");
    Client::anonymous(addr)
        .post(&format!("users/{}/report", enc(&alice.user_id)), json!({ "reason": "x" }))
        .err(401, "M_MISSING_TOKEN");

    // The node's owner reads them, oldest first.
    drop(glia);
    let (runtime, hs) = open_offline(dir.path());
    let reports = runtime.block_on(hs.reports().reports()).unwrap();
    let seen: Vec<Value> = reports
        .iter()
        .map(|r| {
            let mut json = serde_json::to_value(r).unwrap();
            assert!(json["received_ts"].as_u64().unwrap() > 1_704_067_200_000, "{json}");
            json.as_object_mut().unwrap().remove("received_ts");
            json
        })
        .collect();
    let (b, c) = (&bob.user_id, &carol.user_id);
    assert_eq!(
        seen,
        [
            json!({ "reporter": b, "kind": "event", "room_id": room, "event_id": rude, "reason": "rude" }),
            json!({ "reporter": b, "kind": "event", "room_id": room, "event_id": rude }),
            json!({ "reporter": b, "kind": "event", "room_id": room, "event_id": rude, "reason": "scored" }),
            json!({ "reporter": c, "kind": "room", "room_id": room, "reason": "bad room" }),
            json!({ "reporter": c, "kind": "user", "user_id": alice.user_id, "reason": "" }),
            json!({ "reporter": c, "kind": "user", "user_id": "@someone:example.org", "reason": "remote" }),
        ]
    );
}
