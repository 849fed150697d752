//! Wire formats: how an [`Event`] and the control frames look to a client,
//! and how client frames are parsed. Pure: no I/O, no state.
//!
//! The hub asks each connection's [`Wire`] for an event's frame; the frame
//! is encoded once per event and format and shared by refcount.

pub mod close;
pub mod frame;
pub mod socketio;
pub mod studio;

use std::sync::Arc;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::event::{Event, GapReason, WIRE_SLOTS};

/// What the hub knows when it queues a welcome.
#[derive(Debug, Clone, Copy)]
pub struct WelcomeInfo<'a> {
    /// This run's epoch, with history on.
    pub epoch: Option<&'a str>,
    /// The last offset routed before the welcome (0 with history off).
    pub offset: u64,
    /// With a resume asked for: whether every missed event follows.
    pub recovered: Option<bool>,
}

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The relay's own JSON protocol on `/ws` (SPEC §5).
    Studio,
    /// Socket.IO 5 over Engine.IO 4 on `/socket.io/` (SPEC §11).
    SocketIo,
}

const _: () = assert!(Wire::COUNT <= WIRE_SLOTS);

impl Wire {
    /// Number of wire formats.
    pub const COUNT: usize = 2;

    /// This format's frame-cache slot on an [`Event`].
    pub fn slot(self) -> usize {
        match self {
            Wire::Studio => 0,
            Wire::SocketIo => 1,
        }
    }

    /// The event's frame payload in this format, encoded on first use.
    pub fn event_frame(self, event: &Event) -> Utf8Bytes {
        self.event_framed(event).payload().clone()
    }

    /// The event's complete frame in this format, encoded on first use.
    pub fn event_framed(self, event: &Event) -> &frame::Framed {
        event.frame(self.slot(), |e| match self {
            Wire::Studio => studio::event_frame(e),
            // With history on, the offset rides as the last argument
            // for socket.io-client's recovery (SPEC §12).
            Wire::SocketIo => match e.offset {
                Some(offset) => socketio::event_frame_with_offset(e, offset),
                None => socketio::event_frame(e),
            },
        })
    }

    /// Binary messages that follow the event's frame in this format.
    pub fn attachments(self, event: &Event) -> Option<Arc<[Bytes]>> {
        match self {
            // Native clients get binary as base64 inside the frame.
            Wire::Studio => None,
            Wire::SocketIo => event.attachments().cloned(),
        }
    }

    /// The gap notice in this format.
    pub fn gap_frame(self, reason: GapReason) -> Utf8Bytes {
        match self {
            Wire::Studio => studio::gap(reason),
            Wire::SocketIo => socketio::gap(reason),
        }
    }
}
