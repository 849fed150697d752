//! Who wants what. One hub task owns the routing index — `(field, value) →
//! connections`, the firehose set and every connection's bounded queue — so
//! the hot path takes no lock: an event costs one index lookup per routing
//! key plus one `try_send` of the shared frame per matching connection.
//!
//! Connections talk to the hub through a bounded command channel; the hub
//! never awaits a connection. Acks and the welcome frame travel through the
//! same queue as events, so "ack, then the events it enabled" holds by
//! construction, as does per-connection Redis order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{mpsc, watch, Notify};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::protocol::{self, GapReason};

/// Relay-wide connection identifier.
pub type ConnId = u64;

/// Capacity of the connections → hub command channel.
const COMMAND_QUEUE: usize = 4096;
/// Events the hub takes from the source per wakeup.
const INGEST_BATCH: usize = 256;

/// One frame waiting in a connection's queue.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The shared, already-encoded text frame.
    pub frame: Utf8Bytes,
    /// When its Redis message was read, for the latency histogram.
    pub received: Option<Instant>,
}

/// State both ends of a connection queue see, and the connection's one
/// control channel: close requests, shutdown and reload all arrive through
/// this per-connection `Notify`, so a connection's wakeups never touch a
/// lock shared with every other connection.
#[derive(Debug, Default)]
pub struct ConnShared {
    queue: Mutex<Pending>,
    /// Raised once per hub batch that made the queue non-empty.
    data: Notify,
    close: AtomicU16,
    flags: AtomicU8,
    signal: Notify,
}

/// The frames waiting for one connection. Behind a per-connection mutex
/// that only the hub (push) and the connection (take) ever lock.
#[derive(Debug, Default)]
struct Pending {
    items: VecDeque<Outbound>,
    bytes: usize,
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

const FLAG_SHUTDOWN: u8 = 1;
const FLAG_RELOAD: u8 = 2;

impl ConnShared {
    /// Asks the connection to close with `code`; the first request wins.
    pub fn kick(&self, code: u16) {
        let _ = self
            .close
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
        self.signal.notify_one();
    }

    fn raise(&self, flag: u8) {
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
    shared: Arc<ConnShared>,
    max_events: usize,
    max_bytes: usize,
}

/// Outcome of an enqueue.
enum Enqueue {
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
    fn push(&self, out: &Outbound) -> Enqueue {
        let mut q = self.shared.pending();
        if q.conn_gone {
            return Enqueue::Gone;
        }
        if q.items.len() >= self.max_events || q.bytes >= self.max_bytes {
            return Enqueue::Slow;
        }
        let first = q.items.is_empty();
        q.bytes += out.frame.len();
        q.items.push_back(out.clone());
        Enqueue::Queued { first }
    }

    /// Wakes the connection (once per batch that gave it frames).
    fn wake(&self) {
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
    shared: Arc<ConnShared>,
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
            q.bytes -= out.frame.len();
            buf.push(out);
        }
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

/// What the source hands the hub.
#[derive(Debug)]
pub enum Ingest {
    /// An event to route.
    Event(Event),
    /// Tell every connection that events were missed.
    Gap(GapReason),
}

/// Requests from connections.
#[derive(Debug)]
pub enum Command {
    /// A new connection with its URL subscriptions; `welcome` is queued first.
    Register {
        /// Connection id.
        id: ConnId,
        /// Hub end of its queue.
        queue: QueueTx,
        /// Initial `(field, value)` subscriptions.
        keys: Vec<(String, String)>,
        /// Initial firehose flag.
        all: bool,
        /// The welcome frame, queued once the subscriptions are live.
        welcome: Utf8Bytes,
    },
    /// Add (`subscribe`) or remove subscriptions, then queue `ack`.
    Change {
        /// Connection id.
        id: ConnId,
        /// true = subscribe, false = unsubscribe.
        subscribe: bool,
        /// `(field, value)` pairs.
        keys: Vec<(String, String)>,
        /// The firehose was named.
        all: bool,
        /// The ack frame, queued once the change is live.
        ack: Utf8Bytes,
    },
    /// The connection ended.
    Unregister {
        /// Connection id.
        id: ConnId,
    },
}

/// Cloneable handle connections use to reach the hub.
#[derive(Debug, Clone)]
pub struct HubHandle {
    tx: mpsc::Sender<Command>,
}

impl HubHandle {
    /// Sends a command; false if the hub has stopped (shutdown).
    pub async fn send(&self, cmd: Command) -> bool {
        self.tx.send(cmd).await.is_ok()
    }

