//! Engine.IO 4 (polling and websocket, with the upgrade) carrying
//! Socket.IO 5 on namespace `/`, on the same listeners as `/ws` (SPEC §11).
//!
//! Each session is one task ([`session`]); this module only routes HTTP
//! requests to it through the sid table and answers what the protocol
//! answers without a session (handshake, unknown sid, CORS preflight).

pub mod packet;
pub mod recovery;
pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use super::handshake::{self, TokenRule};
use super::http::{text, Body, Origin};
use super::{ws, Server};
use crate::auth;
use crate::config::Config;
use crate::util::id::secret_id;
use packet::{EioError, Request as EioRequest, SessionOp, Transport};
use session::{Opening, PollAnswer, SharedState, ToSession};

/// A websocket carrying an Engine.IO session.
pub type Ws = WebSocketStream<crate::transport::socket::Io>;

/// Requests waiting for one session's task.
const SESSION_INBOX: usize = 8;

/// The live sessions by sid.
#[derive(Default)]
pub struct Sids {
    map: Mutex<HashMap<String, Handle>>,
}

#[derive(Clone)]
struct Handle {
    tx: mpsc::Sender<ToSession>,
    state: Arc<SharedState>,
}

impl Sids {
    fn get(&self, sid: &str) -> Option<Handle> {
        self.lock().get(sid).cloned()
    }

    fn insert(&self, sid: String, handle: Handle) {
        self.lock().insert(sid, handle);
    }

