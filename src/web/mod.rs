//! The Service Worker's entry points: `sw.js` opens a [`WorkerNode`] and hands it
//! every `/_matrix` and `/.well-known/matrix` fetch.

#[cfg(feature = "bench")]
mod bench;
mod thumbnail;
mod transport;

use std::{cell::RefCell, rc::Rc, sync::Arc};

use bytes::Bytes;
use futures_util::StreamExt;
use js_sys::{Array, Promise, Uint8Array};
use wasm_bindgen::{prelude::*, JsCast};
use wasm_bindgen_futures::{future_to_promise, JsFuture};
use web_sys::{
    Headers, ReadableStream, ReadableStreamDefaultController, ReadableStreamDefaultReader, Request, Response,
    ResponseInit, Url,
};

use ruma::serde::{base64::Standard, Base64};

use crate::{
    core::{Body, BodyError, Homeserver, OsRandom, SystemClock, SCHEMA},
    p2p::{Delivery, Inbound, PeerKey},
    store::IndexedDbStore,
};

/// The IndexedDB database holding a browser node's store.
const DATABASE: &str = "glia";

/// The longest a `/sync` waits in the worker: well inside the time a browser
/// lets a fetch event run before it may stop the worker.
const LONG_POLL_MS: u64 = 20_000;

#[wasm_bindgen]
pub struct WorkerNode {
    homeserver: Rc<Homeserver>,
}

#[wasm_bindgen]
impl WorkerNode {
    /// Opens the node over its IndexedDB store, creating or upgrading it.
    // The core shares its store in an `Arc`, which natively crosses threads;
    // the worker has one thread, and IndexedDB handles are not `Send`.
    #[allow(clippy::arc_with_non_send_sync)]
    pub async fn open() -> Result<WorkerNode, JsError> {
        let store = IndexedDbStore::open(DATABASE, SCHEMA).await?;
        let mut homeserver = Homeserver::open(Arc::new(store), Arc::new(SystemClock), Arc::new(OsRandom)).await?;
        homeserver.cap_long_polls(LONG_POLL_MS);
        homeserver.make_thumbnails_with(Arc::new(thumbnail::BrowserThumbnailer));
        let homeserver = Rc::new(homeserver);
        // For as long as the worker lives; a new worker resumes from the store.
        // With no transport attached yet it only empties the outbox of rooms
        // no other node is in, and keeps the rest queued for when one is.
        let background = homeserver.clone();
        wasm_bindgen_futures::spawn_local(async move { background.run_background().await });
        Ok(WorkerNode { homeserver })
    }

    /// Sends frames to other nodes through `post(bytes)`, which hands them to
    /// the page that owns the relay connections.
    pub fn attach(&self, post: js_sys::Function) {
        self.homeserver.attach(Arc::new(transport::PageTransport::new(post)));
    }

    /// A frame from another node, from the page: resolves once it is handled,
    /// `true` if a relay's mailbox may forget it.
    pub fn receive(&self, frame: Uint8Array) -> Promise {
        let homeserver = self.homeserver.clone();
        let admitted = homeserver.admit(Inbound::Frame(Bytes::from(frame.to_vec())));
        future_to_promise(async move { Ok(homeserver.answer(admitted).await.into()) })
    }

    /// What the relay said of a frame this node sent (`to` in hex): kept in
    /// the destination's mailbox, or refused with `reason`.
    pub fn delivery(&self, to: &str, id: u64, stored: bool, reason: String) {
        let Some(to) = crate::p2p::relay::parse_key(to) else { return };
        let delivery = if stored { Delivery::Stored } else { Delivery::Failed(reason) };
        let _ = self.homeserver.admit(Inbound::Delivery { to, id, delivery });
    }

    /// The page reached a relay: whatever waits to be sent goes now.
    pub fn connected(&self) {
        self.homeserver.sender().retry_all();
    }

    /// The node's state for the shell's status panel: `{ queued, memory }`,
    /// what waits in the durable send queue and the bytes of the homeserver's
    /// wasm memory (which only grows).
    pub fn status(&self) -> Promise {
        let homeserver = self.homeserver.clone();
        future_to_promise(async move {
            let queued = homeserver.sender().queued(&homeserver).await.map_err(|err| JsError::new(&err.to_string()))?;
            let memory = core::arch::wasm32::memory_size(0) * 65_536;
            let status = js_sys::Object::new();
            js_sys::Reflect::set(&status, &"queued".into(), &(queued as f64).into())?;
            js_sys::Reflect::set(&status, &"memory".into(), &(memory as f64).into())?;
            Ok(status.into())
        })
    }

