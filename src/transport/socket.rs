//! The byte stream under a server WebSocket.
//!
//! On plain TCP the socket is shared ([`Io::Direct`]): the connection task
//! reads it through tungstenite, and once the connection's queue is
//! attached ([`crate::hub::queue::QueueRx::attach`]) the hub writes event
//! frames to it directly. tungstenite's own writes (pongs, the close frame,
//! the transport's packets) then go into the same queue, so they land
//! between frames, never inside one. Any other stream (TLS) stays
//! hyper's upgraded connection, written by the connection task alone.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::hub::queue::ConnShared;

/// A server WebSocket's stream.
#[derive(Debug)]
pub enum Io {
    /// A plain TCP socket the hub may write to.
    Direct(DirectIo),
    /// Anything else (TLS): the connection task writes it.
    Upgraded(TokioIo<Upgraded>),
}

/// A plain TCP socket shared by the connection task and the hub.
#[derive(Debug)]
pub struct DirectIo {
    sock: Arc<TcpStream>,
    /// Bytes hyper read past the upgrade request (a client's first frame).
    prefix: Bytes,
    /// Once attached: the queue that orders every write.
    queue: Option<Arc<ConnShared>>,
}

impl Io {
    /// Wraps an upgraded HTTP connection; `direct` allows sharing a plain
    /// TCP socket with the hub.
    pub fn new(upgraded: Upgraded, direct: bool) -> Io {
        if !direct {
            return Io::Upgraded(TokioIo::new(upgraded));
        }
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => Io::Direct(DirectIo {
                sock: Arc::new(parts.io.into_inner()),
                // Even empty, hyper's leftover is a view of its whole read
                // buffer (kilobytes): keep it only while it has bytes.
                prefix: match parts.read_buf.is_empty() {
                    true => Bytes::new(),
                    false => parts.read_buf,
                },
                queue: None,
            }),
            Err(upgraded) => Io::Upgraded(TokioIo::new(upgraded)),
        }
    }

    /// The socket the hub may write to, if this is plain TCP.
    pub fn direct_socket(&self) -> Option<Arc<TcpStream>> {
        match self {
            Io::Direct(d) => Some(d.sock.clone()),
            Io::Upgraded(_) => None,
        }
    }

    /// From now on, writes go through `queue` (attached to the hub first).
    pub fn attach(&mut self, queue: Arc<ConnShared>) {
        if let Io::Direct(d) = self {
            d.queue = Some(queue);
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Upgraded(u) => Pin::new(u).poll_read(cx, buf),
            Io::Direct(d) => d.poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Upgraded(u) => Pin::new(u).poll_write(cx, buf),
            Io::Direct(d) => d.poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Upgraded(u) => Pin::new(u).poll_flush(cx),
            Io::Direct(d) => match &d.queue {
                Some(q) => q.poll_flush_direct(cx),
                // Unattached writes go straight to the socket.
                None => Poll::Ready(Ok(())),
            },
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Upgraded(u) => Pin::new(u).poll_shutdown(cx),
            Io::Direct(d) => {
                if let Some(q) = &d.queue {
                    ready!(q.poll_flush_direct(cx))?;
                }
                // The hub may hold the socket a little longer; end our half now.
                let _ = socket2::SockRef::from(&*d.sock).shutdown(std::net::Shutdown::Write);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl DirectIo {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(self.sock.poll_read_ready(cx))?;
            match self.sock.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(q) = &self.queue {
            if q.write_raw(buf) {
                return Poll::Ready(Ok(buf.len()));
            }
        }
        loop {
            ready!(self.sock.poll_write_ready(cx))?;
            match self.sock.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}
