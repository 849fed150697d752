//! `POST /publish` (SPEC §10): events over HTTP, checked whole ([`body`]),
//! then PUBLISHed on Redis (`to = "redis"`: every relay on that Redis,
//! this one included, delivers them through its own subscription) or handed
//! to this relay's hub (`to = "local"`), decoded exactly as a Redis message
//! would be.
//!
//! Answers, in this order: 405 (not POST) → 403 (no publish tokens and a
//! browser Origin that is not loopback) → 401 → 413 (`Content-Length`,
//! then while reading) → 408 (body too slow) → 400 → 503 (Redis not
//! connected or too slow; shutting down) → 202 `{"accepted":N}`.
//! Error bodies are `{"error":CODE,"message":TEXT}` (+ `"index"`).

pub mod body;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::config::ReconnectPolicy;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body as _;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio_util::sync::CancellationToken;

use super::http::{method_not_allowed, Body, Origin};
use super::Server;
use crate::auth;
use crate::config::{Config, PublishTo};
use crate::metrics::{Metrics, ReasonLabel};
use crate::source::decode::studio_json;
use crate::source::Ingest;
use crate::util::ratelimit::RateLimit;
use body::{BodyError, Channels, Item};

/// PUBLISH round trips (and the publisher's connects) are bounded by this
/// when `redis.liveness_timeout_ms` is 0.
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(5);
/// Publisher reconnect delays: first, and cap.
const RECONNECT_MIN_MS: u32 = 100;
const RECONNECT_MAX_MS: u32 = 10_000;
/// The publisher receives nothing: a tiny broadcast buffer.
const PUBLISHER_CAPACITY: usize = 16;
/// At most one info line per this interval about refused publishes.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);
/// `relay_publish_rejections_total{reason}`: every error code, shown at 0.
pub const REJECT_REASONS: [&str; 9] = [
    "unauthorized",
    "forbidden_origin",
    "too_large",
    "timeout",
    "not_utf8",
    "bad_json",
    "bad_body",
    "bad_event",
    "unavailable",
];

/// The publish route's state: the Redis publisher (for `to = "redis"`),
/// the accepted-events counter, the refusal log limiter.
pub struct Publish {
    redis: Option<Client>,
    /// Set once the publisher has connected: from then on a lost
    /// connection is a prompt 503, while before it (just started) a
    /// request waits up to `redis_timeout` for the first connect.
    connected_once: AtomicBool,
    redis_timeout: Duration,
    accepted: Counter,
    rejections: Family<ReasonLabel, Counter>,
    refusal_log: RateLimit,
}

impl Publish {
    /// Builds the publisher `config` asks for (none unless publishing is
    /// on with `to = "redis"`); it connects in [`run`](Self::run).
    pub fn new(config: &Config, metrics: &Metrics) -> Self {
        let redis_timeout = match config.redis.liveness_timeout_ms {
            0 => DEFAULT_REDIS_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        let wanted = config.publish.enabled && config.publish.to == PublishTo::Redis;
        let redis = wanted
            .then(|| publisher(&config.redis, redis_timeout))
            .and_then(|r| {
                r.map_err(
                    |e| tracing::error!(error = %e.details(), "cannot build the publish client"),
                )
                .ok()
            });
        if config.publish.enabled {
            for reason in REJECT_REASONS {
                drop(
                    metrics
                        .publish_rejections
                        .get_or_create(&ReasonLabel { reason }),
                );
            }
        }
        Publish {
            redis,
            connected_once: AtomicBool::new(false),
            redis_timeout,
            // The series exists only where publishing does.
            accepted: match config.publish.enabled {
                true => metrics.source_counter("publish"),
                false => Counter::default(),
            },
            rejections: metrics.publish_rejections.clone(),
            refusal_log: RateLimit::new(REFUSAL_LOG_EVERY),
        }
    }

    /// Keeps the publisher connected (fred reconnects on its own) until
    /// `shutdown`, then quits it.
    pub async fn run(&self, shutdown: CancellationToken) {
        let Some(client) = &self.redis else { return };
        let task = client.connect();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = client.wait_for_connect() => if r.is_ok() && client.is_connected() {
                    self.connected_once.store(true, Ordering::Release);
                    tracing::debug!("publish client connected");
                    shutdown.cancelled().await;
                    break;
                },
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), client.quit()).await;
        task.abort();
    }

    fn refused(&self, at: &Origin, status: StatusCode, code: &'static str, why: &str) {
        self.rejections
            .get_or_create(&ReasonLabel { reason: code })
            .inc();
        match self.refusal_log.check() {
            Some(suppressed) => tracing::info!(
                peer = %at.peer,
                reason = code,
                status = status.as_u16(),
                suppressed,
                "publish refused"
            ),
            // The detail may quote the body: debug only.
            None => tracing::debug!(peer = %at.peer, reason = code, why, "publish refused"),
        }
    }
}

/// A fred client for PUBLISH: reconnects forever with backoff, and while
/// disconnected a command waits at most `timeout` (it is checked for a
/// live connection first anyway, so a down Redis answers at once).
fn publisher(
    redis: &crate::config::RedisConfig,
    timeout: Duration,
) -> Result<Client, fred::error::Error> {
    let mut builder = crate::source::redis::client_builder(redis, timeout, PUBLISHER_CAPACITY)?;
    builder
        .with_config(|c| c.fail_fast = false)
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            RECONNECT_MIN_MS,
            RECONNECT_MAX_MS,
            2,
        ));
    builder.build()
}

/// Why a request was not accepted.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    index: Option<usize>,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            index: None,
            message: message.into(),
        }
    }
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            code: e.code,
            index: e.index,
            message: e.message,
        }
    }
}

