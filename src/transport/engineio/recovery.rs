//! Socket.IO connection state recovery (SPEC §12): what a session that lost
//! its transport leaves behind, under its `pid`, for `ttl_ms`, so that the
//! same client coming back gets its `sid` and subscriptions again and the
//! hub replays what it missed.
//!
//! The store is bounded (oldest out first) and swept as it is used, so it
//! needs no task of its own.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use std::time::Instant;

/// A session waiting for its client to come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// The Socket.IO socket id it had (the CONNECT reply's `sid`).
    pub sid: String,
    /// The history epoch it was opened under.
    pub epoch: String,
    /// The last offset routed before the pid was first handed out: nothing
    /// at or before it was ever meant for this session, so a replay never
    /// starts earlier, whatever offset the client sends.
    pub floor: u64,
    /// Its subscriptions when it was parked (emitted ones included).
    pub keys: Vec<(String, String)>,
    /// Its firehose flag.
    pub all: bool,
}

/// Parked sessions by pid.
#[derive(Debug, Default)]
pub struct Recovery {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// pid → (parking number, deadline, session).
    map: HashMap<String, (u64, Instant, Parked)>,
    /// (parking number, deadline, pid) in parking order; an entry whose pid
    /// was taken, or parked again since, has another number in the map and
    /// is skipped.
    order: VecDeque<(u64, Instant, String)>,
    parkings: u64,
    /// pid → Engine.IO sid of the live session holding it: a client whose
    /// old transport the relay has not seen die yet can take it over.
    live: HashMap<String, String>,
}

impl Recovery {
    /// Keeps `parked` under `pid` for `ttl`; at most `cap` sessions are
    /// kept, the oldest going first.
    pub fn park(&self, pid: String, parked: Parked, ttl: Duration, cap: usize) {
        self.park_at(Instant::now(), pid, parked, ttl, cap);
    }

    fn park_at(&self, now: Instant, pid: String, parked: Parked, ttl: Duration, cap: usize) {
        let deadline = now + ttl;
        let mut inner = self.lock();
        inner.sweep(now);
        while inner.map.len() >= cap.max(1) {
            if !inner.pop_oldest() {
                break;
            }
        }
        inner.parkings += 1;
        let n = inner.parkings;
        inner.order.push_back((n, deadline, pid.clone()));
        inner.map.insert(pid, (n, deadline, parked));
    }

    /// The session parked under `pid`, if it is there and its time is not
    /// up; it is removed either way (a pid recovers once).
    pub fn take(&self, pid: &str) -> Option<Parked> {
        self.take_at(Instant::now(), pid)
    }

    fn take_at(&self, now: Instant, pid: &str) -> Option<Parked> {
        let mut inner = self.lock();
        inner.sweep(now);
        let (_, deadline, parked) = inner.map.remove(pid)?;
        (deadline > now).then_some(parked)
    }

    /// Records that the live session `engine_sid` holds `pid`.
    pub fn hold(&self, pid: &str, engine_sid: &str) {
        self.lock()
            .live
            .insert(pid.to_owned(), engine_sid.to_owned());
    }

    /// The live session holding `pid`, if any.
    pub fn holder(&self, pid: &str) -> Option<String> {
        self.lock().live.get(pid).cloned()
    }

    /// The session `engine_sid` ended: it no longer holds `pid` (unless a
    /// newer session took the pid over meanwhile).
    pub fn release(&self, pid: &str, engine_sid: &str) {
        let mut inner = self.lock();
        if inner.live.get(pid).is_some_and(|s| s == engine_sid) {
            inner.live.remove(pid);
        }
    }

    /// Sessions parked now (expired ones are swept first).
    pub fn len(&self) -> usize {
        let mut inner = self.lock();
        inner.sweep(Instant::now());
        inner.map.len()
    }

    /// True when nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// Drops expired entries from the front. Deadlines are in parking order
    /// unless `ttl_ms` was lowered by a reload; an entry that expires out of
    /// order is still refused by `take` and leaves when it reaches the front.
    fn sweep(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(_, d, _)| *d <= now) {
            self.pop_oldest();
        }
    }

    /// Removes the oldest entry; false when there is none.
    fn pop_oldest(&mut self) -> bool {
        let Some((n, _, pid)) = self.order.pop_front() else {
            return false;
        };
        if self.map.get(&pid).is_some_and(|(m, _, _)| *m == n) {
            self.map.remove(&pid);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(sid: &str) -> Parked {
        Parked {
            sid: sid.into(),
            epoch: "e".into(),
            floor: 3,
            keys: vec![("agentId".into(), "a".into())],
            all: false,
        }
    }

    #[test]
    fn a_pid_recovers_once_and_only_in_time() {
        let r = Recovery::default();
        let t = Instant::now();
        let ttl = Duration::from_secs(2);
        r.park_at(t, "p1".into(), parked("s1"), ttl, 10);
        r.park_at(t, "p2".into(), parked("s2"), ttl, 10);
        assert_eq!(r.take_at(t, "p1"), Some(parked("s1")));
        assert_eq!(r.take_at(t, "p1"), None, "a pid recovers once");
        assert_eq!(r.take_at(t, "nope"), None);
        assert_eq!(r.take_at(t + Duration::from_secs(3), "p2"), None, "expired");
        assert!(r.is_empty());
    }

    #[test]
    fn bounded_oldest_first_and_reparking_keeps_the_newest() {
        let r = Recovery::default();
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        let ttl = Duration::from_secs(10);
        r.park_at(at(0), "p1".into(), parked("s1"), ttl, 2);
        r.park_at(at(1), "p2".into(), parked("s2"), ttl, 2);
        r.park_at(at(1), "p3".into(), parked("s3"), ttl, 2);
        assert_eq!(r.len(), 2);
        assert_eq!(r.take_at(at(1), "p1"), None, "the oldest made room");
        // Parked again (a recovered session lost its transport again): when
        // the first parking's deadline passes, its stale order entry must
        // not take the second one with it.
        assert_eq!(r.take_at(at(1), "p2"), Some(parked("s2")));
        r.park_at(at(6), "p2".into(), parked("s2b"), ttl, 3);
        r.park_at(at(12), "p4".into(), parked("s4"), ttl, 3);
        assert_eq!(r.take_at(at(12), "p3"), None, "p3's ttl ran out");
        assert_eq!(r.take_at(at(12), "p2"), Some(parked("s2b")));
        assert_eq!(r.take_at(at(12), "p4"), Some(parked("s4")));
    }

    #[test]
    fn a_pid_is_held_by_its_latest_session() {
        let r = Recovery::default();
        r.hold("p", "old");
        r.hold("p", "new");
        r.release("p", "old");
        assert_eq!(
            r.holder("p").as_deref(),
            Some("new"),
            "the takeover keeps it"
        );
        r.release("p", "new");
        assert_eq!(r.holder("p"), None);
    }
}
