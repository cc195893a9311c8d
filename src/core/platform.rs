//! What the core asks of its platform besides storage: the time and randomness.

use crate::store::SendSync;

pub trait Clock: SendSync {
    /// Milliseconds since the Unix epoch, as Matrix timestamps count them.
    fn now_millis(&self) -> u64;
}

pub trait Random: SendSync {
    fn fill(&self, buf: &mut [u8]);
}

/// The wall clock; `web_time` reads `Date.now()` on wasm32, where
/// `std::time::SystemTime::now()` panics.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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