/// The `/publish` route (only reached while `publish.enabled`).
pub async fn handle(
    req: Request<hyper::body::Incoming>,
    at: Origin,
    server: &Arc<Server>,
) -> Response<Body> {
    if req.method() != Method::POST {
        return method_not_allowed("POST");
    }
    match accept(req, server).await {
        Ok(n) => {
            server.publish.accepted.inc_by(n as u64);
            tracing::debug!(peer = %at.peer, events = n, "published");
            json(StatusCode::ACCEPTED, &serde_json::json!({ "accepted": n }))
        }
        Err(r) => {
            server.publish.refused(&at, r.status, r.code, &r.message);
            let mut body = serde_json::json!({ "error": r.code, "message": r.message });
            if let Some(i) = r.index {
                body["index"] = i.into();
            }
            let mut resp = json(r.status, &body);
            if r.status == StatusCode::UNAUTHORIZED {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            resp
        }
    }
}

/// Checks, reads, parses and publishes; the number of events accepted.
async fn accept(req: Request<hyper::body::Incoming>, server: &Server) -> Result<usize, Refusal> {
    let config = server.live.get();
    let publish = &config.publish;
    let headers = req.headers();
    if publish.tokens.is_empty() {
        // Tokenless publishing is loopback-only (`--check`); a page on some
        // website the user visits could still POST here from their browser.
        let origin = headers.get(header::ORIGIN).map(HeaderValue::as_bytes);
        if origin.is_some_and(|o| !loopback_origin(o)) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "publishing without a token is not allowed from a web page on another host",
            ));
        }
    } else {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(auth::bearer);
        if !token.is_some_and(|t| auth::token_valid(t, &publish.tokens)) {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or invalid publish token (Authorization: Bearer …)",
            ));
        }
    }
    let limit = publish.max_body_bytes;
    let too_large = || {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("body over publish.max_body_bytes ({limit} bytes)"),
        )
    };
    // The Content-Length, when there is one; chunked bodies are counted as read.
    if req.body().size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    let deadline = Duration::from_millis(config.limits.handshake_timeout_ms.max(1));
    let read = tokio::time::timeout(deadline, Limited::new(req.into_body(), limit).collect());
    let bytes: Bytes = match read.await {
        Err(_) => {
            return Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("body not received within {} ms", deadline.as_millis()),
            ))
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Ok(Err(e)) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("body could not be read: {e}"),
            ))
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let channels = Channels::new(&config.redis);
    let items = body::parse(&bytes, &channels)?;
    match publish.to {
        PublishTo::Redis => to_redis(&server.publish, &items).await?,
        PublishTo::Local => to_local(server, &config, &channels, &items).await?,
    }
    Ok(items.len())
}

/// PUBLISHes every item in one pipeline, in order.
async fn to_redis(publish: &Publish, items: &[Item<'_>]) -> Result<(), Refusal> {
    let unavailable =
        |why: String| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
    let Some(client) = &publish.redis else {
        return Err(unavailable("the publish client could not be built".into()));
    };
    if items.is_empty() {
        return Ok(());
    }
    let down = || unavailable("redis is not connected; nothing was published".into());
    if !client.is_connected() && publish.connected_once.load(Ordering::Acquire) {
        return Err(down());
    }
    let send = async {
        // Only right after start: the first connect may still be under way.
        while !client.is_connected() {
            let _ = client.wait_for_connect().await;
        }
        let pipeline = client.pipeline();
        for item in items {
            let () = pipeline.publish(item.channel.as_str(), item.data).await?;
        }
        pipeline.all::<Vec<i64>>().await
    };
    match tokio::time::timeout(publish.redis_timeout, send).await {
        Ok(Ok(_)) => Ok(()),
        // Pub/sub is at most once: some of a batch may have gone out.
        Ok(Err(e)) => Err(unavailable(format!("redis: {}", e.details()))),
        Err(_) if !client.is_connected() => Err(down()),
        Err(_) => Err(unavailable(format!(
            "redis did not answer within {} ms",
            publish.redis_timeout.as_millis()
        ))),
    }
}

/// Hands every item to the hub, as this relay's Redis source would.
async fn to_local(
    server: &Server,
    config: &Config,
    channels: &Channels,
    items: &[Item<'_>],
) -> Result<(), Refusal> {
    let fields = config.routing.shared_fields();
    for item in items {
        let (name, copies) = channels.delivery(&item.channel);
        for _ in 0..copies {
            let event = studio_json::decode(name, item.data, &fields, Instant::now());
            if server.ingest.send(Ingest::Event(event)).await.is_err() {
                return Err(Refusal::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the relay is shutting down",
                ));
            }
        }
    }
    Ok(())
}

/// `http(s)://localhost|127.x.x.x|[::1][:port]`.
fn loopback_origin(origin: &[u8]) -> bool {
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let Some(host_port) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    let host = match host_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, _)) => h,
            None => return false,
        },
        None => host_port.split(':').next().unwrap_or(""),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(format!("{body}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_origins() {
        for o in [
            "http://localhost:3000",
            "https://LOCALHOST",
            "http://127.0.0.1:5173",
            "http://127.8.9.1",
            "http://[::1]:8080",
        ] {
            assert!(loopback_origin(o.as_bytes()), "{o}");
        }
        for o in [
            "null",
            "https://studio.example",
            "http://localhost.evil.example",
            "http://10.0.0.1:80",
            "http://[::2]:1",
            "file://",
            "\u{ff}",
        ] {
            assert!(!loopback_origin(o.as_bytes()), "{o}");
        }
    }
}
