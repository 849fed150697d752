//! Engine.IO protocol 4 as data: parsing one text packet or a polling
//! body, encoding the open packet and polling bodies, the reference
//! server's error answers, and its handshake query rules. No I/O, no state:
//! what a session is (polling, upgrading, upgraded) is passed in.
//!
//! The behaviour follows the protocol README and its `test-suite/`, and,
//! where they are silent, the reference server (`engine.io` 6); each
//! deliberate difference is named where it is made and in
//! `docs/SOCKETIO-NOTES.md`.

use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::wire::studio::push_json_string;

/// The only `EIO` query value accepted.
pub const PROTOCOL: &str = "4";
/// Separates the packets of a polling body (ASCII record separator).
pub const SEPARATOR: u8 = 0x1e;
/// The server's heartbeat ping; the client answers [`Packet::Pong`].
pub const PING: &str = "2";
/// The answer to the client's `2probe` on the websocket it upgrades to.
pub const PONG_PROBE: &str = "3probe";
/// Ends a pending poll without data: during an upgrade, and on a client
/// close.
pub const NOOP: &str = "6";
/// Tells the client the session is over.
pub const CLOSE: &str = "1";
/// The payload of the upgrade probe ping and pong.
pub const PROBE: &str = "probe";
/// Body of a successful polling POST.
pub const POST_OK: &str = "ok";
/// `Content-Type` of a successful POST, as the reference sends it: browsers
/// may offer to download a `text/plain` answer.
pub const POST_OK_CONTENT_TYPE: &str = "text/html";
/// `Content-Type` of a polling GET answer.
pub const POLL_CONTENT_TYPE: &str = "text/plain; charset=UTF-8";
/// `Content-Type` of an [`EioError`] answer.
pub const ERROR_CONTENT_TYPE: &str = "application/json";
/// What the open packet offers a polling session.
pub const POLLING_UPGRADES: &[&str] = &["websocket"];
/// What the open packet offers a websocket session: nothing.
pub const WEBSOCKET_UPGRADES: &[&str] = &[];