    /// Sends without waiting; used from `Drop` paths.
    pub fn try_send(&self, cmd: Command) -> bool {
        self.tx.try_send(cmd).is_ok()
    }
}

struct Entry {
    id: ConnId,
    queue: QueueTx,
    subs: HashSet<(Arc<str>, Box<str>)>,
    firehose: bool,
    /// Sequence number of the last event queued, to deliver once when several keys match.
    stamp: u64,
    /// Kicked as slow: gets nothing more, waits for its Unregister.
    dead: bool,
}

/// The routing index and the connections' queues. Owned by one task.
pub struct Hub {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    ids: HashMap<ConnId, usize>,
    index: HashMap<Arc<str>, HashMap<Box<str>, HashSet<usize>>>,
    firehose: HashSet<usize>,
    entries: usize,
    seq: u64,
    marks: Marks,
    metrics: Arc<Metrics>,
}

/// Slots that need attention once the current batch is routed.
#[derive(Default)]
struct Marks {
    /// Queue full: close as slow.
    kicked: Vec<usize>,
    /// Queue went from empty to non-empty: wake the connection.
    touched: Vec<usize>,
}

impl Hub {
    /// An empty hub.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            slots: Vec::new(),
            free: Vec::new(),
            ids: HashMap::new(),
            index: HashMap::new(),
            firehose: HashSet::new(),
            entries: 0,
            seq: 0,
            marks: Marks::default(),
            metrics,
        }
    }

    /// Creates the command channel: the handle for connections, the receiver for [`run`](Self::run).
    pub fn channel() -> (HubHandle, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        (HubHandle { tx }, rx)
    }

