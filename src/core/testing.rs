//! What the core's own tests ask of a node: requests as a client makes them,
//! and a registered user.

use bytes::Bytes;
use serde_json::{json, Value};

use super::Homeserver;

/// A request to `hs`, with `token` as its access token, and its JSON answer.
pub(crate) async fn call(hs: &Homeserver, method: &str, path: &str, token: Option<&str>, body: Value) -> Value {
    let mut request = http::Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = hs.handle(request.body(Bytes::from(body.to_string())).unwrap()).await;
    serde_json::from_slice(response.body()).unwrap()
}

/// Registers `username` through user-interactive authentication's dummy
/// stage, and returns its access token.
pub(crate) async fn register(hs: &Homeserver, username: &str) -> String {
    let path = "/_matrix/client/v3/register";
    let mut body = json!({ "username": username, "password": "correct horse" });
    let challenge = call(hs, "POST", path, None, body.clone()).await;
    body["auth"] = json!({ "type": "m.login.dummy", "session": challenge["session"] });
    let registered = call(hs, "POST", path, None, body).await;
    registered["access_token"].as_str().unwrap_or_else(|| panic!("register {username}: {registered}")).to_owned()
}
