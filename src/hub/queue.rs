//! Bounded per-connection queues and each connection's control channel.
//!
//! A queue is a `VecDeque` behind a per-connection mutex that only the hub
//! (push) and that connection (take) lock, bounded by frames and bytes
//! (SPEC §6). Close requests, shutdown and reload reach the connection
//! through the same per-connection `Notify`, so a connection's wakeups never
//! touch a lock shared with every other connection.
//!
//! A WebSocket on plain TCP is *direct* ([`QueueRx::attach`]): once a hub
//! batch is routed, the hub writes the queued frames to the socket itself
//! (a non-blocking write of the shared, already framed bytes), the way Redis writes
//! from its event loop, and wakes the connection task only when the socket
//! would block. From then on the connection owns the writes until the
//! backlog is gone; the queue's bounds and the 1013 policy are the same
//! either way, and so is per-connection order: every write happens under
//! the queue's lock, front to back. An item the hub took from its sources
//! alone (the usual case below saturation) is written as it is routed
//! ([`QueueTx::push_now`]): there is nothing to gather it with, and the
//! connection is touched once instead of twice.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::metrics::Metrics;
use crate::wire::frame::{self, Framed, Header};

/// One frame waiting in a connection's queue.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The shared, already-encoded text frame: its bytes with the
    /// WebSocket header for a direct socket, its payload for the rest.
    pub frame: Framed,
    /// When its Redis message was read, for the latency histogram.
    pub received: Option<Instant>,
    /// Binary messages that follow the frame (Socket.IO attachments).
    pub attachments: Option<Arc<[Bytes]>>,
}

impl Outbound {
    /// A frame with no attachments.
    pub fn text(frame: Utf8Bytes, received: Option<Instant>) -> Self {
        Outbound::framed(&Framed::text(frame), received, None)
    }

    /// An already built frame (an event's, shared by every connection).
    pub fn framed(
        framed: &Framed,
        received: Option<Instant>,
        attachments: Option<Arc<[Bytes]>>,
    ) -> Self {
        Outbound {
            frame: framed.clone(),
            received,
            attachments,
        }
    }

    /// Bytes it holds in a queue, attachments included.
    pub fn queued_bytes(&self) -> usize {
        self.frame.payload().len()
            + self
                .attachments
                .as_ref()
                .map_or(0, |a| a.iter().map(Bytes::len).sum())
    }
}

/// State both ends of a connection queue see, and the connection's one
/// control channel.
#[derive(Debug, Default)]
pub struct ConnShared {
    queue: Mutex<Pending>,
    /// Raised once per hub batch that made the queue non-empty.
    data: Notify,
    pub(crate) close: AtomicU16,
    flags: AtomicU8,
    signal: Notify,
}

/// The frames waiting for one connection. Behind a per-connection mutex
/// that only the hub (push) and the connection (take) ever lock.
#[derive(Debug, Default)]
struct Pending {
    items: VecDeque<Outbound>,
    bytes: usize,
    /// What is left of a resume's replay, allowed on top of the bounds.
    credit_events: usize,
    credit_bytes: usize,
    hub_gone: bool,
    conn_gone: bool,
    /// Set while the socket may be written from the hub.
    direct: Option<Direct>,
}

/// The write side of a direct connection's socket.
struct Direct {
    sock: Arc<TcpStream>,
    metrics: Arc<Metrics>,
    /// What the connection's WebSocket layer wrote itself (pongs, its own
    /// packets, the close frame), sent at the next frame boundary.
    raw: BytesMut,
    /// Bytes of the front queued frame already on the wire.
    sent: usize,
    /// Since when the socket's buffer has been full: the connection task
    /// waits for it to drain and writes until the backlog is gone; the hub
    /// only queues meanwhile.
    blocked: Option<Instant>,
    /// A write failed: the peer has gone.
    failed: bool,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("raw", &self.raw.len())
            .field("sent", &self.sent)
            .field("blocked", &self.blocked)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// How far a write got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Everything queued is on the wire.
    Done,
    /// The socket's buffer is full.
    Blocked,
    /// The socket is broken.
    Failed,
}

/// Frames per write: each text frame is one slice, each attachment a
/// header and its payload.
const MAX_FRAMES: usize = 64;

impl Pending {
    /// Something is waiting to be written on a direct socket.
    fn has_work(&self) -> bool {
        !self.items.is_empty() || self.direct.as_ref().is_some_and(|d| !d.raw.is_empty())
    }

    /// Removes the front frame once it is all on the wire.
    fn pop_written(&mut self) -> Option<Outbound> {
        let out = self.items.pop_front()?;
        let b = out.queued_bytes();
        self.bytes -= b;
        self.credit_bytes = self.credit_bytes.saturating_sub(b);
        self.credit_events = self.credit_events.saturating_sub(1);
        Some(out)
    }

