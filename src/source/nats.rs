//! The NATS source: core subscriptions to every configured subject.
//!
//! async-nats owns the connection and its reconnects (forever, with our
//! backoff shape) and re-subscribes by itself; its connection events tell
//! this task when the link drops and comes back. "Up" is proven end to end:
//! after each (re)connect a request to a subject nobody serves is sent
//! behind the subscriptions, and the server's "no responders" answer means
//! it has processed every SUB before it. Only then is NATS reported up and,
//! after a loss, the `gap` sent. If the client itself ends (it should not
//! with unlimited reconnects), the loop builds a new one with backoff.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use async_nats::client::RequestErrorKind;
use async_nats::{Client, ConnectOptions, Event as NatsEvent, Message, ServerAddr};
use futures_util::stream::{select_all, SelectAll};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::decode::studio_json;
use super::{Ingest, LiveFields, Source, SourceCtx, SourceRun};
use crate::config::NatsConfig;
use crate::event::GapReason;
use crate::util::backoff::Backoff;
use crate::util::id::random_u64;
use crate::util::ratelimit::RateLimit;

/// First reconnect delay (async-nats' and ours).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Reconnect delays never exceed this (before jitter).
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// One TCP + TLS + CONNECT attempt may take this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Client PINGs this often; two unanswered ones drop the connection, so a
/// hung server is noticed within about three intervals (async-nats' default
/// of 60 s would leave it "up" for minutes).
const PING_INTERVAL: Duration = Duration::from_secs(5);
/// The "subscriptions are live" round trip may take this long; past it the
/// source is reported up anyway (the SUBs were written; a server that
/// forbids the probe subject never answers it).
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages async-nats buffers per subscription before it drops them as a
/// slow consumer (its default; a drop sends a `gap`).
const SUBSCRIPTION_CAPACITY: usize = 64 * 1024;
/// Connection events waiting for this task; async-nats drops events when
/// its own channel (128) is full, so this only needs to keep up.
const EVENT_QUEUE: usize = 128;
/// While NATS stays down, repeat the warning at most this often.
const DOWN_LOG_EVERY: Duration = Duration::from_secs(60);
/// At most one "invalid payload" warning per this interval.
const INVALID_LOG_EVERY: Duration = Duration::from_secs(10);
/// At most one server-error / slow-consumer warning per this interval.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// The NATS subscriber, as configured at start (`[nats]` needs a restart).
pub struct NatsSource {
    nats: NatsConfig,
}

impl NatsSource {
    /// A source for these settings.
    pub fn new(nats: NatsConfig) -> Self {
        NatsSource { nats }
    }
}

impl Source for NatsSource {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn run(self: Box<Self>, ctx: SourceCtx, shutdown: CancellationToken) -> SourceRun {
        Box::pin(Subscriber::new(self.nats, ctx).run(shutdown))
    }
}

/// One configured subject and the literal prefix stripped from event names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectFilter {
    tokens: Vec<String>,
    /// Bytes of the subject before its first wildcard token (with the `.`).
    prefix_len: usize,
    literal: bool,
}

impl SubjectFilter {
    /// Wraps a (validated) subject.
    pub fn new(subject: &str) -> Self {
        let tokens: Vec<String> = subject.split('.').map(str::to_owned).collect();
        let wild = tokens.iter().position(|t| t == "*" || t == ">");
        let prefix_len = match wild {
            Some(i) => tokens[..i].iter().map(|t| t.len() + 1).sum(),
            // No wildcard: the event is the last token (see SPEC-NOTES).
            None => subject.len() - tokens.last().map_or(0, String::len),
        };
        SubjectFilter {
            tokens,
            prefix_len,
            literal: wild.is_none(),
        }
    }

    /// Whether `subject` matches with NATS rules (`*` one token, `>` the rest).
    pub fn matches(&self, subject: &str) -> bool {
        let mut got = subject.split('.');
        for t in &self.tokens {
            match (t.as_str(), got.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (t, Some(g)) if t == g => {}
                _ => return false,
            }
        }
        got.next().is_none()
    }

    /// The event name for a matching `subject`.
    pub fn event_name<'a>(&self, subject: &'a str) -> &'a str {
        subject.get(self.prefix_len..).unwrap_or(subject)
    }

    fn specificity(&self) -> (usize, bool) {
        (self.prefix_len, self.literal)
    }
}

