//! One HTTP entry point per listener port: the accept loop, `/ws` handshake
//! checks (in SPEC §9's refusal order), `/healthz`, `/metrics`, 404 and 405.
//! An accepted `/ws` request is answered 101 and handed to
//! [`connection`](crate::connection) once hyper has released the socket.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::Instrument;

use crate::access;
use crate::config::Config;
use crate::connection::{self, Accepted, Permit};
use crate::relay::State;

/// Longest pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long an idle keep-alive HTTP connection may linger at shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(1);

type Body = Full<Bytes>;

/// Accepts on `listener` until shutdown; each TCP connection gets its own task.
pub async fn serve(listener: TcpListener, name: Arc<str>, state: Arc<State>) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = state.shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                // Small frames should leave at once; batching is done above TCP.
                let _ = stream.set_nodelay(true);
                let state2 = state.clone();
                let name = name.clone();
                state.tasks.spawn(serve_http(stream, peer, name, state2));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::select! {
                    _ = state.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    tracing::debug!(listener = %name, "listener closed");
}

async fn serve_http(stream: TcpStream, peer: SocketAddr, listener: Arc<str>, state: Arc<State>) {
    let handshake_timeout = Duration::from_millis(state.config().limits.handshake_timeout_ms);
    let service = {
        let state = state.clone();
        service_fn(move |req| {
            let state = state.clone();
            let listener = listener.clone();
            async move { Ok::<_, Infallible>(route(req, peer, listener, state)) }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "http connection ended with error");
            }
        }
        _ = state.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HTTP_DRAIN, conn).await;
        }
    }
}

fn route(
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    listener: Arc<str>,
    state: Arc<State>,
) -> Response<Body> {
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    match req.uri().path() {
        "/ws" => {
            if req.method() != Method::GET {
                return method_not_allowed("GET");
            }
            websocket(req, peer, listener, state)
        }
        "/healthz" if read_only => health(&state),
        "/metrics" if read_only => {
            let mut resp = Response::new(Body::from(state.metrics.encode()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        "/healthz" | "/metrics" => method_not_allowed("GET, HEAD"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn health(state: &State) -> Response<Body> {
    let up = state.redis.is_up();
    let body = serde_json::json!({
        "status": if up { "ok" } else { "unavailable" },
        "redis": if up { "up" } else { "down" },
        "connections": state.open.load(Ordering::Acquire),
        "routing_index_entries": state.metrics.routing_index_entries.get(),
        "version": crate::VERSION,
    });
    let status = if up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut resp = text(status, &body.to_string());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The `/ws` request: checks, then 101 and a spawned connection task.
fn websocket(
    mut req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    listener: Arc<str>,
    state: Arc<State>,
) -> Response<Body> {
    let config = state.config();
    let key = match websocket_key(&req) {
        Ok(key) => key,
        Err(why) => return reject(&state, "bad_request", StatusCode::BAD_REQUEST, why),
    };
    let query = match parse_query(req.uri().query().unwrap_or(""), &config) {
        Ok(q) => q,
        Err(why) => return reject(&state, "bad_request", StatusCode::BAD_REQUEST, &why),
    };
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    if !access::origin_allowed(origin, &config.security.allowed_origins) {
        return reject(
            &state,
            "origin",
            StatusCode::FORBIDDEN,
            "origin not allowed",
        );
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(access::bearer)
        .map(str::to_owned)
        .or(query.token);
    if !access::token_allowed(token.as_deref(), &config.auth.tokens) {
        let mut resp = reject(
            &state,
            "unauthorized",
            StatusCode::UNAUTHORIZED,
            "missing or invalid token",
        );
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    }
    let Some(permit) = Permit::acquire(&state, config.limits.max_connections) else {
        return reject(
            &state,
            "capacity",
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections",
        );
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    let accepted = Accepted {
        id: state.next_connection_id(),
        peer,
        listener,
        keys: query.keys,
        all: query.all,
        token,
        permit,
    };
    let span = tracing::info_span!("conn", id = %accepted.id, %peer, listener = %accepted.listener);
    state
        .tasks
        .spawn(connection::run(on_upgrade, accepted, state.clone()).instrument(span));

    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    resp
}

/// The `Sec-WebSocket-Key` of a valid RFC 6455 upgrade request.
fn websocket_key(req: &Request<hyper::body::Incoming>) -> Result<String, &'static str> {
    let h = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if req.version() < hyper::Version::HTTP_11 {
        return Err("WebSocket needs HTTP/1.1");
    }
    if !has_token(header::UPGRADE, "websocket") || !has_token(header::CONNECTION, "upgrade") {
        return Err("not a WebSocket upgrade request (Upgrade: websocket, Connection: Upgrade)");
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err("Sec-WebSocket-Version must be 13");
    }
    match h
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
    {
        Some(k) if !k.trim().is_empty() => Ok(k.trim().to_owned()),
        _ => Err("missing Sec-WebSocket-Key"),
    }
}

/// What the `/ws` URL asks for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// Initial subscriptions, deduplicated, in URL order.
    pub keys: Vec<(String, String)>,
    /// Firehose on.
    pub all: bool,
    /// `token=` if given.
    pub token: Option<String>,
}

/// Parses the `/ws` query against the config (SPEC §4, §9). Parameters that
/// are neither routing fields nor `all`/`token` are ignored, so cache
/// busters and client-library extras do not break the handshake.
pub fn parse_query(query: &str, config: &Config) -> Result<Query, String> {
    let mut q = Query::default();
    let mut seen = HashSet::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k == "all" {
            q.all = match v.as_ref() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => return Err(format!("all={other:?}: expected true, 1, false or 0")),
            };
        } else if k == "token" {
            if q.token.is_none() {
                q.token = Some(v.into_owned());
            }
        } else if config.routing.fields.iter().any(|f| *f == k) {
            if v.is_empty() {
                return Err(format!("{k}= needs a value"));
            }
            let key = (k.into_owned(), v.into_owned());
            if seen.insert(key.clone()) {
                q.keys.push(key);
            }
        }
    }
    if q.keys.len() > config.limits.max_subscriptions {
        return Err(format!(
            "{} subscriptions asked for; max_subscriptions is {}",
            q.keys.len(),
            config.limits.max_subscriptions
        ));
    }
    if q.all && !config.routing.allow_firehose {
        return Err("the firehose (all=true) is disabled on this relay".into());
    }
    Ok(q)
}

fn reject(state: &State, reason: &'static str, status: StatusCode, why: &str) -> Response<Body> {
    state.metrics.reject(reason);
    tracing::debug!(reason, status = status.as_u16(), why, "handshake refused");
    text(status, &format!("{why}\n"))
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let c = Config::default();
        let q = parse_query(
            "agentId=a%201&agentId=a%201&sessionId=s&all=1&token=t&x=y",
            &c,
        )
        .unwrap();
        assert_eq!(
            q.keys,
            vec![
                ("agentId".into(), "a 1".into()),
                ("sessionId".into(), "s".into())
            ]
        );
        assert!(q.all);
        assert_eq!(q.token.as_deref(), Some("t"));
        assert!(parse_query("all=yes", &c).is_err());
        assert!(parse_query("agentId=", &c).is_err());
        assert_eq!(parse_query("", &c).unwrap(), Query::default());
        let mut c2 = Config::default();
        c2.limits.max_subscriptions = 1;
        assert!(parse_query("agentId=a&agentId=b", &c2).is_err());
        c2.routing.allow_firehose = false;
        assert!(parse_query("all=true", &c2).is_err());
        assert!(parse_query("all=false", &c2).is_ok());
    }
}
