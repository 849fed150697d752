//! One task per WebSocket client: registers with the hub, then selects over
//! its queue (batched writes), the socket, the ping timer, the idle
//! deadline, close requests from the hub, config reloads and shutdown.
//! Errors end here, logged once in the connection's span.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::access;
use crate::config::Config;
use crate::metrics::ListenerLabel;
use crate::protocol::{self, ClientFrame, ErrorCode, FrameError};
use crate::relay::State;
use crate::router::{self, Command, ConnId, Outbound, QueueRx, Signal};

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

type Ws = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// A slot counted against `max_connections`, released on drop.
pub struct Permit {
    state: Arc<State>,
}

impl Permit {
    /// Takes a slot if fewer than `max` are held.
    pub fn acquire(state: &Arc<State>, max: usize) -> Option<Permit> {
        state
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit {
                state: state.clone(),
            })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.state.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A handshake that passed every check.
pub struct Accepted {
    /// Connection id, shown to the client in the welcome frame.
    pub id: ConnIdString,
    /// Peer address.
    pub peer: SocketAddr,
    /// The listener's bound address.
    pub listener: Arc<str>,
    /// Subscriptions from the URL.
    pub keys: Vec<(String, String)>,
    /// Firehose from the URL.
    pub all: bool,
    /// The token presented, kept to re-check it when tokens are reloaded.
    pub token: Option<String>,
    /// The connection's `max_connections` slot.
    pub permit: Permit,
}

/// Numeric id for the hub plus its printable form.
#[derive(Debug, Clone)]
pub struct ConnIdString {
    /// Hub key.
    pub num: ConnId,
    /// `<instance>-<num>`, unique across relays sharing a Redis.
    pub text: String,
}

impl std::fmt::Display for ConnIdString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Why the loop ended: a close to send, or nothing to send.
enum Exit {
    Close(u16, &'static str),
    Gone,
}

/// Runs one connection from the HTTP upgrade to its last frame.
pub async fn run(on_upgrade: OnUpgrade, acc: Accepted, state: Arc<State>) {
    let config = state.config();
    let upgraded = match timeout(
        Duration::from_millis(config.limits.handshake_timeout_ms),
        on_upgrade,
    )
    .await
    {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
        Err(_) => {
            tracing::debug!("upgrade timed out");
            return;
        }
    };
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(config.limits.max_client_message_bytes))
        .max_frame_size(Some(config.limits.max_client_message_bytes));
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(ws_config))
            .await;

    let label = ListenerLabel {
        listener: acc.listener.to_string(),
    };
    state
        .metrics
        .connections_accepted
        .get_or_create(&label)
        .inc();
    state.metrics.connections_open.get_or_create(&label).inc();
    tracing::debug!(subscriptions = acc.keys.len(), all = acc.all, "connected");

    let (queue_tx, queue_rx) =
        router::queue(config.limits.send_queue, config.limits.send_queue_bytes);
    let welcome = protocol::welcome(&acc.id.text, &config.routing.fields, &acc.keys, acc.all);
    let registered = state
        .hub
        .send(Command::Register {
            id: acc.id.num,
            queue: queue_tx,
            keys: acc.keys.clone(),
            all: acc.all,
            welcome,
        })
        .await;

    let mut conn = Conn {
        id: acc.id.num,
        subs: acc.keys.into_iter().collect(),
        all: acc.all,
        token: acc.token,
        ws,
        queue: queue_rx,
        state: state.clone(),
        buf: Vec::new(),
        write_timeout: Duration::from_millis(config.limits.write_timeout_ms),
    };
    let exit = if registered {
        conn.serve().await
    } else {
        Exit::Close(protocol::CLOSE_GOING_AWAY, "relay shutting down")
    };
    if let Exit::Close(code, reason) = exit {
        tracing::debug!(code, reason, "closing");
        conn.close(code, reason).await;
    }
    state.hub.send(Command::Unregister { id: conn.id }).await;
    state.metrics.connections_open.get_or_create(&label).dec();
    drop(acc.permit);
}

struct Conn {
    id: ConnId,
    /// Mirror of the hub's view, to answer limit errors without a round trip.
    subs: HashSet<(String, String)>,
    all: bool,
    token: Option<String>,
    ws: Ws,
    queue: QueueRx,
    state: Arc<State>,
    buf: Vec<Outbound>,
    write_timeout: Duration,
}

