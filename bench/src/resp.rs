//! A tiny RESP2 client: just enough for a pipelining PUBLISHer and for raw
//! PSUBSCRIBE subscribers. No dependency, no allocation per message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::payload::{now_ns, payload_len, write_payload, Dest};

/// `redis://[user[:password]@]host:port[/db]`
#[derive(Clone, Debug)]
pub struct RedisUrl {
    pub host_port: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("redis://")
            .context("only redis:// URLs are supported")?;
        let (auth, hostpart) = match rest.rsplit_once('@') {
            Some((a, h)) => (Some(a), h),
            None => (None, rest),
        };
        let host_port = hostpart.split('/').next().unwrap_or(hostpart);
        let host_port = if host_port.contains(':') {
            host_port.to_string()
        } else {
            format!("{host_port}:6379")
        };
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
                None => (None, Some(a.to_string())),
            },
        };
        Ok(Self {
            host_port,
            user,
            password,
        })
    }

    pub async fn resolve(&self) -> Result<SocketAddr> {
        tokio::net::lookup_host(&self.host_port)
            .await
            .with_context(|| format!("resolving {}", self.host_port))?
            .next()
            .with_context(|| format!("no address for {}", self.host_port))
    }
}

/// Appends a RESP command (array of bulk strings).
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One RESP item; bulk/simple/error contents are byte ranges into the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Item {
    Bulk(usize, usize),
    Simple(usize, usize),
    Error(usize, usize),
    Int(i64),
    Nil,
}

/// A parsed frame: a single item, or an array of at most 4 items (all that
/// pub/sub and PUBLISH replies need).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    pub is_array: bool,
    pub len: usize,
    pub items: [Item; 4],
}

fn line(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    // Returns (end of line content, index after CRLF).
    let rel = buf.get(from..)?.windows(2).position(|w| w == b"\r\n")?;
    Some((from + rel, from + rel + 2))
}

fn int(b: &[u8]) -> Result<i64> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .context("bad RESP integer")
}

/// Parses one item at `pos`. Ok(None): incomplete.
fn item(buf: &[u8], pos: usize) -> Result<Option<(Item, usize)>> {
    let Some(&tag) = buf.get(pos) else {
        return Ok(None);
    };
    let Some((end, next)) = line(buf, pos + 1) else {
        return Ok(None);
    };
    let content = &buf[pos + 1..end];
    Ok(Some(match tag {
        b'+' => (Item::Simple(pos + 1, end), next),
        b'-' => (Item::Error(pos + 1, end), next),
        b':' => (Item::Int(int(content)?), next),
        b'$' => {
            let n = int(content)?;
            if n < 0 {
                (Item::Nil, next)
            } else {
                let n = usize::try_from(n)?;
                if buf.len() < next + n + 2 {
                    return Ok(None);
                }
                if &buf[next + n..next + n + 2] != b"\r\n" {
                    bail!("bulk string not terminated by CRLF");
                }
                (Item::Bulk(next, next + n), next + n + 2)
            }
        }
        other => bail!("unexpected RESP type byte {other:#x}"),
    }))
}

/// Parses one frame from the start of `buf`. Ok(None): need more bytes.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>> {
    let empty = [Item::Nil; 4];
    if buf.first() == Some(&b'*') {
        let Some((end, mut pos)) = line(buf, 1) else {
            return Ok(None);
        };
        let n = int(&buf[1..end])?;
        if !(0..=4).contains(&n) {
            bail!("unexpected RESP array of {n} items");
        }
        let mut f = Frame {
            is_array: true,
            len: usize::try_from(n)?,
            items: empty,
        };
        for i in 0..f.len {
            let Some((it, next)) = item(buf, pos)? else {
                return Ok(None);
            };
            f.items[i] = it;
            pos = next;
        }
        Ok(Some((f, pos)))
    } else {
        let Some((it, next)) = item(buf, 0)? else {
            return Ok(None);
        };
        let mut items = empty;
        items[0] = it;
        Ok(Some((
            Frame {
                is_array: false,
                len: 1,
                items,
            },
            next,
        )))
    }
}

/// Reads one complete frame into `buf` (which keeps any bytes after it) and
/// returns it with its length; the caller consumes `buf[..len]`.
pub async fn read_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<(Frame, usize)> {
    loop {
        if let Some(f) = parse_frame(buf)? {
            return Ok(f);
        }
        if stream.read_buf(buf).await? == 0 {
            bail!("redis closed the connection");
        }
    }
}

/// Sends AUTH when the URL carries credentials.
pub async fn auth(stream: &mut TcpStream, url: &RedisUrl) -> Result<()> {
    let Some(pw) = &url.password else {
        return Ok(());
    };
    let mut cmd = Vec::new();
    match &url.user {
        Some(u) => command(&mut cmd, &[b"AUTH", u.as_bytes(), pw.as_bytes()]),
        None => command(&mut cmd, &[b"AUTH", pw.as_bytes()]),
    }
    stream.write_all(&cmd).await?;
    let mut buf = BytesMut::with_capacity(256);
    let (f, _) = read_frame(stream, &mut buf).await?;
    if let Item::Error(a, b) = f.items[0] {
        bail!("AUTH failed: {}", String::from_utf8_lossy(&buf[a..b]));
    }
    Ok(())
}

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
            stats,
            published: 0,
        })
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
        let plen = payload_len(dest, seq, ts, self.payload_bytes);
        self.buf.extend_from_slice(
            format!("*3\r\n$7\r\nPUBLISH\r\n${}\r\n", self.channel.len()).as_bytes(),
        );
        self.buf.extend_from_slice(&self.channel);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pmessage_incrementally() {
        let mut m = Vec::new();
        m.extend_from_slice(
            b"*4\r\n$8\r\npmessage\r\n$15\r\nclaude-studio:*\r\n$19\r\nclaude-studio:bench\r\n",
        );
        m.extend_from_slice(b"$5\r\nhello\r\n:7\r\n");
        let first = m.len() - 4;
        for cut in 0..first {
            assert!(
                parse_frame(&m[..cut]).expect("no error").is_none(),
                "cut {cut}"
            );
        }
        let (f, used) = parse_frame(&m).expect("ok").expect("complete");
        assert_eq!(f.len, 4);
        let Item::Bulk(a, b) = f.items[3] else {
            panic!("bulk")
        };
        assert_eq!(&m[a..b], b"hello");
        let (f2, used2) = parse_frame(&m[used..]).expect("ok").expect("complete");
        assert_eq!(f2.items[0], Item::Int(7));
        assert_eq!(used + used2, m.len());
        assert!(parse_frame(b"*9\r\n").is_err());
        assert!(parse_frame(b"?x\r\n").is_err());
    }

    #[test]
    fn redis_urls() {
        let u = RedisUrl::parse("redis://127.0.0.1:6390").expect("ok");
        assert_eq!(u.host_port, "127.0.0.1:6390");
        let u = RedisUrl::parse("redis://:pw@localhost/2").expect("ok");
        assert_eq!(
            (u.host_port.as_str(), u.user, u.password.as_deref()),
            ("localhost:6379", None, Some("pw"))
        );
        assert!(RedisUrl::parse("http://x").is_err());
    }
}
