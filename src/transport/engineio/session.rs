//! One Engine.IO session: a task that owns the relay [`Session`] (once the
//! Socket.IO CONNECT arrived) and whichever transport carries it — pending
//! long-polls or a websocket — and runs the heartbeat and the upgrade.
//! HTTP handlers only pass it requests ([`ToSession`]) and wait for its
//! answers, so all of a session's state lives in one task and no lock is
//! held across an await.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};

use super::packet::{self, EioError, Packet, SessionState};
use super::recovery::Parked;
use super::{Sids, Ws};
use crate::config::Unsubscribed;
use crate::ctx::{ConnName, Permit};
use crate::hub::queue::{ConnShared, Outbound, Signal, Turn};
use crate::hub::{Restore, Resume, Welcome};
use crate::metrics::{ListenerLabel, TransportLabel};
use crate::session::{policy, Admitted, Refusal, Session};
use crate::transport::ws::{next_frames, Frames};
use crate::transport::Server;
use crate::util::id::secret_id;
use crate::wire::socketio::{self, ClientPacket, Subscription};
use crate::wire::studio::FrameError;
use crate::wire::{close, WelcomeInfo, Wire};

/// Frames taken from the hub queue per write.
const WRITE_BATCH: usize = 64;
/// Packets one polling POST may carry.
const MAX_RECORDS: usize = 256;
/// How long a probe websocket may take from `2probe` to `5`.
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a client's close reply once ours is sent.
const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(1);

/// What an HTTP handler asks of a session.
pub enum ToSession {
    /// A long-poll GET: answered with a body of packets.
    Poll(oneshot::Sender<PollAnswer>),
    /// A POST body of packets; answered `Ok` (200 "ok") or with the error
    /// that ended the session.
    Post(String, oneshot::Sender<Result<(), EioError>>),
    /// A client came back with this session's pid while the relay still
    /// saw its old transport alive: hand over what recovery needs and end.
    Takeover(oneshot::Sender<Parked>),
    /// A websocket for the session: the probe of an upgrade, or (`direct`)
    /// the session's only transport from the start.
    Websocket {
        /// The upgraded socket.
        ws: Box<Ws>,
        /// No polling came first: the open packet goes out on it.
        direct: bool,
    },
}

/// The answer to a long-poll.
#[derive(Debug)]
pub enum PollAnswer {
    /// 200 with this body.
    Body(Bytes),
    /// 400 with this error (e.g. a second concurrent GET).
    Error(EioError),
}

/// The session's state as the HTTP side sees it.
#[derive(Debug, Default)]
pub struct SharedState(AtomicU8);

impl SharedState {
    /// The current state.
    pub fn get(&self) -> SessionState {
        match self.0.load(Ordering::Acquire) {
            1 => SessionState::Upgrading,
            2 => SessionState::WebSocket,
            _ => SessionState::Polling,
        }
    }

    fn set(&self, s: SessionState) {
        let v = match s {
            SessionState::Polling => 0,
            SessionState::Upgrading => 1,
            SessionState::WebSocket => 2,
        };
        self.0.store(v, Ordering::Release);
    }
}

/// Everything the handshake decided, kept until the Socket.IO CONNECT.
pub struct Opening {
    /// Engine.IO session id.
    pub sid: String,
    /// The relay connection id (also the Socket.IO socket id).
    pub name: ConnName,
    /// Subscriptions from the handshake query.
    pub keys: Vec<(String, String)>,
    /// Firehose from the handshake query.
    pub all: bool,
    /// A valid token presented at the handshake, if any.
    pub token: Option<String>,
    /// The `max_connections` slot.
    pub permit: Permit,
    /// The listener, for the per-listener metrics.
    pub listener: Arc<str>,
}

/// Why the session ends.
enum End {
    /// Close the websocket with this code / answer a pending poll with `1`.
    Close(u16),
    /// The token's `exp` came (SPEC §13): as `Close(1008)`, with the reason
    /// `token expired`.
    Expired,
    /// Nothing more to send: the transport closed or broke, or the client
    /// stopped answering pings. It may come back with its pid.
    Gone,
    /// The client disconnected on purpose (`41`): nothing to recover.
    Left,
    /// Another transport took the session over by its pid.
    TakenOver(oneshot::Sender<Parked>),
}

