//! The ring of recent routed events (SPEC §12), owned by the hub task.
//!
//! Events are kept as the same `Arc<Event>` the live path routes, frames
//! included, so history costs a pointer per event, not a copy. Offsets are
//! one sequence per relay process under a random epoch; a source gap is
//! remembered, so a resume from before it is honestly refused.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::HistoryConfig;
use crate::event::{Event, ROOM_FIELD};
use crate::util::id::random_u64;

/// Bookkeeping per kept event beyond its strings (the `Arc`, the deque slot).
const EVENT_OVERHEAD: usize = 64;

/// Why a resume cannot be honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// History is off.
    Off,
    /// Another relay's, or an earlier run's, epoch.
    Epoch,
    /// An offset this relay never handed out.
    Future,
    /// A source gap happened after the offset.
    Gap,
    /// Events after the offset were evicted.
    Evicted,
}

/// The ring and the offset sequence.
pub struct History {
    epoch: Arc<str>,
    ring: VecDeque<Arc<Event>>,
    bytes: usize,
    /// The last offset handed out (0: none yet).
    last: u64,
    /// The last offset handed out before the most recent source gap: a
    /// client whose last event is at or before it may have missed what the
    /// source lost.
    gap_at: Option<u64>,
    limits: HistoryConfig,
}

impl History {
    /// An empty history under a fresh random epoch.
    pub fn new(limits: HistoryConfig) -> Self {
        History {
            epoch: Arc::from(format!("{:016x}", random_u64())),
            ring: VecDeque::new(),
            bytes: 0,
            last: 0,
            gap_at: None,
            limits,
        }
    }

    /// True while events get offsets and are kept.
    pub fn enabled(&self) -> bool {
        self.limits.enabled()
    }

    /// This run's epoch.
    pub fn epoch(&self) -> &Arc<str> {
        &self.epoch
    }

    /// The last offset routed.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Events and bytes kept, for the gauges.
    pub fn size(&self) -> (usize, usize) {
        (self.ring.len(), self.bytes)
    }

    /// New bounds from a reload; the ring is kept and trimmed to them.
    pub fn set_limits(&mut self, limits: HistoryConfig) {
        self.limits = limits;
        if !self.enabled() {
            self.ring.clear();
            self.bytes = 0;
        }
        self.evict(Instant::now());
    }

    /// Gives `event` the next offset (before it is shared), if history is on.
    pub fn assign(&mut self, event: &mut Event) {
        if self.enabled() {
            self.last += 1;
            event.offset = Some(self.last);
        }
    }

    /// Keeps a routed event.
    pub fn push(&mut self, event: Arc<Event>) {
        if !self.enabled() || event.offset.is_none() {
            return;
        }
        self.bytes += cost(&event);
        self.ring.push_back(event);
        self.evict(Instant::now());
    }

    /// A source lost events: no resume may cross this point.
    pub fn gap(&mut self) {
        self.gap_at = Some(self.last);
    }

    /// The kept events after `offset` of `epoch`, oldest first, or why
    /// they cannot all be replayed. O(log n + events returned).
    pub fn since(
        &mut self,
        epoch: &str,
        offset: u64,
    ) -> Result<impl Iterator<Item = &Arc<Event>>, Unavailable> {
        if !self.enabled() {
            return Err(Unavailable::Off);
        }
        if epoch != &*self.epoch {
            return Err(Unavailable::Epoch);
        }
        if offset > self.last {
            return Err(Unavailable::Future);
        }
        if self.gap_at.is_some_and(|g| offset <= g) {
            return Err(Unavailable::Gap);
        }
        self.evict(Instant::now());
        // Everything after `offset` must still be here: the oldest kept
        // event is at most offset + 1 (or nothing was routed since).
        let oldest = self
            .ring
            .front()
            .and_then(|e| e.offset)
            .unwrap_or(self.last + 1);
        if offset + 1 < oldest {
            return Err(Unavailable::Evicted);
        }
        // Offsets in the ring are consecutive, so the start is arithmetic.
        let skip = usize::try_from(offset + 1 - oldest).unwrap_or(usize::MAX);
        Ok(self.ring.iter().skip(skip))
    }

    fn evict(&mut self, now: Instant) {
        let ttl = Duration::from_millis(self.limits.ttl_ms);
        while let Some(front) = self.ring.front() {
            let over = self.ring.len() > self.limits.size
                || self.bytes > self.limits.max_bytes
                || now.saturating_duration_since(front.received) > ttl;
            if !over {
                break;
            }
            self.bytes -= cost(front);
            self.ring.pop_front();
        }
    }
}

/// What one kept event counts against `max_bytes`: name, payload, routing
/// keys, the frames cached on it, and a fixed overhead.
fn cost(e: &Event) -> usize {
    let data = match &e.data {
        crate::event::Data::Json(s) | crate::event::Data::Text(s) => s.len(),
        crate::event::Data::Args(a) => {
            a.native.len() + a.socketio.len() + a.attachments.iter().map(|b| b.len()).sum::<usize>()
        }
    };
    let keys: usize = e.keys.iter().map(|(f, v)| f.len() + v.len()).sum();
    // The frames built while routing it are kept too, shared with nobody
    // once the connections have written them.
    EVENT_OVERHEAD + e.name.len() + data + keys + e.frames_len()
}

