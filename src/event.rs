//! The wire-neutral event every source hands the hub: name, payload, routing
//! keys, receipt time and (with history) an offset. Each wire format encodes
//! it at most once, lazily, into a frame cached on the event, so all
//! connections of that format share one buffer and a format nobody speaks
//! costs nothing.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::wire::frame::Framed;

/// How many wire formats can cache a frame on one event (one slot each,
/// indexed by [`Wire::slot`](crate::wire::Wire::slot)).
pub const WIRE_SLOTS: usize = 2;

/// The routing field of Socket.IO adapter rooms (SPEC §10): routable
/// whenever the adapter source is on, whatever `routing.fields` says.
pub const ROOM_FIELD: &str = "room";

/// An event's payload as clients receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// Valid JSON text, spliced into frames byte for byte.
    Json(Box<str>),
    /// UTF-8 that is not JSON: sent as a JSON string.
    Text(Box<str>),
    /// A Socket.IO event with no, several or binary arguments, which each
    /// wire format spells differently.
    Args(Box<Args>),
}

/// Arguments of a Socket.IO adapter event, in both spellings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// Native `data`: `null` for none, the argument for one, else a JSON
    /// array; binary as base64 strings.
    pub native: Box<str>,
    /// The arguments' JSON for a Socket.IO packet, comma-separated (empty
    /// for none); binary as `{"_placeholder":true,"num":N}`.
    pub socketio: Box<str>,
    /// The binary attachments, in placeholder order.
    pub attachments: Arc<[Bytes]>,
    /// The first argument as native JSON, which routing reads.
    pub first: Option<Box<str>>,
}

/// One event to route.
#[derive(Debug)]
pub struct Event {
    /// The event name (`agent:status`), the channel minus its pattern prefix.
    pub name: Box<str>,
    /// The payload.
    pub data: Data,
    /// Routing keys as `(field, value)`; empty means a global event.
    pub keys: Vec<(Arc<str>, Box<str>)>,
    /// When the relay read it from its source, for the latency histogram.
    pub received: Instant,
    /// Position in the relay's history, once history exists.
    pub offset: Option<u64>,
    /// Rooms (values of [`ROOM_FIELD`]) whose subscribers must not get it.
    pub except: Box<[Box<str>]>,
    frames: [OnceLock<Framed>; WIRE_SLOTS],
}

impl Event {
    /// An event with no frame built yet.
    pub fn new(
        name: impl Into<Box<str>>,
        data: Data,
        keys: Vec<(Arc<str>, Box<str>)>,
        received: Instant,
    ) -> Self {
        Event {
            name: name.into(),
            data,
            keys,
            received,
            offset: None,
            except: Box::default(),
            frames: Default::default(),
        }
    }

    /// True when the payload was not JSON (and travels as a string).
    pub fn is_text(&self) -> bool {
        matches!(self.data, Data::Text(_))
    }

    /// Binary frames that follow the Socket.IO text frame, if any.
    pub fn attachments(&self) -> Option<&Arc<[Bytes]>> {
        match &self.data {
            Data::Args(a) if !a.attachments.is_empty() => Some(&a.attachments),
            _ => None,
        }
    }

    /// Bytes of the frames built so far (what history keeps besides the payload).
    pub fn frames_len(&self) -> usize {
        self.frames
            .iter()
            .filter_map(OnceLock::get)
            .map(|f| f.wire().len())
            .sum()
    }

    /// The frame cached in `slot`, its payload built by `build` on first
    /// use. Racing callers may both build, but only one frame is kept and
    /// returned.
    pub fn frame(&self, slot: usize, build: impl FnOnce(&Event) -> Utf8Bytes) -> &Framed {
        self.frames[slot % WIRE_SLOTS].get_or_init(|| Framed::text(build(self)))
    }
}

/// Why a connection may have missed events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The Redis subscription was interrupted and is live again.
    RedisReconnected,
    /// The relay's own Redis reader fell behind and skipped messages
    /// (an extension of SPEC §5: clients treat every gap the same way).
    RelayLagged,
    /// The NATS connection was interrupted and is live again.
    NatsReconnected,
    /// A resume asked for events the history no longer has (SPEC §12).
    HistoryUnavailable,
    /// The NATS client dropped messages because the relay read them too
    /// slowly (a slow-consumer event; sent as `relay_lagged`).
    NatsLagged,
}

impl GapReason {
    /// The wire spelling of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::RedisReconnected => "redis_reconnected",
            GapReason::RelayLagged => "relay_lagged",
            GapReason::NatsReconnected => "nats_reconnected",
            GapReason::HistoryUnavailable => "history_unavailable",
            GapReason::NatsLagged => "relay_lagged",
        }
    }

    /// The source whose events may be missing (`"source"` in the frame).
    pub fn source(self) -> &'static str {
        match self {
            GapReason::RedisReconnected | GapReason::RelayLagged => "redis",
            GapReason::NatsReconnected | GapReason::NatsLagged => "nats",
            // The relay's own history, not a broker.
            GapReason::HistoryUnavailable => "history",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_built_once_per_slot() {
        let e = Event::new("x", Data::Json("1".into()), Vec::new(), Instant::now());
        let mut builds = 0;
        let a = e
            .frame(0, |_| {
                builds += 1;
                "a".into()
            })
            .clone();
        let b = e.frame(0, |_| unreachable!("cached")).clone();
        let (a, b) = (a.payload().as_str(), b.payload().as_str());
        assert_eq!((a, b, builds), ("a", "a", 1));
        assert_eq!(e.frame(1, |_| "b".into()).payload().as_str(), "b");
    }
}