impl End {
    /// Whether the client may come back with its pid (SPEC §12), as the
    /// reference keeps state for a lost transport, not a disconnect. A
    /// slow consumer is kept too: its replay comes from history, not from
    /// the queue it could not drain.
    fn recoverable(&self) -> bool {
        matches!(self, End::Gone | End::Close(close::SLOW))
    }
}

/// Who the client is to Socket.IO, once connected.
struct Identity {
    /// The socket id of the CONNECT reply.
    sid: String,
    /// The recovery pid, with history on.
    pid: Option<String>,
    /// The history epoch and floor the pid is bound to ([`Parked`]).
    epoch: String,
    floor: u64,
}

/// What the hub's welcome step decided, for the session to remember.
struct Told {
    identity: Identity,
    recovered: bool,
}

/// Runs a session until it ends, then removes it from `sids`.
pub async fn run(
    opening: Opening,
    rx: mpsc::Receiver<ToSession>,
    state: Arc<SharedState>,
    sids: Arc<Sids>,
    server: Arc<Server>,
) {
    let config = server.live.get();
    let label = ListenerLabel {
        listener: opening.listener.to_string(),
    };
    let metrics = server.metrics.clone();
    metrics.connections_accepted.get_or_create(&label).inc();
    metrics.connections_open.get_or_create(&label).inc();
    let sid = opening.sid.clone();
    let mut d = Driver {
        sid: sid.clone(),
        pending: Some(opening),
        session: None,
        identity: None,
        rx,
        state,
        ws: None,
        attached: false,
        probe: None,
        probe_deadline: None,
        poll: None,
        out: Vec::new(),
        buf: Vec::new(),
        pong_seen: false,
        transport: "polling",
        ping_every: Duration::from_millis(config.socketio.ping_interval_ms),
        pong_within: Duration::from_millis(config.socketio.ping_timeout_ms),
        write_timeout: Duration::from_millis(config.limits.write_timeout_ms),
        server,
    };
    d.gauge(1);
    let mut end = d.serve().await;
    sids.remove(&sid);
    if let Some(Identity { pid: Some(pid), .. }) = &d.identity {
        d.server.recovery.release(pid, &sid);
    }
    // Parked before anything else is observable (the close, the gauges),
    // so a client that sees its transport end can come straight back.
    if let Some(session) = d.session.as_ref() {
        if end.recoverable() {
            if let Some((pid, parked)) = d.parked(session) {
                d.park(pid, parked);
            }
        } else if let End::TakenOver(reply) = end {
            tracing::debug!("taken over by a new transport");
            if let Some((_, parked)) = d.parked(session) {
                let _ = reply.send(parked);
            }
            end = End::Gone;
        }
    }
    d.finish(end).await;
    d.gauge(-1);
    metrics.connections_open.get_or_create(&label).dec();
    if let Some(session) = d.session.take() {
        session.close().await;
    }
    // Pending handlers see their channel close and answer "unknown sid".
}

struct Driver {
    server: Arc<Server>,
    sid: String,
    /// Until CONNECT: what the handshake admitted.
    pending: Option<Opening>,
    /// After CONNECT: the relay session (hub registration, queue).
    session: Option<Session>,
    /// After CONNECT: the socket id and recovery pid.
    identity: Option<Identity>,
    rx: mpsc::Receiver<ToSession>,
    state: Arc<SharedState>,
    /// The websocket carrying the session, once upgraded (or from the start).
    ws: Option<Ws>,
    /// The hub writes to the websocket itself (plain TCP, once connected).
    attached: bool,
    /// A websocket being probed for an upgrade.
    probe: Option<Ws>,
    probe_deadline: Option<Instant>,
    /// The long-poll waiting for packets.
    poll: Option<oneshot::Sender<PollAnswer>>,
    /// This session's own packets (pings, noops, connect errors, acks of
    /// refused changes), sent before queued frames.
    out: Vec<Utf8Bytes>,
    buf: Vec<Outbound>,
    /// A pong arrived since the heartbeat last looked.
    pong_seen: bool,
    transport: &'static str,
    ping_every: Duration,
    pong_within: Duration,
    write_timeout: Duration,
}

