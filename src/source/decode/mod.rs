//! Payload formats a source can carry. A source holds its decoder as a
//! value, so "Redis + studio JSON" and, later, "Redis + Socket.IO adapter
//! MessagePack" or "NATS + studio JSON" are combinations, not new loops.

pub mod adapter;
pub mod studio_json;
