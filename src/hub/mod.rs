//! Who wants what. One hub task owns the routing index and every
//! connection's bounded queue, so the hot path takes no shared lock: an
//! event costs one index lookup per routing key plus one queue push of the
//! shared frame per matching connection, and the frame for each wire format
//! is encoded once per event, on first use.
//!
//! Connections talk to the hub through a bounded command channel; the hub
//! never awaits a connection. Acks and the welcome frame travel through the
//! same queue as events, so "ack, then the events it enabled" holds by
//! construction, as does per-connection source order.

pub mod history;
pub mod index;
pub mod queue;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::config::HistoryConfig;
use crate::ctx::ConnId;
use crate::event::{Event, GapReason, ROOM_FIELD};
use crate::metrics::Metrics;
use crate::metrics::ResultLabel;
use crate::source::Ingest;
use crate::wire::{self, WelcomeInfo, Wire};
use history::{History, Unavailable};
use index::{Index, Slot};
use queue::{Enqueue, Outbound, QueueTx, FLAG_RELOAD, FLAG_SHUTDOWN};

/// Capacity of the connections → hub command channel.
const COMMAND_QUEUE: usize = 4096;
/// Events the hub takes from the sources per wakeup.
const INGEST_BATCH: usize = 256;

/// Requests from connections.
#[derive(Debug)]
pub enum Command {
    /// A new connection with its initial subscriptions; `welcome` is queued first.
    Register {
        /// Connection id.
        id: ConnId,
        /// The protocol it speaks, which picks the event frames it gets.
        wire: Wire,
        /// Hub end of its queue.
        queue: QueueTx,
        /// Initial `(field, value)` subscriptions.
        keys: Vec<(String, String)>,
        /// Initial firehose flag.
        all: bool,
        /// Builds the welcome frame, queued once the subscriptions are live
        /// (and before any replayed event).
        welcome: Welcome,
        /// Replay what followed this position first (SPEC §12).
        resume: Option<Resume>,
    },
    /// Add (`subscribe`) or remove subscriptions, then queue `ack` if any.
    Change {
        /// Connection id.
        id: ConnId,
        /// true = subscribe, false = unsubscribe.
        subscribe: bool,
        /// `(field, value)` pairs.
        keys: Vec<(String, String)>,
        /// The firehose was named.
        all: bool,
        /// The ack frame, queued once the change is live (a Socket.IO
        /// emit without an ack callback gets none).
        ack: Option<Utf8Bytes>,
    },
    /// The connection ended.
    Unregister {
        /// Connection id.
        id: ConnId,
    },
}

/// A position in some relay's history: `since=<epoch>:<offset>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    /// The epoch the client saw in its last welcome.
    pub epoch: String,
    /// The last offset it received.
    pub offset: u64,
    /// Subscriptions to add only if every missed event can be replayed: a
    /// Socket.IO session recovering by pid gets its old ones back, but a
    /// client told "not recovered" starts fresh (SPEC §12).
    pub restore: Option<Restore>,
}

/// The subscriptions of a session being recovered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restore {
    /// `(field, value)` subscriptions.
    pub keys: Vec<(String, String)>,
    /// Firehose.
    pub all: bool,
}

