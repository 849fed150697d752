//! The Redis source: a reconnect loop around one PSUBSCRIBE session.
//!
//! Each session builds fresh fred clients (a subscriber, plus a publisher for
//! the canary), subscribes every pattern, and proves the subscription live
//! end to end ([`probe`]) before reporting Redis up. Any failure ends the
//! session and the loop reconnects with capped, jittered backoff. fred's own
//! reconnect is not used: owning the loop makes "down", "up again" and the
//! `gap` frame exact.

pub mod probe;
pub mod tls;
pub mod topology;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::Config as FredConfig;
use fred::types::{Builder, CustomCommand, Message, Value};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::decode::adapter::{self, Skip};
use super::decode::studio_json;
use super::{Ingest, LiveFields, Source, SourceCtx, SourceRun};
use crate::config::RedisConfig;
use crate::event::GapReason;
use crate::util::backoff::Backoff;
use crate::util::pattern::Pattern;
use crate::util::ratelimit::RateLimit;
use probe::Liveness;
use topology::{Check, Topology};

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

/// The Redis subscriber, as configured at start (`[redis]` needs a restart).
pub struct RedisSource {
    redis: RedisConfig,
}

impl RedisSource {
    /// A source for these settings.
    pub fn new(redis: RedisConfig) -> Self {
        RedisSource { redis }
    }
}

impl Source for RedisSource {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn run(self: Box<Self>, ctx: SourceCtx, shutdown: CancellationToken) -> SourceRun {
        Box::pin(Subscriber::new(self.redis, ctx).run(shutdown))
    }
}

/// The running source: settings, the relay's handles, the decoder's state.
struct Subscriber {
    redis: RedisConfig,
    patterns: Vec<Pattern>,
    canary: String,
    ctx: SourceCtx,
    /// Its own receiver, so "changed since I last looked" is ours alone.
    fields: LiveFields,
    invalid_log: RateLimit,
    /// `relay_source_messages_total{source="redis"}`.
    messages: Counter,
    /// `<key>#/#` while the Socket.IO adapter source is on.
    adapter_prefix: Option<String>,
    /// The parsed URL (None if it does not parse: each session says why).
    base: Option<FredConfig>,
    /// Which node each session uses.
    topology: Topology,
}

/// One session's connections, as the relay loop uses them.
struct Conns<'a> {
    subscriber: &'a SubscriberClient,
    /// The canary publisher (with liveness probing on).
    publisher: Option<&'a fred::clients::Client>,
    /// With Sentinel: checks at each probe that the node is still master.
    check: Option<Arc<Check>>,
    /// What `CLUSTER NODES` said at connect (cluster only).
    listed: Option<&'a str>,
}

/// How a session ended.
enum End {
    Shutdown,
    Lost { was_up: bool, why: String },
}

impl Subscriber {
    fn new(redis: RedisConfig, ctx: SourceCtx) -> Self {
        let mut patterns: Vec<Pattern> = redis.patterns.iter().map(|p| Pattern::new(p)).collect();
        // The most specific pattern names the event when several match.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.prefix().len()));
        let canary = redis.effective_canary_channel();
        let adapter_prefix = redis
            .socketio_adapter
            .then(|| format!("{}#/#", redis.socketio_key));
        let fields = LiveFields::new(&ctx.live);
        let base = FredConfig::from_url(&redis.url).ok();
        let topology = base.as_ref().map_or(Topology::Single, Topology::of);
        Subscriber {
            base,
            topology,
            redis,
            patterns,
            canary,
            fields,
            invalid_log: RateLimit::new(INVALID_LOG_EVERY),
            messages: ctx.metrics.source_counter("redis"),
            adapter_prefix,
            ctx,
        }
    }

