//! Rate limits: a token bucket of `rate` tokens per second holding up to twice that.

use std::time::Instant;

#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate_per_sec: u32) -> Self {
        let rate = f64::from(rate_per_sec.max(1));
        Self {
            rate,
            burst: rate * 2.0,
            tokens: rate * 2.0,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.last = now;
    }

    /// Takes a token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is there (`None`: there is one now). Takes nothing.
    pub(crate) fn wait(&mut self, now: Instant) -> Option<std::time::Duration> {
        self.refill(now);
        (self.tokens < 1.0)
            .then(|| std::time::Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }

    pub(crate) fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10);
        let taken = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(taken, 20, "a burst of twice the rate");
        assert!(!b.take(t0));
        assert!(
            b.take(t0 + Duration::from_millis(150)),
            "refills at the rate"
        );
    }

    #[test]
    fn says_how_long_until_a_token() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10);
        assert_eq!(b.wait(t0), None);
        while b.take(t0) {}
        let w = b.wait(t0).unwrap();
        assert!(
            w > Duration::from_millis(90) && w <= Duration::from_millis(100),
            "{w:?}"
        );
        assert_eq!(b.wait(t0 + w), None, "a token is back after that long");
    }
}