/// One Engine.IO packet from a client, borrowed from the text it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet<'a> {
    /// `0…`: only servers send it; the reference ignores one from a client.
    Open(&'a str),
    /// `1`: the client ends the session.
    Close,
    /// `2…`: `2probe` starts an upgrade on the new websocket; any other
    /// client ping is a heartbeat in the wrong direction for protocol 4.
    Ping(&'a str),
    /// `3…`: the heartbeat answer (`3`), or `3probe` (server-only).
    Pong(&'a str),
    /// `4…`: a message, here always a Socket.IO packet.
    Message(&'a str),
    /// `5`: the client switches to the websocket it probed.
    Upgrade,
    /// `6`: nothing.
    Noop,
    /// `b<base64>`: a binary message. The relay accepts no client binary,
    /// so the base64 text is returned undecoded for the caller to refuse.
    Binary(&'a str),
}

/// Why a packet or polling body was refused; the session ends either way,
/// as the reference closes on any parse error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// An empty text frame or record (also an empty body, and what a
    /// trailing or doubled separator leaves).
    #[error("empty packet")]
    Empty,
    /// The first character is no packet type.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A polling body with more packets than the caller allows.
    #[error("more than {max} packets in one payload")]
    TooManyRecords {
        /// The limit that was passed.
        max: usize,
    },
}

/// Parses one text packet: a websocket text frame, or one record of a
/// polling body. Data after `1`, `5` and `6` is ignored, as the reference
/// does.
pub fn parse(text: &str) -> Result<Packet<'_>, PacketError> {
    let Some(&first) = text.as_bytes().first() else {
        return Err(PacketError::Empty);
    };
    if !first.is_ascii() {
        let c = text.chars().next().unwrap_or(char::REPLACEMENT_CHARACTER);
        return Err(PacketError::UnknownType(c));
    }
    // The first byte is ASCII, so index 1 is a char boundary.
    let rest = &text[1..];
    Ok(match first {
        b'0' => Packet::Open(rest),
        b'1' => Packet::Close,
        b'2' => Packet::Ping(rest),
        b'3' => Packet::Pong(rest),
        b'4' => Packet::Message(rest),
        b'5' => Packet::Upgrade,
        b'6' => Packet::Noop,
        b'b' => Packet::Binary(rest),
        other => return Err(PacketError::UnknownType(char::from(other))),
    })
}

/// Parses a polling POST body: packets separated by `\x1e`, at most
/// `max_records` of them.
///
/// All or nothing: the reference delivers the packets before a bad one and
/// then closes; here a bad body is refused whole, so a session that is about
/// to close changes nothing first.
pub fn parse_payload(body: &str, max_records: usize) -> Result<Vec<Packet<'_>>, PacketError> {
    let mut packets = Vec::new();
    for (i, record) in body.split(char::from(SEPARATOR)).enumerate() {
        if i == max_records {
            return Err(PacketError::TooManyRecords { max: max_records });
        }
        packets.push(parse(record)?);
    }
    Ok(packets)
}

/// The open packet, the first thing a session sends:
/// `0{"sid":…,"upgrades":[…],"pingInterval":…,"pingTimeout":…,"maxPayload":…}`
/// (keys in the reference's order). `upgrades` is [`POLLING_UPGRADES`] or
/// [`WEBSOCKET_UPGRADES`].
pub fn open_packet(
    sid: &str,
    ping_interval_ms: u64,
    ping_timeout_ms: u64,
    max_payload: u64,
    upgrades: &[&str],
) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(
        100 + sid.len() + upgrades.iter().map(|u| u.len() + 3).sum::<usize>(),
    );
    out.push_str("0{\"sid\":");
    push_json_string(&mut out, sid);
    out.push_str(",\"upgrades\":[");
    for (i, upgrade) in upgrades.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, upgrade);
    }
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "],\"pingInterval\":{ping_interval_ms},\"pingTimeout\":{ping_timeout_ms},\"maxPayload\":{max_payload}}}"
    );
    out
}

/// `b<base64>`: a binary message in a polling payload.
pub fn binary_packet(bytes: &[u8]) -> Utf8Bytes {
    let mut out = String::with_capacity(1 + crate::util::base64::encoded_len(bytes.len()));
    out.push('b');
    crate::util::base64::encode_into(&mut out, bytes);
    out.into()
}

/// A polling GET answer: already-encoded packets joined with `\x1e`, in one
/// allocation of the exact size. Queued frames go out as they were built,
/// never re-encoded.
///
/// `frames` must not be empty (a client reads an empty body as one empty,
/// invalid packet) and no frame may contain `\x1e`; every encoder of this
/// crate guarantees the latter, as valid JSON never holds a raw `\x1e`.
pub fn payload_body<S: AsRef<str>>(frames: &[S]) -> Bytes {
    let len =
        frames.iter().map(|f| f.as_ref().len()).sum::<usize>() + frames.len().saturating_sub(1);
    let mut out = Vec::with_capacity(len);
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        out.extend_from_slice(frame.as_ref().as_bytes());
    }
    Bytes::from(out)
}

/// The reference server's refusals: code, message, HTTP status. Bodies are
/// JSON (`{"code":1,"message":"Session ID unknown"}`), [`ERROR_CONTENT_TYPE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EioError {
    /// 0: `transport` missing or neither `polling` nor `websocket`.
    #[error("Transport unknown")]
    UnknownTransport,
    /// 1: `sid` names no live session (never existed, closed, timed out).
    #[error("Session ID unknown")]
    UnknownSid,
    /// 2: a handshake (no `sid`) that is not a GET.
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    /// 3: everything else that is malformed for the session's state.
    #[error("Bad request")]
    BadRequest,
    /// 4: refused by policy (the reference's `allowRequest`).
    #[error("Forbidden")]
    Forbidden,
    /// 5: `EIO` missing or not `4`.
    #[error("Unsupported protocol version")]
    UnsupportedProtocolVersion,
}

