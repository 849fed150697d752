//! WebSocket close codes the relay sends (SPEC §5), whatever the protocol
//! inside the WebSocket.

/// Idle timeout.
pub const IDLE: u16 = 1000;
/// The relay is shutting down.
pub const GOING_AWAY: u16 = 1001;
/// A WebSocket protocol violation by the client.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Invalid UTF-8 in a text frame (RFC 6455; not in SPEC's list).
pub const INVALID_PAYLOAD: u16 = 1007;
/// Policy, e.g. the connection's token was revoked by a reload.
pub const POLICY: u16 = 1008;
/// A client message over `max_client_message_bytes`.
pub const TOO_BIG: u16 = 1009;
/// Internal error.
pub const INTERNAL: u16 = 1011;
/// Slow consumer (SPEC §6).
pub const SLOW: u16 = 1013;

/// The reason sent with [`POLICY`] when the connection's JWT expires
/// (SPEC §13); a revoked token gets [`reason`]'s `token revoked`.
pub const TOKEN_EXPIRED: &str = "token expired";

/// The reason text sent with `code`.
pub fn reason(code: u16) -> &'static str {
    match code {
        IDLE => "idle timeout",
        GOING_AWAY => "relay shutting down",
        PROTOCOL_ERROR => "protocol error",
        INVALID_PAYLOAD => "invalid UTF-8",
        POLICY => "token revoked",
        TOO_BIG => "message too big",
        SLOW => "slow consumer",
        _ => "closed by relay",
    }
}
