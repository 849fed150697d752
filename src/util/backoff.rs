//! Capped exponential backoff with jitter, for every retry loop (broker
//! reconnects, failed accepts).

use std::time::Duration;

use super::id::random_u64;

/// Each delay is drawn from [d/2, d] where d doubles from `min` up to
/// `max`, so many relays restarting together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `min`, never above `max` (before jitter).
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The un-jittered delay the next call is based on.
    pub fn current(&self) -> Duration {
        self.next
    }

    /// The delay to sleep now; doubles the base for next time.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        half + Duration::from_micros(random_u64() % (half.as_micros() as u64 + 1))
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn doubles_with_jitter_and_is_capped() {
        let mut b = Backoff::new(MIN, MAX);
        let mut bases = Vec::new();
        for _ in 0..20 {
            let base = b.current();
            let d = b.next_delay();
            assert!(
                d >= base / 2 && d <= base,
                "{d:?} outside [{:?}, {base:?}]",
                base / 2
            );
            bases.push(base);
        }
        assert_eq!(bases[0], MIN);
        assert_eq!(bases[1], MIN * 2);
        assert_eq!(*bases.last().unwrap(), MAX);
        assert!(bases.iter().all(|d| *d <= MAX));
        let draws: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(MAX, MAX).next_delay())
            .collect();
        assert!(draws.len() > 1, "jitter must vary");
        b.reset();
        assert_eq!(b.current(), MIN);
    }
}
