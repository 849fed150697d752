//! The receiving side: WebSocket clients (studio-relay, Socket.IO, ws) and
//! raw Redis subscribers, and the counters they fill.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use studio_relay_bench::resp::{self, Item, RedisUrl};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;

use crate::payload::{now_ns, parse_event, Dest};
use crate::ws::{Msg, Ws};
use crate::Target;

/// Broadcast ids (the `seq` of a `bcast` payload).
pub const BCAST_WARMUP: u64 = 1;
pub const BCAST_IDLE: u64 = 2;
const BCAST_SLOTS: usize = 4;

const SHARDS: usize = 16;

/// Latency histogram bounds, microseconds: 1 µs .. 10 min, 3 significant digits.
pub fn new_histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

/// Counters for a slice of the clients (client i uses shard i % SHARDS), so
/// receivers on different worker threads rarely touch the same cache line.
#[repr(align(128))]
pub struct Shard {
    pub delivered: AtomicU64,
    pub wasted: AtomicU64,
    pub duplicates: AtomicU64,
    pub out_of_order: AtomicU64,
    pub hist: Mutex<Histogram<u64>>,
}

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Firehose,
    Agent(u32),
}

/// Everything the clients share with the orchestrator.
pub struct Ctx {
    pub target: Target,
    /// host:port of the relay (unused for target redis).
    pub host_port: String,
    pub target_addr: SocketAddr,
    pub redis: RedisUrl,
    pub pattern: String,
    /// Target redis, routed: agent k's subscribers SUBSCRIBE `<this>:a<k>`
    /// (Redis doing the routing itself, one channel per agent).
    pub agent_channels: Option<String>,
    pub agents: u32,
    pub firehose: bool,
    pub source_addrs: u32,
    pub read_buffer: usize,
    pub shards: Vec<Shard>,
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    pub closed: AtomicUsize,
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub live_firehose: AtomicU64,
    pub live_agent: Vec<AtomicU64>,
    pub bcast_got: [AtomicUsize; BCAST_SLOTS],
    /// `wss://`: each WebSocket client does a TLS handshake trusting this.
    pub tls: Option<tokio_rustls::TlsConnector>,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: Target,
        host_port: String,
        target_addr: SocketAddr,
        redis: RedisUrl,
        pattern: String,
        agents: u32,
        firehose: bool,
        source_addrs: u32,
        read_buffer: usize,
    ) -> Result<Self> {
        let mut shards = Vec::with_capacity(SHARDS);
        for _ in 0..SHARDS {
            shards.push(Shard {
                delivered: AtomicU64::new(0),
                wasted: AtomicU64::new(0),
                duplicates: AtomicU64::new(0),
                out_of_order: AtomicU64::new(0),
                hist: Mutex::new(new_histogram()?),
            });
        }
        Ok(Self {
            target,
            host_port,
            target_addr,
            redis,
            pattern,
            agent_channels: None,
            agents: agents.max(1),
            firehose,
            source_addrs: source_addrs.max(1),
            read_buffer,
            shards,
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            errors: Mutex::new(BTreeMap::new()),
            live_firehose: AtomicU64::new(0),
            live_agent: (0..agents.max(1)).map(|_| AtomicU64::new(0)).collect(),
            bcast_got: Default::default(),
            tls: None,
        })
    }

    pub fn want(&self, idx: usize) -> Want {
        if self.firehose {
            Want::Firehose
        } else {
            Want::Agent((idx % self.agents as usize) as u32)
        }
    }

    /// Clients currently connected that want an event for agent `a`.
    pub fn live_for(&self, a: u32) -> u64 {
        if self.firehose {
            self.live_firehose.load(Ordering::Relaxed)
        } else {
            self.live_agent
                .get(a as usize)
                .map_or(0, |c| c.load(Ordering::Relaxed))
        }
    }

    pub fn delivered(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.delivered.load(Ordering::Relaxed))
            .sum()
    }

    pub fn sum(&self, f: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }

    pub fn histogram(&self) -> Result<Histogram<u64>> {
        let mut h = new_histogram()?;
        for s in &self.shards {
            let g = s
                .hist
                .lock()
                .map_err(|_| anyhow!("histogram lock poisoned"))?;
            h.add(&*g)?;
        }
        Ok(h)
    }

    pub fn reset_histograms(&self) {
        for s in &self.shards {
            if let Ok(mut h) = s.hist.lock() {
                h.reset();
            }
        }
    }

    pub fn note_error(&self, what: String) {
        if let Ok(mut e) = self.errors.lock() {
            // Keep the map small: bucket by message (no addresses/ids in it).
            if e.len() < 32 || e.contains_key(&what) {
                *e.entry(what).or_insert(0) += 1;
            }
        }
    }

    /// Records how a client's setup went: ready and live, or failed.
    fn started<T>(&self, want: Want, setup: Result<T>) -> Result<T> {
        match setup {
            Ok(v) => {
                self.set_live(want, true);
                self.ready.fetch_add(1, Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Records that a live client's connection ended.
    fn ended(&self, want: Want) {
        self.set_live(want, false);
        self.closed.fetch_add(1, Ordering::Relaxed);
    }

    fn set_live(&self, want: Want, up: bool) {
        let c = match want {
            Want::Firehose => &self.live_firehose,
            Want::Agent(a) => match self.live_agent.get(a as usize) {
                Some(c) => c,
                None => return,
            },
        };
        if up {
            c.fetch_add(1, Ordering::Relaxed);
        } else {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn source_ip(&self, idx: usize) -> IpAddr {
        // 127.0.0.1, 127.0.0.2, … : each source address has its own
        // ephemeral port range towards the relay.
        let k = (idx % self.source_addrs as usize) as u32;
        IpAddr::V4(Ipv4Addr::from(0x7f00_0001u32 + k))
    }

    async fn tcp_connect(&self, idx: usize, to: SocketAddr) -> Result<TcpStream> {
        let sock = TcpSocket::new_v4()?;
        // Let connect() pick the port by the full 4-tuple instead of reserving
        // one per source address at bind time (more ports per address).
        let one: libc::c_int = 1;
        // SAFETY: valid fd and a pointer to a c_int of the given size. A
        // failure only means the kernel picks the port at bind time.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(SocketAddr::new(self.source_ip(idx), 0))
            .context("bind")?;
        let s = sock.connect(to).await.context("connect")?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// Per-client receive state.
struct Receiver<'a> {
    ctx: &'a Ctx,
    shard: &'a Shard,
    want: Want,
    /// Highest seq seen per agent (one slot when routed).
    last: Vec<u64>,
    bcast_seen: u32,
}

impl<'a> Receiver<'a> {
    fn new(ctx: &'a Ctx, idx: usize, want: Want) -> Self {
        let slots = if want == Want::Firehose {
            ctx.agents as usize
        } else {
            1
        };
        Self {
            ctx,
            shard: &ctx.shards[idx % SHARDS],
            want,
            last: vec![0; slots],
            bcast_seen: 0,
        }
    }

    fn record_latency(&self, ts: u64) {
        let us = now_ns().saturating_sub(ts) / 1000;
        if let Ok(mut h) = self.shard.hist.lock() {
            h.saturating_record(us.max(1));
        }
    }

    /// Handles one received frame / payload.
    fn on_frame(&mut self, b: &[u8]) {
        let Some(ev) = parse_event(b) else { return };
        match ev.dest {
            Dest::Broadcast => {
                let Ok(slot) = usize::try_from(ev.seq) else {
                    return;
                };
                if slot >= BCAST_SLOTS || self.bcast_seen & (1 << slot) != 0 {
                    return;
                }
                self.bcast_seen |= 1 << slot;
                self.ctx.bcast_got[slot].fetch_add(1, Ordering::Relaxed);
                if ev.seq == BCAST_IDLE {
                    self.record_latency(ev.ts);
                }
            }
            Dest::Agent(a) => {
                let slot = match self.want {
                    Want::Firehose => a as usize,
                    Want::Agent(m) if m == a => 0,
                    Want::Agent(_) => {
                        self.shard.wasted.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                };
                let Some(last) = self.last.get_mut(slot) else {
                    self.shard.wasted.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                if ev.seq == *last {
                    self.shard.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                if ev.seq < *last {
                    self.shard.out_of_order.fetch_add(1, Ordering::Relaxed);
                } else {
                    *last = ev.seq;
                }
                self.shard.delivered.fetch_add(1, Ordering::Relaxed);
                self.record_latency(ev.ts);
            }
        }
    }
}

/// Sockudo's app for the bench (`SOCKUDO_DEFAULT_APP_*` in compare.sh).
pub const SOCKUDO_APP_ID: &str = "bench-app";
/// Its key: the client's `/app/<key>` path.
pub const SOCKUDO_APP_KEY: &str = "bench-key";
/// The Redis channel Sockudo's adapter listens on (its default prefix `sockudo_adapter:`).
pub const SOCKUDO_CHANNEL: &str = "sockudo_adapter::#broadcast";

/// One client: connect (holding a `gate` permit until ready), then receive
/// until the connection ends.
pub async fn run_client(ctx: Arc<Ctx>, idx: usize, gate: Arc<Semaphore>) {
    let want = ctx.want(idx);
    let res = match ctx.target {
        Target::Redis => redis_client(&ctx, idx, want, &gate).await,
        Target::SocketioPolling => polling_client(&ctx, idx, want, &gate).await,
        _ => ws_client(&ctx, idx, want, &gate).await,
    };
    if let Err(e) = res {
        ctx.note_error(format!("{e:#}"));
    }
}

fn ws_path(ctx: &Ctx, want: Want) -> String {
    match (ctx.target, want) {
        (Target::Studio, Want::Firehose) => "/ws?all=true".into(),
        (Target::Studio, Want::Agent(a)) => format!("/ws?agentId=a{a}"),
        // `all=true`: studio-relay's Socket.IO sends a client without a
        // subscription global events only; the Node peer ignores it.
        (Target::Socketio, Want::Firehose) => {
            "/socket.io/?EIO=4&transport=websocket&all=true".into()
        }
        (Target::Socketio, Want::Agent(a)) => {
            format!("/socket.io/?EIO=4&transport=websocket&agentId=a{a}")
        }
        (Target::Sockudo, _) => format!("/app/{SOCKUDO_APP_KEY}?protocol=7&client=bench&version=1"),
        (_, Want::Firehose) => "/".into(),
        (_, Want::Agent(a)) => format!("/?agentId=a{a}"),
    }
}

/// The next message before the client is ready; a close or the end is an error.
async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> Result<Option<Bytes>> {
    match ws.next().await? {
        Some(Msg::Text(t)) => Ok(Some(t)),
        Some(Msg::Binary) => Ok(None),
        Some(Msg::Close(f)) => bail!("closed before ready: {}", close_desc(f)),
        None => bail!("connection ended before ready"),
    }
}

fn close_desc(f: Option<(u16, String)>) -> String {
    match f {
        Some((code, reason)) => format!("close {code} {reason}"),
        None => "close (no code)".into(),
    }
}

async fn ws_client(ctx: &Ctx, idx: usize, want: Want, gate: &Semaphore) -> Result<()> {
    let permit = gate.acquire().await?;
    let path = ws_path(ctx, want);
    match &ctx.tls {
        None => {
            let connect = ctx.tcp_connect(idx, ctx.target_addr);
            ws_session(ctx, idx, want, permit, &path, connect).await
        }
        Some(tls) => {
            let connect = async {
                let tcp = ctx.tcp_connect(idx, ctx.target_addr).await?;
                let name = crate::tls::server_name(ctx.target_addr.ip());
                tls.connect(name, tcp).await.context("tls handshake")
            };
            ws_session(ctx, idx, want, permit, &path, connect).await
        }
    }
}

/// One WebSocket client over whatever `connect` yields (TCP, or TLS over
/// it): the handshake and ready frame under the gate `permit`, then receive.
async fn ws_session<S, C>(
    ctx: &Ctx,
    idx: usize,
    want: Want,
    permit: tokio::sync::SemaphorePermit<'_>,
    path: &str,
    connect: C,
) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    C: std::future::Future<Output = Result<S>>,
{
    let ready = async {
        let stream = connect.await?;
        let mut ws = Ws::connect(stream, &ctx.host_port, path, ctx.read_buffer)
            .await
            .context("websocket handshake")?;
        match ctx.target {
            Target::Studio => loop {
                // The relay's first frame, once the subscriptions are live.
                let Some(t) = next_text(&mut ws).await? else {
                    continue;
                };
                if contains(&t, b"\"type\":\"welcome\"") {
                    break;
                }
                if contains(&t, b"\"type\":\"error\"") {
                    bail!(
                        "relay error before welcome: {}",
                        String::from_utf8_lossy(&t)
                    );
                }
            },
            Target::Socketio => {
                let t = next_text(&mut ws).await?;
                if !t.is_some_and(|t| t.starts_with(b"0")) {
                    bail!("expected an engine.io open packet");
                }
                ws.send_text("40").await?;
                loop {
                    let Some(t) = next_text(&mut ws).await? else {
                        continue;
                    };
                    if t.starts_with(b"40") {
                        break;
                    } else if &t[..] == b"2" {
                        ws.send_text("3").await?;
                    } else if t.starts_with(b"44") {
                        bail!("socket.io connect error: {}", String::from_utf8_lossy(&t));
                    }
                }
            }
            Target::Sockudo => {
                let channel = match want {
                    Want::Firehose => "all".to_owned(),
                    Want::Agent(a) => format!("a{a}"),
                };
                loop {
                    let Some(t) = next_text(&mut ws).await? else {
                        continue;
                    };
                    if contains(&t, b"pusher:connection_established") {
                        let sub = format!(
                            r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}"}}}}"#
                        );
                        ws.send_text(&sub).await?;
                    } else if contains(&t, b"pusher_internal:subscription_succeeded") {
                        break;
                    } else if contains(&t, b"pusher:error") {
                        bail!("sockudo error: {}", String::from_utf8_lossy(&t));
                    }
                }
            }
            // No ready frame: connected = ready (the orchestrator warms up).
            Target::Ws | Target::Redis | Target::SocketioPolling => {}
        }
        anyhow::Ok(ws)
    };
    let mut ws = ctx.started(want, ready.await)?;
    drop(permit);
    let mut rx = Receiver::new(ctx, idx, want);
    let end: Result<()> = async {
        loop {
            match ws.next().await? {
                Some(Msg::Text(b)) => {
                    if ctx.target == Target::Socketio && &b[..] == b"2" {
                        ws.send_text("3").await?;
                    } else if ctx.target == Target::Sockudo && contains(&b, b"\"pusher:ping\"") {
                        ws.send_text(r#"{"event":"pusher:pong","data":{}}"#).await?;
                    } else {
                        rx.on_frame(&b);
                    }
                }
                Some(Msg::Close(f)) => bail!("closed by peer: {}", close_desc(f)),
                Some(Msg::Binary) => {}
                None => bail!("connection ended"),
            }
        }
    }
    .await;
    ctx.ended(want);
    end
}

/// A minimal HTTP/1.1 keep-alive client: one request at a time, bodies
/// framed by Content-Length (what studio-relay's hyper sends).
struct Http1 {
    stream: TcpStream,
    host: String,
    buf: BytesMut,
}

impl Http1 {
    async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> Result<BytesMut> {
        use tokio::io::AsyncReadExt;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await?;
        self.stream.write_all(body).await?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?.to_ascii_lowercase();
                let status = head.split_whitespace().nth(1).unwrap_or("");
                if status != "200" {
                    bail!("HTTP {status} for {method} {path}");
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| anyhow!("no content-length"))?;
                while self.buf.len() < end + 4 + len {
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        bail!("connection closed mid-body");
                    }
                }
                self.buf.advance(end + 4);
                return Ok(self.buf.split_to(len));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed");
            }
        }
    }
}

/// A Socket.IO client on Engine.IO long-polling: handshake GET, POST `40`,
/// then GET after GET; a ping in a body is answered with a POSTed `3`.
async fn polling_client(ctx: &Ctx, idx: usize, want: Want, gate: &Semaphore) -> Result<()> {
    let permit = gate.acquire().await?;
    let setup = async {
        let stream = ctx.tcp_connect(idx, ctx.target_addr).await?;
        let mut http = Http1 {
            stream,
            host: ctx.host_port.clone(),
            buf: BytesMut::with_capacity(16 * 1024),
        };
        let query = match want {
            Want::Firehose => "&all=true".to_owned(),
            Want::Agent(a) => format!("&agentId=a{a}"),
        };
        let open = http
            .request(
                "GET",
                &format!("/socket.io/?EIO=4&transport=polling{query}"),
                b"",
            )
            .await?;
        let open = std::str::from_utf8(&open)?;
        let sid = open
            .split("\"sid\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .ok_or_else(|| anyhow!("no sid in the open packet"))?
            .to_owned();
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        http.request("POST", &path, b"40").await?;
        loop {
            let body = http.request("GET", &path, b"").await?;
            if body[..].split(|b| *b == 0x1e).any(|r| r.starts_with(b"40")) {
                break;
            }
            if body[..].split(|b| *b == 0x1e).any(|r| r == b"2") {
                http.request("POST", &path, b"3").await?;
            }
        }
        anyhow::Ok((http, path))
    };
    let (mut http, path) = ctx.started(want, setup.await)?;
    drop(permit);
    let mut rx = Receiver::new(ctx, idx, want);
    let end: Result<()> = async {
        loop {
            let body = http.request("GET", &path, b"").await?;
            let mut ping = false;
            for record in body[..].split(|b| *b == 0x1e) {
                if record == b"2" {
                    ping = true;
                } else if record == b"1" {
                    bail!("session closed by the relay");
                } else {
                    rx.on_frame(record);
                }
            }
            if ping {
                http.request("POST", &path, b"3").await?;
            }
        }
    }
    .await;
    ctx.ended(want);
    end
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

async fn redis_client(ctx: &Ctx, idx: usize, want: Want, gate: &Semaphore) -> Result<()> {
    let permit = gate.acquire().await?;
    let mut buf = BytesMut::with_capacity(ctx.read_buffer.max(4096));
    let ready = async {
        let addr = ctx.redis.resolve().await?;
        let mut s = ctx.tcp_connect(idx, addr).await?;
        resp::auth(&mut s, &ctx.redis).await?;
        let mut cmd = Vec::new();
        let (verb, target, reply): (&[u8], String, &[u8]) = match (want, &ctx.agent_channels) {
            (Want::Agent(k), Some(base)) => (b"SUBSCRIBE", format!("{base}:a{k}"), b"subscribe"),
            _ => (b"PSUBSCRIBE", ctx.pattern.clone(), b"psubscribe"),
        };
        resp::command(&mut cmd, &[verb, target.as_bytes()]);
        s.write_all(&cmd).await?;
        let (f, used) = resp::read_frame(&mut s, &mut buf).await?;
        let ok = f.is_array && matches!(f.items[0], Item::Bulk(a, b) if &buf[a..b] == reply);
        if !ok {
            bail!("unexpected reply to {}", String::from_utf8_lossy(verb));
        }
        buf.advance(used);
        anyhow::Ok(s)
    };
    let mut s = ctx.started(want, ready.await)?;
    drop(permit);
    let mut rx = Receiver::new(ctx, idx, want);
    let end: Result<()> = async {
        loop {
            let (f, used) = resp::read_frame(&mut s, &mut buf).await?;
            // ["pmessage", pattern, channel, payload] or ["message", channel, payload]
            let payload = match (f.is_array, f.len) {
                (true, 4) => Some(f.items[3]),
                (true, 3) => Some(f.items[2]),
                _ => None,
            };
            if let Some(Item::Bulk(a, b)) = payload {
                rx.on_frame(&buf[a..b]);
            }
            buf.advance(used);
            if buf.capacity() < 4096 {
                buf.reserve(ctx.read_buffer.max(4096));
            }
        }
    }
    .await;
    ctx.ended(want);
    end.context("redis subscriber")
}
