//! "At most one log line per interval" for things a client or a broker can
//! make happen at any rate (refused handshakes, bad payloads).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets one event through per `every`; counts the ones it suppressed.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimit {
    /// A limiter allowing one event per `every`.
    pub const fn new(every: Duration) -> Self {
        RateLimit {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed since the last one)` when this event may be logged.
    pub fn check(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if s.0.is_none_or(|t| now.duration_since(t) >= self.every) {
            let suppressed = s.1;
            *s = (Some(now), 0);
            Some(suppressed)
        } else {
            s.1 += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_per_interval_and_counts_the_rest() {
        let r = RateLimit::new(Duration::from_secs(3600));
        assert_eq!(r.check(), Some(0));
        assert_eq!(r.check(), None);
        assert_eq!(r.check(), None);
        let r = RateLimit::new(Duration::ZERO);
        assert_eq!(r.check(), Some(0));
        assert_eq!(r.check(), Some(0));
    }
}