impl Driver {
    async fn serve(&mut self) -> End {
        // Timers live across loop turns and are reset, not re-created: a
        // wakeup per event must not cost timer-wheel insertions. The first
        // ping comes one interval after the open packet; `awaiting_pong`
        // says whether `heartbeat` is the pong deadline or the next ping.
        let heartbeat = tokio::time::sleep(self.ping_every);
        tokio::pin!(heartbeat);
        let mut awaiting_pong = false;
        // The token is known at CONNECT: the timer is armed (reset) then,
        // at its `exp`, once.
        let expiry = tokio::time::sleep(self.ping_every);
        tokio::pin!(expiry);
        let mut expiring = false;
        let mut control: Option<Arc<ConnShared>> = None;
        loop {
            if control.is_none() {
                control = self.session.as_ref().map(Session::control);
                if let Some(at) = self.session.as_ref().and_then(Session::expires_at) {
                    expiry.as_mut().reset(at);
                    expiring = true;
                }
            }
            let writable = self.ws.is_some() || self.poll.is_some();
            tokio::select! {
                biased;
                signal = next_signal(control.as_deref()) => match signal {
                    Signal::Close(code) => return End::Close(code),
                    Signal::Shutdown => return self.drain().await,
                    Signal::Reload => {
                        if self.session.as_ref().is_some_and(Session::token_revoked) {
                            tracing::info!("token no longer valid after reload; closing");
                            self.server.metrics.reject("unauthorized");
                            return End::Close(close::POLICY);
                        }
                    }
                },
                _ = &mut expiry, if expiring => {
                    tracing::info!("token expired; closing");
                    self.server.metrics.reject("unauthorized");
                    return End::Expired;
                }
                req = self.rx.recv() => match req {
                    Some(req) => {
                        if let Err(end) = self.on_request(req).await {
                            return end;
                        }
                    }
                    None => return End::Gone,
                },
                ready = session_frames(&mut self.session, &mut self.buf, writable, self.attached, self.write_timeout) => match ready {
                    Frames::Taken(0) | Frames::Direct(Turn::HubGone) => return self.drain().await,
                    Frames::Taken(_) | Frames::Direct(Turn::Wrote) => {}
                    Frames::Direct(Turn::Stalled) => {
                        tracing::info!("socket stopped draining; dropping session");
                        self.server.metrics.slow_consumer_disconnects.inc();
                        return End::Gone;
                    }
                    Frames::Direct(Turn::Failed) => return End::Gone,
                },
                msg = next_message(&mut self.ws) => {
                    if let Err(end) = self.on_ws_message(msg).await {
                        return end;
                    }
                }
                msg = next_message(&mut self.probe) => self.on_probe_message(msg).await,
                _ = sleep_until(self.probe_deadline) => {
                    tracing::debug!("upgrade probe timed out; staying on polling");
                    self.drop_probe();
                }
                _ = &mut heartbeat => {
                    if awaiting_pong {
                        tracing::debug!("no pong within ping_timeout_ms; session dropped");
                        return End::Gone;
                    }
                    self.out.push(Utf8Bytes::from_static(packet::PING));
                    awaiting_pong = true;
                    heartbeat.as_mut().reset(Instant::now() + self.pong_within);
                }
            }
            if std::mem::take(&mut self.pong_seen) && awaiting_pong {
                awaiting_pong = false;
                heartbeat.as_mut().reset(Instant::now() + self.ping_every);
            }
            if let Err(end) = self.flush().await {
                return end;
            }
            self.attach();
        }
    }