/// Builds a connection's welcome from what only the hub knows.
pub struct Welcome(Box<dyn FnOnce(&WelcomeInfo<'_>) -> Utf8Bytes + Send>);

impl Welcome {
    /// A welcome from `build`.
    pub fn new(build: impl FnOnce(&WelcomeInfo<'_>) -> Utf8Bytes + Send + 'static) -> Self {
        Welcome(Box::new(build))
    }

    /// A welcome that needs nothing from the hub.
    pub fn fixed(frame: Utf8Bytes) -> Self {
        Welcome::new(move |_| frame)
    }
}

impl std::fmt::Debug for Welcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Welcome(..)")
    }
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
}

struct Entry {
    id: ConnId,
    wire: Wire,
    queue: QueueTx,
    subs: HashSet<(Arc<str>, Box<str>)>,
    firehose: bool,
    /// Sequence number of the last item queued, to deliver once when several keys match.
    stamp: u64,
    /// Kicked as slow: gets nothing more, waits for its Unregister.
    dead: bool,
}

/// The routing index and the connections' queues. Owned by one task.
pub struct Hub {
    slots: Vec<Option<Entry>>,
    free: Vec<Slot>,
    ids: HashMap<ConnId, Slot>,
    index: Index,
    seq: u64,
    marks: Marks,
    history: History,
    metrics: Arc<Metrics>,
}

/// Slots that need attention once the current batch is routed.
#[derive(Default)]
struct Marks {
    /// Queue full: close as slow.
    kicked: Vec<Slot>,
    /// Queue went from empty to non-empty: wake the connection.
    touched: Vec<Slot>,
    /// The item being routed came alone: write (or wake) at once rather
    /// than at the end of the batch, as nothing else could share the write.
    alone: bool,
}

/// One item's frame per wire format, made on first use while routing it.
struct Frames<'a> {
    make: &'a dyn Fn(Wire) -> Outbound,
    made: [Option<Outbound>; Wire::COUNT],
}

impl<'a> Frames<'a> {
    fn new(make: &'a dyn Fn(Wire) -> Outbound) -> Self {
        Frames {
            make,
            made: Default::default(),
        }
    }

    fn get(&mut self, wire: Wire) -> &Outbound {
        self.made[wire.slot()].get_or_insert_with(|| (self.make)(wire))
    }
}

