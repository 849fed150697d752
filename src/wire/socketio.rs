//! Socket.IO protocol 5 (what `socket.io-client` 3 and 4 speak) as pure
//! functions: client packets parsed, relay packets encoded (SPEC §11).
//!
//! A Socket.IO packet travels as an Engine.IO message (`4…`). Parsers take
//! the text after that `4`; encoders return it included, ready to be a
//! websocket text frame or a record of a polling body. Nothing here
//! produces a raw `\x1e` (JSON never holds one), so encoded frames can be
//! joined into polling bodies as they are.
//!
//! The rules follow the protocol README, its `test-suite/` and, where they
//! are silent, the reference parser (`socket.io-parser` 4); see
//! `docs/SOCKETIO-NOTES.md`.

use std::borrow::Cow;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::event::{Data, Event, GapReason};
use crate::wire::studio::{self, push_json_string, Change, ClientFrame, ErrorCode, FrameError};

/// The main namespace, the only one the relay serves.
pub const MAIN_NAMESPACE: &str = "/";
/// The largest ack id accepted: JavaScript's `Number.MAX_SAFE_INTEGER`,
/// past which a browser client could not have counted exactly.
pub const MAX_ACK_ID: u64 = (1 << 53) - 1;
/// Digits of [`MAX_ACK_ID`]; longer runs are refused before parsing.
const MAX_ACK_ID_DIGITS: usize = 16;
/// CONNECT refusal message for a namespace other than `/`.
pub const INVALID_NAMESPACE: &str = "Invalid namespace";
/// CONNECT refusal message for a missing or wrong token (SPEC §11).
pub const UNAUTHORIZED: &str = "unauthorized";
/// CONNECT refusal message for a valid grant that does not cover what was
/// asked (SPEC §13).
pub const FORBIDDEN: &str = "forbidden";
/// The event name of the gap notice.
pub const GAP_EVENT: &str = "relay:gap";
/// Ack arguments for an applied subscribe or unsubscribe.
pub const ACK_OK_ARGS: &str = r#"[{"ok":true}]"#;

/// Event names the reference parser refuses from a client, because its
/// server emits them itself; a client sending one is closed.
const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// A packet from a client, borrowed from its text where that is free.
#[derive(Debug)]
pub enum ClientPacket<'a> {
    /// `0[/nsp,][{auth}]`: join a namespace, optionally with an auth object.
    Connect {
        /// `/` unless one was named.
        nsp: &'a str,
        /// The auth object, if one was sent.
        auth: Option<Map<String, Value>>,
    },
    /// `1[/nsp,]`: leave a namespace. The Engine.IO session stays open.
    Disconnect {
        /// `/` unless one was named.
        nsp: &'a str,
    },
    /// `2[/nsp,][id]["name",…args]`: an event, with an ack id when the
    /// client waits for an answer.
    Event {
        /// `/` unless one was named.
        nsp: &'a str,
        /// Ack id: answer with [`ack`] carrying this id.
        id: Option<u64>,
        /// The event name. The reference also allows a number; it is given
        /// as its JSON text (which can never spell `subscribe`).
        name: Cow<'a, str>,
        /// The arguments after the name, as raw JSON.
        args: Vec<&'a RawValue>,
    },
    /// `3[/nsp,]id[…]`: an answer to an event the relay sent with an ack id.
    /// The relay sends none, so this is ignored (the reference ignores an
    /// unknown ack too).
    Ack {
        /// `/` unless one was named.
        nsp: &'a str,
        /// The ack id.
        id: u64,
        /// The argument array, as raw JSON.
        args: &'a RawValue,
    },
    /// `5…` / `6…`: an event or ack with binary attachments to follow as
    /// binary messages. The relay takes no client binary: close.
    Binary {
        /// `6` (BINARY_ACK) rather than `5` (BINARY_EVENT).
        ack: bool,
    },
}

/// Why a client packet was refused. Every one closes the Engine.IO
/// session, as the reference server does on any packet it cannot decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// An Engine.IO message with no Socket.IO packet in it.
    #[error("empty packet")]
    Empty,
    /// The type is no digit 0-6.
    #[error("unknown packet type")]
    UnknownType,
    /// CONNECT_ERROR (`4`), which only servers send.
    #[error("CONNECT_ERROR is sent by servers only")]
    ServerOnlyType,
    /// A namespace with a control character in it.
    #[error("invalid namespace")]
    BadNamespace,
    /// An ack id longer than [`MAX_ACK_ID`], or an ACK without one.
    #[error("invalid ack id")]
    BadAckId,
    /// An EVENT or ACK with no payload: the README makes it mandatory.
    #[error("missing payload")]
    MissingPayload,
    /// A payload that is not JSON of the type's shape: an object for
    /// CONNECT, a non-empty array for EVENT, an array for ACK.
    #[error("invalid payload")]
    BadPayload,
    /// DISCONNECT with something after the namespace.
    #[error("unexpected payload")]
    UnexpectedPayload,
    /// An event whose first element is neither a string nor a number.
    #[error("invalid event name")]
    BadEventName,
    /// An event named like one of the server's own (`connect`, `disconnect`, …).
    #[error("reserved event name")]
    ReservedEventName,
}

