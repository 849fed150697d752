//! Server-to-client WebSocket frames and their headers (RFC 6455 §5.2).
//!
//! Frames a server sends are unmasked, so a frame is the same bytes for
//! every connection: an event's text frame is built once, header and
//! payload in one buffer ([`Framed`]), and written as is to every direct
//! socket, one slice per frame, never copied into a per-connection buffer.
//! (Binary attachments get their header computed per write, beside the
//! shared payload.)

use bytes::{BufMut, Bytes, BytesMut};
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Opcode of a text frame.
pub const TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const BINARY: u8 = 0x2;

/// The header of one final, unmasked frame: 2, 4 or 10 bytes.
#[derive(Debug, Clone, Copy)]
pub struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    /// The header of a final frame with `opcode` carrying `payload` bytes.
    pub fn new(opcode: u8, payload: usize) -> Self {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | (opcode & 0x0f);
        let len = if payload < 126 {
            bytes[1] = payload as u8;
            2
        } else if let Ok(short) = u16::try_from(payload) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload as u64).to_be_bytes());
            10
        };
        Header { bytes, len }
    }

    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A complete final text frame (header and payload in one buffer) and its
/// payload as text, a view of the same buffer: what a direct socket writes
/// and what tungstenite (TLS, the queued path) or Engine.IO polling send.
#[derive(Debug, Clone)]
pub struct Framed {
    wire: Bytes,
    text: Utf8Bytes,
}

impl Framed {
    /// The text frame carrying `payload`: one copy, once per frame (an
    /// event's frame is built once per wire format and shared).
    pub fn text(payload: Utf8Bytes) -> Self {
        let head = Header::new(TEXT, payload.len());
        let h = head.as_bytes().len();
        let mut buf = BytesMut::with_capacity(h + payload.len());
        buf.put_slice(head.as_bytes());
        buf.put_slice(payload.as_bytes());
        let wire = buf.freeze();
        // The copy of valid UTF-8 is valid UTF-8; should the check ever
        // fail, the original payload is kept (a second buffer, not an error).
        let text = Utf8Bytes::try_from(wire.slice(h..)).unwrap_or(payload);
        Framed { wire, text }
    }

    /// The whole frame as sent on a plain WebSocket.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }

    /// The payload.
    pub fn payload(&self) -> &Utf8Bytes {
        &self.text
    }

    /// The payload, for a sender that takes it by value (tungstenite).
    pub fn into_payload(self) -> Utf8Bytes {
        self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    /// What tungstenite itself writes for the same message.
    fn tungstenite_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let data = if opcode == TEXT {
            Data::Text
        } else {
            Data::Binary
        };
        let mut out = Vec::new();
        let written = Frame::message(payload.to_vec(), OpCode::Data(data), true).format(&mut out);
        assert!(written.is_ok());
        out
    }

    #[test]
    fn a_framed_text_is_header_then_payload_in_one_buffer() {
        for n in [0usize, 125, 126, 65_536] {
            let payload = "é".repeat(n / 2) + &"x".repeat(n % 2);
            let f = Framed::text(payload.clone().into());
            assert_eq!(
                &f.wire()[..],
                &tungstenite_frame(TEXT, payload.as_bytes())[..]
            );
            assert_eq!(f.payload().as_str(), payload);
            // The payload is a view of the frame, not a second copy.
            let end = f.wire().as_ptr() as usize + f.wire().len();
            assert_eq!(
                f.payload().as_bytes().as_ptr() as usize + f.payload().len(),
                end
            );
        }
    }

    #[test]
    fn header_and_payload_are_the_bytes_tungstenite_writes() {
        for n in [0usize, 1, 125, 126, 127, 1024, 65_535, 65_536, 70_000] {
            for opcode in [TEXT, BINARY] {
                let payload = vec![b'x'; n];
                let mut ours = Header::new(opcode, n).as_bytes().to_vec();
                ours.extend_from_slice(&payload);
                assert_eq!(
                    ours,
                    tungstenite_frame(opcode, &payload),
                    "{n} bytes, opcode {opcode}"
                );
            }
        }
    }
}
