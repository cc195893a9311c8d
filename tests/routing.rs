#![cfg(not(target_arch = "wasm32"))]

//! The core's routing and error shapes, through `Homeserver::handle` over a
//! `MemoryStore`: what every platform shell relies on.

use std::sync::Arc;

use bytes::Bytes;
use glia::{
    core::{OsRandom, SystemClock, MAX_BODY_BYTES, SCHEMA},
    store::MemoryStore,
    Homeserver,
};
use serde_json::Value;

async fn homeserver() -> Homeserver {
    Homeserver::open(Arc::new(MemoryStore::new(SCHEMA)), Arc::new(SystemClock), Arc::new(OsRandom)).await.unwrap()
}

async fn send(method: &str, uri: &str, body: impl Into<Bytes>) -> http::Response<Bytes> {
    let request = http::Request::builder().method(method).uri(uri).body(body.into()).unwrap();
    homeserver().await.handle(request).await
}

fn json(response: &http::Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).unwrap()
}

fn assert_cors(response: &http::Response<Bytes>) {
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    for method in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
        assert!(headers["access-control-allow-methods"].to_str().unwrap().contains(method));
    }
    assert_eq!(headers["access-control-allow-headers"], "X-Requested-With, Content-Type, Authorization");
    assert!(headers["server"].to_str().unwrap().starts_with("glia/"));
}

#[tokio::test]
async fn versions_lists_what_is_served() {
    let response = send("GET", "/_matrix/client/versions", "").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_cors(&response);
    // The versions whose chat endpoints are all served, and none that make
    // clients assume later APIs (threads come with v1.4).
    let versions = json(&response)["versions"].as_array().unwrap().clone();
    assert!(versions.contains(&"v1.1".into()) && versions.contains(&"r0.6.1".into()), "{versions:?}");
    assert!(!versions.contains(&"v1.4".into()), "{versions:?}");

    let head = send("HEAD", "/_matrix/client/versions", "").await;
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn unknown_endpoints_are_unrecognized() {
    for uri in ["/_matrix/client/v3/nope", "/_matrix/client/versions/extra", "/_matrix/", "/.well-known/matrix/nope"] {
        let response = send("GET", uri, "").await;
        assert_eq!(response.status(), 404, "{uri}");
        assert_cors(&response);
        let body = json(&response);
        assert_eq!(body["errcode"], "M_UNRECOGNIZED", "{uri}");
        assert!(body["error"].as_str().unwrap().contains(uri.split('?').next().unwrap()));
    }
}

#[tokio::test]
async fn a_known_endpoint_with_the_wrong_method_is_405() {
    for method in ["POST", "PUT", "DELETE"] {
        let response = send(method, "/_matrix/client/versions", "{}").await;
        assert_eq!(response.status(), 405, "{method}");
        assert_eq!(json(&response)["errcode"], "M_UNRECOGNIZED");
        assert_cors(&response);
    }
}

#[tokio::test]
async fn preflight_answers_any_path_with_cors_and_nothing_else() {
    for uri in ["/_matrix/client/versions", "/_matrix/client/v3/rooms/!a:b/send/m.room.message/1"] {
        let response = send("OPTIONS", uri, "").await;
        assert_eq!(response.status(), 200);
        assert!(response.body().is_empty());
        assert_cors(&response);
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused_before_routing() {
    let response = send("POST", "/_matrix/client/v3/login", vec![b' '; MAX_BODY_BYTES + 1]).await;
    assert_eq!(response.status(), 413);
    assert_eq!(json(&response)["errcode"], "M_TOO_LARGE");
    assert_cors(&response);
}

#[tokio::test]
async fn the_key_document_is_signed_by_the_key_the_name_spells() {
    let response = send("GET", "/_matrix/key/v2/server", "").await;
    assert_eq!(response.status(), 200);
    let document = json(&response);
    let name = document["server_name"].as_str().unwrap();
    assert!(name.len() == 64 && name.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert!(document["verify_keys"]["ed25519:glia"]["key"].is_string());
    assert!(document["valid_until_ts"].as_u64().unwrap() > 1_700_000_000_000);

    let server = ruma::ServerName::parse(name).unwrap();
    let keys = glia::core::identity::public_key_map([&*server]).unwrap();
    let object: ruma::CanonicalJsonObject = serde_json::from_value(document.clone()).unwrap();
    ruma::signatures::verify_json(&keys, &object).expect("signed by the key its name spells");

    let mut forged = object.clone();
    forged.insert("valid_until_ts".into(), ruma::CanonicalJsonValue::Integer(ruma::int!(1)));
    assert!(ruma::signatures::verify_json(&keys, &forged).is_err());
}

/// Endpoints that need no authentication answer a server that signs its
/// request anyway, and refuse an access token that is not live.
#[tokio::test]
async fn unauthenticated_endpoints_let_a_signature_be_and_refuse_a_dead_token() {
    let hs = homeserver().await;
    let asking = |authorization: &str| {
        http::Request::get("/_matrix/federation/v1/version")
            .header("authorization", authorization)
            .body(Bytes::new())
            .unwrap()
    };
    let signed = r#"X-Matrix origin="a",destination="b",key="ed25519:glia",sig="c""#;
    assert_eq!(hs.handle(asking(signed)).await.status(), 200);
    let dead = hs.handle(asking("Bearer nope")).await;
    assert_eq!((dead.status().as_u16(), json(&dead)["errcode"].clone()), (401, "M_UNKNOWN_TOKEN".into()));
}
