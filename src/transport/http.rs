//! One HTTP server per listener port: the accept loop and async routes —
//! `/ws`, `/healthz`, `/metrics`, `/publish`, 404 and 405. Routes are async, so a
//! handler can read a body or hold a long-poll open. On a TLS listener each
//! connection's task does the TLS handshake first, then serves the same
//! routes over the encrypted stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::handshake::Refused;
use super::{ws, Server};
use crate::config::PUBLISH_PATH;
use crate::metrics::TLS_REJECT_REASON;
use crate::net::tls::TlsListener;
use crate::util::backoff::Backoff;

/// First pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause after a failed `accept`.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long an idle keep-alive HTTP connection may linger at shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(1);
/// Largest request head hyper buffers; beyond it hyper answers 431/400.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Response body type.
pub type Body = Full<Bytes>;

/// Where a request came in: the peer and the listener's bound address.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The client's address.
    pub peer: SocketAddr,
    /// The listener's bound address, the `listener` metric label.
    pub listener: Arc<str>,
}

/// Accepts on `listener` until `accepting` is cancelled — after the drain,
/// so `/healthz` keeps answering (503) while clients are closed; each TCP
/// connection gets its own task. With `tls`, that task does the TLS
/// handshake (never this loop, so a client that stalls its handshake delays
/// no other).
pub async fn serve(
    listener: TcpListener,
    name: Arc<str>,
    server: Arc<Server>,
    tls: Option<Arc<TlsListener>>,
    accepting: CancellationToken,
) {
    let mut backoff = Backoff::new(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
    loop {
        let accepted = tokio::select! {
            _ = accepting.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.reset();
                // Small frames should leave at once; batching is done above TCP.
                let _ = stream.set_nodelay(true);
                let at = Origin {
                    peer,
                    listener: name.clone(),
                };
                match &tls {
                    Some(tls) => {
                        server
                            .tasks
                            .spawn(serve_tls(stream, at, server.clone(), tls.clone()));
                    }
                    None => {
                        server.tasks.spawn(serve_http(stream, at, server.clone()));
                    }
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::select! {
                    _ = accepting.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
    tracing::debug!(listener = %name, "listener closed");
}

/// The TLS handshake, bounded by `handshake_timeout_ms`, then HTTP over it.
/// A failed handshake (plain HTTP sent to the port, a client that never
/// sends its ClientHello, one that refuses the certificate) closes the
/// connection, logged at debug (clients can cause it at will) and counted
/// as a `tls` handshake rejection.
async fn serve_tls(stream: TcpStream, at: Origin, server: Arc<Server>, tls: Arc<TlsListener>) {
    let handshake_timeout = Duration::from_millis(server.live.get().limits.handshake_timeout_ms);
    // The pair in force when the connection arrived; a reload during the
    // handshake does not change it.
    let acceptor = tls.acceptor();
    // Accepted while connections are being closed: still served (a health
    // check), within the time an HTTP connection gets at shutdown.
    let late = server.shutdown.is_cancelled();
    let handshake_timeout = match late {
        true => handshake_timeout.min(HTTP_DRAIN),
        false => handshake_timeout,
    };
    let accepted = tokio::select! {
        r = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)) => r,
        _ = server.shutdown.cancelled(), if !late => return,
    };
    let why = match accepted {
        Ok(Ok(stream)) => return serve_http(stream, at, server).await,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    server.metrics.reject(TLS_REJECT_REASON);
    tracing::debug!(peer = %at.peer, listener = %at.listener, error = %why, "tls handshake failed");
}

async fn serve_http<S>(stream: S, at: Origin, server: Arc<Server>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake_timeout = Duration::from_millis(server.live.get().limits.handshake_timeout_ms);
    let peer = at.peer;
    let service = {
        let server = server.clone();
        service_fn(move |req| {
            let server = server.clone();
            let at = at.clone();
            async move { Ok::<_, Infallible>(route(req, at, server).await) }
        })
    };
    // Accepted while connections are being closed (a load balancer's health
    // check, a last poll): one request, then close, within `HTTP_DRAIN`.
    let late = server.shutdown.is_cancelled();
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(!late)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    if late {
        if let Ok(r) = tokio::time::timeout(HTTP_DRAIN, conn).await {
            ended(&server, peer, r);
        }
        return;
    }
    tokio::select! {
        r = conn.as_mut() => ended(&server, peer, r),
        _ = server.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(HTTP_DRAIN, conn).await;
        }
    }
}

/// How an HTTP connection ended, logged (and counted when hyper refused a
/// request head itself).
fn ended(server: &Server, peer: SocketAddr, r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        // hyper answered a request head it could not take (a header too
        // large, too many of them, bad syntax) with 4xx itself: count and
        // log it like any other refused handshake.
        if e.is_parse() || e.is_parse_too_large() {
            server.refused(
                peer,
                &Refused::bad_request(format!("unreadable request head: {e}")),
            );
        } else {
            tracing::debug!(%peer, error = %e, "http connection ended with error");
        }
    }
}

async fn route(
    req: Request<hyper::body::Incoming>,
    at: Origin,
    server: Arc<Server>,
) -> Response<Body> {
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    if server.live.get().socketio.serves(req.uri().path()) {
        return super::engineio::handle(req, at, &server).await;
    }
    match req.uri().path() {
        "/ws" => {
            if req.method() != Method::GET {
                return method_not_allowed("GET");
            }
            ws::handshake(req, at, &server)
        }
        "/healthz" if read_only => health(&server),
        "/metrics" if read_only => {
            // The store sweeps as it is used; a scrape reads it swept.
            let parked = i64::try_from(server.recovery.len()).unwrap_or(i64::MAX);
            server.metrics.socketio_parked.set(parked);
            let mut resp = Response::new(Body::from(server.metrics.encode()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        "/healthz" | "/metrics" => method_not_allowed("GET, HEAD"),
        PUBLISH_PATH if server.live.get().publish.enabled => {
            super::publish::handle(req, at, &server).await
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/healthz`: 200 while every source is up; 503 `unavailable` while one
/// is down, and 503 `draining` from the moment shutdown starts (so a load
/// balancer takes the relay out before its clients are closed).
fn health(server: &Server) -> Response<Body> {
    let sources = server.health.sources();
    let draining = server.health.is_draining();
    let up = sources.iter().all(|(_, up)| *up) && !draining;
    let state = |up: bool| if up { "up" } else { "down" };
    let redis = sources
        .iter()
        .find(|(name, _)| *name == "redis")
        .map_or("off", |(_, up)| state(*up));
    let by_source: serde_json::Map<String, serde_json::Value> = sources
        .iter()
        .map(|(name, up)| ((*name).to_owned(), state(*up).into()))
        .collect();
    let body = serde_json::json!({
        "status": match (draining, up) {
            (true, _) => "draining",
            (false, true) => "ok",
            (false, false) => "unavailable",
        },
        "redis": redis,
        "sources": by_source,
        "connections": server.admission.open(),
        "routing_index_entries": server.metrics.routing_index_entries.get(),
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

impl Server {
    /// Counts a refused handshake and logs it at info, at most once a
    /// second (with how many were suppressed), naming the peer and the
    /// reason — an operator whose browser fails to connect must see why.
    /// The detailed text can quote client-supplied values, so it is only
    /// logged at debug.
    pub fn refused(&self, peer: SocketAddr, r: &Refused) {
        self.metrics.reject(r.reason);
        match self.refusal_log.check() {
            Some(suppressed) => tracing::info!(
                %peer,
                reason = r.reason,
                status = r.status.as_u16(),
                suppressed,
                "handshake refused"
            ),
            None => tracing::debug!(%peer, reason = r.reason, why = %r.why, "handshake refused"),
        }
    }

    /// [`refused`](Self::refused), as the HTTP answer to send.
    pub fn refuse(&self, peer: SocketAddr, r: Refused) -> Response<Body> {
        self.refused(peer, &r);
        let mut resp = text(r.status, &format!("{}\n", r.why));
        if r.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// 405 with the allowed methods.
pub fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}

/// A plain-text answer.
pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_owned()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