/// Parses one Socket.IO packet: the data of an Engine.IO message.
///
/// Grammar, after the reference: `<type>[<attachments>-][/<nsp>,][<id>][<json>]`.
/// The namespace runs to the first `,` or the end (`40/admin` names
/// `/admin`); an ack id is read only for EVENT and ACK; JSON may have
/// surrounding whitespace but nothing else after it.
pub fn parse(text: &str) -> Result<ClientPacket<'_>, PacketError> {
    let Some(&kind) = text.as_bytes().first() else {
        return Err(PacketError::Empty);
    };
    // Past here `kind` is an ASCII digit, so index 1 is a char boundary.
    match kind {
        b'0' | b'1' | b'2' | b'3' => {}
        b'4' => return Err(PacketError::ServerOnlyType),
        b'5' => return Ok(ClientPacket::Binary { ack: false }),
        b'6' => return Ok(ClientPacket::Binary { ack: true }),
        _ => return Err(PacketError::UnknownType),
    }
    let (nsp, rest) = namespace(&text[1..])?;
    match kind {
        b'0' => {
            if rest.is_empty() {
                return Ok(ClientPacket::Connect { nsp, auth: None });
            }
            match serde_json::from_str::<Value>(rest) {
                Ok(Value::Object(auth)) => Ok(ClientPacket::Connect {
                    nsp,
                    auth: Some(auth),
                }),
                _ => Err(PacketError::BadPayload),
            }
        }
        b'1' if rest.is_empty() => Ok(ClientPacket::Disconnect { nsp }),
        b'1' => Err(PacketError::UnexpectedPayload),
        b'2' => {
            let (id, rest) = ack_id(rest)?;
            if rest.is_empty() {
                return Err(PacketError::MissingPayload);
            }
            let mut items: Vec<&RawValue> =
                serde_json::from_str(rest).map_err(|_| PacketError::BadPayload)?;
            if items.is_empty() {
                return Err(PacketError::BadPayload);
            }
            let name = event_name(items.remove(0))?;
            Ok(ClientPacket::Event {
                nsp,
                id,
                name,
                args: items,
            })
        }
        _ => {
            let (id, rest) = ack_id(rest)?;
            let id = id.ok_or(PacketError::BadAckId)?;
            if rest.is_empty() {
                return Err(PacketError::MissingPayload);
            }
            let args: &RawValue =
                serde_json::from_str(rest).map_err(|_| PacketError::BadPayload)?;
            if !args.get().starts_with('[') {
                return Err(PacketError::BadPayload);
            }
            Ok(ClientPacket::Ack { nsp, id, args })
        }
    }
}

/// Splits off `/nsp,` (or `/nsp` to the end); `/` when none is named.
fn namespace(s: &str) -> Result<(&str, &str), PacketError> {
    if !s.starts_with('/') {
        return Ok((MAIN_NAMESPACE, s));
    }
    let (nsp, rest) = s.split_once(',').unwrap_or((s, ""));
    // A control character could only be hostile, and `\x1e` echoed back in
    // a CONNECT_ERROR would split a polling body.
    if nsp.bytes().any(|b| b.is_ascii_control()) {
        return Err(PacketError::BadNamespace);
    }
    Ok((nsp, rest))
}

fn ack_id(s: &str) -> Result<(Option<u64>, &str), PacketError> {
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Ok((None, s));
    }
    if digits > MAX_ACK_ID_DIGITS {
        return Err(PacketError::BadAckId);
    }
    let id: u64 = s[..digits].parse().map_err(|_| PacketError::BadAckId)?;
    if id > MAX_ACK_ID {
        return Err(PacketError::BadAckId);
    }
    Ok((Some(id), &s[digits..]))
}

fn event_name(raw: &RawValue) -> Result<Cow<'_, str>, PacketError> {
    let text = raw.get();
    let name = match text.as_bytes().first() {
        // A JSON string with no backslash is its own content between the quotes.
        Some(b'"') if !text.contains('\\') => Cow::Borrowed(&text[1..text.len() - 1]),
        Some(b'"') => {
            Cow::Owned(serde_json::from_str::<String>(text).map_err(|_| PacketError::BadEventName)?)
        }
        Some(b'-' | b'0'..=b'9') => return Ok(Cow::Borrowed(text)),
        _ => return Err(PacketError::BadEventName),
    };
    if RESERVED_EVENTS.contains(&name.as_ref()) {
        return Err(PacketError::ReservedEventName);
    }
    Ok(name)
}

/// A subscription change asked for by a client event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// `42[id]["subscribe",{…}]`
    Subscribe(Change),
    /// `42[id]["unsubscribe",{…}]`
    Unsubscribe(Change),
}

/// Reads a client event as a subscription change: `subscribe` or
/// `unsubscribe` with exactly one object argument, under the rules of SPEC
/// §5 (the object is what a native frame holds besides `type`). Any other
/// event is `unsupported`: ignore it, or answer its ack with the error.
/// Limits and the firehose switch are `session::policy`'s to check.
pub fn subscription(
    name: &str,
    args: &[&RawValue],
    fields: &[String],
) -> Result<Subscription, FrameError> {
    if name != "subscribe" && name != "unsubscribe" {
        return Err(FrameError {
            code: ErrorCode::Unsupported,
            message: format!("unknown event {name:?}; the relay accepts subscribe and unsubscribe"),
        });
    }
    let [arg] = args else {
        return Err(FrameError {
            code: ErrorCode::BadRequest,
            message: format!("{name} takes one object argument, not {}", args.len()),
        });
    };
    let object = match serde_json::from_str::<Value>(arg.get()) {
        Ok(Value::Object(object)) => object,
        Ok(_) => {
            return Err(FrameError {
                code: ErrorCode::BadRequest,
                message: format!("the argument of {name} must be an object"),
            })
        }
        // Valid JSON that serde cannot hold: too deep, or a number past f64.
        Err(e) => {
            return Err(FrameError {
                code: ErrorCode::BadJson,
                message: format!("not JSON serde_json can represent: {e}"),
            })
        }
    };
    match native_change(name, object, fields)? {
        ClientFrame::Subscribe(c) => Ok(Subscription::Subscribe(c)),
        ClientFrame::Unsubscribe(c) => Ok(Subscription::Unsubscribe(c)),
        ClientFrame::Ping => Err(FrameError {
            code: ErrorCode::BadRequest,
            message: "not a subscription".into(),
        }),
    }
}