    /// Writes what is queued, front to back, without blocking: the rest of
    /// a partly written frame, then the connection's own bytes, then the
    /// queued frames, each as its shared, already framed bytes.
    fn write_direct(&mut self) -> Flow {
        let Some(d) = self.direct.as_ref() else {
            return Flow::Done;
        };
        if d.failed {
            return Flow::Failed;
        }
        let mut events = 0u64;
        let mut first_received = None;
        let mut progressed = false;
        let flow = loop {
            if !self.has_work() {
                break Flow::Done;
            }
            match self.write_once() {
                Ok(0) => break Flow::Failed,
                Ok(n) => {
                    progressed = true;
                    self.consume(n, &mut events, &mut first_received);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Flow::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "write failed");
                    break Flow::Failed;
                }
            }
        };
        if let Some(d) = self.direct.as_mut() {
            match flow {
                Flow::Done => d.blocked = None,
                // `write_timeout` runs from the last byte the socket took.
                Flow::Blocked if progressed => d.blocked = Some(Instant::now()),
                Flow::Blocked => {
                    d.blocked.get_or_insert_with(Instant::now);
                }
                Flow::Failed => d.failed = true,
            }
            // Give back a burst's buffers so idle connections stay small.
            if d.raw.is_empty() && d.raw.capacity() > 4096 {
                d.raw = BytesMut::new();
            }
            if events > 0 {
                d.metrics.events_delivered.inc_by(events);
            }
            if let Some(t) = first_received {
                d.metrics.fanout_latency.observe(t.elapsed().as_secs_f64());
            }
        }
        if self.items.is_empty() && self.items.capacity() > 64 {
            self.items = VecDeque::new();
        }
        flow
    }

    /// One write of as much as fits in [`MAX_FRAMES`] frames (a frame
    /// with more attachments than that goes alone, from the heap). The
    /// usual single frame takes small stack buffers: this runs once per
    /// delivery.
    fn write_once(&self) -> io::Result<usize> {
        let mut need = 0;
        for out in &self.items {
            let n = frames_in(out);
            if need > 0 && need + n > MAX_FRAMES {
                break;
            }
            need += n;
        }
        let blank = Header::new(frame::TEXT, 0);
        let empty = IoSlice::new(&[]);
        if need <= 2 {
            self.gather(&mut [blank; 2], &mut [empty; 5])
        } else if need <= MAX_FRAMES {
            self.gather(&mut [blank; MAX_FRAMES], &mut [empty; 2 * MAX_FRAMES + 1])
        } else {
            self.gather(&mut vec![blank; need], &mut vec![empty; 2 * need + 1])
        }
    }

    /// Lays out as many queued frames as `heads` has room for (the rest of
    /// a partly written one first, then the connection's own bytes) and
    /// writes them with one syscall; `slices` holds twice the frames, plus one.
    fn gather<'a>(
        &'a self,
        heads: &'a mut [Header],
        slices: &mut [IoSlice<'a>],
    ) -> io::Result<usize> {
        let Some(d) = self.direct.as_ref() else {
            return Ok(0);
        };
        // Attachment headers first, as the slices borrow them; `heads`
        // bounds the frames per call (text frames need no header here).
        let mut n_frames = 0;
        let mut n_heads = 0;
        let mut n_items = 0;
        for out in &self.items {
            if n_frames + frames_in(out) > heads.len() {
                break;
            }
            n_frames += frames_in(out);
            for a in out.attachments.iter().flat_map(|a| a.iter()) {
                heads[n_heads] = Header::new(frame::BINARY, a.len());
                n_heads += 1;
            }
            n_items += 1;
        }
        let heads: &'a [Header] = heads;
        let mut n = 0;
        let mut h = 0;
        let mut items = self.items.iter().take(n_items);
        // A partly written frame goes on first: frames never interleave.
        if d.sent > 0 {
            if let Some(out) = items.next() {
                push_frame(slices, &mut n, out, heads, &mut h);
                let mut rest: &mut [IoSlice<'_>] = &mut slices[..n];
                IoSlice::advance_slices(&mut rest, d.sent);
                let k = rest.len();
                slices.copy_within(n - k..n, 0);
                n = k;
            }
        }
        if !d.raw.is_empty() {
            slices[n] = IoSlice::new(&d.raw);
            n += 1;
        }
        for out in items {
            push_frame(slices, &mut n, out, heads, &mut h);
        }
        send(&d.sock, &slices[..n])
    }

    /// Accounts for `n` bytes written in the order [`write_direct`] laid
    /// them out.
    fn consume(&mut self, mut n: usize, events: &mut u64, first: &mut Option<Instant>) {
        let mut done = |out: Outbound| {
            if let Some(t) = out.received {
                *events += 1;
                first.get_or_insert(t);
            }
        };
        let sent = self.direct.as_ref().map_or(0, |d| d.sent);
        if sent > 0 {
            let left = self.items.front().map_or(0, wire_len) - sent;
            if n < left {
                if let Some(d) = self.direct.as_mut() {
                    d.sent += n;
                }
                return;
            }
            n -= left;
            if let Some(d) = self.direct.as_mut() {
                d.sent = 0;
            }
            if let Some(out) = self.pop_written() {
                done(out);
            }
        }
        if let Some(d) = self.direct.as_mut() {
            let k = n.min(d.raw.len());
            d.raw.advance(k);
            n -= k;
        }
        while n > 0 {
            let len = self.items.front().map_or(0, wire_len);
            if len == 0 {
                break;
            }
            if n < len {
                if let Some(d) = self.direct.as_mut() {
                    d.sent = n;
                }
                return;
            }
            n -= len;
            if let Some(out) = self.pop_written() {
                done(out);
            }
        }
    }
}

