//! `glia node`: the core over a real HTTP server and the on-disk store, for
//! existing Matrix clients and SDKs at `http://localhost:8008`.

use std::{path::Path, sync::Arc};

use axum::{body::Body, extract::State, response::Response};

use crate::{
    core::{error_response, Error, Homeserver, OsRandom, SystemClock, SCHEMA},
    store::{DiskStore, StoreError},
};

/// The store's file inside a node's data directory.
const STORE_FILE: &str = "glia.redb";

/// Opens (creating if needed) the node whose data lives in `data_dir`.
pub async fn open(data_dir: &Path) -> Result<Homeserver, StoreError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|err| StoreError::Backend(format!("cannot create {}: {err}", data_dir.display())))?;
    let store = DiskStore::open(data_dir.join(STORE_FILE), SCHEMA).await?;
    Homeserver::open(Arc::new(store), Arc::new(SystemClock), Arc::new(OsRandom)).await
}

/// Every path goes to the core, which answers unknown ones with `M_UNRECOGNIZED`.
pub fn router(homeserver: Arc<Homeserver>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(homeserver)
}

async fn handle(State(homeserver): State<Arc<Homeserver>>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    // Up to the largest body any endpoint takes: the core holds each to its own.
    let limit = homeserver.max_body_bytes();
    let response = match axum::body::to_bytes(body, limit).await {
        // On a task of its own: a client hanging up must not cancel a write half
        // done, which may be carrying other clients' events in the same commit.
        Ok(body) => {
            let request = http::Request::from_parts(parts, body);
            tokio::spawn(async move { homeserver.handle(request).await })
                .await
                .unwrap_or_else(|err| error_response(Error::internal(format!("request handler failed: {err}"))))
        }
        // The only way reading a body in memory fails short of a dropped connection.
        Err(_) => error_response(Error::TooLarge { limit }),
    };
    response.map(Body::from)
}