    /// Serves commands and routes ingested events until shutdown or until
    /// both channels close. Reloads of `live` and the shutdown itself are
    /// passed on to every registered connection.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut ingest: mpsc::Receiver<Ingest>,
        mut live: watch::Receiver<Arc<Config>>,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(INGEST_BATCH);
        let mut ingest_open = true;
        let mut live_open = true;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                changed = live.changed(), if live_open => match changed {
                    Ok(()) => self.broadcast_flag(FLAG_RELOAD),
                    Err(_) => live_open = false,
                },
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.apply(cmd),
                    None => break,
                },
                n = ingest.recv_many(&mut batch, INGEST_BATCH), if ingest_open => {
                    if n == 0 {
                        ingest_open = false;
                    }
                    for item in batch.drain(..) {
                        self.ingest(item);
                    }
                }
            }
            // One wake per connection per batch: a connection that got
            // several frames in this batch writes them with one syscall.
            self.wake_touched();
        }
        // Connections registered from here on find the hub gone and close
        // with 1001 themselves.
        self.broadcast_flag(FLAG_SHUTDOWN);
    }

    fn wake_touched(&mut self) {
        for slot in self.marks.touched.drain(..) {
            if let Some(Some(entry)) = self.slots.get(slot) {
                entry.queue.wake();
            }
        }
    }

    fn broadcast_flag(&self, flag: u8) {
        for entry in self.slots.iter().flatten() {
            entry.queue.shared.raise(flag);
        }
    }

    /// Applies one connection command.
    pub fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Register {
                id,
                queue,
                keys,
                all,
                welcome,
            } => {
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
                self.slots[slot] = Some(Entry {
                    id,
                    queue,
                    subs: HashSet::new(),
                    firehose: false,
                    stamp: 0,
                    dead: false,
                });
                self.ids.insert(id, slot);
                self.change(slot, true, keys, all);
                self.send_control(slot, welcome);
            }
            Command::Change {
                id,
                subscribe,
                keys,
                all,
                ack,
            } => {
                if let Some(&slot) = self.ids.get(&id) {
                    self.change(slot, subscribe, keys, all);
                    self.send_control(slot, ack);
                }
            }
            Command::Unregister { id } => {
                if let Some(slot) = self.ids.remove(&id) {
                    self.unindex(slot);
                    if let Some(entry) = self.slots.get_mut(slot) {
                        *entry = None;
                        self.free.push(slot);
                    }
                }
            }
        }
        self.publish_size();
    }

    /// Routes one item from the source.
    pub fn ingest(&mut self, item: Ingest) {
        match item {
            Ingest::Event(event) => self.route(&event),
            Ingest::Gap(reason) => {
                let out = Outbound {
                    frame: protocol::gap(reason),
                    received: None,
                };
                self.seq += 1;
                for slot in 0..self.slots.len() {
                    deliver(&mut self.slots, slot, &out, self.seq, &mut self.marks);
                }
            }
        }
        self.reap_kicked();
    }

    /// Number of (field, value) subscriptions plus firehose members.
    pub fn index_entries(&self) -> usize {
        self.entries
    }

    /// Live connections known to the hub.
    pub fn connections(&self) -> usize {
        self.ids.len()
    }

    fn route(&mut self, event: &Event) {
        self.seq += 1;
        let seq = self.seq;
        let out = Outbound {
            frame: event.frame.clone(),
            received: Some(event.received),
        };
        if event.keys.is_empty() {
            for slot in 0..self.slots.len() {
                deliver(&mut self.slots, slot, &out, seq, &mut self.marks);
            }
            return;
        }
        for (field, value) in &event.keys {
            if let Some(set) = self.index.get(&**field).and_then(|m| m.get(&**value)) {
                for &slot in set {
                    deliver(&mut self.slots, slot, &out, seq, &mut self.marks);
                }
            }
        }
        for &slot in &self.firehose {
            deliver(&mut self.slots, slot, &out, seq, &mut self.marks);
        }
    }

    fn send_control(&mut self, slot: usize, frame: Utf8Bytes) {
        self.seq += 1;
        let out = Outbound {
            frame,
            received: None,
        };
        deliver(&mut self.slots, slot, &out, self.seq, &mut self.marks);
        self.reap_kicked();
    }

    fn change(&mut self, slot: usize, subscribe: bool, keys: Vec<(String, String)>, all: bool) {
        let Some(Some(entry)) = self.slots.get_mut(slot) else {
            return;
        };
        if entry.dead {
            return;
        }
        for (field, value) in keys {
            let field: Arc<str> = match self.index.get_key_value(field.as_str()) {
                Some((k, _)) => k.clone(),
                None => Arc::from(field),
            };
            let key = (field, Box::<str>::from(value));
            if subscribe {
                if entry.subs.insert(key.clone()) {
                    let (field, value) = key;
                    self.index
                        .entry(field)
                        .or_default()
                        .entry(value)
                        .or_default()
                        .insert(slot);
                    self.entries += 1;
                }
            } else if entry.subs.remove(&key) {
                remove_from_index(&mut self.index, &key.0, &key.1, slot);
                self.entries -= 1;
            }
        }
        if all && entry.firehose != subscribe {
            entry.firehose = subscribe;
            if subscribe {
                self.firehose.insert(slot);
                self.entries += 1;
            } else {
                self.firehose.remove(&slot);
                self.entries -= 1;
            }
        }
    }

    /// Removes every subscription of `slot` from the index.
    fn unindex(&mut self, slot: usize) {
        let Some(Some(entry)) = self.slots.get_mut(slot) else {
            return;
        };
        for (field, value) in entry.subs.drain() {
            remove_from_index(&mut self.index, &field, &value, slot);
            self.entries -= 1;
        }
        if std::mem::take(&mut entry.firehose) {
            self.firehose.remove(&slot);
            self.entries -= 1;
        }
    }

    fn reap_kicked(&mut self) {
        while let Some(slot) = self.marks.kicked.pop() {
            self.unindex(slot);
            if let Some(Some(entry)) = self.slots.get_mut(slot) {
                if !entry.dead {
                    entry.dead = true;
                    entry.queue.shared.kick(protocol::CLOSE_SLOW);
                    self.metrics.slow_consumer_disconnects.inc();
                    tracing::info!(conn = entry.id, "slow consumer: closing with 1013");
                }
            }
        }
        self.publish_size();
    }

    fn publish_size(&self) {
        self.metrics.routing_index_entries.set(self.entries as i64);
    }
}

/// Queues `out` for `slot` once per `seq`; a full queue marks it for a kick.
fn deliver(slots: &mut [Option<Entry>], slot: usize, out: &Outbound, seq: u64, marks: &mut Marks) {
    let Some(Some(entry)) = slots.get_mut(slot) else {
        return;
    };
    if entry.dead || entry.stamp == seq {
        return;
    }
    entry.stamp = seq;
    match entry.queue.push(out) {
        Enqueue::Queued { first: true } => marks.touched.push(slot),
        Enqueue::Queued { first: false } | Enqueue::Gone => {}
        Enqueue::Slow => marks.kicked.push(slot),
    }
}