/// Runs the native frame rules on `object` as if it were a frame of
/// `kind`, so both protocols share one definition of a valid change.
fn native_change(
    kind: &str,
    object: Map<String, Value>,
    fields: &[String],
) -> Result<ClientFrame, FrameError> {
    let mut frame = Map::with_capacity(object.len() + 1);
    frame.insert("type".into(), kind.into());
    for (k, v) in object {
        // `type` is no routing field; kept, it would replace the kind.
        if k == "type" {
            return Err(FrameError {
                code: ErrorCode::UnknownField,
                message: format!(
                    "\"type\" is not a routing field (routing fields: {})",
                    fields.join(", ")
                ),
            });
        }
        frame.insert(k, v);
    }
    studio::parse_client_frame(&Value::Object(frame).to_string(), fields)
}

/// What a CONNECT auth object asks for (SPEC §11, §12).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectAuth {
    /// `token`.
    pub token: Option<String>,
    /// `pid` and `offset`, sent by `socket.io-client` ≥ 4.6 to recover a
    /// session whose CONNECT reply carried a pid.
    pub recover: Option<Recover>,
    /// Subscriptions from the routing fields and `all`; empty when none
    /// were named.
    pub change: Change,
}

/// A recovery attempt in a CONNECT auth object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recover {
    /// The pid of the session to recover.
    pub pid: String,
    /// The last offset the client received, as it sent it (absent when it
    /// received no event since the pid was handed out).
    pub offset: Option<String>,
}