impl Hub {
    /// An empty hub.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Hub {
            slots: Vec::new(),
            free: Vec::new(),
            ids: HashMap::new(),
            index: Index::default(),
            seq: 0,
            marks: Marks::default(),
            history: History::new(HistoryConfig::default()),
            metrics,
        }
    }

    /// Applies `[history]` bounds (at start and on every reload; the ring is kept).
    pub fn set_history(&mut self, limits: HistoryConfig) {
        self.history.set_limits(limits);
        self.publish_history();
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
        self.set_history(live.borrow_and_update().history.clone());
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                changed = live.changed(), if live_open => match changed {
                    Ok(()) => {
                        self.set_history(live.borrow_and_update().history.clone());
                        self.broadcast_flag(FLAG_RELOAD);
                    }
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
                    self.marks.alone = n == 1;
                    for item in batch.drain(..) {
                        self.ingest(item);
                    }
                    self.marks.alone = false;
                }
            }
            // Once per connection per batch: several frames leave in one
            // syscall, written here on a direct socket (no task wakeup)
            // or by the connection's task once woken.
            self.flush_touched();
        }
        // Connections registered from here on find the hub gone and close
        // with 1001 themselves.
        self.broadcast_flag(FLAG_SHUTDOWN);
    }

    fn flush_touched(&mut self) {
        for slot in self.marks.touched.drain(..) {
            if let Some(Some(entry)) = self.slots.get(slot) {
                entry.queue.flush();
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
                wire,
                queue,
                keys,
                all,
                welcome,
                resume,
            } => {
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    self.slots.len() - 1
                });
                self.slots[slot] = Some(Entry {
                    id,
                    wire,
                    queue,
                    subs: HashSet::new(),
                    firehose: false,
                    stamp: 0,
                    dead: false,
                });
                self.ids.insert(id, slot);
                self.change(slot, true, keys, all);
                self.welcome(slot, welcome, resume);
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
                    if let Some(ack) = ack {
                        self.send_control(slot, ack);
                    }
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

    /// Routes one item from a source.
    pub fn ingest(&mut self, item: Ingest) {
        match item {
            Ingest::Event(mut event) => {
                self.history.assign(&mut event);
                let event = Arc::new(event);
                self.route(&event);
                self.history.push(event);
                self.publish_history();
            }
            Ingest::Gap(reason) => {
                self.history.gap();
                let make = |w: Wire| Outbound::text(w.gap_frame(reason), None);
                let mut frames = Frames::new(&make);
                self.seq += 1;
                for slot in 0..self.slots.len() {
                    deliver(
                        &mut self.slots,
                        slot,
                        &mut frames,
                        self.seq,
                        &mut self.marks,
                    );
                }
            }
        }
        self.reap_kicked();
    }

    /// Number of (field, value) subscriptions plus firehose members.
    pub fn index_entries(&self) -> usize {
        self.index.entries()
    }

    /// Live connections known to the hub.
    pub fn connections(&self) -> usize {
        self.ids.len()
    }

    fn route(&mut self, event: &Arc<Event>) {
        self.seq += 1;
        let seq = self.seq;
        let make = |w: Wire| {
            Outbound::framed(
                w.event_framed(event),
                Some(event.received),
                w.attachments(event),
            )
        };
        let mut frames = Frames::new(&make);
        // `io.except(room)`: stamping a slot marks it done for this event,
        // so the loops below skip it; O(connections in those rooms).
        for room in &event.except {
            for slot in self.index.matching(ROOM_FIELD, room) {
                if let Some(Some(entry)) = self.slots.get_mut(slot) {
                    entry.stamp = seq;
                }
            }
        }
        if event.keys.is_empty() {
            for slot in 0..self.slots.len() {
                deliver(&mut self.slots, slot, &mut frames, seq, &mut self.marks);
            }
            return;
        }
        for (field, value) in &event.keys {
            for slot in self.index.matching(field, value) {
                deliver(&mut self.slots, slot, &mut frames, seq, &mut self.marks);
            }
        }
        for slot in self.index.firehose() {
            deliver(&mut self.slots, slot, &mut frames, seq, &mut self.marks);
        }
    }

    /// Queues the welcome and, for a resume, the missed events or the gap
    /// that says they are gone. One hub step, so nothing routed meanwhile
    /// can fall between replay and live.
    fn welcome(&mut self, slot: Slot, welcome: Welcome, resume: Option<Resume>) {
        let epoch = self.history.enabled().then(|| self.history.epoch().clone());
        let offset = self.history.last();
        let Some(resume) = resume else {
            let info = WelcomeInfo {
                epoch: epoch.as_deref(),
                offset,
                recovered: None,
            };
            self.send_control(slot, (welcome.0)(&info));
            return;
        };
        let available = self.history.since(&resume.epoch, resume.offset).is_ok();
        if let (true, Some(restore)) = (available, resume.restore) {
            // Live before the replay is filtered, in the same hub step.
            self.change(slot, true, restore.keys, restore.all);
        }
        let Some(Some(entry)) = self.slots.get(slot) else {
            return;
        };
        let (wire, firehose, id) = (entry.wire, entry.firehose, entry.id);
        let subs: HashSet<(&str, &str)> = entry.subs.iter().map(|(f, v)| (&**f, &**v)).collect();
        let replay: Result<Vec<Outbound>, Unavailable> = self
            .history
            .since(&resume.epoch, resume.offset)
            .map(|events| {
                events
                    .filter(|e| history::matches(e, firehose, |f, v| subs.contains(&(f, v))))
                    .map(|e| Outbound::framed(wire.event_framed(e), None, wire.attachments(e)))
                    .collect()
            });
        drop(subs);
        let info = WelcomeInfo {
            epoch: epoch.as_deref(),
            offset,
            recovered: Some(replay.is_ok()),
        };
        self.send_control(slot, (welcome.0)(&info));
        match replay {
            Ok(frames) => {
                self.metrics
                    .recoveries
                    .get_or_create(&ResultLabel {
                        result: "recovered",
                    })
                    .inc();
                if let Some(Some(entry)) = self.slots.get(slot) {
                    if entry.queue.push_replay(frames) {
                        self.marks.touched.push(slot);
                    }
                }
            }
            Err(why) => {
                self.metrics
                    .recoveries
                    .get_or_create(&ResultLabel {
                        result: "unavailable",
                    })
                    .inc();
                tracing::debug!(conn = id, ?why, "resume not possible: gap");
                self.send_control(slot, wire.gap_frame(GapReason::HistoryUnavailable));
            }
        }
    }

    fn publish_history(&self) {
        let (events, bytes) = self.history.size();
        self.metrics.history_events.set(events as i64);
        self.metrics.history_bytes.set(bytes as i64);
    }

    fn send_control(&mut self, slot: Slot, frame: Utf8Bytes) {
        self.seq += 1;
        let out = Outbound::text(frame, None);
        // A control frame is for one connection, in whatever format it speaks.
        let make = |_: Wire| out.clone();
        let mut frames = Frames::new(&make);
        deliver(
            &mut self.slots,
            slot,
            &mut frames,
            self.seq,
            &mut self.marks,
        );
        self.reap_kicked();
    }

    fn change(&mut self, slot: Slot, subscribe: bool, keys: Vec<(String, String)>, all: bool) {
        let Some(Some(entry)) = self.slots.get_mut(slot) else {
            return;
        };
        if entry.dead {
            return;
        }
        for (field, value) in keys {
            let key = (self.index.intern(field), Box::<str>::from(value));
            if subscribe {
                if entry.subs.insert(key.clone()) {
                    self.index.insert(key.0, key.1, slot);
                }
            } else if entry.subs.remove(&key) {
                self.index.remove(&key.0, &key.1, slot);
            }
        }
        if all && entry.firehose != subscribe {
            entry.firehose = subscribe;
            self.index.set_firehose(slot, subscribe);
        }
    }

    /// Removes every subscription of `slot` from the index.
    fn unindex(&mut self, slot: Slot) {
        let Some(Some(entry)) = self.slots.get_mut(slot) else {
            return;
        };
        for (field, value) in entry.subs.drain() {
            self.index.remove(&field, &value, slot);
        }
        if std::mem::take(&mut entry.firehose) {
            self.index.set_firehose(slot, false);
        }
    }

    fn reap_kicked(&mut self) {
        while let Some(slot) = self.marks.kicked.pop() {
            self.unindex(slot);
            if let Some(Some(entry)) = self.slots.get_mut(slot) {
                if !entry.dead {
                    entry.dead = true;
                    entry.queue.shared.kick(wire::close::SLOW);
                    self.metrics.slow_consumer_disconnects.inc();
                    tracing::info!(conn = entry.id, "slow consumer: closing");
                }
            }
        }
        self.publish_size();
    }

    fn publish_size(&self) {
        self.metrics
            .routing_index_entries
            .set(self.index.entries() as i64);
    }
}

