//! `glia serve`: the built web app (shell page, Service Worker, wasm) as static files.

use std::path::{Path, PathBuf};

use axum::{
    extract::Request,
    http::{header, HeaderName, HeaderValue},
    middleware::{self, Next},
    response::Response,
};
use tower_http::{services::ServeDir, set_header::SetResponseHeaderLayer};

/// Files that must be present for the app to run; their absence means the web app
/// was never built.
const REQUIRED: &[&str] = &["index.html", "sw.js", "pkg/glia.js", "pkg/glia_bg.wasm"];

#[derive(Debug, thiserror::Error)]
#[error("{root} holds no built web app ({missing} is missing): run `scripts/build-web` first")]
pub struct NotBuilt {
    root: String,
    missing: &'static str,
}

/// Checks `root` holds a built web app.
pub fn check_root(root: &Path) -> Result<(), NotBuilt> {
    match REQUIRED.iter().find(|file| !root.join(file).is_file()) {
        Some(missing) => Err(NotBuilt { root: root.display().to_string(), missing }),
        None => Ok(()),
    }
}

pub fn router(root: PathBuf) -> axum::Router {
    // ServeDir takes MIME types from extensions (`.wasm` → `application/wasm`, which
    // streaming compilation insists on).
    axum::Router::new()
        .fallback_service(ServeDir::new(root))
        // The worker script lives at the root, but allow scope `/` explicitly so the
        // app can be moved under a prefix without the worker losing its pages.
        .layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("service-worker-allowed"),
            HeaderValue::from_static("/"),
        ))
        .layer(middleware::from_fn(cache_control))
}

/// Files asked for under their build (`?v=`, as the worker asks for its glue
/// and its wasm) never change: browsers keep them without asking again, which
/// spares each start of a worker a round trip to this server. Everything else
/// is revalidated every time: a stale worker after a rebuild is a confusing bug.
async fn cache_control(request: Request, next: Next) -> Response {
    let versioned = request.uri().query().is_some_and(|query| query.split('&').any(|pair| pair.starts_with("v=")));
    let mut response = next.run(request).await;
    let policy = match versioned && response.status().is_success() {
        true => "public, max-age=31536000, immutable",
        false => "no-cache",
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(policy));
    response
}
