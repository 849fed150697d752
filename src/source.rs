//! The Redis side: a reconnect loop around one PSUBSCRIBE session.
//!
//! Each session builds fresh fred clients (a subscriber, plus a publisher for
//! the canary), subscribes every pattern, and proves the subscription live
//! end to end before reporting Redis up: a PING on the subscriber connection
//! and a canary PUBLISH that must come back through the pattern. The same
//! probe repeats every `liveness_interval_ms`; a probe unanswered within
//! `liveness_timeout_ms` ends the session, so a hung or replaced server is
//! noticed even while the TCP socket looks fine. fred's own reconnect is not
//! used: owning the loop makes "down", "up again" and the `gap` frame exact.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::Config as FredConfig;
use fred::types::{Builder, Message, Value};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, RedisConfig};
use crate::event;
use crate::metrics::Metrics;
use crate::pattern::Pattern;
use crate::protocol::GapReason;
use crate::router::Ingest;

/// First reconnect delay.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Reconnect delays never exceed this (before jitter).
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// fred's broadcast buffer between its socket reader and us: roomy, so a
/// burst never makes the reader lag (a lag loses messages: see `Lagged`).
/// fred allocates every slot of each of its broadcast channels up front,
/// so this costs memory whether used or not; only the subscriber gets it.
const BROADCAST_CAPACITY: usize = 16 * 1024;
/// Broadcast capacity of the canary publisher, which receives nothing.
const PUBLISHER_CAPACITY: usize = 16;
/// While Redis stays down, repeat the warning at most this often.
const DOWN_LOG_EVERY: Duration = Duration::from_secs(60);
/// At most one "invalid payload" warning per this interval.
const INVALID_LOG_EVERY: Duration = Duration::from_secs(10);
/// Probe timeout when liveness probing is off (only the first probe runs).
const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the Redis subscription is live, read by `/healthz`.
#[derive(Debug, Default)]
pub struct RedisHealth {
    up: AtomicBool,
}

impl RedisHealth {
    /// True while the subscription is confirmed live.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }
}

/// The Redis subscriber: owns its clients and reconnect loop.
pub struct Source {
    redis: RedisConfig,
    patterns: Vec<Pattern>,
    canary: String,
    instance: String,
    live: watch::Receiver<Arc<Config>>,
    fields: Vec<Arc<str>>,
    out: mpsc::Sender<Ingest>,
    health: Arc<RedisHealth>,
    metrics: Arc<Metrics>,
    last_invalid_log: Option<Instant>,
}

/// How a session ended.
enum End {
    Shutdown,
    Lost { was_up: bool, why: String },
}

impl Source {
    /// A source for the Redis settings of `live` (fixed until restart; the
    /// routing fields follow reloads).
    pub fn new(
        live: watch::Receiver<Arc<Config>>,
        out: mpsc::Sender<Ingest>,
        health: Arc<RedisHealth>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let config = live.borrow().clone();
        let redis = config.redis.clone();
        let mut patterns: Vec<Pattern> = redis.patterns.iter().map(|p| Pattern::new(p)).collect();
        // The most specific pattern names the event when several match.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.prefix().len()));
        let canary = redis.effective_canary_channel();
        let fields = config
            .routing
            .fields
            .iter()
            .map(|f| Arc::from(f.as_str()))
            .collect();
        Source {
            redis,
            patterns,
            canary,
            instance: format!("{:016x}", random_u64()),
            live,
            fields,
            out,
            health,
            metrics,
            last_invalid_log: None,
        }
    }