/// Queues the item for `slot` once per `seq`; a full queue marks it for a kick.
fn deliver(
    slots: &mut [Option<Entry>],
    slot: Slot,
    frames: &mut Frames<'_>,
    seq: u64,
    marks: &mut Marks,
) {
    let Some(Some(entry)) = slots.get_mut(slot) else {
        return;
    };
    if entry.dead || entry.stamp == seq {
        return;
    }
    entry.stamp = seq;
    let out = frames.get(entry.wire);
    let pushed = if marks.alone {
        entry.queue.push_now(out)
    } else {
        entry.queue.push(out)
    };
    match pushed {
        Enqueue::Queued { first: true } => marks.touched.push(slot),
        Enqueue::Queued { first: false } | Enqueue::Gone => {}
        Enqueue::Slow => marks.kicked.push(slot),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use super::queue::{queue, QueueRx};
    use super::*;
    use crate::event::Data;

    fn ev(keys: &[(&str, &str)], name: &str) -> Ingest {
        Ingest::Event(Event::new(
            name,
            Data::Json("1".into()),
            keys.iter()
                .map(|(f, v)| (Arc::from(*f), Box::from(*v)))
                .collect(),
            Instant::now(),
        ))
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
            wire: Wire::Studio,
            queue: tx,
            keys: keys
                .iter()
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect(),
            all,
            welcome: Welcome::fixed("welcome".into()),
            resume: None,
        });
        rx
    }

    /// The frames queued for `rx`: control frames as sent, events by name.
    fn frames(rx: &mut QueueRx) -> Vec<String> {
        let mut buf = Vec::new();
        rx.drain_now(&mut buf, usize::MAX);
        buf.into_iter()
            .map(|o| {
                let v: serde_json::Value =
                    serde_json::from_str(o.frame.payload().as_str()).unwrap_or_default();
                match v["event"].as_str() {
                    Some(name) => name.to_owned(),
                    None => o.frame.payload().as_str().to_owned(),
                }
            })
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
    fn except_rooms_are_left_out_of_room_global_and_firehose_routing() {
        let mut hub = Hub::new(Arc::new(Metrics::new()));
        let mut r1 = register(&mut hub, 1, &[("room", "r1")], false, 16, 1 << 20);
        let mut both = register(
            &mut hub,
            2,
            &[("room", "r1"), ("room", "r2")],
            false,
            16,
            1 << 20,
        );
        let mut fire = register(&mut hub, 3, &[("room", "r2")], true, 16, 1 << 20);
        let mut other = register(&mut hub, 4, &[("agentId", "a")], false, 16, 1 << 20);
        let with_except = |keys: &[(&str, &str)], name: &str, except: &[&str]| {
            let Ingest::Event(mut e) = ev(keys, name) else {
                unreachable!()
            };
            e.except = except.iter().map(|r| Box::from(*r)).collect();
            Ingest::Event(e)
        };
        hub.ingest(with_except(&[("room", "r1")], "to-r1-except-r2", &["r2"]));
        hub.ingest(with_except(&[], "all-except-r1", &["r1"]));
        hub.ingest(with_except(&[("room", "r1")], "to-r1", &[]));
        assert_eq!(frames(&mut r1), ["welcome", "to-r1-except-r2", "to-r1"]);
        assert_eq!(frames(&mut both), ["welcome", "to-r1"]);
        assert_eq!(frames(&mut fire), ["welcome", "all-except-r1", "to-r1"]);
        assert_eq!(frames(&mut other), ["welcome", "all-except-r1"]);
    }

    #[test]
    fn every_match_shares_one_encoded_frame() {
        let mut hub = Hub::new(Arc::new(Metrics::new()));
        let mut a = register(&mut hub, 1, &[("agentId", "a1")], false, 16, 1 << 20);
        let mut b = register(&mut hub, 2, &[], true, 16, 1 << 20);
        let (mut ba, mut bb) = (Vec::new(), Vec::new());
        a.drain_now(&mut ba, 10);
        b.drain_now(&mut bb, 10);
        hub.ingest(ev(&[("agentId", "a1")], "e"));
        a.drain_now(&mut ba, 10);
        b.drain_now(&mut bb, 10);
        let (fa, fb) = (ba[1].frame.payload(), bb[1].frame.payload());
        assert_eq!(fa.as_str(), fb.as_str());
        assert_eq!(
            fa.as_str().as_ptr(),
            fb.as_str().as_ptr(),
            "one buffer, shared by refcount"
        );
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
            ack: Some("ack".into()),
        });
        hub.ingest(ev(&[("agentId", "x")], "ex"));
        hub.apply(Command::Change {
            id: 1,
            subscribe: false,
            keys: vec![("agentId".into(), "x".into())],
            all: false,
            ack: Some("unack".into()),
        });
        hub.ingest(ev(&[("agentId", "x")], "ex2"));
        assert_eq!(frames(&mut a), ["welcome", "ack", "ex", "unack"]);
        assert_eq!(hub.index_entries(), 0);
        register(&mut hub, 2, &[("agentId", "y")], true, 16, 1 << 20);
        assert_eq!(hub.index_entries(), 2);
        hub.apply(Command::Unregister { id: 2 });
        hub.apply(Command::Unregister { id: 1 });
        assert_eq!(hub.index_entries(), 0);
        assert!(hub.index.is_empty());
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
        assert_eq!(slow.shared.close.load(Ordering::Acquire), wire::close::SLOW);
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
        assert_eq!(rx.shared.close.load(Ordering::Acquire), wire::close::SLOW);
    }

    #[test]
    fn a_gap_reaches_every_connection_in_its_format() {
        let mut hub = Hub::new(Arc::new(Metrics::new()));
        let mut a = register(&mut hub, 1, &[("agentId", "a")], false, 16, 1 << 20);
        hub.ingest(Ingest::Gap(crate::event::GapReason::RedisReconnected));
        assert_eq!(
            frames(&mut a),
            [
                "welcome",
                r#"{"type":"gap","reason":"redis_reconnected","source":"redis"}"#
            ]
        );
    }
}
