//! Engine.IO v4, the framing under Socket.IO: packets and polling payloads
//! ([`packet`]), pure so the polling / websocket / upgrade state machine
//! built on them can be tested without sockets.

pub mod packet;