    /// Subscribes, and resubscribes after every loss, until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut ever_up = false;
        let mut backoff = Backoff::default();
        let mut failures: u64 = 0;
        let mut last_down_log: Option<Instant> = None;
        loop {
            match self.session(&shutdown, ever_up).await {
                End::Shutdown => break,
                End::Lost { was_up, why } => {
                    self.set_up(false);
                    if was_up {
                        ever_up = true;
                        backoff = Backoff::default();
                        failures = 0;
                        tracing::warn!(reason = %why, "redis subscription lost; reconnecting");
                        last_down_log = Some(Instant::now());
                    } else {
                        failures += 1;
                        let due = last_down_log.is_none_or(|t| t.elapsed() >= DOWN_LOG_EVERY);
                        if due {
                            tracing::warn!(
                                reason = %why,
                                url = %self.redis.redacted_url(),
                                attempts = failures,
                                retry_in_ms = backoff.current().as_millis() as u64,
                                "redis unavailable; retrying with backoff"
                            );
                            last_down_log = Some(Instant::now());
                        } else {
                            tracing::debug!(reason = %why, attempts = failures, "redis connect failed");
                        }
                    }
                    let sleep = backoff.next_delay();
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(sleep) => {}
                    }
                }
            }
        }
        self.set_up(false);
    }

    fn set_up(&self, up: bool) {
        self.health.up.store(up, Ordering::Release);
        self.metrics.redis_up.set(i64::from(up));
    }

    fn probe_timeout(&self) -> Duration {
        if self.redis.liveness_interval_ms > 0 {
            Duration::from_millis(self.redis.liveness_timeout_ms)
        } else {
            DEFAULT_PROBE_TIMEOUT
        }
    }

    fn builder(&self, capacity: usize) -> Result<Builder, fred::error::Error> {
        let timeout = self.probe_timeout();
        let mut builder = Builder::from_config(FredConfig::from_url(&self.redis.url)?);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = timeout;
                c.internal_command_timeout = timeout;
                c.max_command_attempts = 1;
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = timeout;
                p.broadcast_channel_capacity = capacity;
            });
        Ok(builder)
    }

    /// One connection: subscribe, confirm, relay, probe. Returns why it ended.
    async fn session(&mut self, shutdown: &CancellationToken, ever_up: bool) -> End {
        let lost = |why: String| End::Lost { was_up: false, why };
        let timeout = self.probe_timeout();
        let liveness = self.redis.liveness_interval_ms > 0;
        let clients = self.builder(BROADCAST_CAPACITY).and_then(|b| {
            let sub = b.build_subscriber_client()?;
            let publ = match liveness {
                // The publisher never receives pub/sub messages.
                true => Some(self.builder(PUBLISHER_CAPACITY)?.build()?),
                false => None,
            };
            Ok((sub, publ))
        });
        let (subscriber, publisher) = match clients {
            Ok(c) => c,
            Err(e) => return lost(format!("client setup: {}", e.details())),
        };
        let mut messages = subscriber.message_rx();
        let mut tasks = Clients::default();
        let connect = async {
            tasks.sub = Some(subscriber.init().await?);
            if let Some(p) = &publisher {
                tasks.publ = Some(p.init().await?);
            }
            subscriber.psubscribe(self.redis.patterns.clone()).await
        };
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return End::Shutdown,
            r = tokio::time::timeout(timeout * 2, connect) => r,
        };
        match connected {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return lost(format!("connect: {}", e.details())),
            Err(_) => return lost("connect: timed out".into()),
        }
        let Some(mut sub_task) = tasks.sub.take() else {
            return lost("connect: no connection task".into());
        };

        let interval = Duration::from_millis(self.redis.liveness_interval_ms);
        let mut confirmed = false;
        let mut probe: Option<Probe> = None;
        let mut next_probe = tokio::time::Instant::now();
        let mut probe_tasks = JoinSet::new();
        let end = loop {
            if probe.is_none()
                && (liveness || !confirmed)
                && tokio::time::Instant::now() >= next_probe
            {
                probe = Some(Probe::start(
                    &mut probe_tasks,
                    &subscriber,
                    publisher.as_ref(),
                    &self.canary,
                    &self.instance,
                    timeout,
                ));
            }
            let probe_deadline = probe.as_ref().map(|p| p.deadline);
            tokio::select! {
                _ = shutdown.cancelled() => break End::Shutdown,
                r = &mut sub_task => {
                    let why = match r {
                        Ok(Err(e)) => format!("connection closed: {}", e.details()),
                        _ => "connection closed".to_owned(),
                    };
                    break End::Lost { was_up: confirmed, why };
                }
                msg = messages.recv() => match msg {
                    Ok(msg) => {
                        if let Some(p) = probe.as_mut() {
                            p.check_canary(&msg, &self.canary);
                        }
                        if let Err(()) = self.forward(msg).await {
                            break End::Shutdown;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.metrics.redis_lagged.inc_by(n);
                        tracing::warn!(skipped = n, "relay fell behind its redis reader; sending gap");
                        if self.out.send(Ingest::Gap(GapReason::RelayLagged)).await.is_err() {
                            break End::Shutdown;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        break End::Lost { was_up: confirmed, why: "message stream closed".into() };
                    }
                },
                r = ping_result(&mut probe), if probe.as_ref().is_some_and(|p| !p.ping_done) => {
                    match r {
                        Ok(()) => if let Some(p) = probe.as_mut() { p.ping_done = true },
                        Err(why) => break End::Lost { was_up: confirmed, why },
                    }
                }
                _ = sleep_until_opt(probe_deadline) => {
                    break End::Lost { was_up: confirmed, why: "liveness probe unanswered".into() };
                }
                _ = tokio::time::sleep_until(next_probe), if probe.is_none() && liveness && confirmed => {}
            }
            if probe.as_ref().is_some_and(Probe::done) {
                probe = None;
                next_probe = tokio::time::Instant::now() + interval;
                if !confirmed {
                    confirmed = true;
                    self.set_up(true);
                    if ever_up {
                        self.metrics.redis_reconnects.inc();
                        tracing::info!(patterns = ?self.redis.patterns, "redis subscription restored; sending gap");
                        if self
                            .out
                            .send(Ingest::Gap(GapReason::RedisReconnected))
                            .await
                            .is_err()
                        {
                            break End::Shutdown;
                        }
                    } else {
                        tracing::info!(
                            url = %self.redis.redacted_url(),
                            patterns = ?self.redis.patterns,
                            "redis subscription live"
                        );
                    }
                }
            }
        };
        probe_tasks.abort_all();
        // Quitting a hung server would wait for it: give it a moment, then drop.
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            let _ = subscriber.quit().await;
            if let Some(p) = &publisher {
                let _ = p.quit().await;
            }
        })
        .await;
        sub_task.abort();
        if let Some(t) = tasks.publ.take() {
            t.abort();
        }
        end
    }

    /// Turns one Redis message into an event for the hub.
    /// Err means the hub is gone (shutdown).
    async fn forward(&mut self, msg: Message) -> Result<(), ()> {
        let received = Instant::now();
        let channel: &str = &msg.channel;
        if channel == self.canary {
            return Ok(());
        }
        self.metrics.redis_messages.inc();
        let payload: &str = match &msg.value {
            Value::String(s) => s,
            Value::Null => "",
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => s,
                Err(_) => {
                    self.invalid("not_utf8", channel, "payload is not UTF-8; dropped");
                    return Ok(());
                }
            },
            _ => {
                self.invalid("not_utf8", channel, "payload is not a string; dropped");
                return Ok(());
            }
        };
        if self.live.has_changed().unwrap_or(false) {
            let config = self.live.borrow_and_update().clone();
            self.fields = config
                .routing
                .fields
                .iter()
                .map(|f| Arc::from(f.as_str()))
                .collect();
        }
        let name = self
            .patterns
            .iter()
            .find(|p| p.matches(channel.as_bytes()))
            .and_then(|p| channel.get(p.prefix().len()..))
            .unwrap_or(channel);
        let event = event::build(name, payload, &self.fields, received);
        if event.not_json {
            self.invalid(
                "not_json",
                channel,
                "payload is not JSON; delivered as a JSON string",
            );
        }
        self.out.send(Ingest::Event(event)).await.map_err(|_| ())
    }

    fn invalid(&mut self, kind: &'static str, channel: &str, what: &str) {
        self.metrics.invalid_payload(kind);
        if self
            .last_invalid_log
            .is_none_or(|t| t.elapsed() >= INVALID_LOG_EVERY)
        {
            self.last_invalid_log = Some(Instant::now());
            tracing::warn!(
                channel,
                kind,
                "{what} (further ones within 10 s are only counted)"
            );
        }
    }
}