    /// Once a session rides a plain TCP websocket and everything taken
    /// from its queue is written, the hub writes its frames itself.
    fn attach(&mut self) {
        if self.attached || !self.buf.is_empty() {
            return;
        }
        let (Some(ws), Some(session)) = (self.ws.as_mut(), self.session.as_mut()) else {
            return;
        };
        let Some(sock) = ws.get_ref().direct_socket() else {
            return;
        };
        session.queue().attach(sock, self.server.metrics.clone());
        ws.get_mut().attach(session.control());
        self.attached = true;
    }

    fn gauge(&self, delta: i64) {
        self.server
            .metrics
            .socketio_sessions
            .get_or_create(&TransportLabel {
                transport: self.transport,
            })
            .inc_by(delta);
    }

    async fn on_request(&mut self, req: ToSession) -> Result<(), End> {
        match req {
            ToSession::Poll(reply) => {
                if self.poll.is_some() {
                    // Two GETs at once: the reference closes the session.
                    let _ = reply.send(PollAnswer::Error(EioError::BadRequest));
                    tracing::debug!("concurrent polls; closing the session");
                    return Err(End::Close(close::PROTOCOL_ERROR));
                }
                self.poll = Some(reply);
                Ok(())
            }
            ToSession::Post(body, reply) => {
                let packets = match packet::parse_payload(&body, MAX_RECORDS) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(error = %e, "bad polling payload; closing");
                        let _ = reply.send(Err(EioError::BadRequest));
                        return Err(End::Close(close::PROTOCOL_ERROR));
                    }
                };
                for p in packets {
                    if let Err(end) = self.on_packet(p).await {
                        let _ = reply.send(Err(EioError::BadRequest));
                        return Err(end);
                    }
                }
                let _ = reply.send(Ok(()));
                Ok(())
            }
            ToSession::Takeover(reply) => Err(End::TakenOver(reply)),
            ToSession::Websocket { ws, direct } => {
                if direct {
                    self.switch_to(*ws);
                    let open = self.open_packet(packet::WEBSOCKET_UPGRADES);
                    self.out.insert(0, open.into());
                } else if self.probe.is_some() || self.ws.is_some() {
                    // A second upgrade: refuse the newcomer, keep the session.
                    let mut ws = *ws;
                    let _ = ws.close(None).await;
                } else {
                    self.probe = Some(*ws);
                    self.probe_deadline = Some(Instant::now() + UPGRADE_TIMEOUT);
                    self.state.set(SessionState::Upgrading);
                }
                Ok(())
            }
        }
    }

    /// The open packet for this session.
    fn open_packet(&self, upgrades: &[&str]) -> String {
        let config = self.server.live.get();
        packet::open_packet(
            &self.sid,
            config.socketio.ping_interval_ms,
            config.socketio.ping_timeout_ms,
            config.limits.max_client_message_bytes as u64,
            upgrades,
        )
    }

    fn switch_to(&mut self, ws: Ws) {
        self.gauge(-1);
        self.transport = "websocket";
        self.gauge(1);
        self.ws = Some(ws);
        self.state.set(SessionState::WebSocket);
    }

    fn drop_probe(&mut self) {
        self.probe = None;
        self.probe_deadline = None;
        self.state.set(SessionState::Polling);
    }

    async fn on_probe_message(&mut self, msg: Option<Result<Message, WsError>>) {
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return,
            _ => return self.drop_probe(),
        };
        match packet::parse(&text) {
            Ok(Packet::Ping(p)) if p == packet::PROBE => {
                let ok = match self.probe.as_mut() {
                    Some(probe) => timeout(
                        self.write_timeout,
                        probe.send(Message::Text(packet::PONG_PROBE.into())),
                    )
                    .await
                    .is_ok_and(|r| r.is_ok()),
                    None => false,
                };
                if !ok {
                    return self.drop_probe();
                }
                // Release the pending poll so the client can finish the upgrade.
                self.out.push(Utf8Bytes::from_static(packet::NOOP));
            }
            Ok(Packet::Upgrade) => {
                if let Some(ws) = self.probe.take() {
                    self.probe_deadline = None;
                    if let Some(poll) = self.poll.take() {
                        let _ = poll.send(PollAnswer::Body(Bytes::from_static(
                            packet::NOOP.as_bytes(),
                        )));
                    }
                    self.switch_to(ws);
                }
            }
            _ => self.drop_probe(),
        }
    }

    async fn on_ws_message(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), End> {
        match msg {
            None | Some(Ok(Message::Close(_))) => Err(End::Gone),
            Some(Ok(Message::Text(text))) => match packet::parse(&text) {
                Ok(p) => self.on_packet(p).await,
                Err(e) => {
                    tracing::debug!(error = %e, "bad packet; closing");
                    Err(End::Close(close::PROTOCOL_ERROR))
                }
            },
            Some(Ok(Message::Binary(_))) => {
                tracing::debug!("binary frame from a Socket.IO client; closing");
                Err(End::Close(close::PROTOCOL_ERROR))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
            Some(Err(WsError::Capacity(_))) => Err(End::Close(close::TOO_BIG)),
            Some(Err(WsError::Utf8(_))) => Err(End::Close(close::INVALID_PAYLOAD)),
            Some(Err(_)) => Err(End::Gone),
        }
    }

    /// One Engine.IO packet from the client, whichever transport.
    async fn on_packet(&mut self, p: Packet<'_>) -> Result<(), End> {
        match p {
            Packet::Pong(_) => {
                self.pong_seen = true;
                Ok(())
            }
            Packet::Message(m) => self.on_socketio(m).await,
            Packet::Close => Err(End::Gone),
            Packet::Noop | Packet::Open(_) | Packet::Ping(_) | Packet::Upgrade => Ok(()),
            Packet::Binary(_) => {
                tracing::debug!("binary packet from a Socket.IO client; closing");
                Err(End::Close(close::PROTOCOL_ERROR))
            }
        }
    }

    async fn on_socketio(&mut self, text: &str) -> Result<(), End> {
        let packet = match socketio::parse(text) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "bad Socket.IO packet; closing");
                return Err(End::Close(close::PROTOCOL_ERROR));
            }
        };
        match packet {
            ClientPacket::Connect { nsp, auth } => {
                self.on_connect(nsp, auth.as_ref()).await;
                Ok(())
            }
            ClientPacket::Disconnect { nsp } if nsp == socketio::MAIN_NAMESPACE => Err(End::Left),
            ClientPacket::Event {
                nsp,
                id,
                name,
                args,
            } if nsp == socketio::MAIN_NAMESPACE => {
                self.on_event(id, &name, &args).await;
                Ok(())
            }
            ClientPacket::Disconnect { .. }
            | ClientPacket::Event { .. }
            | ClientPacket::Ack { .. } => Ok(()),
            ClientPacket::Binary { .. } => {
                tracing::debug!("binary Socket.IO packet; closing");
                Err(End::Close(close::PROTOCOL_ERROR))
            }
        }
    }

    /// CONNECT to `/`: the token (handshake or `auth.token`), the
    /// subscriptions (handshake query plus `auth`), then registration with
    /// the hub, which makes them live before the CONNECT reply is queued.
    async fn on_connect(&mut self, nsp: &str, auth: Option<&Map<String, Value>>) {
        if nsp != socketio::MAIN_NAMESPACE {
            self.out
                .push(socketio::connect_error(nsp, socketio::INVALID_NAMESPACE));
            return;
        }
        let Some(opening) = self.pending.take() else {
            // Already connected: a repeated CONNECT changes nothing.
            return;
        };
        let config = self.server.live.get();
        let asked = match socketio::connect_auth(auth, &config.routable_fields()) {
            Ok(a) => a,
            Err(e) => {
                self.out.push(socketio::connect_refused(&e));
                self.pending = Some(opening);
                return;
            }
        };
        let token = opening.token.clone().or(asked.token);
        // Checked again even when the handshake carried it: it may have
        // expired, or a reload changed the key, since.
        let access = match crate::auth::authenticate(token.as_deref(), &config.auth) {
            Ok(access) => access,
            Err(e) => {
                tracing::debug!(error = %e, "CONNECT refused");
                self.server.metrics.reject("unauthorized");
                self.out
                    .push(socketio::connect_error(nsp, socketio::UNAUTHORIZED));
                self.pending = Some(opening);
                return;
            }
        };
        let mut keys = opening.keys.clone();
        for k in asked.change.keys {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let mut all = opening.all || asked.change.all;
        // `unsubscribed = "all"` is a default, not a request: a token
        // without the firehose grant stays on global events.
        if keys.is_empty()
            && !all
            && config.socketio.unsubscribed == Unsubscribed::All
            && access.grants.allows_firehose()
        {
            all = true;
        }
        if let Err(r) = policy::check(
            &Default::default(),
            true,
            &keys,
            all,
            &config,
            &access.grants,
        ) {
            let refusal = match &r {
                Refusal::Forbidden(denied) => {
                    tracing::debug!(why = %denied, "CONNECT forbidden");
                    self.server.metrics.reject("forbidden");
                    socketio::connect_error(nsp, socketio::FORBIDDEN)
                }
                _ => socketio::connect_refused(&FrameError::from(r)),
            };
            self.out.push(refusal);
            self.pending = Some(opening);
            return;
        }
        let parked = match &asked.recover {
            Some(r) => match self.server.recovery.take(&r.pid) {
                Some(p) => Some(p),
                None => self.take_over(&r.pid).await,
            },
            None => None,
        };
        let resume = asked.recover.as_ref().map(|r| {
            let restorable = parked.as_ref().filter(|p| {
                // The old subscriptions must still fit the (reloaded) limits
                // and this connection's grants: a token with fewer grants
                // must not inherit what another one subscribed to.
                let mut union = keys.clone();
                union.extend(p.keys.iter().filter(|k| !keys.contains(k)).cloned());
                let (all, grants) = (all || p.all, &access.grants);
                policy::check(&Default::default(), true, &union, all, &config, grants).is_ok()
            });
            // No offset: the client has had no event since the pid was
            // first handed out, so everything after the floor is missed.
            let offset = match r.offset.as_deref().map(str::parse::<u64>) {
                None => Some(0),
                Some(Ok(o)) => Some(o),
                Some(Err(_)) => None,
            };
            match (restorable, offset) {
                (Some(p), Some(offset)) => Resume {
                    epoch: p.epoch.clone(),
                    offset: offset.max(p.floor),
                    restore: Some(Restore {
                        keys: p.keys.clone(),
                        all: p.all,
                    }),
                },
                // An unknown or expired pid, or an offset that is not ours:
                // a fresh session, told about the gap.
                _ => Resume {
                    epoch: String::new(),
                    offset: 0,
                    restore: None,
                },
            }
        });
        let restoring = resume.as_ref().and_then(|r| r.restore.clone());
        let old = parked
            .filter(|_| restoring.is_some())
            .zip(asked.recover.map(|r| r.pid));
        let (told_tx, told_rx) = oneshot::channel();
        let fresh_sid = opening.name.text.clone();
        let welcome = Welcome::new(move |info: &WelcomeInfo<'_>| {
            let (told, frame) = connect_reply(info, old, fresh_sid);
            let _ = told_tx.send(told);
            frame
        });
        let admitted = Admitted {
            name: opening.name.clone(),
            keys,
            all,
            token,
            access,
            permit: opening.permit,
            resume,
        };
        self.session = Session::open(
            admitted,
            Wire::SocketIo,
            welcome,
            self.server.hub.clone(),
            self.server.live.clone(),
        )
        .await;
        // The hub has queued the reply by the time it answers; it drops the
        // sender only when it stops, and then the session is closing anyway.
        if let (Some(session), Ok(told)) = (self.session.as_mut(), told_rx.await) {
            if let (true, Some(restore)) = (told.recovered, restoring) {
                tracing::debug!("Socket.IO session recovered");
                session.restored(restore.keys, restore.all);
            }
            if let Some(pid) = &told.identity.pid {
                self.server.recovery.hold(pid, &self.sid);
            }
            self.identity = Some(told.identity);
        }
    }

    /// The state of the live session holding `pid`, which then ends: its
    /// client is back on a new transport before the relay saw the old one
    /// die (a silent network drop is noticed only at the ping timeout).
    async fn take_over(&mut self, pid: &str) -> Option<Parked> {
        let holder = self.server.recovery.holder(pid)?;
        if holder == self.sid {
            return None;
        }
        let handle = self.server.sids.get(&holder)?;
        let (tx, rx) = oneshot::channel();
        handle.tx.send(ToSession::Takeover(tx)).await.ok()?;
        // Its task answers once its loop sees the request; a session stuck
        // writing to a dead socket gives up within write_timeout_ms.
        let wait = self.write_timeout + Duration::from_secs(1);
        timeout(wait, rx).await.ok()?.ok()
    }

    /// What a returning client needs, under its pid (SPEC §12).
    fn parked(&self, session: &Session) -> Option<(String, Parked)> {
        let Some(Identity {
            sid,
            pid: Some(pid),
            epoch,
            floor,
        }) = &self.identity
        else {
            return None;
        };
        let (keys, all) = session.subscriptions();
        let parked = Parked {
            sid: sid.clone(),
            epoch: epoch.clone(),
            floor: *floor,
            keys,
            all,
        };
        Some((pid.clone(), parked))
    }

    /// Keeps `parked` for `history.ttl_ms`.
    fn park(&self, pid: String, parked: Parked) {
        let config = self.server.live.get();
        self.server.recovery.park(
            pid,
            parked,
            Duration::from_millis(config.history.ttl_ms),
            config.limits.max_connections,
        );
    }

    /// A client event: `subscribe` / `unsubscribe` change the session
    /// (acked once live); anything else is ignored, or acked `unsupported`.
    async fn on_event(&mut self, id: Option<u64>, name: &str, args: &[&RawValue]) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        let fields = session.live().get().routable_fields();
        let result = match socketio::subscription(name, args, &fields) {
            Ok(sub) => {
                let (subscribe, change) = match sub {
                    Subscription::Subscribe(c) => (true, c),
                    Subscription::Unsubscribe(c) => (false, c),
                };
                let changed = session
                    .change(subscribe, change.keys, change.all, id.map(socketio::ack_ok))
                    .await;
                if let Err(Refusal::Forbidden(denied)) = &changed {
                    tracing::debug!(why = %denied, "subscribe forbidden");
                    self.server.metrics.reject("forbidden");
                }
                changed.map_err(FrameError::from)
            }
            Err(e) => Err(e),
        };
        if let (Err(e), Some(id)) = (result, id) {
            self.out.push(socketio::ack_error(id, &e));
        }
    }

    /// Sends this session's own packets and whatever the hub queued, on the
    /// websocket or as the answer to the pending poll.
    async fn flush(&mut self) -> Result<(), End> {
        // A poll whose HTTP client went away must not take frames with it.
        if self.poll.as_ref().is_some_and(|p| p.is_closed()) {
            self.poll = None;
        }
        // Queued frames reach `buf` through the select loop, which only
        // takes them while a websocket or a poll can carry them.
        if self.out.is_empty() && self.buf.is_empty() {
            return Ok(());
        }
        let events = self.buf.iter().filter(|o| o.received.is_some()).count();
        let first_received = self.buf.iter().find_map(|o| o.received);
        if let Some(ws) = self.ws.as_mut() {
            let out = &mut self.out;
            let buf = &mut self.buf;
            let write = async {
                for frame in out.drain(..) {
                    ws.feed(Message::Text(frame)).await?;
                }
                for o in buf.drain(..) {
                    ws.feed(Message::Text(o.frame.into_payload())).await?;
                    // Engine.IO 4 over websocket: an attachment is a bare binary message.
                    for a in o.attachments.iter().flat_map(|a| a.iter()) {
                        ws.feed(Message::Binary(a.clone())).await?;
                    }
                }
                ws.flush().await
            };
            match timeout(self.write_timeout, write).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(End::Gone),
                Err(_) => {
                    tracing::info!("socket stopped draining; dropping session");
                    self.server.metrics.slow_consumer_disconnects.inc();
                    return Err(End::Gone);
                }
            }
        } else if let Some(poll) = self.poll.take() {
            let mut frames: Vec<Utf8Bytes> = self.out.drain(..).collect();
            for o in self.buf.drain(..) {
                frames.push(o.frame.into_payload());
                // Over polling an attachment is a `b<base64>` packet.
                for a in o.attachments.iter().flat_map(|a| a.iter()) {
                    frames.push(packet::binary_packet(a));
                }
            }
            let _ = poll.send(PollAnswer::Body(packet::payload_body(&frames)));
        } else {
            return Ok(());
        }
        let m = &self.server.metrics;
        m.events_delivered.inc_by(events as u64);
        if let Some(t) = first_received {
            m.fanout_latency.observe(t.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Shutdown: what is queued goes out first, then the session closes.
    async fn drain(&mut self) -> End {
        let _ = self.flush().await;
        if self.attached {
            if let Some(session) = self.session.as_mut() {
                let deadline = Instant::now() + self.write_timeout;
                session.queue().drain_direct(deadline).await;
            }
        }
        End::Close(close::GOING_AWAY)
    }

    /// Ends the transport: a close frame on the websocket, a close packet
    /// to a pending poll.
    async fn finish(&mut self, end: End) {
        if let Some(poll) = self.poll.take() {
            let _ = poll.send(PollAnswer::Body(Bytes::from_static(
                packet::CLOSE.as_bytes(),
            )));
        }
        let (code, reason) = match end {
            End::Close(code) => (code, close::reason(code)),
            End::Expired => (close::POLICY, close::TOKEN_EXPIRED),
            // Gone, left: nothing to send.
            _ => return,
        };
        let Some(ws) = self.ws.as_mut() else {
            return;
        };
        // The hub stops writing before the close frame goes out.
        if let Some(session) = self.session.as_mut() {
            session.queue().seal();
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        if let Ok(Ok(())) = timeout(self.write_timeout, ws.close(Some(frame))).await {
            let _ = timeout(CLOSE_REPLY_TIMEOUT, async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
    }
}

/// The CONNECT reply the hub's welcome step queues: the old sid and pid when
/// the resume succeeded, else a fresh sid (and, with history on, a fresh pid).
fn connect_reply(
    info: &WelcomeInfo<'_>,
    old: Option<(Parked, String)>,
    fresh_sid: String,
) -> (Told, Utf8Bytes) {
    let recovered = info.recovered == Some(true) && old.is_some();
    let identity = match old {
        Some((p, pid)) if recovered => Identity {
            sid: p.sid,
            pid: Some(pid),
            epoch: p.epoch,
            floor: p.floor,
        },
        _ => Identity {
            sid: fresh_sid,
            pid: info.epoch.map(|_| secret_id()),
            epoch: info.epoch.unwrap_or_default().to_owned(),
            floor: info.offset,
        },
    };
    let frame = match &identity.pid {
        Some(pid) => socketio::connect_ok_with_pid(&identity.sid, pid),
        None => socketio::connect_ok(&identity.sid),
    };
    (
        Told {
            identity,
            recovered,
        },
        frame,
    )
}

async fn next_signal(control: Option<&ConnShared>) -> Signal {
    match control {
        Some(c) => c.next_signal().await,
        None => std::future::pending().await,
    }
}

/// Frames from the hub, only while something can carry them; on an
/// attached websocket, the session's turn at writing the hub's backlog.
async fn session_frames(
    session: &mut Option<Session>,
    buf: &mut Vec<Outbound>,
    writable: bool,
    attached: bool,
    write_timeout: Duration,
) -> Frames {
    match session {
        Some(s) if writable || attached => {
            next_frames(s.queue(), buf, attached, WRITE_BATCH, write_timeout).await
        }
        _ => std::future::pending().await,
    }
}

async fn next_message(ws: &mut Option<Ws>) -> Option<Result<Message, WsError>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
