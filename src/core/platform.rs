//! What the core asks of its platform besides storage: the time, timers,
//! randomness and thumbnails.

use std::{future::Future, pin::Pin};

use crate::{
    core::service::media::{Fit, MediaError},
    store::SendSync,
};

/// A timer's future: `Send` natively, where requests run on a thread pool.
#[cfg(not(target_arch = "wasm32"))]
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send>>;
#[cfg(target_arch = "wasm32")]
pub type Sleep = Pin<Box<dyn Future<Output = ()>>>;

pub trait Clock: SendSync {
    /// Milliseconds since the Unix epoch, as Matrix timestamps count them.
    fn now_millis(&self) -> u64;

    /// Resolves after `millis` milliseconds: long-polls and typing notices end on it.
    fn sleep(&self, millis: u64) -> Sleep;
}

pub trait Random: SendSync {
    fn fill(&self, buf: &mut [u8]);
}

/// Makes thumbnails of image files: natively with the `image` crate
/// ([`crate::core::service::media::ImageCrate`]); in the browser with its own
/// decoders, which are faster there and keep a megabyte of them out of the wasm.
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
pub trait Thumbnailer: SendSync {
    /// A thumbnail at most `width`×`height` (exactly that, cropped, with
    /// [`Fit::Crop`]), never larger than the image; its content type and bytes.
    async fn thumbnail(&self, file: &[u8], width: u32, height: u32, fit: Fit) -> Result<(String, Vec<u8>), MediaError>;
}

/// The wall clock; `web_time` reads `Date.now()` on wasm32, where
/// `std::time::SystemTime::now()` panics.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn sleep(&self, millis: u64) -> Sleep {
        Box::pin(tokio::time::sleep(std::time::Duration::from_millis(millis)))
    }

    /// `setTimeout` of whatever global scope runs the wasm: a Service Worker's, a
    /// page's, or a test runner's.
    #[cfg(target_arch = "wasm32")]
    fn sleep(&self, millis: u64) -> Sleep {
        use wasm_bindgen::{JsCast, JsValue};
        let promise = js_sys::Promise::new(&mut |resolve, _reject| {
            let global = js_sys::global();
            let set_timeout = js_sys::Reflect::get(&global, &JsValue::from_str("setTimeout"))
                .ok()
                .and_then(|f| f.dyn_into::<js_sys::Function>().ok());
            let millis = JsValue::from_f64(millis.min(i32::MAX as u64) as f64);
            match set_timeout {
                Some(set_timeout) => drop(set_timeout.call2(&global, &resolve, &millis)),
                // No timers in this scope: resolve at once rather than never.
                None => drop(resolve.call0(&JsValue::UNDEFINED)),
            }
        });
        let future = wasm_bindgen_futures::JsFuture::from(promise);
        Box::pin(async move {
            let _ = future.await;
        })
    }
}

/// The platform's cryptographic randomness: the OS natively, `crypto.getRandomValues`
/// in the browser.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsRandom;

impl Random for OsRandom {
    fn fill(&self, buf: &mut [u8]) {
        // Without randomness a node can make neither keys nor tokens; there is no
        // sensible way to go on.
        getrandom::fill(buf).expect("the platform's random source failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_after_2024() {
        assert!(SystemClock.now_millis() > 1_704_067_200_000);
    }

    #[test]
    fn random_fills_differently() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        OsRandom.fill(&mut a);
        OsRandom.fill(&mut b);
        assert_ne!(a, b);
    }
}
