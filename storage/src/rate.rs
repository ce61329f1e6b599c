//! The ingestion rate limit: a token bucket over request bytes, as Loki's and Mimir's
//! distributors keep one per tenant (`ingestion_rate_mb`, `ingestion_burst_size_mb`).

use std::time::Instant;

/// Up to `burst` bytes at once, refilled at `rate` bytes per second.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket; `rate` 0 is no limit.
    pub(crate) fn new(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        TokenBucket { rate: rate as f64, burst: burst as f64, tokens: burst as f64, refilled_at: now }
    }

    /// Takes `bytes` if the bucket holds them; otherwise takes nothing, so that a refused
    /// client that retries later is not refused for ever.
    pub(crate) fn try_take(&mut self, bytes: u64, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled_at = now;
        let bytes = bytes as f64;
        if bytes > self.tokens {
            return false;
        }
        self.tokens -= bytes;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_burst_passes_at_once_then_the_rate_refills_it() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, 5000, start);
        assert!(bucket.try_take(5000, start));
        assert!(!bucket.try_take(1, start), "the burst is spent");
        assert!(!bucket.try_take(600, start + Duration::from_millis(500)), "500 ms refill 500 bytes");
        assert!(bucket.try_take(500, start + Duration::from_millis(500)));
        // Never more than the burst, however long the pause.
        assert!(!bucket.try_take(5001, start + Duration::from_secs(3600)));
        assert!(bucket.try_take(5000, start + Duration::from_secs(3600)));
    }

    #[test]
    fn a_refused_request_takes_nothing() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100, 1000, start);
        assert!(!bucket.try_take(2000, start));
        assert!(bucket.try_take(1000, start), "the refusal left the tokens in place");
    }

    #[test]
    fn rate_zero_is_no_limit() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(0, 0, start);
        assert!(bucket.try_take(u64::MAX, start));
    }
}