fn remove_from_index(
    index: &mut HashMap<Arc<str>, HashMap<Box<str>, HashSet<usize>>>,
    field: &str,
    value: &str,
    slot: usize,
) {
    if let Some(values) = index.get_mut(field) {
        if let Some(set) = values.get_mut(value) {
            set.remove(&slot);
            if set.is_empty() {
                values.remove(value);
            }
        }
        if values.is_empty() {
            index.remove(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(keys: &[(&str, &str)], frame: &str) -> Ingest {
        Ingest::Event(Event {
            frame: frame.to_owned().into(),
            keys: keys
                .iter()
                .map(|(f, v)| (Arc::from(*f), Box::from(*v)))
                .collect(),
            received: Instant::now(),
            not_json: false,
        })
    }

    fn register(
        hub: &mut Hub,
        id: ConnId,
        keys: &[(&str, &str)],
        all: bool,
        cap: usize,
        bytes: usize,
    ) -> QueueRx {
        let (tx, rx) = queue(cap, bytes);
        hub.apply(Command::Register {
            id,
            queue: tx,
            keys: keys
                .iter()
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect(),
            all,
            welcome: "welcome".into(),
        });
        rx
    }

    fn frames(rx: &mut QueueRx) -> Vec<String> {
        let mut buf = Vec::new();
        rx.drain_now(&mut buf, usize::MAX);
        buf.into_iter()
            .map(|o| o.frame.as_str().to_owned())
            .collect()
    }

    #[test]
    fn routes_by_key_firehose_and_global_once_each() {
        let mut hub = Hub::new(Arc::new(Metrics::new()));
        let mut a = register(
            &mut hub,
            1,
            &[("agentId", "a1"), ("sessionId", "s1")],
            false,
            16,
            1 << 20,
        );
        let mut b = register(&mut hub, 2, &[("agentId", "a2")], false, 16, 1 << 20);
        let mut f = register(&mut hub, 3, &[("agentId", "a1")], true, 16, 1 << 20);
        hub.ingest(ev(&[("agentId", "a1"), ("sessionId", "s1")], "e1"));
        hub.ingest(ev(&[("agentId", "a2")], "e2"));
        hub.ingest(ev(&[], "global"));
        hub.ingest(ev(&[("sessionId", "zzz")], "e3"));
        assert_eq!(frames(&mut a), ["welcome", "e1", "global"]);
        assert_eq!(frames(&mut b), ["welcome", "e2", "global"]);
        assert_eq!(frames(&mut f), ["welcome", "e1", "e2", "global", "e3"]);
        assert_eq!(hub.index_entries(), 5);
    }

    #[test]
    fn change_ack_and_unregister_clean_the_index() {
        let mut hub = Hub::new(Arc::new(Metrics::new()));
        let mut a = register(&mut hub, 1, &[], false, 16, 1 << 20);
        hub.apply(Command::Change {
            id: 1,
            subscribe: true,
            keys: vec![
                ("agentId".into(), "x".into()),
                ("agentId".into(), "x".into()),
            ],
            all: false,
            ack: "ack".into(),
        });
        hub.ingest(ev(&[("agentId", "x")], "ex"));
        hub.apply(Command::Change {
            id: 1,
            subscribe: false,
            keys: vec![("agentId".into(), "x".into())],
            all: false,
            ack: "unack".into(),
        });
        hub.ingest(ev(&[("agentId", "x")], "ex2"));
        assert_eq!(frames(&mut a), ["welcome", "ack", "ex", "unack"]);
        assert_eq!(hub.index_entries(), 0);
        register(&mut hub, 2, &[("agentId", "y")], true, 16, 1 << 20);
        assert_eq!(hub.index_entries(), 2);
        hub.apply(Command::Unregister { id: 2 });
        hub.apply(Command::Unregister { id: 1 });
        assert_eq!(hub.index_entries(), 0);
        assert!(hub.index.is_empty() && hub.firehose.is_empty());
        assert_eq!(hub.connections(), 0);
    }

    #[test]
    fn full_queue_kicks_with_1013_and_spares_others() {
        let mut hub = Hub::new(Arc::new(Metrics::new()));
        let slow = register(&mut hub, 1, &[], true, 3, 1 << 20);
        let mut fast = register(&mut hub, 2, &[], true, 100, 1 << 20);
        for i in 0..5 {
            hub.ingest(ev(&[], &format!("e{i}")));
            frames(&mut fast);
        }
        assert_eq!(
            slow.shared.close.load(Ordering::Acquire),
            protocol::CLOSE_SLOW
        );
        assert_eq!(hub.metrics.slow_consumer_disconnects.get(), 1);
        assert_eq!(hub.index_entries(), 1);
    }

    #[test]
    fn byte_limit_lets_one_big_event_through() {
        let mut hub = Hub::new(Arc::new(Metrics::new()));
        let mut rx = register(&mut hub, 1, &[], true, 100, 10);
        let mut buf = Vec::new();
        rx.drain_now(&mut buf, 10);
        hub.ingest(ev(&[], &"x".repeat(50)));
        assert_eq!(
            rx.shared.close.load(Ordering::Acquire),
            0,
            "a reader that keeps up gets a big event"
        );
        hub.ingest(ev(&[], "y"));
        assert_eq!(
            rx.shared.close.load(Ordering::Acquire),
            protocol::CLOSE_SLOW
        );
    }
}
