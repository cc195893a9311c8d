//! Rate limits on the endpoints that cost the node most or invite guessing:
//! registration and login. A token bucket per key, refilled with time.

use crate::core::lock;
use std::{collections::HashMap, sync::Mutex};

use super::Error;

pub struct RateLimit {
    /// Requests allowed at once.
    burst: f64,
    /// Requests regained per second.
    per_second: f64,
    buckets: Mutex<HashMap<String, (f64, u64)>>,
}

/// Keys a limiter remembers before it forgets the full buckets.
const KEYS: usize = 4096;

impl RateLimit {
    pub fn new(burst: u32, per_second: f64) -> Self {
        Self { burst: burst as f64, per_second, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one request from `key`'s bucket at time `now` (ms), or says how
    /// long to wait with `M_LIMIT_EXCEEDED`.
    pub fn check(&self, key: &str, now: u64) -> Result<(), Error> {
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= KEYS {
            let (burst, per_second) = (self.burst, self.per_second);
            buckets.retain(|_, (tokens, at)| *tokens + now.saturating_sub(*at) as f64 / 1000.0 * per_second < burst);
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.saturating_sub(*at) as f64 / 1000.0 * self.per_second).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let retry_after_ms = ((1.0 - *tokens) / self.per_second * 1000.0).ceil() as u64;
            Err(Error::LimitExceeded { retry_after_ms })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_empties_then_refills() {
        let limit = RateLimit::new(2, 1.0);
        assert!(limit.check("a", 0).is_ok());
        assert!(limit.check("a", 0).is_ok());
        match limit.check("a", 0) {
            Err(Error::LimitExceeded { retry_after_ms }) => assert_eq!(retry_after_ms, 1000),
            other => panic!("expected a limit, got {other:?}"),
        }
        assert!(limit.check("b", 0).is_ok(), "keys have their own buckets");
        assert!(limit.check("a", 1000).is_ok());
        assert!(limit.check("a", 1000).is_err());
    }
}
