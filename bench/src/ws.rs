//! The load generator's own WebSocket client (RFC 6455, client side).
//!
//! Why not tokio-tungstenite, which the bench used before: per message it
//! re-registers wakers through its std-`Read` compatibility layer and
//! copies into a message, and in a 1,000-client burst that cost (about
//! 1.3 µs per message here, 30 % more load-generator CPU than the RESP
//! subscribers' reader) queued the bench's own reading behind the relay's
//! writes, so WebSocket targets showed load-generator latency that raw
//! Redis rows did not. This reader costs what the RESP one does: one
//! buffer per connection, frames parsed in place.
//!
//! It does what a receiving client needs and nothing more: the upgrade
//! (checked against RFC 6455's sample key), unmasked server frames,
//! fragmented messages, answering pings, masked text frames out, close
//! frames reported.

use anyhow::{bail, Context, Result};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// RFC 6455 §1.3's sample key; the server must answer with [`ACCEPT`].
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest message accepted (the relay's events are far smaller).
const MAX_MESSAGE: usize = 64 << 20;

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A message from the server.
#[derive(Debug)]
pub enum Msg {
    /// A text message.
    Text(Bytes),
    /// A binary message (no target sends one to these clients; skipped).
    Binary,
    /// A close frame: its code and reason, if it had them.
    Close(Option<(u16, String)>),
}

/// One client connection over `S` (TCP, or TLS over it).
pub struct Ws<S> {
    io: S,
    buf: BytesMut,
    read_size: usize,
    /// A fragmented message being put together: its opcode and bytes.
    partial: Option<(u8, BytesMut)>,
    mask: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Ws<S> {
    /// Upgrades `io` with `GET path` for `host`; bytes after the response
    /// head are kept as the start of the first frame.
    pub async fn connect(mut io: S, host: &str, path: &str, read_size: usize) -> Result<Self> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        io.write_all(req.as_bytes()).await?;
        let read_size = read_size.max(4096);
        let mut buf = BytesMut::with_capacity(read_size);
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                bail!("upgrade response head over {MAX_HEAD} bytes");
            }
            buf.reserve(read_size);
            if io.read_buf(&mut buf).await? == 0 {
                bail!("connection closed during the upgrade");
            }
        };
        let head = buf.split_to(end);
        let head = std::str::from_utf8(&head).context("upgrade response is not UTF-8")?;
        let status = head.lines().next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            bail!("upgrade refused: {status}");
        }
        let accepted = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == ACCEPT
            })
        });
        if !accepted {
            bail!("upgrade response without the right Sec-WebSocket-Accept");
        }
        Ok(Ws {
            io,
            buf,
            read_size,
            partial: None,
            mask: 0x9e37_79b9,
        })
    }

    /// The next message; `None` when the server closed the TCP connection.
    /// Pings are answered on the way.
    pub async fn next(&mut self) -> Result<Option<Msg>> {
        loop {
            while let Some((fin, op, payload)) = self.frame()? {
                match op {
                    OP_PING => self.send(OP_PONG, &payload).await?,
                    OP_PONG => {}
                    OP_CLOSE => {
                        let close = (payload.len() >= 2).then(|| {
                            let code = u16::from_be_bytes([payload[0], payload[1]]);
                            (code, String::from_utf8_lossy(&payload[2..]).into_owned())
                        });
                        return Ok(Some(Msg::Close(close)));
                    }
                    OP_TEXT | OP_BINARY if fin && self.partial.is_none() => {
                        return Ok(Some(message(op, payload)));
                    }
                    OP_TEXT | OP_BINARY if self.partial.is_none() => {
                        self.partial = Some((op, BytesMut::from(&payload[..])));
                    }
                    OP_CONT => {
                        let Some((first, mut acc)) = self.partial.take() else {
                            bail!("continuation frame without a message");
                        };
                        if acc.len() + payload.len() > MAX_MESSAGE {
                            bail!("message over {MAX_MESSAGE} bytes");
                        }
                        acc.extend_from_slice(&payload);
                        if fin {
                            return Ok(Some(message(first, acc.freeze())));
                        }
                        self.partial = Some((first, acc));
                    }
                    OP_TEXT | OP_BINARY => bail!("new message inside a fragmented one"),
                    other => bail!("unknown opcode {other:#x}"),
                }
            }
            self.buf.reserve(self.read_size);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Sends one text message (masked, as a client must).
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.send(OP_TEXT, text.as_bytes()).await
    }

    /// One complete frame off the buffer: (FIN, opcode, payload).
    fn frame(&mut self) -> Result<Option<(bool, u8, Bytes)>> {
        let b = &self.buf[..];
        if b.len() < 2 {
            return Ok(None);
        }
        if b[1] & 0x80 != 0 {
            bail!("masked frame from the server");
        }
        if b[0] & 0x70 != 0 {
            bail!("reserved bits set (no extension was negotiated)");
        }
        let (len, head) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        let len = usize::try_from(len).ok().filter(|&n| n <= MAX_MESSAGE);
        let Some(len) = len else {
            bail!("frame over {MAX_MESSAGE} bytes");
        };
        if b.len() < head + len {
            return Ok(None);
        }
        let (fin, op) = (b[0] & 0x80 != 0, b[0] & 0x0f);
        self.buf.advance(head);
        Ok(Some((fin, op, self.buf.split_to(len).freeze())))
    }

    async fn send(&mut self, op: u8, payload: &[u8]) -> Result<()> {
        // Any value will do as a mask for a test client; it changes per
        // frame as RFC 6455 asks (xorshift).
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        let key = self.mask.to_be_bytes();
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(0x80 | op);
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.io.write_all(&out).await?;
        Ok(())
    }
}

fn message(op: u8, payload: Bytes) -> Msg {
    if op == OP_TEXT {
        Msg::Text(payload)
    } else {
        Msg::Binary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's side of the upgrade plus `frames`, then the client's reads.
    async fn client_reading(
        frames: &[u8],
    ) -> (Ws<tokio::io::DuplexStream>, tokio::io::DuplexStream) {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let mut reply = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
        )
        .into_bytes();
        reply.extend_from_slice(frames);
        server.write_all(&reply).await.unwrap();
        (Ws::connect(client, "h", "/ws", 4096).await.unwrap(), server)
    }

    #[tokio::test]
    async fn reads_frames_that_came_with_the_upgrade_and_joins_fragments() {
        let mut frames = vec![0x81, 2, b'h', b'i'];
        frames.extend_from_slice(&[0x01, 1, b'a', 0x80, 1, b'b']);
        frames.extend_from_slice(&[0x81, 126, 0, 200]);
        frames.extend_from_slice(&[b'x'; 200]);
        frames.extend_from_slice(&[0x88, 4, 0x03, 0xe8, b'o', b'k']);
        let (mut ws, _server) = client_reading(&frames).await;
        let mut texts = Vec::new();
        loop {
            match ws.next().await.unwrap() {
                Some(Msg::Text(t)) => texts.push(t.len()),
                Some(Msg::Close(c)) => {
                    assert_eq!(c, Some((1000, "ok".into())));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(texts, vec![2, 2, 200]);
    }

    #[tokio::test]
    async fn refuses_masked_server_frames() {
        let (mut ws, _server) = client_reading(&[0x81, 0x82, 1, 2, 3, 4, 0, 0]).await;
        assert!(ws.next().await.is_err());
    }
}
