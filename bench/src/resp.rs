//! A tiny RESP2 client: the command encoder, an incremental frame parser
//! and AUTH. The bench's pipelining PUBLISHer and raw PSUBSCRIBE subscribers
//! use it, and so do the black-box tests' Redis connections (tests/common).
//! No Redis client crate, no allocation per message.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
