//! The WebSocket transport for the relay's own protocol (`/ws`): the 101
//! answer, then one task per client that selects over its session's queue
//! (batched writes), the socket, the ping timer, the idle deadline and the
//! session's control channel (close requests, reload, shutdown). Errors end
//! here, logged once in the connection's span.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::header::{self, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;

use super::handshake::{self, Refused};
use super::http::{Body, Origin};
use super::socket::Io;
use super::Server;
use crate::hub::queue::{Outbound, QueueRx, Signal, Turn};
use crate::hub::Welcome;
use crate::metrics::{ListenerLabel, Metrics};
use crate::session::{Admitted, Refusal, Session};
use crate::util::id::random_u64;
use crate::wire::studio::{self, ClientFrame, ErrorCode, FrameError};
use crate::wire::{close, Wire};

/// Frames taken from the queue per socket write.
const WRITE_BATCH: usize = 64;
/// How long to wait for the client's close reply once ours is sent.
const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(1);
/// tungstenite's read buffer. Client messages are small (4 KiB by default),
/// larger frames get a buffer sized to the frame once its header is read,
/// and tungstenite zero-fills this much on every read attempt — so it is
/// small: the 128 KiB default would also cost 12 GiB at 100k connections.
const READ_BUFFER: usize = 1024;
/// Bytes collected before tungstenite writes to the socket; `flush` sends
/// the rest, so a batch leaves in a few syscalls.
const WRITE_BUFFER: usize = 16 * 1024;

type Ws = WebSocketStream<Io>;

