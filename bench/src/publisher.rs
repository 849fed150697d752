//! PUBLISH with pipelining: the load generator's side of Redis, built on
//! the RESP encoder/parser in [`studio_relay_bench::resp`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use studio_relay_bench::resp::{auth, parse_frame, Item, RedisUrl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::payload::{now_ns, payload_len, write_adapter_message, write_payload, Dest};

/// Counters filled by the publisher's reply reader.
#[derive(Default)]
pub struct PubStats {
    pub replies: AtomicU64,
    /// Sum of PUBLISH replies: how many subscriptions Redis delivered to.
    pub receivers: AtomicU64,
    pub errors: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// PUBLISH with pipelining and a bounded window of outstanding replies.
pub struct Publisher {
    wr: OwnedWriteHalf,
    window: usize,
    sem: Arc<Semaphore>,
    buf: Vec<u8>,
    channel: Vec<u8>,
    payload_bytes: usize,
    /// `Some(event)`: publish Socket.IO adapter messages for `io.emit(event, …)`.
    adapter_event: Option<String>,
    /// Publish agent k's events on `<channel>:a<k>` (Redis routing itself).
    per_agent: bool,
    /// `Some((app id, firehose))`: Sockudo adapter broadcasts for Pusher
    /// channel `a<k>` (or `all`), on `channel`.
    sockudo: Option<(String, bool)>,
    scratch: Vec<u8>,
    pub stats: Arc<PubStats>,
    pub published: u64,
}

impl Publisher {
    pub async fn connect(
        url: &RedisUrl,
        channel: &str,
        window: usize,
        payload_bytes: usize,
    ) -> Result<Self> {
        let addr = url.resolve().await?;
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to redis at {addr}"))?;
        s.set_nodelay(true)?;
        auth(&mut s, url).await?;
        let (mut rd, wr) = s.into_split();
        let window = window.max(1);
        let sem = Arc::new(Semaphore::new(window));
        let stats = Arc::new(PubStats::default());
        let (sem2, stats2) = (sem.clone(), stats.clone());
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let res: Result<()> = async {
                loop {
                    while let Some((f, used)) = parse_frame(&buf)? {
                        match f.items[0] {
                            Item::Int(n) => {
                                stats2
                                    .receivers
                                    .fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
                            }
                            Item::Error(a, b) => {
                                stats2.errors.fetch_add(1, Ordering::Relaxed);
                                let msg = String::from_utf8_lossy(&buf[a..b]).into_owned();
                                if let Ok(mut e) = stats2.last_error.lock() {
                                    *e = Some(msg);
                                }
                            }
                            _ => {}
                        }
                        stats2.replies.fetch_add(1, Ordering::Relaxed);
                        buf.advance(used);
                        sem2.add_permits(1);
                    }
                    if rd.read_buf(&mut buf).await? == 0 {
                        bail!("redis closed the publisher connection");
                    }
                }
            }
            .await;
            if let Err(e) = res {
                if let Ok(mut le) = stats2.last_error.lock() {
                    *le = Some(format!("{e:#}"));
                }
                // Unblock a publisher waiting for permits; it fails on write.
                sem2.close();
            }
        });
        Ok(Self {
            wr,
            window,
            sem,
            buf: Vec::with_capacity(256 * 1024),
            channel: channel.as_bytes().to_vec(),
            payload_bytes,
            adapter_event: None,
            per_agent: false,
            sockudo: None,
            scratch: Vec::new(),
            stats,
            published: 0,
        })
    }

    /// Publishes `@socket.io/redis-adapter` messages on `channel` instead
    /// of JSON, as `io.emit(event, payload)` would.
    pub fn adapter(mut self, event: &str) -> Self {
        self.adapter_event = Some(event.to_owned());
        self
    }

    /// Publishes each agent's events on its own channel, `<channel>:a<k>`,
    /// for raw Redis subscribers doing the routed job themselves.
    pub fn per_agent(mut self) -> Self {
        self.per_agent = true;
        self
    }

    /// Publishes Sockudo Redis-adapter broadcasts (what another Sockudo
    /// node sends for a Pusher event) for app `app_id`: channel `a<k>`, or
    /// `all` when the clients are firehose; the payload is the event's
    /// `data` string.
    pub fn sockudo(mut self, app_id: &str, firehose: bool) -> Self {
        self.sockudo = Some((app_id.to_owned(), firehose));
        self
    }

    /// Waits until at least one reply slot is free; returns how many commands
    /// (1..=max) may be queued now.
    pub async fn reserve(&self, max: usize) -> Result<usize> {
        let max = max.max(1);
        self.sem
            .acquire()
            .await
            .context("publisher connection failed")?
            .forget();
        let extra = self.sem.available_permits().min(max - 1);
        if extra > 0 {
            if let Ok(p) = self.sem.try_acquire_many(u32::try_from(extra)?) {
                p.forget();
                return Ok(extra + 1);
            }
        }
        Ok(1)
    }

    /// Queues one PUBLISH (call `reserve` first); timestamped now.
    pub fn push(&mut self, dest: Dest, seq: u64) {
        let ts = now_ns();
        if let Some(event) = &self.adapter_event {
            self.scratch.clear();
            write_adapter_message(&mut self.scratch, event, dest, seq, ts, self.payload_bytes);
            self.buf.extend_from_slice(
                format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n", self.channel.len()).as_bytes(),
            );
            self.buf.extend_from_slice(&self.channel);
            self.buf
                .extend_from_slice(format!("\r\n${}\r\n", self.scratch.len()).as_bytes());
            self.buf.extend_from_slice(&self.scratch);
            self.buf.extend_from_slice(b"\r\n");
            self.published += 1;
            return;
        }
        if let Some((app, firehose)) = &self.sockudo {
            self.scratch.clear();
            write_payload(&mut self.scratch, dest, seq, ts, self.payload_bytes);
            let channel = match (firehose, dest) {
                (false, Dest::Agent(k)) => format!("a{k}"),
                _ => "all".to_owned(),
            };
            let data = String::from_utf8_lossy(&self.scratch);
            let message =
                serde_json::json!({"event": "bench", "channel": channel, "data": data}).to_string();
            let body = serde_json::json!({
                "node_id": "bench", "app_id": app, "channel": channel,
                "message": message, "except_socket_id": null,
            })
            .to_string();
            self.buf.extend_from_slice(
                format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n", self.channel.len()).as_bytes(),
            );
            self.buf.extend_from_slice(&self.channel);
            self.buf
                .extend_from_slice(format!("\r\n${}\r\n", body.len()).as_bytes());
            self.buf.extend_from_slice(body.as_bytes());
            self.buf.extend_from_slice(b"\r\n");
            self.published += 1;
            return;
        }
        let plen = payload_len(dest, seq, ts, self.payload_bytes);
        let suffix = match (self.per_agent, dest) {
            (true, Dest::Agent(k)) => format!(":a{k}"),
            _ => String::new(),
        };
        self.buf.extend_from_slice(
            format!(
                "*3\r\n$7\r\nPUBLISH\r\n${}\r\n",
                self.channel.len() + suffix.len()
            )
            .as_bytes(),
        );
        self.buf.extend_from_slice(&self.channel);
        self.buf.extend_from_slice(suffix.as_bytes());
        self.buf
            .extend_from_slice(format!("\r\n${plen}\r\n").as_bytes());
        write_payload(&mut self.buf, dest, seq, ts, self.payload_bytes);
        self.buf.extend_from_slice(b"\r\n");
        self.published += 1;
    }

    pub async fn flush(&mut self) -> Result<()> {
        if !self.buf.is_empty() {
            self.wr
                .write_all(&self.buf)
                .await
                .context("writing PUBLISH to redis")?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Waits (bounded) until every PUBLISH sent so far has been answered.
    pub async fn wait_replies(&self, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        while self.sem.available_permits() < self.window {
            if tokio::time::Instant::now() >= until || self.sem.is_closed() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    pub fn last_error(&self) -> Option<String> {
        self.stats.last_error.lock().ok().and_then(|e| e.clone())
    }
}
