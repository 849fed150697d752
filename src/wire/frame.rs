//! Server-to-client WebSocket frame headers (RFC 6455 §5.2).
//!
//! Frames a server sends are unmasked, so a frame is the same bytes for
//! every connection: the header is computed from the payload's length and
//! written beside the shared payload (`writev`), never copied into a
//! per-connection buffer.

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
