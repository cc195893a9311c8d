//! `glia serve`: the built web app (shell page, Service Worker, wasm) as static files.

use std::path::{Path, PathBuf};

use axum::http::{header, HeaderName, HeaderValue};
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
        // Revalidate every time: a stale worker or wasm after a rebuild is a
        // confusing bug, and the files are served from localhost.
        .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
}