/// Reads a CONNECT auth object: `token`, `pid` + `offset`, and routing
/// fields (a string or an array of strings) plus `all` under the rules of
/// SPEC §5. Other keys are ignored: applications put their own data in
/// `auth`, and it is not the relay's to refuse. `all: false` counts as not
/// asking, as `all=false` does in the URL.
pub fn connect_auth(
    auth: Option<&Map<String, Value>>,
    fields: &[String],
) -> Result<ConnectAuth, FrameError> {
    let mut out = ConnectAuth::default();
    let Some(auth) = auth else {
        return Ok(out);
    };
    out.token = match auth.get("token") {
        None => None,
        Some(Value::String(t)) => Some(t.clone()),
        Some(_) => {
            return Err(FrameError {
                code: ErrorCode::BadRequest,
                message: "\"token\" must be a string".into(),
            })
        }
    };
    // The reference also needs a string offset; but a client that got no
    // event since its pid was handed out has none to send, and the relay
    // knows where that pid began, so a pid alone recovers too.
    if let Some(Value::String(pid)) = auth.get("pid") {
        out.recover = Some(Recover {
            pid: pid.clone(),
            offset: match auth.get("offset") {
                Some(Value::String(o)) => Some(o.clone()),
                None | Some(Value::Null) => None,
                // Not an offset the relay wrote (an empty one never
                // parses): a fresh session told about the gap.
                Some(_) => Some(String::new()),
            },
        });
    }
    let asked: Map<String, Value> = auth
        .iter()
        .filter(|(k, v)| {
            (k.as_str() == "all" && **v != Value::Bool(false)) || fields.iter().any(|f| f == *k)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if asked.is_empty() {
        return Ok(out);
    }
    if let ClientFrame::Subscribe(change) = native_change("subscribe", asked, fields)? {
        out.change = change;
    }
    Ok(out)
}

/// `40{"sid":"…"}`: the CONNECT reply, once the session's subscriptions
/// are live.
pub fn connect_ok(sid: &str) -> Utf8Bytes {
    let mut out = String::with_capacity(sid.len() + 12);
    out.push_str("40{\"sid\":");
    push_json_string(&mut out, sid);
    out.push('}');
    out.into()
}

/// `40{"sid":"…","pid":"…"}`: the CONNECT reply with history on (SPEC §12);
/// the client sends the pid back to recover.
pub fn connect_ok_with_pid(sid: &str, pid: &str) -> Utf8Bytes {
    let mut out = String::with_capacity(sid.len() + pid.len() + 20);
    out.push_str("40{\"sid\":");
    push_json_string(&mut out, sid);
    out.push_str(",\"pid\":");
    push_json_string(&mut out, pid);
    out.push('}');
    out.into()
}

/// `44[/nsp,]{"message":"…"}`: a CONNECT refusal. `nsp` is written as the
/// parser returned it (no `,`, no control character).
pub fn connect_error(nsp: &str, message: &str) -> Utf8Bytes {
    connect_error_with(nsp, message, None)
}

/// `44{"message":"…","data":{"code":"…"}}`: a CONNECT refused for a bad
/// auth object; `socket.io-client` hands the object to `connect_error` as
/// `err.message` and `err.data`.
pub fn connect_refused(err: &FrameError) -> Utf8Bytes {
    connect_error_with(MAIN_NAMESPACE, &err.message, Some(err.code.as_str()))
}

fn connect_error_with(nsp: &str, message: &str, code: Option<&str>) -> Utf8Bytes {
    let mut out = String::with_capacity(nsp.len() + message.len() + 40);
    out.push_str("44");
    if nsp != MAIN_NAMESPACE {
        out.push_str(nsp);
        out.push(',');
    }
    out.push_str("{\"message\":");
    push_json_string(&mut out, message);
    if let Some(code) = code {
        out.push_str(",\"data\":{\"code\":");
        push_json_string(&mut out, code);
        out.push('}');
    }
    out.push('}');
    out.into()
}

/// `42["<name>",<data>]`, built once per event for every Socket.IO
/// connection: JSON data spliced byte for byte, text as a JSON string, in
/// one allocation of the exact size.
pub fn event_frame(event: &Event) -> Utf8Bytes {
    event_frame_inner(event, None)
}

/// `42["<name>",<data>,"<offset>"]`: an event with history on (SPEC §12);
/// `socket.io-client` keeps the last string argument as the offset to
/// recover from.
pub fn event_frame_with_offset(event: &Event, offset: u64) -> Utf8Bytes {
    event_frame_inner(event, Some(offset))
}

fn event_frame_inner(event: &Event, offset: Option<u64>) -> Utf8Bytes {
    // `42[` or, with binary attachments, `45<n>-[` (socket.io-parser's
    // BINARY_EVENT, the attachments following as binary messages).
    let attachments = event.attachments().map_or(0, |a| a.len());
    let head_len = match attachments {
        0 => 3,
        n => 4 + decimal_len(n as u64),
    };
    let data_len = match &event.data {
        Data::Json(json) => 1 + json.len(),
        Data::Text(text) => 1 + json_string_len(text),
        Data::Args(args) if args.socketio.is_empty() => 0,
        Data::Args(args) => 1 + args.socketio.len(),
    };
    // `,"` + digits + `"`
    let offset_len = offset.map_or(0, |n| 3 + decimal_len(n));
    let len = head_len + json_string_len(&event.name) + data_len + offset_len + 1;
    let mut out = String::with_capacity(len);
    use std::fmt::Write;
    match attachments {
        0 => out.push_str("42["),
        // Writing to a String cannot fail.
        n => {
            let _ = write!(out, "45{n}-[");
        }
    }
    push_json_string(&mut out, &event.name);
    match &event.data {
        Data::Json(json) => {
            out.push(',');
            out.push_str(json);
        }
        Data::Text(text) => {
            out.push(',');
            push_json_string(&mut out, text);
        }
        Data::Args(args) if args.socketio.is_empty() => {}
        Data::Args(args) => {
            out.push(',');
            out.push_str(&args.socketio);
        }
    }
    if let Some(n) = offset {
        out.push_str(",\"");
        let _ = write!(out, "{n}");
        out.push('"');
    }
    out.push(']');
    debug_assert_eq!(out.len(), len);
    out.into()
}

/// `42["relay:gap",{"reason":"…","source":"…"}]`
pub fn gap(reason: GapReason) -> Utf8Bytes {
    // Gaps are rare: no need for static frames per reason.
    format!(
        r#"42["{GAP_EVENT}",{{"reason":"{}","source":"{}"}}]"#,
        reason.as_str(),
        reason.source()
    )
    .into()
}

/// `43<id><args>`: the answer to a client event sent with an ack id;
/// `args` is a JSON array's text ([`ACK_OK_ARGS`], [`ack_error_args`]).
pub fn ack(id: u64, args: &str) -> Utf8Bytes {
    use std::fmt::Write;
    let mut out = String::with_capacity(2 + decimal_len(id) + args.len());
    // Writing to a String cannot fail.
    let _ = write!(out, "43{id}");
    out.push_str(args);
    out.into()
}

/// `43<id>[{"ok":true}]`
pub fn ack_ok(id: u64) -> Utf8Bytes {
    ack(id, ACK_OK_ARGS)
}

/// `[{"error":"<code>","message":"…"}]`
pub fn ack_error_args(err: &FrameError) -> String {
    let code = err.code.as_str();
    let mut out = String::with_capacity(code.len() + json_string_len(&err.message) + 26);
    out.push_str("[{\"error\":");
    push_json_string(&mut out, code);
    out.push_str(",\"message\":");
    push_json_string(&mut out, &err.message);
    out.push_str("}]");
    out
}

/// `43<id>[{"error":"<code>","message":"…"}]`
pub fn ack_error(id: u64, err: &FrameError) -> Utf8Bytes {
    ack(id, &ack_error_args(err))
}

/// The length [`push_json_string`] gives `s`, so frames are sized before
/// they are written. Kept in step with it by a property test.
fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn fields() -> Vec<String> {
        vec!["agentId".into(), "sessionId".into()]
    }

    fn err(s: &str) -> PacketError {
        parse(s).unwrap_err()
    }

    fn event(s: &str) -> (&str, Option<u64>, String, Vec<String>) {
        match parse(s).unwrap() {
            ClientPacket::Event {
                nsp,
                id,
                name,
                args,
            } => (
                nsp,
                id,
                name.into_owned(),
                args.iter().map(|a| a.get().to_owned()).collect(),
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connect_packets() {
        // README and test-suite forms.
        let cases: [(&str, &str, Option<Value>); 7] = [
            ("0", "/", None),
            (
                r#"0{"token":"123"}"#,
                "/",
                Some(serde_json::json!({"token": "123"})),
            ),
            ("0/custom,", "/custom", None),
            ("0/custom", "/custom", None),
            ("0/random", "/random", None),
            (
                r#"0/custom,{"token":"abc"}"#,
                "/custom",
                Some(serde_json::json!({"token": "abc"})),
            ),
            ("0 {} ", "/", Some(serde_json::json!({}))),
        ];
        for (text, want_nsp, want_auth) in cases {
            match parse(text).unwrap() {
                ClientPacket::Connect { nsp, auth } => {
                    assert_eq!(nsp, want_nsp, "{text}");
                    assert_eq!(auth.map(Value::Object), want_auth, "{text}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            parse("0/,"),
            Ok(ClientPacket::Connect {
                nsp: "/",
                auth: None
            })
        ));
        // The auth payload must be an object.
        for bad in [
            "0[]", "0null", "0\"x\"", "01", "0{", "0{}x", "0/a,[]", "0abc",
        ] {
            assert_eq!(err(bad), PacketError::BadPayload, "{bad}");
        }
    }

    #[test]
    fn disconnect_packets() {
        assert!(matches!(
            parse("1"),
            Ok(ClientPacket::Disconnect { nsp: "/" })
        ));
        assert!(matches!(
            parse("1/custom"),
            Ok(ClientPacket::Disconnect { nsp: "/custom" })
        ));
        assert!(matches!(
            parse("1/admin,"),
            Ok(ClientPacket::Disconnect { nsp: "/admin" })
        ));
        assert_eq!(err("1{}"), PacketError::UnexpectedPayload);
        assert_eq!(err("1/a,x"), PacketError::UnexpectedPayload);
        assert_eq!(err("11"), PacketError::UnexpectedPayload);
    }

    #[test]
    fn event_packets() {
        assert_eq!(event(r#"2["foo"]"#), ("/", None, "foo".into(), vec![]));
        assert_eq!(
            event(r#"2["message",1,"2",{"3":[true]}]"#),
            (
                "/",
                None,
                "message".into(),
                vec!["1".into(), "\"2\"".into(), r#"{"3":[true]}"#.into()]
            )
        );
        assert_eq!(
            event(r#"2456["message-with-ack",1,"2",{"3":[false]}]"#).1,
            Some(456)
        );
        assert_eq!(event(r#"212["foo"]"#).1, Some(12));
        assert_eq!(
            event(r#"2/admin,["bar"]"#),
            ("/admin", None, "bar".into(), vec![])
        );
        assert_eq!(
            event(r#"2/admin,13["bar"]"#),
            ("/admin", Some(13), "bar".into(), vec![])
        );
        assert_eq!(
            event(r#"20[ "subscribe" , {"agentId":"a"} ]"#),
            (
                "/",
                Some(0),
                "subscribe".into(),
                vec![r#"{"agentId":"a"}"#.into()]
            )
        );
        // Escaped names are decoded; numbers are allowed as by the reference.
        assert_eq!(event(r#"2["a\"b\u0041"]"#).2, "a\"bA");
        assert_eq!(event(r#"2[12,"x"]"#).2, "12");
        assert_eq!(event(r#"2[-1.5e3]"#).2, "-1.5e3");
        let ClientPacket::Event { name, .. } = parse(r#"2["plain"]"#).unwrap() else {
            panic!()
        };
        assert!(matches!(name, Cow::Borrowed("plain")));
        assert_eq!(event(&format!("2{MAX_ACK_ID}[\"x\"]")).1, Some(MAX_ACK_ID));
    }

    #[test]
    fn bad_event_packets() {
        use PacketError::*;
        // test-suite: "invalid payload format" and "invalid ack id" close.
        assert_eq!(err("2{}"), BadPayload);
        assert_eq!(
            err(r#"2abc["message-with-ack",1,"2",{"3":[false]}]"#),
            BadPayload
        );
        assert_eq!(err("2"), MissingPayload);
        assert_eq!(err("212"), MissingPayload);
        assert_eq!(err("2/admin,"), MissingPayload);
        // Without a comma the namespace swallows the payload.
        assert_eq!(err(r#"2/admin["bar"]"#), MissingPayload);
        assert_eq!(err("2[]"), BadPayload);
        assert_eq!(err("2\"x\""), BadPayload);
        assert_eq!(err(r#"2["x"]junk"#), BadPayload);
        assert_eq!(err(r#"2["x""#), BadPayload);
        assert_eq!(err("2[null]"), BadEventName);
        assert_eq!(err("2[{}]"), BadEventName);
        assert_eq!(err("2[[\"x\"]]"), BadEventName);
        assert_eq!(err("2[true]"), BadEventName);
        for reserved in RESERVED_EVENTS {
            assert_eq!(err(&format!("2[\"{reserved}\"]")), ReservedEventName);
        }
        assert_eq!(err(r#"2["\u0063onnect"]"#), ReservedEventName);
        assert_eq!(err(&format!("2{}[\"x\"]", MAX_ACK_ID + 1)), BadAckId);
        assert_eq!(err(&format!("2{}[\"x\"]", "9".repeat(17))), BadAckId);
        assert_eq!(err(&format!("2{}[\"x\"]", "1".repeat(100_000))), BadAckId);
        // Leading zeros are digits like any other, within the length bound.
        assert_eq!(event("20000000000000001[\"x\"]").1, Some(1));
        assert_eq!(err("200000000000000001[\"x\"]"), BadAckId);
    }

    #[test]
    fn ack_and_other_types() {
        match parse(r#"3/admin,13["bar"]"#).unwrap() {
            ClientPacket::Ack { nsp, id, args } => {
                assert_eq!((nsp, id, args.get()), ("/admin", 13, r#"["bar"]"#));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse("312[]"),
            Ok(ClientPacket::Ack { id: 12, .. })
        ));
        assert_eq!(err("3[]"), PacketError::BadAckId);
        assert_eq!(err("31"), PacketError::MissingPayload);
        assert_eq!(err("31{}"), PacketError::BadPayload);
        assert_eq!(err("31\"x\""), PacketError::BadPayload);
        // test-suite binary forms: the relay refuses them by closing.
        assert!(matches!(
            parse(r#"52-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#),
            Ok(ClientPacket::Binary { ack: false })
        ));
        assert!(matches!(
            parse(r#"61-15["bar",{"_placeholder":true,"num":0}]"#),
            Ok(ClientPacket::Binary { ack: true })
        ));
        assert_eq!(err(r#"4{"message":"x"}"#), PacketError::ServerOnlyType);
        // test-suite: "unknown packet type" ("4abc" as an Engine.IO message).
        assert_eq!(err("abc"), PacketError::UnknownType);
        assert_eq!(err(""), PacketError::Empty);
        assert_eq!(err("7"), PacketError::UnknownType);
        assert_eq!(err("é"), PacketError::UnknownType);
        assert_eq!(err("0/a\x1e,"), PacketError::BadNamespace);
        assert_eq!(err("2/a\n,[\"x\"]"), PacketError::BadNamespace);
    }

    #[test]
    fn hostile_packets() {
        for lone in ["0", "1", "2", "3", "5", "6"] {
            let _ = parse(lone);
        }
        let deep = format!("2[\"x\",{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        // Raw arguments are skipped over without recursion, so this parses ...
        let ClientPacket::Event { args, .. } = parse(&deep).unwrap() else {
            panic!()
        };
        // ... and a subscribe built from one is refused without overflow.
        let e = subscription("subscribe", &args, &fields()).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadJson);
        let deep_auth = format!("0{{\"a\":{}", "[".repeat(100_000));
        assert_eq!(err(&deep_auth), PacketError::BadPayload);
        let unclosed = format!("2[\"x\",{}", "[".repeat(100_000));
        assert_eq!(err(&unclosed), PacketError::BadPayload);
        let huge_nsp = format!("0/{},", "a".repeat(100_000));
        assert!(matches!(parse(&huge_nsp), Ok(ClientPacket::Connect { .. })));
        let many = format!("2[\"x\"{}]", ",1".repeat(10_000));
        let ClientPacket::Event { args, .. } = parse(&many).unwrap() else {
            panic!()
        };
        assert_eq!(args.len(), 10_000);
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn sub(name: &str, args: &[&str]) -> Result<Subscription, FrameError> {
        let boxed: Vec<Box<RawValue>> = args.iter().map(|a| raw(a)).collect();
        let refs: Vec<&RawValue> = boxed.iter().map(|b| b.as_ref()).collect();
        subscription(name, &refs, &fields())
    }

    #[test]
    fn subscriptions_follow_the_native_rules() {
        let Subscription::Subscribe(c) = sub("subscribe", &[r#"{"agentId":["a1","a2"]}"#]).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            c.keys,
            vec![
                ("agentId".into(), "a1".into()),
                ("agentId".into(), "a2".into())
            ]
        );
        assert_eq!(
            Value::Object(c.echo),
            serde_json::json!({"agentId": ["a1", "a2"]})
        );
        assert!(matches!(
            sub("unsubscribe", &[r#"{"all":true}"#]).unwrap(),
            Subscription::Unsubscribe(Change { all: true, .. })
        ));
        let code = |name, args: &[&str]| sub(name, args).unwrap_err().code;
        assert_eq!(code("hello", &["{}"]), ErrorCode::Unsupported);
        assert_eq!(code("ping", &[]), ErrorCode::Unsupported);
        assert_eq!(code("subscribe", &[]), ErrorCode::BadRequest);
        assert_eq!(
            code("subscribe", &["{\"agentId\":\"a\"}", "1"]),
            ErrorCode::BadRequest
        );
        assert_eq!(code("subscribe", &["[]"]), ErrorCode::BadRequest);
        assert_eq!(code("subscribe", &["\"agentId\""]), ErrorCode::BadRequest);
        assert_eq!(code("subscribe", &["{}"]), ErrorCode::BadRequest);
        assert_eq!(
            code("subscribe", &[r#"{"agentId":5}"#]),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code("subscribe", &[r#"{"agentId":""}"#]),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code("subscribe", &[r#"{"all":false}"#]),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code("subscribe", &[r#"{"userId":"u"}"#]),
            ErrorCode::UnknownField
        );
        assert_eq!(
            code("subscribe", &[r#"{"agentId":5,"zzz":1}"#]),
            ErrorCode::UnknownField
        );
        // `type` cannot smuggle another kind of frame in.
        assert_eq!(
            code("subscribe", &[r#"{"type":"ping"}"#]),
            ErrorCode::UnknownField
        );
        assert_eq!(
            code("unsubscribe", &[r#"{"agentId":"a","type":"subscribe"}"#]),
            ErrorCode::UnknownField
        );
        assert_eq!(
            code("subscribe", &[r#"{"agentId":1e400}"#]),
            ErrorCode::BadJson
        );
    }

    #[test]
    fn connect_auth_objects() {
        let auth = |s: &str| {
            let Value::Object(m) = serde_json::from_str(s).unwrap() else {
                panic!()
            };
            connect_auth(Some(&m), &fields())
        };
        assert_eq!(connect_auth(None, &fields()), Ok(ConnectAuth::default()));
        assert_eq!(auth("{}"), Ok(ConnectAuth::default()));
        let a = auth(
            r#"{"token":"t","agentId":["a","b"],"sessionId":"s","all":true,"app":{"x":1},"pid":"p","offset":"7"}"#,
        )
        .unwrap();
        assert_eq!(a.token.as_deref(), Some("t"));
        let recover = |pid: &str, offset: Option<&str>| {
            Some(Recover {
                pid: pid.into(),
                offset: offset.map(Into::into),
            })
        };
        assert_eq!(a.recover, recover("p", Some("7")));
        assert_eq!(a.change.keys.len(), 3);
        assert!(a.change.all);
        assert!(!a.change.echo.contains_key("app"));
        let a = auth(r#"{"all":false,"pid":"p","offset":7}"#).unwrap();
        assert_eq!(
            a.recover,
            recover("p", Some("")),
            "a number is not our offset"
        );
        assert_eq!(a.change, Change::default());
        let a = auth(r#"{"pid":"p"}"#).unwrap();
        assert_eq!(a.recover, recover("p", None), "a pid alone recovers");
        let a = auth(r#"{"pid":7,"offset":"7"}"#).unwrap();
        assert_eq!(a.recover, None);
        assert_eq!(
            auth(r#"{"token":5}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            auth(r#"{"agentId":5}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            auth(r#"{"agentId":[]}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            auth(r#"{"all":1}"#).unwrap_err().code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn frames_out() {
        assert_eq!(
            connect_ok("wZX3oN0bSVIhsaknAAAI").as_str(),
            r#"40{"sid":"wZX3oN0bSVIhsaknAAAI"}"#
        );
        assert_eq!(
            connect_ok_with_pid("s", "p\"").as_str(),
            r#"40{"sid":"s","pid":"p\""}"#
        );
        assert_eq!(
            connect_error("/", UNAUTHORIZED).as_str(),
            r#"44{"message":"unauthorized"}"#
        );
        assert_eq!(
            connect_error("/", FORBIDDEN).as_str(),
            r#"44{"message":"forbidden"}"#
        );
        // test-suite: "should disallow connection to an unknown namespace".
        assert_eq!(
            connect_error("/random", INVALID_NAMESPACE).as_str(),
            r#"44/random,{"message":"Invalid namespace"}"#
        );
        assert_eq!(
            connect_error("/admin", INVALID_NAMESPACE).as_str(),
            r#"44/admin,{"message":"Invalid namespace"}"#
        );
        let e = FrameError {
            code: ErrorCode::UnknownField,
            message: "\"x\" is not a routing field".into(),
        };
        assert_eq!(
            connect_refused(&e).as_str(),
            r#"44{"message":"\"x\" is not a routing field","data":{"code":"unknown_field"}}"#
        );
        assert_eq!(ack_ok(0).as_str(), r#"430[{"ok":true}]"#);
        assert_eq!(ack_ok(456).as_str(), r#"43456[{"ok":true}]"#);
        assert_eq!(ack(MAX_ACK_ID, "[]").as_str(), format!("43{MAX_ACK_ID}[]"));
        assert_eq!(
            ack_error_args(&e),
            r#"[{"error":"unknown_field","message":"\"x\" is not a routing field"}]"#
        );
        assert_eq!(
            ack_error(7, &e).as_str(),
            r#"437[{"error":"unknown_field","message":"\"x\" is not a routing field"}]"#
        );
        assert_eq!(
            gap(GapReason::RedisReconnected).as_str(),
            r#"42["relay:gap",{"reason":"redis_reconnected","source":"redis"}]"#
        );
        for reason in [GapReason::RedisReconnected, GapReason::RelayLagged] {
            let frame = gap(reason);
            let v: Value = serde_json::from_str(&frame[2..]).unwrap();
            assert_eq!(v[0], GAP_EVENT);
            assert_eq!(v[1]["reason"], reason.as_str());
        }
        // Frames the relay sends parse back as what they are.
        let ok = ack_ok(3);
        assert!(matches!(
            parse(&ok[1..]),
            Ok(ClientPacket::Ack { id: 3, .. })
        ));
    }

    #[test]
    fn event_frames() {
        let t = Instant::now();
        let e = Event::new(
            "agent:status",
            Data::Json(r#"{"a":1}"#.into()),
            Vec::new(),
            t,
        );
        assert_eq!(event_frame(&e).as_str(), r#"42["agent:status",{"a":1}]"#);
        assert_eq!(
            event_frame_with_offset(&e, 17).as_str(),
            r#"42["agent:status",{"a":1},"17"]"#
        );
        assert_eq!(
            event_frame_with_offset(&e, 0).as_str(),
            r#"42["agent:status",{"a":1},"0"]"#
        );
        assert_eq!(
            event_frame_with_offset(&e, u64::MAX).as_str(),
            format!(r#"42["agent:status",{{"a":1}},"{}"]"#, u64::MAX)
        );
        // Data byte for byte, whitespace and number spelling included.
        let e = Event::new("x", Data::Json("[1.50, 1e2 ,{}]".into()), Vec::new(), t);
        assert_eq!(event_frame(&e).as_str(), r#"42["x",[1.50, 1e2 ,{}]]"#);
        let e = Event::new(
            "e\"v\u{1e}",
            Data::Text("hi \"there\"\n\u{1}\u{1e}é".into()),
            Vec::new(),
            t,
        );
        let f = event_frame(&e);
        assert!(!f.contains('\x1e'));
        let v: Value = serde_json::from_str(&f[2..]).unwrap();
        assert_eq!(
            v,
            serde_json::json!(["e\"v\u{1e}", "hi \"there\"\n\u{1}\u{1e}é"])
        );
        // An event frame is a client-parsable EVENT too.
        assert!(matches!(parse(&f[1..]), Ok(ClientPacket::Event { .. })));
    }

    #[test]
    fn wire_slot_caches_the_socketio_frame() {
        use crate::wire::Wire;
        let e = Event::new("n", Data::Json("1".into()), Vec::new(), Instant::now());
        assert_eq!(Wire::SocketIo.event_frame(&e).as_str(), r#"42["n",1]"#);
        assert_eq!(
            Wire::Studio.event_frame(&e).as_str(),
            r#"{"type":"event","event":"n","data":1}"#
        );
        assert_eq!(Wire::SocketIo.event_frame(&e).as_str(), r#"42["n",1]"#);
        let mut e = Event::new("n", Data::Json("1".into()), Vec::new(), Instant::now());
        e.offset = Some(9);
        // With history on, the offset is the last argument.
        assert_eq!(Wire::SocketIo.event_frame(&e).as_str(), r#"42["n",1,"9"]"#);
        assert_eq!(event_frame_with_offset(&e, 9).as_str(), r#"42["n",1,"9"]"#);
        assert_eq!(
            Wire::SocketIo.gap_frame(GapReason::RelayLagged).as_str(),
            r#"42["relay:gap",{"reason":"relay_lagged","source":"redis"}]"#
        );
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Instant;

    #[test]
    fn adapter_arguments_are_spread_and_binary_is_counted() {
        use crate::event::Args;
        use bytes::Bytes;
        let args = |socketio: &str, attachments: Vec<Bytes>| {
            Data::Args(Box::new(Args {
                native: "unused".into(),
                socketio: socketio.into(),
                attachments: attachments.into(),
                first: None,
            }))
        };
        let e = Event::new("m", args(r#"1,"two""#, vec![]), Vec::new(), Instant::now());
        assert_eq!(event_frame(&e).as_str(), r#"42["m",1,"two"]"#);
        let e = Event::new("m", args("", vec![]), Vec::new(), Instant::now());
        assert_eq!(event_frame(&e).as_str(), r#"42["m"]"#);
        assert_eq!(event_frame_with_offset(&e, 7).as_str(), r#"42["m","7"]"#);
        let bin = args(
            r#"{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}"#,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
        );
        let e = Event::new("m", bin, Vec::new(), Instant::now());
        assert_eq!(
            event_frame(&e).as_str(),
            r#"452-["m",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text gets a packet or a typed error, never a panic.
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}|[0-6][/a-z,0-9\\[\\]{}\":\\\\ ]{0,60}|2[0-9]{0,20}\\[\"(subscribe|connect|x)\"(,\\{\"agentId\":\"a\"\\})?\\]") {
            if let Ok(ClientPacket::Event { nsp, id, name, .. }) = parse(&s) {
                prop_assert!(nsp.starts_with('/'));
                prop_assert!(id.is_none_or(|i| i <= MAX_ACK_ID));
                prop_assert!(!RESERVED_EVENTS.contains(&name.as_ref()));
            }
        }

        /// Event frames are valid JSON `[name, data]` (data equal to the
        /// payload, as a string when it is text), exactly sized, free of
        /// `\x1e`, and parse back as client EVENTs.
        #[test]
        fn event_frames_round_trip(
            name in "\\PC{0,20}|[\\x00-\\x1f\"\\\\]{0,8}",
            text in any::<String>(),
            json in proptest::option::of(
                r#"\{"k":[0-9]{1,5}\}|"[a-z\\\\"]{0,5}"|\[\]|null|-?[0-9]{1,8}(\.[0-9]{1,3})?"#
            ),
            offset in proptest::option::of(any::<u64>()),
        ) {
            let data = match &json {
                Some(j) if serde_json::from_str::<Value>(j).is_ok() => Data::Json(j.as_str().into()),
                _ => Data::Text(text.as_str().into()),
            };
            let mut e = Event::new(name.as_str(), data.clone(), Vec::new(), Instant::now());
            e.offset = offset;
            let frame = match offset {
                Some(n) => event_frame_with_offset(&e, n),
                None => event_frame(&e),
            };
            prop_assert!(frame.starts_with("42["));
            prop_assert!(!frame.contains('\x1e'));
            let v: Vec<Value> = serde_json::from_str(&frame[2..]).unwrap();
            prop_assert_eq!(&v[0], &Value::String(name.clone()));
            match &data {
                Data::Json(j) => prop_assert_eq!(&v[1], &serde_json::from_str::<Value>(j).unwrap()),
                Data::Text(t) => prop_assert_eq!(&v[1], &Value::String(t.to_string())),
                Data::Args(_) => unreachable!("only Json and Text are generated"),
            }
            match offset {
                Some(n) => prop_assert_eq!(&v[2], &Value::String(n.to_string())),
                None => prop_assert_eq!(v.len(), 2),
            }
            if let Data::Json(j) = &data {
                prop_assert!(frame.contains(j.as_ref()));
            }
            // The reserved names are refused by our parser, not by the encoder.
            if !RESERVED_EVENTS.contains(&name.as_str()) {
                let reparsed = matches!(parse(&frame[1..]), Ok(ClientPacket::Event { .. }));
                prop_assert!(reparsed);
            }
        }

        /// The size estimate is exact, so frames are one allocation.
        #[test]
        fn json_string_len_matches_push_json_string(s in any::<String>()) {
            let mut out = String::new();
            push_json_string(&mut out, &s);
            prop_assert_eq!(out.len(), json_string_len(&s));
        }

        /// Subscription parsing of arbitrary argument text never panics.
        #[test]
        fn subscriptions_never_panic(arg in r#"\{("(agentId|sessionId|all|type|x)":("[a-z]{0,3}"|true|false|[0-9]{1,3}|\[("[a-z]{1,2}",?){0,3}\]),?){0,4}\}"#) {
            let fields = vec!["agentId".to_string(), "sessionId".to_string()];
            if let Ok(raw) = RawValue::from_string(arg.clone()) {
                match subscription("subscribe", &[raw.as_ref()], &fields) {
                    Ok(Subscription::Subscribe(c)) => prop_assert!(c.all || !c.keys.is_empty()),
                    Ok(Subscription::Unsubscribe(_)) => prop_assert!(false),
                    Err(e) => prop_assert!(!e.message.is_empty()),
                }
            }
        }
    }
}
