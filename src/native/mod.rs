//! The native shells: the HTTP server of `glia node`, the static web app server
//! of `glia serve`, the relay of `glia relay` and a node's links to relays.
//! Each server is a `run(listener, shutdown)` testable on `127.0.0.1:0`.

pub mod node;
pub mod peer;
pub mod relay;
pub mod web;

use std::future::Future;

use tokio::net::TcpListener;

/// Serves `router` on `listener` until `shutdown` resolves, letting requests in
/// flight finish.
pub async fn run(
    listener: TcpListener,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