    /// Forgets a session (it ended): its sid is unknown from now on.
    pub fn remove(&self, sid: &str) {
        self.lock().remove(sid);
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True with no live session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Handle>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A request on the Engine.IO path.
pub async fn handle(
    req: Request<hyper::body::Incoming>,
    at: Origin,
    server: &Arc<Server>,
) -> Response<Body> {
    let config = server.live.get();
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let cors_ok = auth::origin_allowed(origin.as_deref(), &config.security.allowed_origins);
    let mut resp = if req.method() == Method::OPTIONS {
        preflight(&req, cors_ok)
    } else {
        route(req, &at, server, &config).await
    };
    if let (Some(o), true) = (origin, cors_ok) {
        cors(&mut resp, &o);
    }
    resp
}

/// `Access-Control-Allow-Origin: <Origin>` with credentials, as the
/// Socket.IO server's `cors: {origin: true, credentials: true}` answers.
fn cors(resp: &mut Response<Body>, origin: &str) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn preflight(req: &Request<hyper::body::Incoming>, allowed: bool) -> Response<Body> {
    if !allowed {
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let mut resp = Response::new(Body::default());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    let asked = req
        .headers()
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("content-type"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    resp
}

async fn route(
    mut req: Request<hyper::body::Incoming>,
    at: &Origin,
    server: &Arc<Server>,
    config: &Config,
) -> Response<Body> {
    let query = req.uri().query().unwrap_or("").to_owned();
    let q = packet::parse_query(&query);
    let ws_key = handshake::websocket_key(req.version(), req.headers()).ok();
    let request = match packet::classify(&q, req.method(), ws_key.is_some()) {
        Ok(r) => r,
        Err(e) => {
            server.refused(at.peer, &handshake::Refused::bad_request(e.message()));
            return eio_error(e);
        }
    };
    match request {
        EioRequest::Handshake(transport) => {
            open(req, at, server, config, &query, transport, ws_key).await
        }
        EioRequest::Session { sid, op } => {
            let handle = server.sids.get(sid);
            if let Err(e) = packet::check_session(op, handle.as_ref().map(|h| h.state.get())) {
                return eio_error(e);
            }
            let Some(handle) = handle else {
                return eio_error(EioError::UnknownSid);
            };
            match op {
                SessionOp::Poll => poll(&handle).await,
                SessionOp::Send => post(req, &handle, config).await,
                SessionOp::Upgrade => match ws_key {
                    Some(key) => {
                        let on_upgrade = hyper::upgrade::on(&mut req);
                        spawn_websocket(server, on_upgrade, handle.tx.clone(), false);
                        ws::switching_protocols(&key)
                    }
                    None => eio_error(EioError::BadRequest),
                },
                SessionOp::Invalid => eio_error(EioError::BadRequest),
            }
        }
    }
}

/// A new session: the shared handshake checks, then the open packet (as
/// the GET's body, or as the first websocket frame).
async fn open(
    mut req: Request<hyper::body::Incoming>,
    at: &Origin,
    server: &Arc<Server>,
    config: &Config,
    query: &str,
    transport: Transport,
    ws_key: Option<String>,
) -> Response<Body> {
    // The token may also come in the CONNECT packet's auth.
    let checked = match handshake::check(
        query,
        req.headers(),
        config,
        &server.admission,
        TokenRule::MayComeLater,
    ) {
        Ok(c) => c,
        Err(r) => return server.refuse(at.peer, r),
    };
    let sid = secret_id();
    let name = server.ids.next();
    let span = tracing::info_span!("conn", id = %name, peer = %at.peer, listener = %at.listener, sid = %sid);
    let opening = Opening {
        sid: sid.clone(),
        name,
        keys: checked.query.keys,
        all: checked.query.all,
        token: checked.token,
        permit: checked.permit,
        listener: at.listener.clone(),
    };
    let (tx, rx) = mpsc::channel(SESSION_INBOX);
    let state = Arc::new(SharedState::default());
    server.sids.insert(
        sid.clone(),
        Handle {
            tx: tx.clone(),
            state: state.clone(),
        },
    );
    server.tasks.spawn(
        session::run(opening, rx, state, server.sids.clone(), server.clone()).instrument(span),
    );
    match (transport, ws_key) {
        (Transport::WebSocket, Some(key)) => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            spawn_websocket(server, on_upgrade, tx, true);
            ws::switching_protocols(&key)
        }
        _ => {
            let body = packet::open_packet(
                &sid,
                config.socketio.ping_interval_ms,
                config.socketio.ping_timeout_ms,
                config.limits.max_client_message_bytes as u64,
                packet::POLLING_UPGRADES,
            );
            polling_body(Bytes::from(body))
        }
    }
}

/// Completes the HTTP upgrade off the request path and hands the socket
/// to the session.
fn spawn_websocket(
    server: &Arc<Server>,
    on_upgrade: hyper::upgrade::OnUpgrade,
    tx: mpsc::Sender<ToSession>,
    direct: bool,
) {
    let limits = server.live.get().limits.clone();
    server.tasks.spawn(async move {
        if let Some(ws) = ws::accept(on_upgrade, &limits).await {
            let _ = tx
                .send(ToSession::Websocket {
                    ws: Box::new(ws),
                    direct,
                })
                .await;
        }
    });
}

async fn poll(handle: &Handle) -> Response<Body> {
    let (tx, rx) = oneshot::channel();
    if handle.tx.send(ToSession::Poll(tx)).await.is_err() {
        return eio_error(EioError::UnknownSid);
    }
    match rx.await {
        Ok(PollAnswer::Body(body)) => polling_body(body),
        Ok(PollAnswer::Error(e)) => eio_error(e),
        Err(_) => eio_error(EioError::UnknownSid),
    }
}

/// A POST of packets. Over `maxPayload` (the open packet's, which is
/// `limits.max_client_message_bytes`) or not UTF-8: refused, and the
/// session ends, as the reference closes on a transport error.
async fn post(
    req: Request<hyper::body::Incoming>,
    handle: &Handle,
    config: &Config,
) -> Response<Body> {
    let limit = config.limits.max_client_message_bytes;
    let body = match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            end_session(handle).await;
            return text(StatusCode::PAYLOAD_TOO_LARGE, "payload over maxPayload\n");
        }
    };
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        end_session(handle).await;
        return eio_error(EioError::BadRequest);
    };
    let (tx, rx) = oneshot::channel();
    if handle.tx.send(ToSession::Post(body, tx)).await.is_err() {
        return eio_error(EioError::UnknownSid);
    }
    match rx.await {
        Ok(Ok(())) => {
            let mut resp = Response::new(Body::from(packet::POST_OK));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(packet::POST_OK_CONTENT_TYPE),
            );
            resp
        }
        Ok(Err(e)) => eio_error(e),
        Err(_) => eio_error(EioError::UnknownSid),
    }
}

/// Makes the session fail on an empty payload, which ends it.
async fn end_session(handle: &Handle) {
    let (tx, _rx) = oneshot::channel();
    let _ = handle.tx.send(ToSession::Post(String::new(), tx)).await;
}

fn polling_body(body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(packet::POLL_CONTENT_TYPE),
    );
    resp
}

fn eio_error(e: EioError) -> Response<Body> {
    let mut resp = Response::new(Body::from(e.body()));
    *resp.status_mut() = e.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(packet::ERROR_CONTENT_TYPE),
    );
    resp
}
