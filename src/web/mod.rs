//! The Service Worker's entry points: `sw.js` opens a [`WorkerNode`] and hands it
//! every `/_matrix` and `/.well-known/matrix` fetch.

#[cfg(feature = "bench")]
mod bench;

use std::{rc::Rc, sync::Arc};

use bytes::Bytes;
use js_sys::{Array, Promise, Uint8Array};
use wasm_bindgen::{prelude::*, JsCast};
use wasm_bindgen_futures::{future_to_promise, JsFuture};
use web_sys::{Headers, Request, Response, ResponseInit, Url};

use crate::{
    core::{Homeserver, OsRandom, SystemClock, SCHEMA},
    store::IndexedDbStore,
};

/// The IndexedDB database holding a browser node's store.
const DATABASE: &str = "glia";

#[wasm_bindgen]
pub struct WorkerNode {
    homeserver: Rc<Homeserver>,
}

#[wasm_bindgen]
impl WorkerNode {
    /// Opens the node over its IndexedDB store, creating or upgrading it.
    pub async fn open() -> Result<WorkerNode, JsError> {
        let store = IndexedDbStore::open(DATABASE, SCHEMA).await?;
        let homeserver = Rc::new(Homeserver::open(Arc::new(store), Arc::new(SystemClock), Arc::new(OsRandom)).await?);
        // For as long as the worker lives; a new worker resumes from the store.
        // With no transport attached yet it only empties the outbox of rooms
        // no other node is in, and keeps the rest queued for when one is.
        let sender = homeserver.clone();
        wasm_bindgen_futures::spawn_local(async move { sender.run_sender().await });
        Ok(WorkerNode { homeserver })
    }

    /// Answers a fetch event's request with the core's response.
    pub fn handle(&self, request: Request) -> Promise {
        let homeserver = self.homeserver.clone();
        future_to_promise(async move {
            let request = to_http(request).await?;
            let response = homeserver.handle(request).await;
            Ok(from_http(response)?.into())
        })
    }
}

async fn to_http(request: Request) -> Result<http::Request<Bytes>, JsValue> {
    let url = Url::new(&request.url())?;
    let mut builder =
        http::Request::builder().method(request.method().as_str()).uri(format!("{}{}", url.pathname(), url.search()));
    for entry in js_sys::try_iter(&request.headers())?.into_iter().flatten() {
        let pair: Array = entry?.unchecked_into();
        if let (Some(name), Some(value)) = (pair.get(0).as_string(), pair.get(1).as_string()) {
            builder = builder.header(name, value);
        }
    }
    // The core sees only paths; this tells it the origin it answers for
    // (`/.well-known/matrix/client` points clients back at it).
    let scheme = url.protocol();
    builder = builder.header("forwarded", format!("host=\"{}\";proto={}", url.host(), scheme.trim_end_matches(':')));
    let body = JsFuture::from(request.array_buffer()?).await?;
    builder.body(Bytes::from(Uint8Array::new(&body).to_vec())).map_err(|err| JsError::new(&err.to_string()).into())
}

fn from_http(response: http::Response<Bytes>) -> Result<Response, JsValue> {
    let (parts, body) = response.into_parts();
    let headers = Headers::new()?;
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            headers.append(name.as_str(), value)?;
        }
    }
    let init = ResponseInit::new();
    init.set_status(parts.status.as_u16());
    init.set_headers(&headers);
    // Null-body statuses (204, 304) reject any body, even an empty one.
    let mut body = body.to_vec();
    Response::new_with_opt_u8_array_and_init((!body.is_empty()).then_some(&mut body[..]), &init)
}