    /// The relay's challenge answered: this node's key (hex) and its signature
    /// of the nonce (base64), as `[key, sig]`.
    pub fn hello(&self, nonce: &str) -> Result<Array, JsError> {
        let nonce = Base64::<Standard>::parse(nonce).map_err(|err| JsError::new(&err.to_string()))?;
        let key = self.homeserver.key();
        let sig = key.sign(&crate::p2p::relay::hello_message(nonce.as_bytes()));
        let pair = Array::new();
        pair.push(&PeerKey::of(key).to_string().into());
        pair.push(&Base64::<Standard, _>::new(sig).encode().into());
        Ok(pair)
    }

    /// Answers a fetch event's request with the core's response.
    pub fn handle(&self, request: Request) -> Promise {
        let homeserver = self.homeserver.clone();
        future_to_promise(async move {
            let request = to_http(request)?;
            let response = homeserver.serve(request).await;
            Ok(from_http(response)?.into())
        })
    }
}

fn to_http(request: Request) -> Result<http::Request<Body>, JsValue> {
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
    let body = match request.body() {
        Some(stream) => Body::streamed(Box::pin(pieces(stream))),
        None => Body::from(Bytes::new()),
    };
    builder.body(body).map_err(|err| JsError::new(&err.to_string()).into())
}

/// A request body's pieces as the browser reads them, so an upload goes into
/// the store as it arrives and is never whole in the wasm's memory.
fn pieces(stream: ReadableStream) -> impl futures_util::Stream<Item = Result<Bytes, BodyError>> {
    let reader: ReadableStreamDefaultReader = stream.get_reader().unchecked_into();
    futures_util::stream::unfold(Some(reader), |reader| async move {
        let reader = reader?;
        let read = async {
            let result = JsFuture::from(reader.read()).await?;
            if js_sys::Reflect::get(&result, &"done".into())?.is_truthy() {
                return Ok(None);
            }
            let piece: Uint8Array = js_sys::Reflect::get(&result, &"value".into())?.unchecked_into();
            Ok::<_, JsValue>(Some(Bytes::from(piece.to_vec())))
        };
        match read.await {
            Ok(Some(piece)) => Some((Ok(piece), Some(reader))),
            Ok(None) => None,
            Err(err) => Some((Err(BodyError(err.as_string().unwrap_or_else(|| format!("{err:?}")))), None)),
        }
    })
}

fn from_http(response: http::Response<Body>) -> Result<Response, JsValue> {
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
    match body.try_into_bytes() {
        // Null-body statuses (204, 304) reject any body, even an empty one.
        Ok(bytes) => {
            let mut body = bytes.to_vec();
            Response::new_with_opt_u8_array_and_init((!body.is_empty()).then_some(&mut body[..]), &init)
        }
        Err(streamed) => Response::new_with_opt_readable_stream_and_init(Some(&readable(streamed)?), &init),
    }
}

/// A response body the browser reads as the core yields it: a piece each time
/// the reader wants one, so a download holds a chunk in memory, not the file.
fn readable(body: Body) -> Result<ReadableStream, JsValue> {
    let body = Rc::new(RefCell::new(Some(body)));
    let pull = Closure::<dyn FnMut(ReadableStreamDefaultController) -> Promise>::new(
        move |controller: ReadableStreamDefaultController| {
            let body = body.clone();
            future_to_promise(async move {
                // The browser pulls once at a time; taken out, it is not borrowed across the wait.
                let Some(mut pieces) = body.borrow_mut().take() else { return Ok(JsValue::UNDEFINED) };
                match pieces.next().await {
                    Some(Ok(piece)) => {
                        controller.enqueue_with_chunk(&Uint8Array::from(&piece[..]))?;
                        *body.borrow_mut() = Some(pieces);
                    }
                    Some(Err(err)) => controller.error_with_e(&JsError::new(&err.to_string()).into()),
                    None => controller.close()?,
                }
                Ok(JsValue::UNDEFINED)
            })
        },
    );
    let source = js_sys::Object::new();
    // Freed with the stream: wasm-bindgen drops closures the JS side no longer holds.
    js_sys::Reflect::set(&source, &"pull".into(), &pull.into_js_value())?;
    ReadableStream::new_with_underlying_source(&source)
}