    /// Subscribes, and resubscribes after every loss, until `shutdown`.
    async fn run(mut self, shutdown: CancellationToken) {
        let mut ever_up = false;
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut failures: u64 = 0;
        let mut last_down_log: Option<Instant> = None;
        loop {
            match self.session(&shutdown, ever_up).await {
                End::Shutdown => break,
                End::Lost { was_up, why } => {
                    self.set_up(false);
                    if was_up {
                        ever_up = true;
                        backoff.reset();
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
                    let sleep = self.topology.after_loss(was_up, backoff.next_delay());
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
        self.ctx.health.set(up);
        self.ctx.metrics.redis_up.set(i64::from(up));
    }

    /// The configured patterns, plus the adapter's when it is on.
    fn subscribed_patterns(&self) -> Vec<String> {
        let mut patterns = self.redis.patterns.clone();
        if self.redis.socketio_adapter {
            patterns.push(self.redis.adapter_pattern());
        }
        patterns
    }

    fn probe_timeout(&self) -> Duration {
        if self.redis.liveness_interval_ms > 0 {
            Duration::from_millis(self.redis.liveness_timeout_ms)
        } else {
            DEFAULT_PROBE_TIMEOUT
        }
    }

    fn builder(&self, capacity: usize) -> Result<Builder, fred::error::Error> {
        client_builder(&self.redis, self.probe_timeout(), capacity)
    }

    fn builder_for(
        &self,
        node: &FredConfig,
        capacity: usize,
    ) -> Result<Builder, fred::error::Error> {
        builder_from(node.clone(), &self.redis, self.probe_timeout(), capacity)
    }

    /// One connection: subscribe, confirm, relay, probe. Returns why it ended.
    async fn session(&mut self, shutdown: &CancellationToken, ever_up: bool) -> End {
        let lost = |why: String| End::Lost { was_up: false, why };
        let timeout = self.probe_timeout();
        let liveness = self.redis.liveness_interval_ms > 0;
        let Some(base) = self.base.clone() else {
            let why = self
                .builder(PUBLISHER_CAPACITY)
                .err()
                .map(|e| e.details().to_owned());
            return lost(format!("client setup: {}", why.unwrap_or_default()));
        };
        let target = tokio::select! {
            _ = shutdown.cancelled() => return End::Shutdown,
            t = self.topology.target(&base, &self.redis, timeout) => match t {
                Ok(t) => t,
                Err(why) => return lost(why),
            },
        };
        tracing::debug!(node = %target.node, "connecting the subscriber");
        let check = target.check.map(Arc::new);
        let end = self
            .session_on(
                shutdown,
                ever_up,
                target.config,
                check.clone(),
                timeout,
                liveness,
            )
            .await;
        if let Some(check) = check {
            check.close().await;
        }
        end
    }

    async fn session_on(
        &mut self,
        shutdown: &CancellationToken,
        ever_up: bool,
        node: FredConfig,
        check: Option<Arc<Check>>,
        timeout: Duration,
        liveness: bool,
    ) -> End {
        let lost = |why: String| End::Lost { was_up: false, why };
        let clients = self.builder_for(&node, BROADCAST_CAPACITY).and_then(|b| {
            let sub = b.build_subscriber_client()?;
            let publ = match liveness {
                // The publisher never receives pub/sub messages.
                true => Some(self.builder_for(&node, PUBLISHER_CAPACITY)?.build()?),
                false => None,
            };
            Ok((sub, publ))
        });
        let (subscriber, publisher) = match clients {
            Ok(c) => c,
            Err(e) => return lost(format!("client setup: {}", e.details())),
        };
        let mut messages = subscriber.message_rx();
        let mut sub_task = None;
        let mut pub_task = None;
        let cluster = self.topology.is_cluster();
        let mut listed: Option<String> = None;
        let connect = async {
            sub_task = Some(subscriber.init().await?);
            if let Some(p) = &publisher {
                pub_task = Some(p.init().await?);
            }
            if cluster {
                // Learn the other nodes while this one is reachable.
                let nodes: Value = subscriber
                    .custom(
                        CustomCommand::new_static("CLUSTER", None, false),
                        vec!["NODES"],
                    )
                    .await?;
                listed = nodes.as_string();
            }
            subscriber.psubscribe(self.subscribed_patterns()).await
        };
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return End::Shutdown,
            r = tokio::time::timeout(timeout * 2, connect) => r,
        };
        let end = match connected {
            Ok(Ok(())) => match sub_task.as_mut() {
                Some(task) => {
                    let conns = Conns {
                        subscriber: &subscriber,
                        publisher: publisher.as_ref(),
                        check,
                        listed: listed.as_deref(),
                    };
                    self.relay(shutdown, ever_up, conns, task, &mut messages)
                        .await
                }
                None => lost("connect: no connection task".into()),
            },
            Ok(Err(e)) => lost(format!("connect: {}", e.details())),
            Err(_) => lost("connect: timed out".into()),
        };
        // Quitting a hung server would wait for it: give it a moment, then drop.
        let _ = tokio::time::timeout(Duration::from_millis(200), async {
            let _ = subscriber.quit().await;
            if let Some(p) = &publisher {
                let _ = p.quit().await;
            }
        })
        .await;
        for task in [sub_task, pub_task].into_iter().flatten() {
            task.abort();
        }
        end
    }

    /// Forwards messages while the liveness probe keeps passing.
    async fn relay(
        &mut self,
        shutdown: &CancellationToken,
        ever_up: bool,
        conns: Conns<'_>,
        sub_task: &mut fred::types::ConnectHandle,
        messages: &mut broadcast::Receiver<Message>,
    ) -> End {
        let Conns {
            subscriber,
            publisher,
            check,
            listed,
        } = conns;
        let mut switches = check.as_ref().and_then(|c| c.switches());
        let mut confirmed = false;
        let mut probe = Liveness::new(
            self.redis.liveness_interval_ms > 0,
            Duration::from_millis(self.redis.liveness_interval_ms),
            self.probe_timeout(),
            self.canary.clone(),
            self.ctx.instance.to_string(),
        );
        loop {
            probe.start_if_due(confirmed, subscriber, publisher, check.as_ref());
            let wake = probe.wake_at(confirmed);
            tokio::select! {
                _ = shutdown.cancelled() => return End::Shutdown,
                r = &mut *sub_task => {
                    let why = match r {
                        Ok(Err(e)) => format!("connection closed: {}", e.details()),
                        _ => "connection closed".to_owned(),
                    };
                    return End::Lost { was_up: confirmed, why };
                }
                msg = messages.recv() => match msg {
                    Ok(msg) => {
                        probe.saw_traffic();
                        if !probe.is_canary(&msg) && self.forward(msg).await.is_err() {
                            return End::Shutdown;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.ctx.metrics.redis_lagged.inc_by(n);
                        tracing::warn!(skipped = n, "relay fell behind its redis reader; sending gap");
                        if self.ctx.ingest.send(Ingest::Gap(GapReason::RelayLagged)).await.is_err() {
                            return End::Shutdown;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return End::Lost { was_up: confirmed, why: "message stream closed".into() };
                    }
                },
                m = next_switch(&mut switches) => {
                    if let Some(why) = check.as_ref().and_then(|c| c.moved(&m)) {
                        return End::Lost { was_up: confirmed, why };
                    }
                }
                r = probe.ping_answer() => {
                    if let Err(why) = r {
                        return End::Lost { was_up: confirmed, why };
                    }
                }
                _ = sleep_until_opt(wake.map(|(at, _)| at)) => {
                    if wake.is_some_and(|(_, overdue)| overdue) {
                        return End::Lost { was_up: confirmed, why: "liveness probe unanswered".into() };
                    }
                }
            }
            if probe.passed() && !confirmed {
                confirmed = true;
                self.topology.worked(listed);
                self.set_up(true);
                if ever_up {
                    self.ctx.metrics.redis_reconnects.inc();
                    tracing::info!(patterns = ?self.redis.patterns, "redis subscription restored; sending gap");
                    let gap = Ingest::Gap(GapReason::RedisReconnected);
                    if self.ctx.ingest.send(gap).await.is_err() {
                        return End::Shutdown;
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
    }

    /// Turns one Redis message into an event for the hub.
    /// Err means the hub is gone (shutdown).
    async fn forward(&mut self, msg: Message) -> Result<(), ()> {
        let received = Instant::now();
        let channel: &str = &msg.channel;
        self.ctx.metrics.redis_messages.inc();
        self.messages.inc();
        if let Some(prefix) = &self.adapter_prefix {
            if channel.starts_with(prefix.as_str()) {
                return self.forward_adapter(&msg, received).await;
            }
        }
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
        let name = self
            .patterns
            .iter()
            .find(|p| p.matches(channel.as_bytes()))
            .and_then(|p| channel.get(p.prefix().len()..))
            .unwrap_or(channel);
        let event = studio_json::decode(name, payload, self.fields.current(), received);
        if event.is_text() {
            self.invalid(
                "not_json",
                channel,
                "payload is not JSON; delivered as a JSON string",
            );
        }
        self.ctx
            .ingest
            .send(Ingest::Event(event))
            .await
            .map_err(|_| ())
    }

    /// A `@socket.io/redis-adapter` / `redis-emitter` broadcast (SPEC §10).
    async fn forward_adapter(&mut self, msg: &Message, received: Instant) -> Result<(), ()> {
        let bytes: &[u8] = match &msg.value {
            Value::Bytes(b) => b,
            Value::String(s) => s.as_bytes(),
            _ => &[],
        };
        match adapter::decode(bytes, self.fields.current(), received) {
            Ok(event) => self
                .ctx
                .ingest
                .send(Ingest::Event(event))
                .await
                .map_err(|_| ()),
            Err(skip @ (Skip::OtherNamespace | Skip::NotEvent)) => {
                // Well-formed but not for this relay's clients: counted only.
                self.ctx.metrics.invalid_payload(skip.kind());
                Ok(())
            }
            Err(skip) => {
                let what = skip.to_string();
                self.invalid(skip.kind(), &msg.channel, &format!("{what}; dropped"));
                Ok(())
            }
        }
    }

    fn invalid(&self, kind: &'static str, channel: &str, what: &str) {
        self.ctx.metrics.invalid_payload(kind);
        if self.invalid_log.check().is_some() {
            tracing::warn!(
                channel,
                kind,
                "{what} (further ones within 10 s are only counted)"
            );
        }
    }
}

/// A fred client builder for `url` whose connects and commands are bounded
/// by `timeout`, never retried, with a `capacity`-slot broadcast buffer.
/// Shared by the subscriber, its canary publisher and `POST /publish`.
pub(crate) fn client_builder(
    redis: &RedisConfig,
    timeout: Duration,
    capacity: usize,
) -> Result<Builder, fred::error::Error> {
    builder_from(FredConfig::from_url(&redis.url)?, redis, timeout, capacity)
}

/// [`client_builder`] for an already parsed (and possibly re-targeted) config.
pub(crate) fn builder_from(
    mut config: FredConfig,
    redis: &RedisConfig,
    timeout: Duration,
    capacity: usize,
) -> Result<Builder, fred::error::Error> {
    if let Some(tls) = tls::config(redis).map_err(|e| {
        fred::error::Error::new(fred::error::ErrorKind::Tls, format!("redis TLS: {e}"))
    })? {
        config.tls = Some(tls);
    }
    let mut builder = Builder::from_config(config);
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

/// The next `+switch-master` announcement; never, without a subscription
/// (or once it is gone: the probes still catch a switch).
async fn next_switch(rx: &mut Option<broadcast::Receiver<Message>>) -> Message {
    loop {
        match rx.as_mut() {
            Some(r) => match r.recv().await {
                Ok(m) => return m,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => *rx = None,
            },
            None => return std::future::pending().await,
        }
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
