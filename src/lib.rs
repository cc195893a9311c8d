//! glia: a Matrix homeserver that runs in a browser Service Worker and natively.
//!
//! The [`core`] is sans-I/O: it turns `http::Request`s into `http::Response`s over a
//! [`store::Store`]. Platform shells wrap it: [`web`] for the Service Worker,
//! [`native`] for the `glia` binary.

#[cfg(feature = "bench")]
pub mod bench;
pub mod core;
#[cfg(not(target_arch = "wasm32"))]
pub mod native;
pub mod p2p;
pub mod store;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use crate::core::Homeserver;