/// Whether a connection with these subscriptions gets `event` (the hub's
/// routing rule, for replay): global, firehose, or a matching key — and not
/// in one of its `except` rooms.
pub fn matches(event: &Event, firehose: bool, subscribed: impl Fn(&str, &str) -> bool) -> bool {
    if event.except.iter().any(|r| subscribed(ROOM_FIELD, r)) {
        return false;
    }
    firehose || event.keys.is_empty() || event.keys.iter().any(|(f, v)| subscribed(f, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Data;

    fn ev(n: usize) -> Event {
        Event::new(
            format!("e{n}"),
            Data::Json("1".into()),
            Vec::new(),
            Instant::now(),
        )
    }

    fn on(size: usize) -> History {
        History::new(HistoryConfig {
            size,
            ..HistoryConfig::default()
        })
    }

    fn add(h: &mut History, n: usize) {
        for i in 0..n {
            let mut e = ev(i);
            h.assign(&mut e);
            h.push(Arc::new(e));
        }
    }

    fn offsets(h: &mut History, offset: u64) -> Result<Vec<u64>, Unavailable> {
        let epoch = h.epoch().clone();
        h.since(&epoch, offset)
            .map(|it| it.filter_map(|e| e.offset).collect())
    }

    #[test]
    fn resumes_return_exactly_what_followed_the_offset() {
        let mut h = on(100);
        assert_eq!(offsets(&mut h, 0), Ok(vec![]));
        add(&mut h, 5);
        assert_eq!(offsets(&mut h, 2), Ok(vec![3, 4, 5]));
        assert_eq!(offsets(&mut h, 5), Ok(vec![]));
        assert_eq!(offsets(&mut h, 6), Err(Unavailable::Future));
        assert_eq!(
            h.since("other", 1).map(|_| ()).unwrap_err(),
            Unavailable::Epoch
        );
    }

    #[test]
    fn eviction_by_count_bytes_and_a_gap_refuse_what_is_gone() {
        let mut h = on(3);
        add(&mut h, 5);
        assert_eq!(h.size().0, 3);
        assert_eq!(offsets(&mut h, 2), Ok(vec![3, 4, 5]));
        assert_eq!(offsets(&mut h, 1), Err(Unavailable::Evicted));
        h.gap();
        add(&mut h, 1);
        assert_eq!(offsets(&mut h, 4), Err(Unavailable::Gap));
        // At the gap itself: what the source lost came after it.
        assert_eq!(offsets(&mut h, 5), Err(Unavailable::Gap));
        add(&mut h, 0);
        assert_eq!(offsets(&mut h, 6), Ok(vec![]));

        let mut h = History::new(HistoryConfig {
            size: 1000,
            max_bytes: 3 * (EVENT_OVERHEAD + 3),
            ..HistoryConfig::default()
        });
        add(&mut h, 10);
        assert_eq!(h.size(), (3, 3 * (EVENT_OVERHEAD + 3)));
    }

    #[test]
    fn off_assigns_nothing_and_a_reload_keeps_the_ring() {
        let mut h = History::new(HistoryConfig::default());
        let mut e = ev(0);
        h.assign(&mut e);
        assert_eq!(e.offset, None);
        assert_eq!(offsets(&mut h, 0), Err(Unavailable::Off));
        let mut h = on(10);
        add(&mut h, 6);
        h.set_limits(HistoryConfig {
            size: 4,
            ..HistoryConfig::default()
        });
        assert_eq!(offsets(&mut h, 2), Ok(vec![3, 4, 5, 6]));
    }

    #[test]
    fn ten_mib_through_a_one_mib_ring_stays_within_it_frames_included() {
        let mut h = History::new(HistoryConfig {
            size: 1_000_000,
            max_bytes: 1 << 20,
            ..HistoryConfig::default()
        });
        let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1000));
        for _ in 0..10 * 1024 {
            let mut e = Event::new(
                "e",
                Data::Json(payload.as_str().into()),
                Vec::new(),
                Instant::now(),
            );
            h.assign(&mut e);
            // Routed first: the native frame is built and kept with it.
            let _ = crate::wire::Wire::Studio.event_frame(&e);
            h.push(Arc::new(e));
            assert!(h.size().1 <= 1 << 20);
        }
        let (events, bytes) = h.size();
        assert!(bytes > (1 << 20) - 4096, "full: {bytes}");
        assert!(
            (400..600).contains(&events),
            "about 1 MiB / 2 KiB: {events}"
        );
    }

    #[test]
    fn expired_events_are_dropped() {
        let mut h = History::new(HistoryConfig {
            size: 10,
            ttl_ms: 1,
            ..HistoryConfig::default()
        });
        let mut e = ev(0);
        e.received = Instant::now() - Duration::from_millis(50);
        h.assign(&mut e);
        h.push(Arc::new(e));
        assert_eq!(h.size().0, 0);
        assert_eq!(offsets(&mut h, 0), Err(Unavailable::Evicted));
    }
}