/// The `/ws` request: checks in SPEC §9 order, then 101 and a spawned
/// connection task.
pub fn handshake(
    mut req: Request<hyper::body::Incoming>,
    at: Origin,
    server: &Arc<Server>,
) -> Response<Body> {
    let config = server.live.get();
    let key = match handshake::websocket_key(req.version(), req.headers()) {
        Ok(key) => key,
        Err(why) => return server.refuse(at.peer, Refused::bad_request(why)),
    };
    let checked = match handshake::check(
        req.uri().query().unwrap_or(""),
        req.headers(),
        &config,
        &server.admission,
        handshake::TokenRule::Required,
    ) {
        Ok(c) => c,
        Err(r) => return server.refuse(at.peer, r),
    };
    // `Required` means the token was checked; never admit without it.
    let Some(access) = checked.access else {
        return server.refuse(
            at.peer,
            Refused {
                status: StatusCode::UNAUTHORIZED,
                reason: "unauthorized",
                why: "missing token".into(),
            },
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let admitted = Admitted {
        name: server.ids.next(),
        keys: checked.query.keys,
        all: checked.query.all,
        token: checked.token,
        access,
        permit: checked.permit,
        resume: checked.query.since,
    };
    let span =
        tracing::info_span!("conn", id = %admitted.name, peer = %at.peer, listener = %at.listener);
    server
        .tasks
        .spawn(run(on_upgrade, admitted, at.listener, server.clone()).instrument(span));
    switching_protocols(&key)
}

/// The 101 answer to a valid upgrade request with `key`.
pub(crate) fn switching_protocols(key: &str) -> Response<Body> {
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

/// Waits for hyper to hand over an upgraded connection (bounded by the
/// handshake timeout) and wraps it as a server websocket with the relay's
/// buffer sizes and message limit; on plain TCP the socket is shareable
/// with the hub ([`Io::Direct`]) unless `direct_writes` is off.
pub(crate) async fn accept(
    on_upgrade: OnUpgrade,
    limits: &crate::config::LimitsConfig,
) -> Option<WebSocketStream<Io>> {
    let upgraded = match timeout(
        Duration::from_millis(limits.handshake_timeout_ms),
        on_upgrade,
    )
    .await
    {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upgrade failed");
            return None;
        }
        Err(_) => {
            tracing::debug!("upgrade timed out");
            return None;
        }
    };
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(limits.max_client_message_bytes))
        .max_frame_size(Some(limits.max_client_message_bytes));
    Some(
        WebSocketStream::from_raw_socket(
            Io::new(upgraded, limits.direct_writes),
            Role::Server,
            Some(ws_config),
        )
        .await,
    )
}

/// Why the loop ended: a close to send, or nothing to send.
enum Exit {
    Close(u16),
    /// The token's `exp` came: 1008 `token expired`.
    Expired,
    Gone,
}

/// Runs one connection from the HTTP upgrade to its last frame.
async fn run(on_upgrade: OnUpgrade, admitted: Admitted, listener: Arc<str>, server: Arc<Server>) {
    let config = server.live.get();
    let Some(ws) = accept(on_upgrade, &config.limits).await else {
        return;
    };

    let label = ListenerLabel {
        listener: listener.to_string(),
    };
    let metrics = server.metrics.clone();
    metrics.connections_accepted.get_or_create(&label).inc();
    metrics.connections_open.get_or_create(&label).inc();
    tracing::debug!(
        subscriptions = admitted.keys.len(),
        all = admitted.all,
        "connected"
    );

    let welcome = {
        let (id, fields) = (admitted.name.text.clone(), config.routable_fields());
        let (keys, all) = (admitted.keys.clone(), admitted.all);
        Welcome::new(move |info| studio::welcome(&id, &fields, &keys, all, info))
    };
    let session = Session::open(
        admitted,
        Wire::Studio,
        welcome,
        server.hub.clone(),
        server.live.clone(),
    )
    .await;
    let mut conn = Conn {
        ws,
        metrics: metrics.clone(),
        buf: Vec::new(),
        write_timeout: Duration::from_millis(config.limits.write_timeout_ms),
    };
    match session {
        Some(mut session) => {
            if let Some(sock) = conn.ws.get_ref().direct_socket() {
                session.queue().attach(sock, metrics.clone());
                conn.ws.get_mut().attach(session.control());
            }
            let exit = conn.serve(&mut session).await;
            // The hub stops writing before a close frame goes out.
            session.queue().seal();
            match exit {
                Exit::Close(code) => conn.close(code, close::reason(code)).await,
                Exit::Expired => conn.close(close::POLICY, close::TOKEN_EXPIRED).await,
                Exit::Gone => {}
            }
            session.close().await;
        }
        None => {
            conn.close(close::GOING_AWAY, close::reason(close::GOING_AWAY))
                .await
        }
    }
    metrics.connections_open.get_or_create(&label).dec();
}

/// The socket side of one connection.
struct Conn {
    ws: Ws,
    metrics: Arc<Metrics>,
    buf: Vec<Outbound>,
    write_timeout: Duration,
}

impl Conn {
    async fn serve(&mut self, session: &mut Session) -> Exit {
        let control = session.control();
        let limits = session.live().get().limits.clone();
        let ping_every = Duration::from_millis(limits.ping_interval_ms);
        let idle = Duration::from_millis(limits.idle_timeout_ms);
        // Timers live across loop turns and are reset, not re-created: a
        // wakeup per event must not cost two timer-wheel insertions.
        let ping = tokio::time::sleep(ping_every);
        let idle_deadline = tokio::time::sleep(idle);
        // Armed once at the token's `exp` (SPEC §13); no token expiry, no arm.
        let expires_at = session.expires_at();
        let expiry = tokio::time::sleep_until(expires_at.unwrap_or_else(Instant::now));
        tokio::pin!(ping, idle_deadline, expiry);
        // Direct: the hub writes the frames; this task only takes over
        // while the socket would block.
        let direct = session.queue().is_direct();
        loop {
            tokio::select! {
                biased;
                signal = control.next_signal() => match signal {
                    Signal::Close(code) => return Exit::Close(code),
                    Signal::Shutdown => return self.drain_for_shutdown(session).await,
                    Signal::Reload => {
                        if session.token_revoked() {
                            tracing::info!("token no longer valid after reload; closing with 1008");
                            self.metrics.reject("unauthorized");
                            return Exit::Close(close::POLICY);
                        }
                    }
                },
                _ = &mut expiry, if expires_at.is_some() => {
                    tracing::info!("token expired; closing with 1008");
                    self.metrics.reject("unauthorized");
                    return Exit::Expired;
                }
                ready = next_frames(session.queue(), &mut self.buf, direct, WRITE_BATCH, self.write_timeout) => match ready {
                    // The hub is gone: the relay is shutting down.
                    Frames::Taken(0) | Frames::Direct(Turn::HubGone) => {
                        return self.drain_for_shutdown(session).await
                    }
                    Frames::Taken(_) => {
                        if let Err(exit) = self.write_batch().await {
                            return exit;
                        }
                    }
                    Frames::Direct(Turn::Wrote) => {}
                    Frames::Direct(Turn::Stalled) => {
                        tracing::info!("socket stopped draining; dropping connection");
                        self.metrics.slow_consumer_disconnects.inc();
                        return Exit::Gone;
                    }
                    Frames::Direct(Turn::Failed) => return Exit::Gone,
                },
                msg = self.ws.next() => {
                    if !idle.is_zero() {
                        idle_deadline.as_mut().reset(Instant::now() + idle);
                    }
                    match msg {
                        None => return Exit::Gone,
                        Some(Ok(msg)) => {
                            if let Some(exit) = self.on_message(msg, session).await {
                                return exit;
                            }
                        }
                        Some(Err(e)) => return read_error(e),
                    }
                }
                _ = &mut ping, if !ping_every.is_zero() => {
                    ping.as_mut().reset(Instant::now() + ping_every);
                    if self.send_now(Message::Ping(Default::default())).await.is_err() {
                        return Exit::Gone;
                    }
                }
                _ = &mut idle_deadline, if !idle.is_zero() => return Exit::Close(close::IDLE),
            }
        }
    }

    /// Writes the frames in `buf` as one batch: feed each, flush once.
    async fn write_batch(&mut self) -> Result<(), Exit> {
        let frames = self.buf.len();
        let first_received = self.buf.iter().find_map(|o| o.received);
        let events = self.buf.iter().filter(|o| o.received.is_some()).count();
        let ws = &mut self.ws;
        let buf = &mut self.buf;
        let write = async {
            for out in buf.drain(..) {
                ws.feed(Message::Text(out.frame.into_payload())).await?;
            }
            ws.flush().await
        };
        match timeout(self.write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "write failed");
                return Err(Exit::Gone);
            }
            Err(_) => {
                tracing::info!("socket stopped draining; dropping connection");
                self.metrics.slow_consumer_disconnects.inc();
                return Err(Exit::Gone);
            }
        }
        self.metrics.events_delivered.inc_by(events as u64);
        if let Some(t) = first_received {
            self.metrics
                .fanout_latency
                .observe(t.elapsed().as_secs_f64());
        }
        // Give back a burst's buffer so idle connections stay small.
        if frames < WRITE_BATCH && self.buf.capacity() > 8 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    async fn on_message(&mut self, msg: Message, session: &mut Session) -> Option<Exit> {
        match msg {
            Message::Text(text) => match on_text(&text, session, &self.metrics).await {
                Some(frame) => self.send_now(Message::Text(frame)).await.err(),
                None => None,
            },
            Message::Binary(_) => {
                let err = FrameError {
                    code: ErrorCode::Unsupported,
                    message: "binary frames are not supported; send JSON text frames".into(),
                };
                self.send_now(Message::Text(studio::error(&err)))
                    .await
                    .err()
            }
            // tungstenite queued the pong (or close reply); push it out.
            Message::Ping(_) => self.flush().await.err(),
            Message::Close(_) => {
                let _ = self.flush().await;
                Some(Exit::Gone)
            }
            Message::Pong(_) | Message::Frame(_) => None,
        }
    }

    async fn send_now(&mut self, msg: Message) -> Result<(), Exit> {
        match timeout(self.write_timeout, self.ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Exit::Gone),
        }
    }

    async fn flush(&mut self) -> Result<(), Exit> {
        match timeout(self.write_timeout, self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Exit::Gone),
        }
    }

    /// Shutdown: send what is already queued, wait a jittered moment so
    /// thousands of clients do not reconnect in the same millisecond, close 1001.
    async fn drain_for_shutdown(&mut self, session: &mut Session) -> Exit {
        // The drain delay (health failing, clients still served) has
        // already taken its part of the grace.
        let grace = session.live().get().limits.close_window();
        let deadline = Instant::now() + grace;
        if session.queue().is_direct() && !session.queue().drain_direct(deadline).await {
            return Exit::Gone;
        }
        loop {
            session.queue().drain_now(&mut self.buf, WRITE_BATCH);
            if self.buf.is_empty() {
                break;
            }
            match tokio::time::timeout_at(deadline, self.write_batch()).await {
                Ok(Ok(())) => {}
                _ => return Exit::Gone,
            }
        }
        let spread = (grace / 4).min(Duration::from_secs(1));
        if !spread.is_zero() {
            let delay = random_u64() % (spread.as_millis() as u64).max(1);
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        Exit::Close(close::GOING_AWAY)
    }

    /// Sends a close frame (a slow reader gets `write_timeout` to take it),
    /// then waits briefly for the client's reply so the frame is not lost
    /// to a TCP reset.
    async fn close(&mut self, code: u16, reason: &'static str) {
        tracing::debug!(code, reason, "closing");
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        match timeout(self.write_timeout, self.ws.close(Some(frame))).await {
            Ok(Ok(())) => {}
            _ => return,
        }
        let _ = timeout(CLOSE_REPLY_TIMEOUT, async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// Handles a client text frame; returns a frame to send right away
/// (pong or error). Acks travel through the hub and the queue.
async fn on_text(text: &str, session: &mut Session, metrics: &Metrics) -> Option<Utf8Bytes> {
    let config = session.live().get();
    let (subscribe, change) = match studio::parse_client_frame(text, &config.routable_fields()) {
        Ok(ClientFrame::Ping) => return Some(studio::PONG),
        Ok(ClientFrame::Subscribe(c)) => (true, c),
        Ok(ClientFrame::Unsubscribe(c)) => (false, c),
        Err(e) => return Some(studio::error(&e)),
    };
    let ack = studio::ack(subscribe, &change.echo);
    match session
        .change(subscribe, change.keys, change.all, Some(ack))
        .await
    {
        Ok(()) => None,
        Err(refusal) => {
            if let Refusal::Forbidden(denied) = &refusal {
                tracing::debug!(why = %denied, "subscribe forbidden");
                metrics.reject("forbidden");
            }
            Some(studio::error(&FrameError::from(refusal)))
        }
    }
}

/// What the queue had for the connection.
pub(crate) enum Frames {
    /// Frames moved into the write buffer (0: the hub has gone).
    Taken(usize),
    /// A direct socket's turn at writing.
    Direct(Turn),
}

/// The next frames to write: taken from the queue, or, on a direct socket,
/// the connection's turn once the hub left it a backlog.
pub(crate) async fn next_frames(
    queue: &mut QueueRx,
    buf: &mut Vec<Outbound>,
    direct: bool,
    batch: usize,
    write_timeout: Duration,
) -> Frames {
    if direct {
        Frames::Direct(queue.serve_direct(write_timeout).await)
    } else {
        Frames::Taken(queue.recv_many(buf, batch).await)
    }
}

/// Maps a read error to the close it deserves.
fn read_error(e: WsError) -> Exit {
    match e {
        WsError::Capacity(_) => Exit::Close(close::TOO_BIG),
        WsError::Utf8(_) => Exit::Close(close::INVALID_PAYLOAD),
        WsError::Protocol(p) => {
            tracing::debug!(error = %p, "protocol error");
            Exit::Close(close::PROTOCOL_ERROR)
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed => Exit::Gone,
        other => {
            tracing::debug!(error = %other, "read failed");
            Exit::Gone
        }
    }
}