impl EioError {
    /// The numeric `code`.
    pub fn code(self) -> u8 {
        match self {
            EioError::UnknownTransport => 0,
            EioError::UnknownSid => 1,
            EioError::BadHandshakeMethod => 2,
            EioError::BadRequest => 3,
            EioError::Forbidden => 4,
            EioError::UnsupportedProtocolVersion => 5,
        }
    }

    /// The `message`, as the reference spells it.
    pub fn message(self) -> &'static str {
        match self {
            EioError::UnknownTransport => "Transport unknown",
            EioError::UnknownSid => "Session ID unknown",
            EioError::BadHandshakeMethod => "Bad handshake method",
            EioError::BadRequest => "Bad request",
            EioError::Forbidden => "Forbidden",
            EioError::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// The whole JSON body.
    pub fn body(self) -> &'static str {
        match self {
            EioError::UnknownTransport => r#"{"code":0,"message":"Transport unknown"}"#,
            EioError::UnknownSid => r#"{"code":1,"message":"Session ID unknown"}"#,
            EioError::BadHandshakeMethod => r#"{"code":2,"message":"Bad handshake method"}"#,
            EioError::BadRequest => r#"{"code":3,"message":"Bad request"}"#,
            EioError::Forbidden => r#"{"code":4,"message":"Forbidden"}"#,
            EioError::UnsupportedProtocolVersion => {
                r#"{"code":5,"message":"Unsupported protocol version"}"#
            }
        }
    }

    /// 403 for [`EioError::Forbidden`], 400 for the rest.
    pub fn status(self) -> StatusCode {
        match self {
            EioError::Forbidden => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An Engine.IO transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP long-polling: GET to receive, POST to send.
    Polling,
    /// One websocket for the whole session, or upgraded to from polling.
    WebSocket,
}

impl Transport {
    /// The `transport` query value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Polling => "polling",
            Transport::WebSocket => "websocket",
        }
    }

    fn from_query(value: &str) -> Option<Self> {
        match value {
            "polling" => Some(Transport::Polling),
            "websocket" => Some(Transport::WebSocket),
            _ => None,
        }
    }
}

/// The Engine.IO parameters of a request's query. Others (the relay's
/// subscriptions, `token`) are left to the shared handshake checks.
///
/// Values are taken as written, not percent-decoded: the client sends
/// `EIO`, `transport` and the relay-made `sid` in URL-safe characters, and
/// an encoded variant of one simply does not match. When a name repeats
/// the last value wins, as in the reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Query<'a> {
    /// `EIO`: must be `4` on a handshake.
    pub eio: Option<&'a str>,
    /// `transport`.
    pub transport: Option<&'a str>,
    /// `sid`; an empty value counts as absent, as in the reference.
    pub sid: Option<&'a str>,
    /// `t`, the client's cache buster; never checked.
    pub t: Option<&'a str>,
    /// `b64` with a non-empty value: the client cannot take binary
    /// websocket frames. Moot for a relay that sends no binary.
    pub b64: bool,
    /// `j` present at all: the reference would answer JSONP.
    pub jsonp: bool,
}

/// Reads the Engine.IO parameters from a raw query string (no leading `?`).
pub fn parse_query(query: &str) -> Query<'_> {
    let mut q = Query::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "EIO" => q.eio = Some(value),
            "transport" => q.transport = Some(value),
            "sid" => q.sid = (!value.is_empty()).then_some(value),
            "t" => q.t = Some(value),
            "b64" => q.b64 = !value.is_empty(),
            "j" => q.jsonp = true,
            _ => {}
        }
    }
    q
}

/// What a request that passed [`classify`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// The first request of a new session, on this transport: run the
    /// shared handshake checks, then send the open packet (as the GET's
    /// body, or as the websocket's first frame).
    Handshake(Transport),
    /// A request for an existing session; look it up and pass what it is
    /// to [`check_session`].
    Session {
        /// The session id.
        sid: &'a str,
        /// What is asked of it.
        op: SessionOp,
    },
}