/// One non-blocking write of `slices` straight on the socket: `send(2)`
/// for the usual single frame (the vectored layer, copying in the iovec
/// array and checking it, was some 5 % of a loopback delivery),
/// `sendmsg(2)` for several. tokio's `try_write` would first read the
/// socket's readiness word, which on a burst to a thousand sockets is a
/// cache miss per delivery (~4 % of the hub's time), to learn what the
/// kernel is about to say anyway. Only a write that would block goes
/// through tokio, whose readiness must be cleared for `writable()` to wait
/// for the next edge; it writes again, and may even succeed if the socket
/// drained meanwhile.
fn send(sock: &TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    let raw = socket2::SockRef::from(sock);
    let sent = match slices {
        [one] => raw.send(one),
        all => raw.send_vectored(all),
    };
    match sent {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => match slices {
            [one] => sock.try_write(one),
            all => sock.try_write_vectored(all),
        },
        done => done,
    }
}

/// WebSocket frames a queued item takes: its text frame and a binary
/// frame per attachment.
fn frames_in(out: &Outbound) -> usize {
    1 + out.attachments.as_ref().map_or(0, |a| a.len())
}

/// Bytes a queued item takes on the wire.
fn wire_len(out: &Outbound) -> usize {
    let binary = |len| Header::new(frame::BINARY, len).as_bytes().len() + len;
    out.frame.wire().len()
        + out
            .attachments
            .iter()
            .flat_map(|a| a.iter())
            .map(|a| binary(a.len()))
            .sum::<usize>()
}

/// Lays out an item's slices at `slices[*n..]`: its whole text frame, then
/// each attachment's header (from `heads[*h..]`) and payload.
fn push_frame<'a>(
    slices: &mut [IoSlice<'a>],
    n: &mut usize,
    out: &'a Outbound,
    heads: &'a [Header],
    h: &mut usize,
) {
    slices[*n] = IoSlice::new(out.frame.wire());
    *n += 1;
    for payload in out.attachments.iter().flat_map(|a| a.iter()) {
        slices[*n] = IoSlice::new(heads[*h].as_bytes());
        slices[*n + 1] = IoSlice::new(payload);
        *n += 2;
        *h += 1;
    }
}

/// A control event for a connection, most urgent first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Close with this code now (slow consumer, …).
    Close(u16),
    /// The relay is shutting down: drain and close with 1001.
    Shutdown,
    /// The config was reloaded: re-check what may have been revoked.
    Reload,
}

/// Control flag: the relay is shutting down.
pub(crate) const FLAG_SHUTDOWN: u8 = 1;
/// Control flag: the config was reloaded.
pub(crate) const FLAG_RELOAD: u8 = 2;

impl ConnShared {
    /// Asks the connection to close with `code`; the first request wins.
    pub fn kick(&self, code: u16) {
        let _ = self
            .close
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.signal.notify_one();
    }