/// Every configured subject, most specific first.
#[derive(Debug, Clone)]
pub struct Subjects(Vec<SubjectFilter>);

impl Subjects {
    /// The filters for `subjects`.
    pub fn new(subjects: &[String]) -> Self {
        let mut v: Vec<SubjectFilter> = subjects.iter().map(|s| SubjectFilter::new(s)).collect();
        v.sort_by_key(|f| std::cmp::Reverse(f.specificity()));
        Subjects(v)
    }

    /// The event name of `subject` under the most specific matching subject
    /// (the subject itself when none matches).
    pub fn event_name<'a>(&self, subject: &'a str) -> &'a str {
        self.0
            .iter()
            .find(|f| f.matches(subject))
            .map_or(subject, |f| f.event_name(subject))
    }
}

/// The running source.
struct Subscriber {
    nats: NatsConfig,
    subjects: Subjects,
    /// Requested after each connect to prove the subscriptions live.
    probe_subject: String,
    ctx: SourceCtx,
    fields: LiveFields,
    invalid_log: RateLimit,
    error_log: RateLimit,
    /// `relay_source_messages_total{source="nats"}`.
    messages: Counter,
    /// A gap has been sent for the ongoing slow-consumer drops.
    lag_reported: bool,
    ever_up: bool,
    last_down_log: Option<Instant>,
    failures: u64,
}

/// How one client's life ended.
enum End {
    Shutdown,
    Lost(String),
}

type Probe = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

impl Subscriber {
    fn new(nats: NatsConfig, ctx: SourceCtx) -> Self {
        let fields = LiveFields::new(&ctx.live);
        Subscriber {
            subjects: Subjects::new(&nats.subjects),
            probe_subject: format!("_studio_relay.probe.{}", ctx.instance),
            nats,
            fields,
            invalid_log: RateLimit::new(INVALID_LOG_EVERY),
            error_log: RateLimit::new(ERROR_LOG_EVERY),
            messages: ctx.metrics.source_counter("nats"),
            ctx,
            lag_reported: false,
            ever_up: false,
            last_down_log: None,
            failures: 0,
        }
    }