/// What a request with a `sid` asks of its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOp {
    /// `GET transport=polling`: a long poll for queued packets.
    Poll,
    /// `POST transport=polling`: packets from the client.
    Send,
    /// A websocket upgrade request with `transport=websocket`: the probe.
    Upgrade,
    /// Anything else (another method on polling, an upgrade request with
    /// `transport=polling`, a plain GET with `transport=websocket`): refused
    /// with 400, after the unknown-sid check as in the reference.
    Invalid,
}

/// Checks a request's method, Engine.IO query and upgrade headers in the
/// reference server's order: transport (0); then with a `sid`, nothing
/// more here (the session decides, [`check_session`]); without one, the
/// method (2), a websocket transport without an upgrade or an upgrade
/// without a websocket transport (3), `EIO` (5), JSONP (3).
///
/// `websocket_upgrade` is whether the request is a valid websocket upgrade
/// request. Answer CORS preflights (`OPTIONS`) before calling this: to the
/// reference without CORS they are a bad handshake method.
///
/// `EIO` is not checked on requests with a `sid`, as in the reference: it
/// was checked when the session was made. JSONP is refused where the
/// reference would serve it: the relay does not implement it, and
/// `socket.io-client` 4 never asks for it.
pub fn classify<'a>(
    query: &Query<'a>,
    method: &Method,
    websocket_upgrade: bool,
) -> Result<Request<'a>, EioError> {
    let transport = query
        .transport
        .and_then(Transport::from_query)
        .ok_or(EioError::UnknownTransport)?;
    if let Some(sid) = query.sid {
        let op = match (transport, websocket_upgrade) {
            (Transport::Polling, false) if method == Method::GET => SessionOp::Poll,
            (Transport::Polling, false) if method == Method::POST => SessionOp::Send,
            (Transport::WebSocket, true) => SessionOp::Upgrade,
            _ => SessionOp::Invalid,
        };
        return Ok(Request::Session { sid, op });
    }
    if method != Method::GET {
        return Err(EioError::BadHandshakeMethod);
    }
    if websocket_upgrade != (transport == Transport::WebSocket) {
        return Err(EioError::BadRequest);
    }
    if query.eio != Some(PROTOCOL) {
        return Err(EioError::UnsupportedProtocolVersion);
    }
    if query.jsonp && transport == Transport::Polling {
        return Err(EioError::BadRequest);
    }
    Ok(Request::Handshake(transport))
}

/// Where a live session stands, for [`check_session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// On polling, no upgrade under way.
    Polling,
    /// On polling, with a probe websocket open that has not sent `5` yet.
    /// Back to [`SessionState::Polling`] when that websocket closes or the
    /// upgrade times out, so the client can try again.
    Upgrading,
    /// On a websocket (upgraded, or websocket from the start).
    WebSocket,
}