impl Conn {
    async fn serve(&mut self) -> Exit {
        let shared = self.queue.shared().clone();
        let limits = self.state.config().limits.clone();
        let ping_every = Duration::from_millis(limits.ping_interval_ms);
        let idle = Duration::from_millis(limits.idle_timeout_ms);
        // Timers live across loop turns and are reset, not re-created: a
        // wakeup per event must not cost two timer-wheel insertions.
        let ping = tokio::time::sleep(ping_every);
        let idle_deadline = tokio::time::sleep(idle);
        tokio::pin!(ping, idle_deadline);
        loop {
            tokio::select! {
                biased;
                signal = shared.next_signal() => match signal {
                    Signal::Close(code) => {
                        return Exit::Close(code, match code {
                            protocol::CLOSE_SLOW => "slow consumer",
                            _ => "closed by relay",
                        });
                    }
                    Signal::Shutdown => return self.drain_for_shutdown().await,
                    Signal::Reload => {
                        let config = self.state.config();
                        if !access::token_allowed(self.token.as_deref(), &config.auth.tokens) {
                            tracing::info!("token no longer valid after reload; closing with 1008");
                            return Exit::Close(protocol::CLOSE_POLICY, "token revoked");
                        }
                    }
                },
                n = self.queue.recv_many(&mut self.buf, WRITE_BATCH) => {
                    if n == 0 {
                        // The hub is gone: the relay is shutting down.
                        return self.drain_for_shutdown().await;
                    }
                    if let Err(exit) = self.write_batch().await {
                        return exit;
                    }
                }
                msg = self.ws.next() => {
                    if !idle.is_zero() {
                        idle_deadline.as_mut().reset(Instant::now() + idle);
                    }
                    match msg {
                        None => return Exit::Gone,
                        Some(Ok(msg)) => {
                            if let Some(exit) = self.on_message(msg).await {
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
                _ = &mut idle_deadline, if !idle.is_zero() => {
                    return Exit::Close(protocol::CLOSE_IDLE, "idle timeout");
                }
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
                ws.feed(Message::Text(out.frame)).await?;
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
                self.state.metrics.slow_consumer_disconnects.inc();
                return Err(Exit::Gone);
            }
        }
        let m = &self.state.metrics;
        m.events_delivered.inc_by(events as u64);
        if let Some(t) = first_received {
            m.fanout_latency.observe(t.elapsed().as_secs_f64());
        }
        // Give back a burst's buffer so idle connections stay small.
        if frames < WRITE_BATCH && self.buf.capacity() > 8 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    async fn on_message(&mut self, msg: Message) -> Option<Exit> {
        match msg {
            Message::Text(text) => {
                let reply = self.on_text(&text).await;
                match reply {
                    Some(frame) => self.send_now(Message::Text(frame)).await.err(),
                    None => None,
                }
            }
            Message::Binary(_) => {
                let err = FrameError {
                    code: ErrorCode::Unsupported,
                    message: "binary frames are not supported; send JSON text frames".into(),
                };
                self.send_now(Message::Text(protocol::error(&err)))
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

    /// Handles a client text frame; returns a frame to send right away
    /// (pong or error). Acks travel through the hub and the queue.
    async fn on_text(&mut self, text: &str) -> Option<Utf8Bytes> {
        let config = self.state.config();
        let frame = match protocol::parse_client_frame(text, &config.routing.fields) {
            Ok(f) => f,
            Err(e) => return Some(protocol::error(&e)),
        };
        let (subscribe, change) = match frame {
            ClientFrame::Ping => return Some(protocol::PONG),
            ClientFrame::Subscribe(c) => (true, c),
            ClientFrame::Unsubscribe(c) => (false, c),
        };
        if let Err(e) = self.check_change(subscribe, &change.keys, change.all, &config) {
            return Some(protocol::error(&e));
        }
        for key in &change.keys {
            if subscribe {
                self.subs.insert(key.clone());
            } else {
                self.subs.remove(key);
            }
        }
        if change.all {
            self.all = subscribe;
        }
        let ack = protocol::ack(subscribe, &change.echo);
        let sent = self
            .state
            .hub
            .send(Command::Change {
                id: self.id,
                subscribe,
                keys: change.keys,
                all: change.all,
                ack,
            })
            .await;
        // The hub only stops at shutdown, which this task sees next.
        let _ = sent;
        None
    }

    fn check_change(
        &self,
        subscribe: bool,
        keys: &[(String, String)],
        all: bool,
        config: &Config,
    ) -> Result<(), FrameError> {
        if !subscribe {
            return Ok(());
        }
        if all && !config.routing.allow_firehose {
            return Err(FrameError {
                code: ErrorCode::FirehoseDisabled,
                message: "the firehose is disabled on this relay".into(),
            });
        }
        let new: HashSet<&(String, String)> =
            keys.iter().filter(|k| !self.subs.contains(*k)).collect();
        if self.subs.len() + new.len() > config.limits.max_subscriptions {
            return Err(FrameError {
                code: ErrorCode::TooManySubscriptions,
                message: format!(
                    "holding {} subscriptions, {} more would exceed max_subscriptions {}",
                    self.subs.len(),
                    new.len(),
                    config.limits.max_subscriptions
                ),
            });
        }
        Ok(())
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
    async fn drain_for_shutdown(&mut self) -> Exit {
        let grace = Duration::from_millis(self.state.config().limits.shutdown_grace_ms);
        let deadline = Instant::now() + grace;
        loop {
            self.queue.drain_now(&mut self.buf, WRITE_BATCH);
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
            let delay = crate::source::random_u64() % (spread.as_millis() as u64).max(1);
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        Exit::Close(protocol::CLOSE_GOING_AWAY, "relay shutting down")
    }

    /// Sends a close frame (a slow reader gets `write_timeout` to take it),
    /// then waits briefly for the client's reply so the frame is not lost
    /// to a TCP reset.
    async fn close(&mut self, code: u16, reason: &'static str) {
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

/// Maps a read error to the close it deserves.
fn read_error(e: WsError) -> Exit {
    match e {
        WsError::Capacity(_) => Exit::Close(protocol::CLOSE_TOO_BIG, "message too big"),
        WsError::Utf8(_) => Exit::Close(protocol::CLOSE_INVALID_PAYLOAD, "invalid UTF-8"),
        WsError::Protocol(p) => {
            tracing::debug!(error = %p, "protocol error");
            Exit::Close(1002, "protocol error")
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed => Exit::Gone,
        other => {
            tracing::debug!(error = %other, "read failed");
            Exit::Gone
        }
    }
}
