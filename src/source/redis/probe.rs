//! The liveness probe of SPEC §6: a PING on the subscriber connection and a
//! canary PUBLISH that must come back through the pattern subscription,
//! repeated every `liveness_interval_ms`, each bounded by
//! `liveness_timeout_ms`. A probe that is not answered in time ends the
//! session, so a hung or replaced server is noticed even while its TCP
//! socket looks fine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::{Message, Value};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::topology::Check;

/// Schedules probes and tells whether the current one passed or failed.
pub struct Liveness {
    /// Probe every `interval` (only the first probe runs when false).
    repeat: bool,
    interval: Duration,
    timeout: Duration,
    canary: String,
    instance: String,
    probe: Option<Probe>,
    next: Instant,
    tasks: JoinSet<()>,
}

/// A probe delayed by a backlog may be extended up to this many timeouts.
const MAX_EXTENSIONS: u32 = 10;

/// One probe in flight.
struct Probe {
    token: String,
    started: Instant,
    deadline: Instant,
    ping: oneshot::Receiver<Result<(), String>>,
    ping_done: bool,
    canary_seen: bool,
}

impl Liveness {
    /// A schedule whose first probe is due now.
    pub fn new(
        repeat: bool,
        interval: Duration,
        timeout: Duration,
        canary: String,
        instance: String,
    ) -> Self {
        Liveness {
            repeat,
            interval,
            timeout,
            canary,
            instance,
            probe: None,
            next: Instant::now(),
            tasks: JoinSet::new(),
        }
    }

    /// Starts a probe if one is due: always until the first one passed
    /// (`confirmed`), then every interval while repeating.
    pub fn start_if_due(
        &mut self,
        confirmed: bool,
        subscriber: &SubscriberClient,
        publisher: Option<&Client>,
        check: Option<&Arc<Check>>,
    ) {
        if self.probe.is_some() || (confirmed && !self.repeat) || Instant::now() < self.next {
            return;
        }
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let token = format!("{}:{}", self.instance, SEQ.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        let subscriber = subscriber.clone();
        let publisher = publisher.cloned();
        let with_canary = publisher.is_some();
        let check = check.cloned();
        let channel = self.canary.clone();
        let payload = token.clone();
        self.tasks.spawn(async move {
            let result = async {
                subscriber
                    .ping::<Value>(None)
                    .await
                    .map_err(|e| format!("liveness probe: ping: {}", e.details()))?;
                if let (Some(c), Some(p)) = (&check, &publisher) {
                    // The canary must go through the current master.
                    c.verify(p)
                        .await
                        .map_err(|e| format!("liveness probe: {e}"))?;
                }
                if let Some(p) = publisher {
                    p.publish::<Value, _, _>(channel, payload)
                        .await
                        .map_err(|e| format!("liveness probe: canary publish: {}", e.details()))?;
                }
                Ok(())
            }
            .await;
            let _ = tx.send(result);
        });
        let now = Instant::now();
        self.probe = Some(Probe {
            token,
            started: now,
            deadline: now + self.timeout,
            ping: rx,
            ping_done: false,
            canary_seen: !with_canary,
        });
    }

    /// True for the canary channel: its messages are the probe's, never
    /// an event. Marks the current probe's canary as seen.
    pub fn is_canary(&mut self, msg: &Message) -> bool {
        if *msg.channel != *self.canary {
            return false;
        }
        if let Some(p) = self.probe.as_mut() {
            if msg.value.as_str().is_some_and(|v| v == p.token) {
                p.canary_seen = true;
            }
        }
        true
    }

    /// A message arrived on the subscription: the connection delivers, and
    /// the canary may only be queued behind a burst (the PING reply and
    /// the canary come in stream order). Pushes the deadline to a timeout
    /// from now, at most `MAX_EXTENSIONS` timeouts after the start, so a
    /// busy relay is not mistaken for a dead Redis (a reconnect would lose
    /// events) while a stream that stops is still caught.
    pub fn saw_traffic(&mut self) {
        if let Some(p) = self.probe.as_mut() {
            let cap = p.started + self.timeout * MAX_EXTENSIONS;
            p.deadline = p.deadline.max((Instant::now() + self.timeout).min(cap));
        }
    }

    /// Resolves with the PING/publish half of the current probe; pending
    /// while there is none or it already answered.
    pub async fn ping_answer(&mut self) -> Result<(), String> {
        match self.probe.as_mut() {
            Some(p) if !p.ping_done => {
                let r = (&mut p.ping)
                    .await
                    .unwrap_or_else(|_| Err("probe task ended".into()));
                if r.is_ok() {
                    p.ping_done = true;
                }
                r
            }
            _ => std::future::pending().await,
        }
    }

    /// When to wake for the probe: its deadline (`overdue` = true) while
    /// one runs, else when the next one is due.
    pub fn wake_at(&self, confirmed: bool) -> Option<(Instant, bool)> {
        match &self.probe {
            Some(p) => Some((p.deadline, true)),
            None if confirmed && self.repeat => Some((self.next, false)),
            None => None,
        }
    }

    /// True once when the current probe has fully passed; schedules the next.
    pub fn passed(&mut self) -> bool {
        if self
            .probe
            .as_ref()
            .is_some_and(|p| p.ping_done && p.canary_seen)
        {
            self.probe = None;
            self.next = Instant::now() + self.interval;
            true
        } else {
            false
        }
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_extends_a_probe_but_only_up_to_the_cap() {
        let timeout = Duration::from_secs(1);
        let mut l = Liveness::new(true, timeout, timeout, "c".into(), "i".into());
        l.saw_traffic(); // no probe: nothing to extend
        let (_tx, rx) = oneshot::channel();
        let long_ago = Instant::now() - timeout * 20;
        l.probe = Some(Probe {
            token: "t".into(),
            started: long_ago,
            deadline: long_ago + timeout,
            ping: rx,
            ping_done: false,
            canary_seen: false,
        });
        l.saw_traffic();
        // Started 20 timeouts ago: capped at 10, so still overdue.
        assert_eq!(
            l.wake_at(true).map(|(at, _)| at),
            Some(long_ago + timeout * 10)
        );
        let now = Instant::now();
        if let Some(p) = l.probe.as_mut() {
            p.started = now;
            p.deadline = now + timeout;
        }
        std::thread::sleep(Duration::from_millis(20));
        l.saw_traffic();
        let at = l.wake_at(true).map(|(at, _)| at).unwrap_or(now);
        assert!(at > now + timeout, "extended past the first deadline");
    }
}