/// Whether a session may serve `op`: `state` is `None` when the sid is not
/// (or no longer) known. An unknown sid is always code 1; polling requests
/// on a session that is on a websocket, and a second upgrade, are code 3
/// (the reference accepts the second websocket and closes it at once; a
/// 400 before the upgrade has the same effect on the client, sooner).
pub fn check_session(op: SessionOp, state: Option<SessionState>) -> Result<(), EioError> {
    let Some(state) = state else {
        return Err(EioError::UnknownSid);
    };
    match (op, state) {
        (SessionOp::Poll | SessionOp::Send, SessionState::Polling | SessionState::Upgrading) => {
            Ok(())
        }
        (SessionOp::Upgrade, SessionState::Polling) => Ok(()),
        _ => Err(EioError::BadRequest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_packet_type() {
        assert_eq!(parse("0{}"), Ok(Packet::Open("{}")));
        assert_eq!(parse("1"), Ok(Packet::Close));
        assert_eq!(parse("2"), Ok(Packet::Ping("")));
        assert_eq!(parse("2probe"), Ok(Packet::Ping(PROBE)));
        assert_eq!(parse("3"), Ok(Packet::Pong("")));
        assert_eq!(parse("3probe"), Ok(Packet::Pong(PROBE)));
        assert_eq!(parse("4hello"), Ok(Packet::Message("hello")));
        assert_eq!(parse("4"), Ok(Packet::Message("")));
        assert_eq!(parse("5"), Ok(Packet::Upgrade));
        assert_eq!(parse("6"), Ok(Packet::Noop));
        assert_eq!(parse("bAQIDBA=="), Ok(Packet::Binary("AQIDBA==")));
        // The reference ignores data after these types.
        assert_eq!(parse("1x"), Ok(Packet::Close));
        assert_eq!(parse("5x"), Ok(Packet::Upgrade));
        // A websocket frame is one packet, separator or not.
        assert_eq!(parse("4a\x1e4b"), Ok(Packet::Message("a\x1e4b")));
        assert_eq!(parse("4é"), Ok(Packet::Message("é")));
    }

    #[test]
    fn bad_packets() {
        // test-suite: "closes the session upon invalid packet format" (body "abc").
        assert_eq!(parse("abc"), Err(PacketError::UnknownType('a')));
        assert_eq!(parse(""), Err(PacketError::Empty));
        assert_eq!(parse("7"), Err(PacketError::UnknownType('7')));
        assert_eq!(parse("B"), Err(PacketError::UnknownType('B')));
        assert_eq!(parse("\x1e"), Err(PacketError::UnknownType('\x1e')));
        assert_eq!(parse("é4"), Err(PacketError::UnknownType('é')));
        assert_eq!(parse(" 4"), Err(PacketError::UnknownType(' ')));
    }

    #[test]
    fn polling_payloads() {
        // The test-suite's three bodies.
        assert_eq!(
            parse_payload("4hello", 16),
            Ok(vec![Packet::Message("hello")])
        );
        assert_eq!(
            parse_payload("4test1\x1e4test2\x1e4test3", 16),
            Ok(vec![
                Packet::Message("test1"),
                Packet::Message("test2"),
                Packet::Message("test3")
            ])
        );
        assert_eq!(
            parse_payload("4hello\x1ebAQIDBA==", 16),
            Ok(vec![Packet::Message("hello"), Packet::Binary("AQIDBA==")])
        );
        assert_eq!(parse_payload("3", 16), Ok(vec![Packet::Pong("")]));
        assert_eq!(parse_payload("1", 16), Ok(vec![Packet::Close]));
        assert_eq!(
            parse_payload("42[\"a\"]\x1e42[\"b\"]", 2).map(|p| p.len()),
            Ok(2)
        );
    }

    #[test]
    fn hostile_payloads() {
        // An empty body splits into one empty record, as in the reference.
        assert_eq!(parse_payload("", 16), Err(PacketError::Empty));
        assert_eq!(parse_payload("4a\x1e", 16), Err(PacketError::Empty));
        assert_eq!(parse_payload("\x1e4a", 16), Err(PacketError::Empty));
        assert_eq!(parse_payload("4a\x1e\x1e4b", 16), Err(PacketError::Empty));
        assert_eq!(parse_payload("\x1e", 16), Err(PacketError::Empty));
        // One bad record refuses the whole body.
        assert_eq!(
            parse_payload("4hello\x1eabc", 16),
            Err(PacketError::UnknownType('a'))
        );
        // Record limits.
        let ten_k = vec!["3"; 10_000].join("\x1e");
        assert_eq!(parse_payload(&ten_k, 10_000).map(|p| p.len()), Ok(10_000));
        assert_eq!(
            parse_payload(&ten_k, 9_999),
            Err(PacketError::TooManyRecords { max: 9_999 })
        );
        let seps = "\x1e".repeat(10_000);
        assert_eq!(parse_payload(&seps, 100_000), Err(PacketError::Empty));
        assert_eq!(
            parse_payload(&seps, 0),
            Err(PacketError::TooManyRecords { max: 0 })
        );
        // A packet that is all separators inside a message record stays intact.
        assert_eq!(parse("4\x1f\x1d"), Ok(Packet::Message("\x1f\x1d")));
    }

    #[test]
    fn open_packet_is_the_reference_handshake() {
        let open = open_packet(
            "lv_VI97HAXpY6yYWAAAC",
            25000,
            20000,
            1_000_000,
            POLLING_UPGRADES,
        );
        assert_eq!(
            open,
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
        let ws = open_packet("s", 300, 200, 1_000_000, WEBSOCKET_UPGRADES);
        assert_eq!(
            ws,
            r#"0{"sid":"s","upgrades":[],"pingInterval":300,"pingTimeout":200,"maxPayload":1000000}"#
        );
        let v: serde_json::Value = serde_json::from_str(&ws[1..]).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "sid",
                "upgrades",
                "pingInterval",
                "pingTimeout",
                "maxPayload"
            ]
        );
        // A sid is escaped, whatever the caller made it of.
        let odd = open_packet("a\"b\x1e", u64::MAX, 0, 0, &["x", "y"]);
        assert!(!odd.contains('\x1e'));
        let v: serde_json::Value = serde_json::from_str(&odd[1..]).unwrap();
        assert_eq!(v["sid"], "a\"b\x1e");
        assert_eq!(v["upgrades"], serde_json::json!(["x", "y"]));
        assert_eq!(v["pingInterval"], u64::MAX);
    }

    #[test]
    fn payload_bodies_are_joined_exactly() {
        let frames = ["4hello", "2", "42[\"a\",{}]"];
        let body = payload_body(&frames);
        assert_eq!(&body[..], b"4hello\x1e2\x1e42[\"a\",{}]");
        assert_eq!(&payload_body(&["6"])[..], b"6");
        assert!(payload_body::<&str>(&[]).is_empty());
        let owned = vec![String::from("4a"), String::from("4b")];
        assert_eq!(&payload_body(&owned)[..], b"4a\x1e4b");
        let frames: Vec<tokio_tungstenite::tungstenite::Utf8Bytes> =
            vec!["40{\"sid\":\"x\"}".into(), PING.into()];
        let body = payload_body(&frames);
        assert_eq!(&body[..], b"40{\"sid\":\"x\"}\x1e2");
        // Round trip through the parser.
        let text = std::str::from_utf8(&body).unwrap();
        assert_eq!(
            parse_payload(text, 8),
            Ok(vec![Packet::Message("0{\"sid\":\"x\"}"), Packet::Ping("")])
        );
    }

    #[test]
    fn error_answers() {
        let all = [
            EioError::UnknownTransport,
            EioError::UnknownSid,
            EioError::BadHandshakeMethod,
            EioError::BadRequest,
            EioError::Forbidden,
            EioError::UnsupportedProtocolVersion,
        ];
        for (i, e) in all.into_iter().enumerate() {
            assert_eq!(usize::from(e.code()), i);
            let v: serde_json::Value = serde_json::from_str(e.body()).unwrap();
            assert_eq!(v, serde_json::json!({"code": i, "message": e.message()}));
            assert_eq!(e.to_string(), e.message());
            let expected = if e == EioError::Forbidden { 403 } else { 400 };
            assert_eq!(e.status().as_u16(), expected);
        }
        assert_eq!(
            EioError::UnsupportedProtocolVersion.body(),
            r#"{"code":5,"message":"Unsupported protocol version"}"#
        );
        assert_eq!(
            EioError::UnknownSid.body(),
            r#"{"code":1,"message":"Session ID unknown"}"#
        );
    }

    #[test]
    fn query_parameters() {
        let q = parse_query("EIO=4&transport=polling&t=N8hyd6w&agentId=a1");
        assert_eq!(
            q,
            Query {
                eio: Some("4"),
                transport: Some("polling"),
                t: Some("N8hyd6w"),
                ..Query::default()
            }
        );
        let q = parse_query("EIO=4&transport=websocket&sid=abc&b64=1&j=0");
        assert_eq!(q.sid, Some("abc"));
        assert!(q.b64 && q.jsonp);
        assert_eq!(parse_query("sid=&b64=").sid, None);
        assert!(!parse_query("b64=").b64);
        assert_eq!(parse_query("EIO=3&EIO=4").eio, Some("4"));
        assert_eq!(parse_query("EIO").eio, Some(""));
        assert_eq!(parse_query(""), Query::default());
        assert_eq!(parse_query("&&=&==").eio, None);
    }

    fn classify_str(query: &str, method: Method, upgrade: bool) -> Result<Request<'_>, EioError> {
        classify(&parse_query(query), &method, upgrade)
    }

    #[test]
    fn handshake_checks_follow_the_reference_order() {
        use EioError::*;
        let get = |q| classify_str(q, Method::GET, false);
        let ws = |q| classify_str(q, Method::GET, true);
        assert_eq!(
            get("EIO=4&transport=polling"),
            Ok(Request::Handshake(Transport::Polling))
        );
        assert_eq!(
            ws("EIO=4&transport=websocket"),
            Ok(Request::Handshake(Transport::WebSocket))
        );
        // test-suite: invalid EIO (missing or abc) → 400; SPEC: code 5.
        assert_eq!(get("transport=polling"), Err(UnsupportedProtocolVersion));
        assert_eq!(
            get("EIO=abc&transport=polling"),
            Err(UnsupportedProtocolVersion)
        );
        assert_eq!(
            get("EIO=3&transport=polling"),
            Err(UnsupportedProtocolVersion)
        );
        assert_eq!(
            ws("EIO=3&transport=websocket"),
            Err(UnsupportedProtocolVersion)
        );
        assert_eq!(
            get("EIO=5&transport=polling"),
            Err(UnsupportedProtocolVersion)
        );
        assert_eq!(
            get("EIO=04&transport=polling"),
            Err(UnsupportedProtocolVersion)
        );
        // test-suite: invalid transport (missing or abc) → 400 code 0, checked first.
        assert_eq!(get("EIO=4"), Err(UnknownTransport));
        assert_eq!(get("EIO=4&transport=abc"), Err(UnknownTransport));
        assert_eq!(get("EIO=3&transport=__proto__"), Err(UnknownTransport));
        assert_eq!(get("EIO=4&transport=webtransport"), Err(UnknownTransport));
        assert_eq!(get("EIO=4&transport=Polling"), Err(UnknownTransport));
        assert_eq!(
            classify_str("EIO=4&transport=abc", Method::POST, false),
            Err(UnknownTransport)
        );
        // test-suite: invalid method (post, put) → 400 code 2, before EIO.
        for m in [Method::POST, Method::PUT, Method::OPTIONS, Method::HEAD] {
            assert_eq!(
                classify_str("EIO=4&transport=polling", m.clone(), false),
                Err(BadHandshakeMethod)
            );
            assert_eq!(
                classify_str("EIO=3&transport=polling", m, false),
                Err(BadHandshakeMethod)
            );
        }
        // A websocket transport without an upgrade, and the reverse: code 3, before EIO.
        assert_eq!(get("transport=websocket"), Err(BadRequest));
        assert_eq!(ws("EIO=4&transport=polling"), Err(BadRequest));
        // JSONP is not served.
        assert_eq!(get("EIO=4&transport=polling&j=0"), Err(BadRequest));
        // Extra parameters are left alone.
        assert_eq!(
            get("EIO=4&transport=polling&t=x&agentId=a&b64=1&token=t"),
            Ok(Request::Handshake(Transport::Polling))
        );
    }

    #[test]
    fn session_requests() {
        use EioError::*;
        use SessionOp::*;
        let op = |q, m: Method, up| match classify_str(q, m, up) {
            Ok(Request::Session { sid, op }) => {
                assert_eq!(sid, "S");
                op
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            op("EIO=4&transport=polling&sid=S", Method::GET, false),
            Poll
        );
        assert_eq!(
            op("EIO=4&transport=polling&sid=S", Method::POST, false),
            Send
        );
        assert_eq!(
            op("EIO=4&transport=websocket&sid=S", Method::GET, true),
            Upgrade
        );
        assert_eq!(
            op("EIO=4&transport=polling&sid=S", Method::PUT, false),
            Invalid
        );
        assert_eq!(
            op("EIO=4&transport=polling&sid=S", Method::GET, true),
            Invalid
        );
        assert_eq!(
            op("EIO=4&transport=websocket&sid=S", Method::GET, false),
            Invalid
        );
        // EIO is not rechecked once a session exists.
        assert_eq!(op("transport=polling&sid=S", Method::GET, false), Poll);
        assert_eq!(
            op("EIO=3&transport=polling&sid=S", Method::POST, false),
            Send
        );
        // Transport still comes first.
        assert_eq!(
            classify_str("EIO=4&sid=S", Method::GET, false),
            Err(UnknownTransport)
        );

        use SessionState as St;
        // Unknown sid: code 1 whatever was asked.
        for o in [Poll, Send, Upgrade, Invalid] {
            assert_eq!(check_session(o, None), Err(UnknownSid));
        }
        assert_eq!(check_session(Poll, Some(St::Polling)), Ok(()));
        assert_eq!(check_session(Send, Some(St::Polling)), Ok(()));
        assert_eq!(check_session(Poll, Some(St::Upgrading)), Ok(()));
        assert_eq!(check_session(Send, Some(St::Upgrading)), Ok(()));
        assert_eq!(check_session(Upgrade, Some(St::Polling)), Ok(()));
        // test-suite: "ignores HTTP requests with same sid after upgrade" → 400.
        assert_eq!(check_session(Poll, Some(St::WebSocket)), Err(BadRequest));
        assert_eq!(check_session(Send, Some(St::WebSocket)), Err(BadRequest));
        // test-suite: "ignores WebSocket connection with same sid after upgrade".
        assert_eq!(check_session(Upgrade, Some(St::WebSocket)), Err(BadRequest));
        assert_eq!(check_session(Upgrade, Some(St::Upgrading)), Err(BadRequest));
        for s in [St::Polling, St::Upgrading, St::WebSocket] {
            assert_eq!(check_session(Invalid, Some(s)), Err(BadRequest));
        }
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text gets a defined answer, and an accepted body has one
        /// packet per record.
        #[test]
        fn parsers_never_panic(s in "\\PC{0,64}|[0-6b\\x1e]{0,32}|[0-6][a-z\\x1e]{0,16}") {
            let _ = parse(&s);
            if let Ok(packets) = parse_payload(&s, 64) {
                prop_assert_eq!(packets.len(), s.split('\x1e').count());
            }
        }

        /// Joining frames and splitting the body gives the frames back.
        #[test]
        fn bodies_round_trip(frames in proptest::collection::vec("[0-6][^\\x1e]{0,20}", 1..20)) {
            let body = payload_body(&frames);
            let text = std::str::from_utf8(&body).unwrap();
            let records: Vec<&str> = text.split('\x1e').collect();
            prop_assert_eq!(records, frames.iter().map(String::as_str).collect::<Vec<_>>());
            prop_assert_eq!(body.len(), text.len());
        }

        /// Classification never panics and always follows transport first.
        #[test]
        fn classify_never_panics(q in "[A-Za-z0-9=&_-]{0,60}", m in 0..4usize, up in any::<bool>()) {
            let method = [Method::GET, Method::POST, Method::PUT, Method::OPTIONS][m].clone();
            let query = parse_query(&q);
            let result = classify(&query, &method, up);
            if !matches!(query.transport, Some("polling" | "websocket")) {
                prop_assert_eq!(result, Err(EioError::UnknownTransport));
            }
        }
    }
}