    /// Runs clients one after another until `shutdown`.
    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            match self.client(&shutdown).await {
                End::Shutdown => break,
                End::Lost(why) => {
                    self.ctx.health.set(false);
                    tracing::warn!(
                        reason = %why,
                        url = %self.nats.redacted_url(),
                        "nats client ended; starting a new one"
                    );
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
        self.ctx.health.set(false);
    }

    /// One async-nats client: connect (retrying), subscribe, relay.
    async fn client(&mut self, shutdown: &CancellationToken) -> End {
        let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
        let (addr, options) = match connect_options(&self.nats.url, &self.ctx.instance.to_string())
        {
            Ok(x) => x,
            Err(why) => return End::Lost(why),
        };
        let options = options.event_callback(move |e| {
            let tx = events_tx.clone();
            async move {
                let _ = tx.send(e).await;
            }
        });
        // With retry_on_initial_connect this returns at once; the
        // subscriptions below are sent as soon as a connection exists.
        let client = match options.connect(addr).await {
            Ok(c) => c,
            Err(e) => return End::Lost(format!("connect: {e}")),
        };
        let mut subs: SelectAll<async_nats::Subscriber> = select_all(Vec::new());
        for s in &self.nats.subjects {
            match client.subscribe(s.clone()).await {
                Ok(sub) => subs.push(sub),
                Err(e) => return End::Lost(format!("subscribe {s:?}: {e}")),
            }
        }
        let mut probe: Option<Probe> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return End::Shutdown,
                event = events.recv() => match event {
                    Some(NatsEvent::Connected) => {
                        probe = Some(self.probe(&client));
                    }
                    Some(NatsEvent::Disconnected) => {
                        probe = None;
                        self.lost("disconnected");
                    }
                    Some(NatsEvent::Closed) | None => return End::Lost("connection closed".into()),
                    Some(NatsEvent::ClientError(e)) => self.connect_failed(&e.to_string()),
                    Some(NatsEvent::ServerError(e)) => {
                        if self.error_log.check().is_some() {
                            tracing::warn!(error = %e, "nats server error (further ones within 10 s are only logged at debug)");
                        } else {
                            tracing::debug!(error = %e, "nats server error");
                        }
                    }
                    Some(NatsEvent::SlowConsumer(sid)) => {
                        if !self.lag_reported {
                            self.lag_reported = true;
                            tracing::warn!(sid, "relay fell behind its nats reader; messages dropped; sending gap");
                            if self.ctx.ingest.send(Ingest::Gap(GapReason::NatsLagged)).await.is_err() {
                                return End::Shutdown;
                            }
                        }
                    }
                    Some(other) => tracing::info!(event = %other, "nats connection event"),
                },
                r = poll_probe(&mut probe) => {
                    probe = None;
                    if self.confirmed(r).await.is_err() {
                        return End::Shutdown;
                    }
                }
                msg = subs.next() => match msg {
                    Some(msg) => {
                        if self.forward(msg).await.is_err() {
                            return End::Shutdown;
                        }
                    }
                    None => return End::Lost("subscriptions ended".into()),
                },
            }
        }
    }

    /// A request behind the SUBs: answered (normally "no responders") once
    /// the server has processed them.
    fn probe(&self, client: &Client) -> Probe {
        let client = client.clone();
        let subject = self.probe_subject.clone();
        Box::pin(async move {
            match tokio::time::timeout(PROBE_TIMEOUT, client.request(subject, Default::default()))
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer".into()),
            }
        })
    }

    /// The subscriptions are live: up, and a gap if they were live before.
    async fn confirmed(&mut self, probe: Result<(), String>) -> Result<(), ()> {
        if let Err(why) = probe {
            tracing::debug!(reason = %why, "nats subscription probe unanswered; reporting up anyway");
        }
        self.ctx.health.set(true);
        self.failures = 0;
        self.last_down_log = None;
        if self.ever_up {
            tracing::info!(subjects = ?self.nats.subjects, "nats subscription restored; sending gap");
            self.ctx
                .ingest
                .send(Ingest::Gap(GapReason::NatsReconnected))
                .await
                .map_err(|_| ())?;
        } else {
            self.ever_up = true;
            tracing::info!(
                url = %self.nats.redacted_url(),
                subjects = ?self.nats.subjects,
                "nats subscription live"
            );
        }
        Ok(())
    }

    fn lost(&mut self, why: &str) {
        let was_up = self.ctx.health.is_up();
        self.ctx.health.set(false);
        if was_up {
            tracing::warn!(reason = why, "nats connection lost; reconnecting");
            self.last_down_log = Some(Instant::now());
        }
    }

    fn connect_failed(&mut self, why: &str) {
        self.failures += 1;
        let due = self
            .last_down_log
            .is_none_or(|t| t.elapsed() >= DOWN_LOG_EVERY);
        if due {
            tracing::warn!(
                reason = %why,
                url = %self.nats.redacted_url(),
                attempts = self.failures,
                "nats unavailable; retrying with backoff"
            );
            self.last_down_log = Some(Instant::now());
        } else {
            tracing::debug!(reason = %why, attempts = self.failures, "nats connect failed");
        }
    }

    /// Turns one NATS message into an event. Err means the hub is gone.
    async fn forward(&mut self, msg: Message) -> Result<(), ()> {
        let received = Instant::now();
        let subject: &str = &msg.subject;
        if subject == self.probe_subject {
            return Ok(());
        }
        self.messages.inc();
        self.lag_reported = false;
        let Ok(payload) = std::str::from_utf8(&msg.payload) else {
            self.invalid("not_utf8", subject, "payload is not UTF-8; dropped");
            return Ok(());
        };
        let event = studio_json::decode(
            self.subjects.event_name(subject),
            payload,
            self.fields.current(),
            received,
        );
        if event.is_text() {
            self.invalid(
                "not_json",
                subject,
                "payload is not JSON; delivered as a JSON string",
            );
        }
        self.ctx
            .ingest
            .send(Ingest::Event(event))
            .await
            .map_err(|_| ())
    }

    fn invalid(&self, kind: &'static str, subject: &str, what: &str) {
        self.ctx.metrics.invalid_payload(kind);
        if self.invalid_log.check().is_some() {
            tracing::warn!(
                subject,
                kind,
                "{what} (further ones within 10 s are only counted)"
            );
        }
    }
}

