//! `glia node`: the core over a real HTTP server and the on-disk store, for
//! existing Matrix clients and SDKs at `http://localhost:8008`.

use std::{path::Path, sync::Arc};

use axum::{body::Body, extract::State, response::Response};

use futures_util::TryStreamExt;

use crate::{
    core::{self, error_response, BodyError, Error, Homeserver, OsRandom, SystemClock, SCHEMA},
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
    // The core reads the body: uploads as it arrives, the rest up to a limit.
    let request = request.map(|body| {
        let pieces = body.into_data_stream().map_err(|err| BodyError(err.to_string()));
        core::Body::streamed(Box::pin(pieces))
    });
    // On a task of its own: a client hanging up must not cancel a write half
    // done, which may be carrying other clients' events in the same commit.
    match tokio::spawn(async move { homeserver.serve(request).await }).await {
        Ok(response) => response.map(|body| match body.try_into_bytes() {
            Ok(bytes) => Body::from(bytes),
            Err(streamed) => Body::from_stream(streamed),
        }),
        Err(err) => error_response(Error::internal(format!("request handler failed: {err}"))).map(Body::from),
    }
}