    pub(crate) fn raise(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::AcqRel);
        self.signal.notify_one();
    }

    /// Waits for the next control event.
    pub async fn next_signal(&self) -> Signal {
        loop {
            if let Some(s) = self.take_signal() {
                return s;
            }
            self.signal.notified().await;
        }
    }

    fn take_signal(&self) -> Option<Signal> {
        match self.close.load(Ordering::Acquire) {
            0 => {}
            code => return Some(Signal::Close(code)),
        }
        let flags = self.flags.swap(0, Ordering::AcqRel);
        if flags & FLAG_SHUTDOWN != 0 {
            Some(Signal::Shutdown)
        } else if flags & FLAG_RELOAD != 0 {
            Some(Signal::Reload)
        } else {
            None
        }
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        // Nothing panics while holding this lock; if something ever did,
        // the queue's contents are still consistent.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The hub's end of a connection queue.
#[derive(Debug)]
pub struct QueueTx {
    pub(crate) shared: Arc<ConnShared>,
    max_events: usize,
    max_bytes: usize,
}

/// Outcome of an enqueue.
pub(crate) enum Enqueue {
    /// Queued; `first` means the queue was empty, so the connection needs a wake.
    Queued {
        first: bool,
    },
    Slow,
    Gone,
}

impl QueueTx {
    /// Enqueues unless the queue already holds its event or byte limit
    /// (SPEC §6: one event larger than the byte limit still gets through).
    pub(crate) fn push(&self, out: &Outbound) -> Enqueue {
        let mut q = self.shared.pending();
        self.push_locked(&mut q, out)
    }

    fn push_locked(&self, q: &mut Pending, out: &Outbound) -> Enqueue {
        if q.conn_gone || q.direct.as_ref().is_some_and(|d| d.failed) {
            return Enqueue::Gone;
        }
        if q.items.len() >= self.max_events + q.credit_events
            || q.bytes >= self.max_bytes + q.credit_bytes
        {
            return Enqueue::Slow;
        }
        let first = q.items.is_empty();
        q.bytes += out.queued_bytes();
        q.items.push_back(out.clone());
        Enqueue::Queued { first }
    }

    /// [`push`](Self::push), then at once what [`flush`](Self::flush)
    /// would do at the end of the batch, under the same lock: for an
    /// item routed alone, there is nothing to gather a write with, and
    /// touching the connection once instead of twice saves a cache miss
    /// per delivery on a burst.
    pub(crate) fn push_now(&self, out: &Outbound) -> Enqueue {
        let mut q = self.shared.pending();
        let done = self.push_locked(&mut q, out);
        if let Enqueue::Queued { first: true } = done {
            if flush_locked(q) {
                self.shared.data.notify_one();
            }
            // Written or handed over: nothing for the end of the batch.
            return Enqueue::Queued { first: false };
        }
        done
    }

    /// Queues a resume's replay whatever its size: the frames are shared
    /// with the history, and the queue's bounds then apply on top of what
    /// is left of it, so live events after a long replay are not taken as
    /// a slow client. True when the queue was empty (needs a wake).
    pub(crate) fn push_replay(&self, frames: Vec<Outbound>) -> bool {
        let mut q = self.shared.pending();
        if q.conn_gone || frames.is_empty() {
            return false;
        }
        let first = q.items.is_empty();
        for out in frames {
            let n = out.queued_bytes();
            q.bytes += n;
            q.credit_bytes += n;
            q.credit_events += 1;
            q.items.push_back(out);
        }
        first
    }

    /// Once per batch that gave the connection frames: a direct socket
    /// gets them written now, and its task is woken only if the socket
    /// would block (or broke); any other connection is woken to take them.
    pub(crate) fn flush(&self) {
        let q = self.shared.pending();
        if flush_locked(q) {
            self.shared.data.notify_one();
        }
    }
}

/// A flush under the queue's lock: writes on a direct socket; true if the
/// connection task must be woken (after the lock is released, which this
/// takes).
fn flush_locked(mut q: MutexGuard<'_, Pending>) -> bool {
    if let Some(d) = q.direct.as_ref() {
        // Blocked: the connection task already owns the writes.
        if d.blocked.is_some() || d.failed {
            return false;
        }
        if q.write_direct() == Flow::Done {
            return false;
        }
    }
    true
}

impl Drop for QueueTx {
    fn drop(&mut self) {
        self.shared.pending().hub_gone = true;
        self.shared.data.notify_one();
    }
}

/// The connection's end of its queue.
#[derive(Debug)]
pub struct QueueRx {
    pub(crate) shared: Arc<ConnShared>,
}

impl QueueRx {
    /// Waits for frames and moves up to `limit` of them into `buf`;
    /// returns 0 once the hub has gone and nothing is left.
    pub async fn recv_many(&mut self, buf: &mut Vec<Outbound>, limit: usize) -> usize {
        loop {
            let (n, hub_gone) = self.take(buf, limit);
            if n > 0 || hub_gone {
                return n;
            }
            self.shared.data.notified().await;
        }
    }

    /// Takes whatever is queued right now, without waiting.
    pub fn drain_now(&mut self, buf: &mut Vec<Outbound>, limit: usize) {
        self.take(buf, limit);
    }

    /// Moves up to `limit` frames into `buf` under one lock; also says
    /// whether the hub has gone.
    fn take(&self, buf: &mut Vec<Outbound>, limit: usize) -> (usize, bool) {
        let mut guard = self.shared.pending();
        let q = &mut *guard;
        let n = q.items.len().min(limit);
        for out in q.items.drain(..n) {
            let b = out.queued_bytes();
            q.bytes -= b;
            q.credit_bytes = q.credit_bytes.saturating_sub(b);
            buf.push(out);
        }
        q.credit_events = q.credit_events.saturating_sub(n);
        // Give back a burst's buffer so idle connections stay small.
        if q.items.is_empty() && q.items.capacity() > 64 {
            q.items = VecDeque::new();
        }
        (n, q.hub_gone)
    }

    /// The state shared with the hub (close requests).
    pub fn shared(&self) -> &Arc<ConnShared> {
        &self.shared
    }

    /// Lets the hub write this connection's frames to `sock` itself (a
    /// WebSocket on plain TCP). From here on the connection must take its
    /// frames through [`serve_direct`](Self::serve_direct), never
    /// [`recv_many`](Self::recv_many), and its WebSocket layer must write
    /// through [`ConnShared::write_raw`].
    pub fn attach(&self, sock: Arc<TcpStream>, metrics: Arc<Metrics>) {
        let mut q = self.shared.pending();
        if q.conn_gone {
            return;
        }
        q.direct = Some(Direct {
            sock,
            metrics,
            raw: BytesMut::new(),
            sent: 0,
            blocked: None,
            failed: false,
        });
    }

    /// Whether the hub writes this connection's frames itself.
    pub fn is_direct(&self) -> bool {
        self.shared.pending().direct.is_some()
    }

    /// Takes no more frames from the hub: a close frame follows. What is
    /// queued is dropped, except a frame already partly on the wire, which
    /// is finished first so the close frame starts on a frame boundary.
    pub fn seal(&self) {
        let mut q = self.shared.pending();
        q.conn_gone = true;
        let partial = q.direct.as_ref().is_some_and(|d| d.sent > 0);
        let keep = usize::from(partial).min(q.items.len());
        q.items.truncate(keep);
    }

    /// A direct connection's part of the writing: waits until the hub left
    /// it a backlog (the socket would block), waits for the socket to take
    /// more and writes until the backlog is gone. A socket that takes
    /// nothing for `write_timeout` is [`Turn::Stalled`]. Cancel-safe: the
    /// state lives in the queue, so the next call resumes it.
    pub async fn serve_direct(&mut self, write_timeout: Duration) -> Turn {
        enum Next {
            Wait(Arc<TcpStream>, Instant),
            Idle,
            Detached,
        }
        loop {
            let next = {
                let mut q = self.shared.pending();
                let (work, hub_gone) = (q.has_work(), q.hub_gone);
                match q.direct.as_ref() {
                    None => Next::Detached,
                    Some(d) if d.failed => return Turn::Failed,
                    Some(Direct {
                        blocked: Some(since),
                        sock,
                        ..
                    }) => Next::Wait(sock.clone(), *since),
                    Some(_) if work => match q.write_direct() {
                        Flow::Done => return Turn::Wrote,
                        Flow::Failed => return Turn::Failed,
                        Flow::Blocked => continue,
                    },
                    Some(_) if hub_gone => return Turn::HubGone,
                    Some(_) => Next::Idle,
                }
            };
            let (sock, since) = match next {
                Next::Detached => return std::future::pending().await,
                Next::Idle => {
                    self.shared.data.notified().await;
                    continue;
                }
                Next::Wait(sock, since) => (sock, since),
            };
            let deadline = tokio::time::Instant::from_std(since + write_timeout);
            match tokio::time::timeout_at(deadline, sock.writable()).await {
                Err(_) => return Turn::Stalled,
                Ok(Err(_)) => return Turn::Failed,
                Ok(Ok(())) => {
                    let flow = self.shared.pending().write_direct();
                    match flow {
                        Flow::Done => return Turn::Wrote,
                        Flow::Failed => return Turn::Failed,
                        Flow::Blocked => {}
                    }
                }
            }
        }
    }

    /// Shutdown on a direct socket: writes what is queued by `deadline`;
    /// false if the socket broke or did not take it in time.
    pub async fn drain_direct(&mut self, deadline: tokio::time::Instant) -> bool {
        loop {
            let sock = {
                let mut q = self.shared.pending();
                match q.write_direct() {
                    Flow::Done => return true,
                    Flow::Failed => return false,
                    Flow::Blocked => match q.direct.as_ref() {
                        Some(d) => d.sock.clone(),
                        None => return true,
                    },
                }
            };
            match tokio::time::timeout_at(deadline, sock.writable()).await {
                Ok(Ok(())) => {}
                _ => return false,
            }
        }
    }
}

/// What a direct connection's turn at writing came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The backlog is on the wire.
    Wrote,
    /// The hub has gone (shutdown) and nothing is left to write.
    HubGone,
    /// The socket took nothing for `write_timeout`: the client stopped reading.
    Stalled,
    /// The socket broke.
    Failed,
}