/// The server address without credentials, and options carrying them
/// (`user:pass@` as user and password, a lone `token@` as a token).
fn connect_options(url: &str, instance: &str) -> Result<(ServerAddr, ConnectOptions), String> {
    let addr: ServerAddr = url
        .parse()
        .map_err(|_| "invalid NATS URL (see --check)".to_owned())?;
    let user = addr.username().map(percent_decode);
    let pass = addr.password().map(percent_decode);
    let mut bare = addr.into_inner();
    // Setting these on a URL with a host cannot fail.
    let _ = bare.set_password(None);
    let _ = bare.set_username("");
    let addr = ServerAddr::from_url(bare).map_err(|e| e.to_string())?;
    let mut options = ConnectOptions::new()
        .name(format!("studio-relay {instance}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(CONNECT_TIMEOUT)
        .ping_interval(PING_INTERVAL)
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .reconnect_delay_callback(reconnect_delay);
    options = match (user, pass) {
        (Some(u), Some(p)) => options.user_and_password(u, p),
        (Some(token), None) => options.token(token),
        (None, Some(p)) => options.user_and_password(String::new(), p),
        (None, None) => options,
    };
    Ok((addr, options))
}

/// async-nats calls this before each attempt (1 = the first after a loss,
/// or the very first connect): nothing for the first, then our capped,
/// jittered exponential backoff.
fn reconnect_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(20);
    let base = BACKOFF_MIN.saturating_mul(1 << doublings).min(BACKOFF_MAX);
    let half = base / 2;
    half + Duration::from_micros(random_u64() % (half.as_micros() as u64 + 1))
}

/// `%XX` escapes of a URL's user or password, decoded.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn poll_probe(probe: &mut Option<Probe>) -> Result<(), String> {
    match probe {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects(s: &[&str]) -> Subjects {
        Subjects::new(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn event_name_is_the_subject_minus_the_literal_prefix() {
        let s = subjects(&["claude-studio.>"]);
        assert_eq!(s.event_name("claude-studio.agent:message"), "agent:message");
        assert_eq!(s.event_name("claude-studio.a.b"), "a.b");
        assert_eq!(s.event_name("other.x"), "other.x", "no match: unchanged");
        let s = subjects(&["cs.*.status"]);
        assert_eq!(s.event_name("cs.a1.status"), "a1.status");
    }

    #[test]
    fn the_most_specific_subject_names_the_event() {
        let s = subjects(&["cs.>", "cs.agent.>", "cs.agent.status"]);
        assert_eq!(s.event_name("cs.agent.x"), "x");
        assert_eq!(s.event_name("cs.other"), "other");
        // A literal subject names its event by its last token.
        assert_eq!(s.event_name("cs.agent.status"), "status");
    }

    #[test]
    fn matching_follows_nats_wildcards() {
        let f = SubjectFilter::new("a.*.c");
        assert!(f.matches("a.b.c"));
        assert!(!f.matches("a.b"));
        assert!(!f.matches("a.b.c.d"));
        let f = SubjectFilter::new("a.>");
        assert!(f.matches("a.b") && f.matches("a.b.c"));
        assert!(!f.matches("a"));
        let f = SubjectFilter::new("a.b");
        assert!(f.matches("a.b") && !f.matches("a.b.c") && !f.matches("a"));
    }

    #[test]
    fn credentials_leave_the_url_and_go_to_the_options() {
        let (addr, _) = connect_options("nats://u:p%40ss@127.0.0.1:4222", "i").unwrap();
        assert_eq!(addr.as_url_str(), "nats://127.0.0.1:4222");
        assert!(!addr.has_user_pass());
        let (addr, _) = connect_options("tls://tok@h:1", "i").unwrap();
        assert_eq!(addr.as_url_str(), "tls://h:1");
        assert!(addr.tls_required());
        assert_eq!(percent_decode("p%40ss%2"), "p@ss%2");
        assert_eq!(percent_decode("%41%4a"), "AJ");
    }

    #[test]
    fn reconnect_delays_start_at_once_and_are_capped() {
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        let d = reconnect_delay(2);
        assert!(d >= BACKOFF_MIN / 2 && d <= BACKOFF_MIN, "{d:?}");
        for n in [20, 1000, usize::MAX] {
            let d = reconnect_delay(n);
            assert!(d >= BACKOFF_MAX / 2 && d <= BACKOFF_MAX, "{n}: {d:?}");
        }
    }
}
