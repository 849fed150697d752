//! Bounded per-connection queues and each connection's control channel.
//!
//! A queue is a `VecDeque` behind a per-connection mutex that only the hub
//! (push) and that connection (take) lock, bounded by frames and bytes
//! (SPEC §6). Close requests, shutdown and reload reach the connection
//! through the same per-connection `Notify`, so a connection's wakeups never
//! touch a lock shared with every other connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// One frame waiting in a connection's queue.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The shared, already-encoded text frame.
    pub frame: Utf8Bytes,
    /// When its Redis message was read, for the latency histogram.
    pub received: Option<Instant>,
    /// Binary messages that follow the frame (Socket.IO attachments).
    pub attachments: Option<Arc<[Bytes]>>,
}

impl Outbound {
    /// A frame with no attachments.
    pub fn text(frame: Utf8Bytes, received: Option<Instant>) -> Self {
        Outbound {
            frame,
            received,
            attachments: None,
        }
    }

    /// Bytes it holds in a queue, attachments included.
    pub fn queued_bytes(&self) -> usize {
        self.frame.len()
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
        if q.conn_gone {
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

    /// Wakes the connection (once per batch that gave it frames).
    pub(crate) fn wake(&self) {
        self.shared.data.notify_one();
    }
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
}

impl Drop for QueueRx {
    fn drop(&mut self) {
        let mut q = self.shared.pending();
        q.conn_gone = true;
        q.items.clear();
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