#[derive(Default)]
struct Clients {
    sub: Option<fred::types::ConnectHandle>,
    publ: Option<fred::types::ConnectHandle>,
}

/// One liveness probe: a PING on the subscriber and a canary that must
/// come back through the pattern subscription.
struct Probe {
    token: String,
    deadline: tokio::time::Instant,
    ping: oneshot::Receiver<Result<(), String>>,
    ping_done: bool,
    canary_seen: bool,
}

impl Probe {
    fn start(
        tasks: &mut JoinSet<()>,
        subscriber: &SubscriberClient,
        publisher: Option<&Client>,
        canary: &str,
        instance: &str,
        timeout: Duration,
    ) -> Probe {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let token = format!("{instance}:{}", SEQ.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        let subscriber = subscriber.clone();
        let publisher = publisher.cloned();
        let with_canary = publisher.is_some();
        let channel = canary.to_owned();
        let payload = token.clone();
        tasks.spawn(async move {
            let result = async {
                subscriber
                    .ping::<Value>(None)
                    .await
                    .map_err(|e| format!("liveness probe: ping: {}", e.details()))?;
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
        Probe {
            token,
            deadline: tokio::time::Instant::now() + timeout,
            ping: rx,
            ping_done: false,
            canary_seen: !with_canary,
        }
    }

    fn check_canary(&mut self, msg: &Message, canary: &str) {
        if &*msg.channel == canary && msg.value.as_str().is_some_and(|v| v == self.token) {
            self.canary_seen = true;
        }
    }

    fn done(&self) -> bool {
        self.ping_done && self.canary_seen
    }
}

/// The PING/publish half of the current probe.
async fn ping_result(probe: &mut Option<Probe>) -> Result<(), String> {
    match probe {
        Some(p) => (&mut p.ping)
            .await
            .unwrap_or_else(|_| Err("probe task ended".into())),
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Capped exponential backoff with jitter: each delay is drawn from
/// [d/2, d] where d doubles from [`BACKOFF_MIN`] up to [`BACKOFF_MAX`], so
/// many relays restarting together do not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_MIN }
    }
}

impl Backoff {
    /// The un-jittered delay the next call is based on.
    pub fn current(&self) -> Duration {
        self.next
    }

    /// The delay to sleep now; doubles the base for next time.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        let half = d / 2;
        half + Duration::from_millis(random_u64() % (half.as_millis() as u64 + 1))
    }
}

/// A random number from the std hasher's per-process keys; enough for jitter
/// and instance ids, and saves a dependency.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let mut b = Backoff::default();
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
        assert_eq!(bases[0], BACKOFF_MIN);
        assert_eq!(bases[1], BACKOFF_MIN * 2);
        assert_eq!(*bases.last().unwrap(), BACKOFF_MAX);
        assert!(bases.iter().all(|d| *d <= BACKOFF_MAX));
        let draws: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff { next: BACKOFF_MAX }.next_delay())
            .collect();
        assert!(draws.len() > 1, "jitter must vary");
    }
}
