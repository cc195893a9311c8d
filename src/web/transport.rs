//! The worker's side of the page transport: frames leave through the page that
//! owns the relay connections (a Service Worker cannot keep a socket, and
//! `RTCPeerConnection` does not exist in one) by `postMessage`, and come back
//! the same way (see `www/transport.js`).

use js_sys::{Function, Uint8Array};
use wasm_bindgen::JsValue;

use crate::p2p::{PeerKey, Transport, TransportError};

/// Posts frames to the worker's pages with a function `sw.js` gives; the page
/// that owns the transport sends them on, the others ignore them.
pub struct PageTransport {
    post: Function,
}

impl PageTransport {
    pub fn new(post: Function) -> Self {
        Self { post }
    }
}

impl Transport for PageTransport {
    fn send(&self, destination: PeerKey, frame: bytes::Bytes) -> Result<(), TransportError> {
        let bytes = Uint8Array::from(frame.as_ref());
        self.post.call1(&JsValue::NULL, &bytes).map(drop).map_err(|err| TransportError {
            to: destination,
            reason: err.as_string().unwrap_or_else(|| "the page could not take the frame".into()),
        })
    }
}
