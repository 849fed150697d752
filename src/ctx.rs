//! Small handles the tasks share, each for one concern: the live config,
//! admission against `max_connections`, source health, connection ids.
//! Every module takes just the handles it needs, so none depends on the
//! wiring in [`app`](crate::app).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::config::Config;
use crate::util::id::InstanceId;

/// The current configuration; reloads replace it.
#[derive(Debug, Clone)]
pub struct Live(watch::Receiver<Arc<Config>>);

impl Live {
    /// A handle following `rx`.
    pub fn new(rx: watch::Receiver<Arc<Config>>) -> Self {
        Live(rx)
    }

    /// A fixed configuration that never reloads (tests, tools).
    pub fn fixed(config: Config) -> Self {
        let (tx, rx) = watch::channel(Arc::new(config));
        // Keeping the sender alive is not needed: `borrow` still works.
        drop(tx);
        Live(rx)
    }

    /// The latest configuration.
    pub fn get(&self) -> Arc<Config> {
        self.0.borrow().clone()
    }

    /// The underlying receiver, for tasks that wait for reloads.
    pub fn watch(&self) -> watch::Receiver<Arc<Config>> {
        self.0.clone()
    }
}

/// Counts client sessions across all listeners against `max_connections`,
/// and stops admitting any once the relay drains.
#[derive(Debug, Default)]
pub struct Admission {
    open: AtomicUsize,
    closed: AtomicBool,
}

impl Admission {
    /// Takes a slot if fewer than `max` are held.
    pub fn try_acquire(self: &Arc<Self>, max: usize) -> Option<Permit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                admission: self.clone(),
            })
    }

    /// Sessions holding a slot now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// From now on no new session is admitted (the relay is draining);
    /// slots already held stay until their sessions end.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// True once [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// A slot counted against `max_connections`, released on drop.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether each configured source is live, and whether the relay is
/// draining; `/healthz` reads it. Any source registers itself by name and
/// sets its own flag.
#[derive(Debug, Default)]
pub struct Health {
    sources: Mutex<Vec<(&'static str, Arc<AtomicBool>)>>,
    draining: AtomicBool,
}

impl Health {
    /// The relay is shutting down: `/healthz` fails from now on, so a load
    /// balancer stops sending new clients before the open ones are closed.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// True once the shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Adds a source (down until it says otherwise) and returns its flag.
    pub fn register(&self, name: &'static str) -> SourceHealth {
        let flag = Arc::new(AtomicBool::new(false));
        self.lock().push((name, flag.clone()));
        SourceHealth { flag, gauge: None }
    }

    /// Each registered source with whether it is up, in registration order.
    pub fn sources(&self) -> Vec<(&'static str, bool)> {
        self.lock()
            .iter()
            .map(|(n, f)| (*n, f.load(Ordering::Acquire)))
            .collect()
    }

    /// True when every registered source is up.
    pub fn all_up(&self) -> bool {
        self.lock().iter().all(|(_, f)| f.load(Ordering::Acquire))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, Arc<AtomicBool>)>> {
        self.sources.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One source's up/down flag, mirrored into its `relay_source_up` gauge.
#[derive(Debug, Clone)]
pub struct SourceHealth {
    flag: Arc<AtomicBool>,
    gauge: Option<Gauge>,
}

impl SourceHealth {
    /// Also reports the flag through `gauge` (1 up, 0 down).
    pub fn with_gauge(mut self, gauge: Gauge) -> Self {
        gauge.set(i64::from(self.is_up()));
        self.gauge = Some(gauge);
        self
    }

    /// Marks the source live or not.
    pub fn set(&self, up: bool) {
        self.flag.store(up, Ordering::Release);
        if let Some(g) = &self.gauge {
            g.set(i64::from(up));
        }
    }

    /// True while the source is live.
    pub fn is_up(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }
}

/// Relay-wide connection number, the hub's key.
pub type ConnId = u64;

/// Hands out connection ids: a number for the hub and `<instance>-<n>` for
/// clients and logs, unique across relays sharing a broker.
#[derive(Debug)]
pub struct ConnIds {
    instance: InstanceId,
    next: AtomicU64,
}

impl ConnIds {
    /// Ids under `instance`.
    pub fn new(instance: InstanceId) -> Self {
        ConnIds {
            instance,
            next: AtomicU64::new(0),
        }
    }

    /// A fresh id.
    pub fn next(&self) -> ConnName {
        let num = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        ConnName {
            num,
            text: format!("{}-{num}", self.instance),
        }
    }
}

/// A connection's number plus its printable form.
#[derive(Debug, Clone)]
pub struct ConnName {
    /// Hub key.
    pub num: ConnId,
    /// `<instance>-<num>`.
    pub text: String,
}

impl fmt::Display for ConnName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_bounded_and_released_on_drop() {
        let a = Arc::new(Admission::default());
        let p1 = a.try_acquire(2).unwrap();
        let _p2 = a.try_acquire(2).unwrap();
        assert!(a.try_acquire(2).is_none());
        drop(p1);
        assert_eq!(a.open(), 1);
        assert!(a.try_acquire(2).is_some());
        a.close();
        assert!(a.is_closed());
    }

    #[test]
    fn health_is_up_only_when_every_source_is() {
        let h = Health::default();
        assert!(h.all_up(), "no source configured: nothing is down");
        let r = h.register("redis");
        let n = h.register("nats");
        assert!(!h.all_up());
        r.set(true);
        n.set(true);
        assert!(h.all_up());
        n.set(false);
        assert_eq!(h.sources(), vec![("redis", true), ("nats", false)]);
        assert!(!h.is_draining());
        h.set_draining();
        assert!(h.is_draining());
    }

    #[test]
    fn conn_ids_are_unique_and_prefixed() {
        let ids = ConnIds::new(InstanceId::random());
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a.num, b.num);
        assert!(a.text.ends_with("-1") && b.text.ends_with("-2"));
    }
}