impl ConnShared {
    /// The connection's WebSocket layer writing its own frames (pongs,
    /// handshake packets, the close frame) on a direct socket: kept in
    /// order with the hub's frames and sent at the next frame boundary.
    /// False when the socket is not direct (write it yourself).
    pub fn write_raw(&self, bytes: &[u8]) -> bool {
        let mut q = self.pending();
        match q.direct.as_mut() {
            Some(d) => {
                d.raw.extend_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    /// Flushes a direct socket for the connection's own writes: ready once
    /// everything queued is on the wire; pending (woken when the socket
    /// drains) while it would block.
    pub fn poll_flush_direct(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut q = self.pending();
            match q.write_direct() {
                Flow::Done => return Poll::Ready(Ok(())),
                Flow::Failed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Flow::Blocked => {}
            }
            let Some(d) = q.direct.as_ref() else {
                return Poll::Ready(Ok(()));
            };
            // Registers this task for writability; no await under the lock.
            match d.sock.poll_write_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
        }
    }
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        let mut q = self.shared.pending();
        q.conn_gone = true;
        q.items.clear();
        // The socket closes with the connection, not when the hub forgets it.
        q.direct = None;
    }
}

/// A bounded queue: at most `events` frames and about `max_bytes` bytes.
pub fn queue(events: usize, max_bytes: usize) -> (QueueTx, QueueRx) {
    let shared = Arc::new(ConnShared::default());
    (
        QueueTx {
            shared: shared.clone(),
            max_events: events.max(1),
            max_bytes,
        },
        QueueRx { shared },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(s: &str) -> Outbound {
        Outbound::text(s.to_owned().into(), None)
    }

    #[test]
    fn bounded_by_frames_and_bytes_and_one_big_frame_passes() {
        let (tx, mut rx) = queue(2, 10);
        assert!(matches!(
            tx.push(&out("a")),
            Enqueue::Queued { first: true }
        ));
        assert!(matches!(
            tx.push(&out("b")),
            Enqueue::Queued { first: false }
        ));
        assert!(matches!(tx.push(&out("c")), Enqueue::Slow));
        let mut buf = Vec::new();
        rx.drain_now(&mut buf, 10);
        assert_eq!(buf.len(), 2);
        assert!(matches!(
            tx.push(&out(&"x".repeat(50))),
            Enqueue::Queued { .. }
        ));
        assert!(matches!(tx.push(&out("y")), Enqueue::Slow));
        drop(rx);
        assert!(matches!(tx.push(&out("z")), Enqueue::Gone));
    }

    /// A connected loopback pair: the relay's end (shared with the hub,
    /// with a small send buffer so it fills quickly) and a client's end.
    async fn pair() -> (Arc<TcpStream>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let _ = socket2::SockRef::from(&server).set_send_buffer_size(16 * 1024);
        (Arc::new(server), client)
    }

    fn event(payload: String) -> Outbound {
        Outbound::text(payload.into(), Some(Instant::now()))
    }

    /// Reads whole frames (opcode, payload) until `n` have arrived; a byte
    /// out of place breaks the framing and the payloads with it.
    async fn read_frames(client: &mut TcpStream, n: usize) -> Vec<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut frames = Vec::new();
        while frames.len() < n {
            let mut head = [0u8; 2];
            client.read_exact(&mut head).await.expect("header");
            assert_eq!(head[0] & 0xf0, 0x80, "final, no RSV bits: {head:?}");
            assert_eq!(head[1] & 0x80, 0, "server frames are unmasked");
            let len = match head[1] & 0x7f {
                126 => u64::from(client.read_u16().await.expect("len16")),
                127 => client.read_u64().await.expect("len64"),
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            client.read_exact(&mut payload).await.expect("payload");
            frames.push((head[0] & 0x0f, payload));
        }
        frames
    }

    #[tokio::test]
    async fn the_hub_writes_whole_frames_in_order_with_the_connections_own_between() {
        let (sock, mut client) = pair().await;
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = queue(16, 1 << 20);
        rx.attach(sock, metrics.clone());
        assert!(rx.is_direct());
        for i in 0..3 {
            assert!(matches!(
                tx.push(&event(format!("e{i}"))),
                Enqueue::Queued { .. }
            ));
        }
        // A pong from the connection's WebSocket layer, then a control frame.
        assert!(rx.shared().write_raw(&[0x8a, 0x00]));
        assert!(matches!(tx.push(&out("ack")), Enqueue::Queued { .. }));
        tx.flush();
        let frames = read_frames(&mut client, 5).await;
        let got: Vec<(u8, &[u8])> = frames.iter().map(|(o, p)| (*o, &p[..])).collect();
        assert_eq!(
            got,
            [
                (0xa, &b""[..]),
                (frame::TEXT, b"e0"),
                (frame::TEXT, b"e1"),
                (frame::TEXT, b"e2"),
                (frame::TEXT, b"ack"),
            ],
            "the connection's own bytes go at the next frame boundary"
        );
        assert_eq!(metrics.events_delivered.get(), 3, "acks are not events");
        assert!(!rx.shared().pending().has_work());
    }

    /// The connection's side of a direct socket: its turns at writing
    /// until the backlog the hub left is gone.
    async fn write_backlog(mut rx: QueueRx) -> QueueRx {
        loop {
            match rx.serve_direct(Duration::from_secs(10)).await {
                Turn::Wrote if !rx.shared().pending().has_work() => return rx,
                Turn::Wrote => {}
                other => panic!("turn {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn an_item_routed_alone_wakes_a_queued_connection_at_once() {
        let (tx, mut rx) = queue(4, 1024);
        let taker = tokio::spawn(async move {
            let mut buf = Vec::new();
            rx.recv_many(&mut buf, 4).await;
            buf.len()
        });
        // One thread: the taker runs until it waits for the wake.
        tokio::task::yield_now().await;
        assert!(matches!(
            tx.push_now(&out("a")),
            Enqueue::Queued { first: false }
        ));
        let got = tokio::time::timeout(Duration::from_secs(10), taker).await;
        assert_eq!(got.expect("woken without a flush").expect("taker"), 1);
    }

    #[tokio::test]
    async fn an_item_routed_alone_is_written_at_once_and_a_blocked_one_left_to_the_connection() {
        let (sock, mut client) = pair().await;
        let metrics = Arc::new(Metrics::new());
        let (tx, rx) = queue(16, 64 << 20);
        rx.attach(sock, metrics.clone());
        assert!(matches!(
            tx.push_now(&event("e0".into())),
            Enqueue::Queued { first: false }
        ));
        assert!(!rx.shared().pending().has_work(), "written with no flush");
        assert_eq!(metrics.events_delivered.get(), 1);
        assert_eq!(
            read_frames(&mut client, 1).await,
            [(frame::TEXT, b"e0".to_vec())]
        );
        // One frame far larger than the socket buffer: the direct send
        // takes part of it, then would block; the rest is the task's.
        let big = format!("B{}", "z".repeat(4 << 20));
        assert!(matches!(
            tx.push_now(&event(big.clone())),
            Enqueue::Queued { first: false }
        ));
        {
            let q = rx.shared().pending();
            let d = q.direct.as_ref().expect("direct");
            assert!(d.blocked.is_some(), "4 MiB do not fit a socket buffer");
            assert!(d.sent > 0, "the socket took part of the frame");
        }
        // Routed alone too, but behind a backlog: queued, not written.
        assert!(matches!(
            tx.push_now(&event("e2".into())),
            Enqueue::Queued { first: false }
        ));
        assert_eq!(rx.shared().pending().items.len(), 2);
        let writer = tokio::spawn(write_backlog(rx));
        let frames = read_frames(&mut client, 2).await;
        writer.await.expect("writer");
        assert_eq!(
            frames,
            [
                (frame::TEXT, big.into_bytes()),
                (frame::TEXT, b"e2".to_vec())
            ]
        );
        assert_eq!(metrics.events_delivered.get(), 3);
    }

    #[tokio::test]
    async fn a_full_socket_leaves_the_backlog_to_the_connection_and_frames_stay_whole() {
        let (sock, mut client) = pair().await;
        let (tx, rx) = queue(1000, 64 << 20);
        rx.attach(sock, Arc::new(Metrics::new()));
        let payload = |i: usize| format!("{i:05}{}", "x".repeat(70_000));
        for i in 0..20 {
            assert!(matches!(
                tx.push(&event(payload(i))),
                Enqueue::Queued { .. }
            ));
        }
        tx.flush();
        {
            let q = rx.shared().pending();
            let d = q.direct.as_ref().expect("direct");
            assert!(d.blocked.is_some(), "20 x 70 KB do not fit a socket buffer");
            assert!(d.sent > 0, "the socket took part of a frame");
        }
        // Meanwhile: a pong, which must not land inside the partial frame,
        // and a frame the hub queues but may not write (the task owns it).
        assert!(rx.shared().write_raw(&[0x8a, 0x00]));
        assert!(matches!(
            tx.push(&event(payload(20))),
            Enqueue::Queued { first: false }
        ));
        tx.flush();
        let writer = tokio::spawn(write_backlog(rx));
        let frames = read_frames(&mut client, 22).await;
        let rx = writer.await.expect("writer");
        let texts: Vec<String> = frames
            .iter()
            .filter(|(o, _)| *o == frame::TEXT)
            .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
            .collect();
        assert_eq!(texts, (0..21).map(payload).collect::<Vec<_>>());
        assert_eq!(frames.iter().filter(|(o, _)| *o == 0xa).count(), 1);
        assert_eq!(
            frames[0].0,
            frame::TEXT,
            "the partly sent frame finishes first"
        );
        assert!(rx
            .shared()
            .pending()
            .direct
            .as_ref()
            .is_some_and(|d| d.blocked.is_none()));
    }

    #[tokio::test]
    async fn seal_drops_the_queue_but_finishes_a_partly_written_frame() {
        let (sock, mut client) = pair().await;
        let (tx, mut rx) = queue(1000, 64 << 20);
        rx.attach(sock, Arc::new(Metrics::new()));
        for i in 0..10 {
            assert!(matches!(
                tx.push(&event(format!("{i}{}", "y".repeat(100_000)))),
                Enqueue::Queued { .. }
            ));
        }
        tx.flush();
        rx.seal();
        assert!(matches!(tx.push(&event("late".into())), Enqueue::Gone));
        // The close frame, written by tungstenite after the seal.
        assert!(rx.shared().write_raw(&[0x88, 0x02, 0x03, 0xe9]));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let drained = tokio::spawn(async move { rx.drain_direct(deadline).await });
        let frames = read_frames(&mut client, 2).await;
        assert!(drained.await.expect("drain"));
        assert_eq!(frames[0].0, frame::TEXT);
        assert!(frames[0].1.starts_with(b"0y"), "the partial frame, whole");
        assert_eq!(frames[0].1.len(), 100_001);
        assert_eq!(
            (frames[1].0, &frames[1].1[..]),
            (0x8, &[0x03, 0xe9][..]),
            "then the close"
        );
    }

    #[tokio::test]
    async fn a_socket_that_takes_nothing_for_write_timeout_is_stalled() {
        let (sock, _client) = pair().await;
        let (tx, mut rx) = queue(1000, 64 << 20);
        rx.attach(sock, Arc::new(Metrics::new()));
        for _ in 0..20 {
            assert!(matches!(
                tx.push(&event("z".repeat(70_000))),
                Enqueue::Queued { .. }
            ));
        }
        tx.flush();
        let turn = tokio::time::timeout(
            Duration::from_secs(10),
            rx.serve_direct(Duration::from_millis(200)),
        )
        .await
        .expect("a turn within the write timeout");
        assert_eq!(turn, Turn::Stalled);
    }

    #[tokio::test]
    async fn a_peer_that_has_gone_fails_the_writes_and_the_pushes() {
        let (sock, client) = pair().await;
        let (tx, mut rx) = queue(1000, 64 << 20);
        rx.attach(sock, Arc::new(Metrics::new()));
        // A reset, not a FIN: the next writes fail at once.
        let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
        drop(client);
        let mut turn = Turn::Wrote;
        for _ in 0..50 {
            let _ = tx.push(&event("w".repeat(1000)));
            tx.flush();
            turn = tokio::time::timeout(
                Duration::from_secs(5),
                rx.serve_direct(Duration::from_secs(5)),
            )
            .await
            .unwrap_or(Turn::Stalled);
            if turn == Turn::Failed {
                break;
            }
        }
        assert_eq!(turn, Turn::Failed);
        assert!(matches!(tx.push(&event("after".into())), Enqueue::Gone));
    }

    #[test]
    fn the_first_close_code_wins_and_flags_come_after_it() {
        let (_tx, rx) = queue(1, 1);
        let s = rx.shared();
        s.raise(FLAG_RELOAD);
        assert_eq!(s.take_signal(), Some(Signal::Reload));
        assert_eq!(s.take_signal(), None);
        s.raise(FLAG_SHUTDOWN);
        s.kick(1013);
        s.kick(1008);
        assert_eq!(s.take_signal(), Some(Signal::Close(1013)));
    }
}
