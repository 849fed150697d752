//! Broadcasts of `@socket.io/redis-adapter` 8 and `@socket.io/redis-emitter`
//! 5 turned into an [`Event`], once (SPEC §10).
//!
//! Each message is MessagePack (notepack.io) `[uid, packet, opts]` with
//! `packet = {type, data: [event, ...args], nsp}` and `opts = {rooms,
//! except, flags}`. The arguments are written straight to the JSON text
//! clients get: for native clients one argument as is, several as an array,
//! binary as base64; for Socket.IO clients every argument, binary as
//! attachments behind placeholders. Nothing here trusts the bytes: depth is
//! bounded, and every shape that is not a namespace-`/` event is a typed
//! [`Skip`].

use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rmpv::ValueRef;

use super::studio_json::{self, Routing};
use crate::event::{Args, Data, Event, ROOM_FIELD};
use crate::util::base64;
use crate::wire::studio::push_json_string;

/// Deeper nesting than this is refused; real events are a few levels deep,
/// and the limit keeps the recursive writers' stack bounded.
pub const MAX_DEPTH: usize = 64;

/// Socket.IO packet types that carry an event (`EVENT`, `BINARY_EVENT`).
const EVENT_TYPES: [u64; 2] = [2, 5];

/// MessagePack's timestamp extension, which notepack.io uses for `Date`.
const TIMESTAMP_EXT: i8 = -1;

/// Why a message yields no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// A namespace other than `/`: not for this relay's clients.
    #[error("namespace is not \"/\"")]
    OtherNamespace,
    /// A packet that is not an event (e.g. a future adapter message kind).
    #[error("packet type is not an event")]
    NotEvent,
    /// Not the adapter's format.
    #[error("malformed adapter message: {0}")]
    Malformed(&'static str),
}

impl Skip {
    /// Label for `relay_invalid_payloads_total{kind}`, or `None` when the
    /// message is well-formed but simply not for us.
    pub fn kind(self) -> &'static str {
        match self {
            Skip::OtherNamespace => "other_namespace",
            Skip::NotEvent => "not_event",
            Skip::Malformed(_) => "bad_msgpack",
        }
    }
}

/// Decodes one adapter/emitter message. With `opts.rooms` empty, the first
/// argument's top-level `fields` route it as a JSON payload would.
pub fn decode(bytes: &[u8], fields: &[Arc<str>], received: Instant) -> Result<Event, Skip> {
    let mut rd = bytes;
    let top = rmpv::decode::read_value_ref_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|_| Skip::Malformed("not MessagePack (truncated, or nested too deep)"))?;
    if !rd.is_empty() {
        return Err(Skip::Malformed("trailing bytes after the message"));
    }
    let ValueRef::Array(top) = top else {
        return Err(Skip::Malformed("not an array [uid, packet, opts]"));
    };
    let packet = top.get(1).ok_or(Skip::Malformed("no packet"))?;
    let ValueRef::Map(packet) = packet else {
        return Err(Skip::Malformed("packet is not a map"));
    };
    match get(packet, "nsp") {
        // The adapter treats a missing namespace as "/".
        None | Some(ValueRef::Nil) => {}
        Some(ValueRef::String(s)) if s.as_str() == Some("/") => {}
        Some(ValueRef::String(_)) => return Err(Skip::OtherNamespace),
        Some(_) => return Err(Skip::Malformed("nsp is not a string")),
    }
    match get(packet, "type").and_then(ValueRef::as_u64) {
        Some(t) if EVENT_TYPES.contains(&t) => {}
        Some(_) => return Err(Skip::NotEvent),
        None => return Err(Skip::Malformed("packet type is not an integer")),
    }
    let Some(ValueRef::Array(data)) = get(packet, "data") else {
        return Err(Skip::Malformed("packet data is not an array"));
    };
    let name = match data.first() {
        Some(ValueRef::String(s)) => s
            .as_str()
            .ok_or(Skip::Malformed("event name is not UTF-8"))?,
        _ => return Err(Skip::Malformed("event name is not a string")),
    };
    let (rooms, except) = match top.get(2) {
        None | Some(ValueRef::Nil) => (Vec::new(), Vec::new()),
        Some(ValueRef::Map(opts)) => (strings(opts, "rooms")?, strings(opts, "except")?),
        Some(_) => return Err(Skip::Malformed("opts is not a map")),
    };
    let args = &data[1..];
    let payload = encode_args(args)?;

    let keys = if rooms.is_empty() {
        first_arg_keys(&payload, fields)
    } else {
        let field: Arc<str> = Arc::from(ROOM_FIELD);
        rooms.into_iter().map(|r| (field.clone(), r)).collect()
    };
    let mut event = Event::new(name, payload, keys, received);
    event.except = except.into_boxed_slice();
    Ok(event)
}

/// The routing keys of the first argument, read from the native JSON (which
/// for one argument is that argument), so they follow SPEC §9 exactly as a
/// JSON payload's do.
fn first_arg_keys(payload: &Data, fields: &[Arc<str>]) -> Vec<(Arc<str>, Box<str>)> {
    let json = match payload {
        Data::Json(json) => json,
        // Several arguments or binary: the first argument alone.
        Data::Args(args) => match &args.first {
            Some(first) => first,
            None => return Vec::new(),
        },
        Data::Text(_) => return Vec::new(),
    };
    match studio_json::extract(json, fields) {
        Routing::Object(values) => fields
            .iter()
            .zip(values)
            .filter_map(|(f, v)| v.map(|v| (f.clone(), Box::from(v.as_ref()))))
            .collect(),
        Routing::NotJson | Routing::NotObject => Vec::new(),
    }
}

/// One non-binary argument stays [`Data::Json`], byte-identical to what the
/// JSON source makes; anything else becomes [`Data::Args`].
fn encode_args(args: &[ValueRef<'_>]) -> Result<Data, Skip> {
    let binary = args.iter().any(has_binary);
    if args.len() == 1 && !binary {
        let mut out = String::new();
        write_json(&mut out, &args[0], &mut Binary::Base64)?;
        return Ok(Data::Json(out.into()));
    }
    let mut native = String::new();
    if args.is_empty() {
        native.push_str("null");
    } else if args.len() == 1 {
        write_json(&mut native, &args[0], &mut Binary::Base64)?;
    } else {
        native.push('[');
        for (i, a) in args.iter().enumerate() {
            if i > 0 {
                native.push(',');
            }
            write_json(&mut native, a, &mut Binary::Base64)?;
        }
        native.push(']');
    }
    let mut attachments = Vec::new();
    let mut socketio = String::new();
    let mut first = None;
    for (i, a) in args.iter().enumerate() {
        if i > 0 {
            socketio.push(',');
        }
        write_json(&mut socketio, a, &mut Binary::Placeholder(&mut attachments))?;
        if i == 0 {
            // Routing reads the first argument as the native client sees it.
            let mut plain = String::new();
            write_json(&mut plain, a, &mut Binary::Base64)?;
            first = Some(plain.into_boxed_str());
        }
    }
    Ok(Data::Args(Box::new(Args {
        native: native.into(),
        socketio: socketio.into(),
        attachments: attachments.into(),
        first,
    })))
}

/// How a binary value is written.
enum Binary<'a> {
    /// As a base64 JSON string (native clients).
    Base64,
    /// As `{"_placeholder":true,"num":N}`, the bytes kept as attachment N.
    Placeholder(&'a mut Vec<Bytes>),
}

fn has_binary(v: &ValueRef<'_>) -> bool {
    match v {
        ValueRef::Binary(_) => true,
        ValueRef::Array(a) => a.iter().any(has_binary),
        ValueRef::Map(m) => m.iter().any(|(_, v)| has_binary(v)),
        _ => false,
    }
}

/// Writes `v` as JSON, as `JSON.stringify` would write what notepack.io
/// decodes: nil (undefined, null) → null, non-finite floats → null, a
/// timestamp → its ISO 8601 string, map keys → strings.
fn write_json(out: &mut String, v: &ValueRef<'_>, bin: &mut Binary<'_>) -> Result<(), Skip> {
    match v {
        ValueRef::Nil => out.push_str("null"),
        ValueRef::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        ValueRef::Integer(i) => {
            // Writing to a String cannot fail.
            let _ = match (i.as_u64(), i.as_i64()) {
                (Some(u), _) => write!(out, "{u}"),
                (None, Some(s)) => write!(out, "{s}"),
                (None, None) => return Err(Skip::Malformed("integer out of range")),
            };
        }
        ValueRef::F32(f) => write_float(out, f64::from(*f)),
        ValueRef::F64(f) => write_float(out, *f),
        ValueRef::String(s) => {
            let s = s.as_str().ok_or(Skip::Malformed("string is not UTF-8"))?;
            push_json_string(out, s);
        }
        ValueRef::Binary(b) => match bin {
            Binary::Base64 => {
                out.push('"');
                base64::encode_into(out, b);
                out.push('"');
            }
            Binary::Placeholder(attachments) => {
                let _ = write!(
                    out,
                    r#"{{"_placeholder":true,"num":{}}}"#,
                    attachments.len()
                );
                attachments.push(Bytes::copy_from_slice(b));
            }
        },
        ValueRef::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(out, item, bin)?;
            }
            out.push(']');
        }
        ValueRef::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match k {
                    ValueRef::String(s) => {
                        let s = s.as_str().ok_or(Skip::Malformed("map key is not UTF-8"))?;
                        push_json_string(out, s);
                    }
                    ValueRef::Integer(_) => {
                        out.push('"');
                        write_json(out, k, bin)?;
                        out.push('"');
                    }
                    _ => return Err(Skip::Malformed("map key is not a string")),
                }
                out.push(':');
                write_json(out, v, bin)?;
            }
            out.push('}');
        }
        ValueRef::Ext(TIMESTAMP_EXT, raw) => {
            let ms = timestamp_ms(raw).ok_or(Skip::Malformed("bad timestamp"))?;
            out.push('"');
            push_iso8601(out, ms);
            out.push('"');
        }
        ValueRef::Ext(..) => return Err(Skip::Malformed("unsupported extension type")),
    }
    Ok(())
}

fn write_float(out: &mut String, f: f64) {
    match serde_json::Number::from_f64(f) {
        // A whole float prints like JavaScript's number (`1`, not `1.0`).
        Some(_) if f.fract() == 0.0 && f.abs() < 1e15 => {
            let _ = write!(out, "{}", f as i64);
        }
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"),
    }
}

/// Milliseconds since the epoch of a MessagePack timestamp (32, 64 or 96 bit).
fn timestamp_ms(raw: &[u8]) -> Option<i64> {
    let (secs, nanos): (i64, u32) = match raw.len() {
        4 => (i64::from(u32::from_be_bytes(raw.try_into().ok()?)), 0),
        8 => {
            let v = u64::from_be_bytes(raw.try_into().ok()?);
            ((v & 0x3_ffff_ffff) as i64, (v >> 34) as u32)
        }
        12 => {
            let nanos = u32::from_be_bytes(raw[..4].try_into().ok()?);
            (i64::from_be_bytes(raw[4..].try_into().ok()?), nanos)
        }
        _ => return None,
    };
    if nanos >= 1_000_000_000 {
        return None;
    }
    secs.checked_mul(1000)?
        .checked_add(i64::from(nanos / 1_000_000))
}

/// `Date.prototype.toISOString` for years 0..=9999 (`YYYY-MM-DDTHH:MM:SS.mmmZ`);
/// outside that range the number of milliseconds.
fn push_iso8601(out: &mut String, ms: i64) {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        let _ = write!(out, "{ms}");
        return;
    }
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    );
}

fn get<'v, 'a>(map: &'v [(ValueRef<'a>, ValueRef<'a>)], key: &str) -> Option<&'v ValueRef<'a>> {
    map.iter().find_map(|(k, v)| match k {
        ValueRef::String(s) if s.as_str() == Some(key) => Some(v),
        _ => None,
    })
}

/// A list of room names; absent or nil is empty.
fn strings(
    opts: &[(ValueRef<'_>, ValueRef<'_>)],
    key: &'static str,
) -> Result<Vec<Box<str>>, Skip> {
    match get(opts, key) {
        None | Some(ValueRef::Nil) => Ok(Vec::new()),
        Some(ValueRef::Array(items)) => items
            .iter()
            .map(|i| match i {
                ValueRef::String(s) => s
                    .as_str()
                    .map(Box::from)
                    .ok_or(Skip::Malformed("room is not UTF-8")),
                // Rooms are strings in Socket.IO; a number is spelled as one.
                ValueRef::Integer(n) => Ok(n.to_string().into()),
                _ => Err(Skip::Malformed("room is not a string")),
            })
            .collect(),
        Some(_) => Err(Skip::Malformed("rooms/except is not an array")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn msg(packet: Value, opts: Value) -> Vec<u8> {
        let v = Value::Array(vec![Value::from("uid1"), packet, opts]);
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &v).unwrap();
        out
    }

    fn packet(nsp: &str, ty: u64, data: Vec<Value>) -> Value {
        Value::Map(vec![
            (Value::from("type"), Value::from(ty)),
            (Value::from("data"), Value::Array(data)),
            (Value::from("nsp"), Value::from(nsp)),
        ])
    }

    fn opts(rooms: &[&str], except: &[&str]) -> Value {
        let list = |l: &[&str]| Value::Array(l.iter().map(|r| Value::from(*r)).collect());
        Value::Map(vec![
            (Value::from("rooms"), list(rooms)),
            (Value::from("except"), list(except)),
            (Value::from("flags"), Value::Map(vec![])),
        ])
    }

    fn fields() -> Vec<Arc<str>> {
        vec![Arc::from("agentId"), Arc::from("sessionId")]
    }

    fn obj(pairs: &[(&str, Value)]) -> Value {
        Value::Map(
            pairs
                .iter()
                .map(|(k, v)| (Value::from(*k), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn one_argument_is_plain_json_routed_by_its_fields() {
        let data = vec![
            Value::from("agent:status"),
            obj(&[
                ("agentId", Value::from("a1")),
                ("n", Value::from(3)),
                ("f", Value::from(1.5)),
            ]),
        ];
        let e = decode(
            &msg(packet("/", 2, data), opts(&[], &[])),
            &fields(),
            Instant::now(),
        )
        .unwrap();
        assert_eq!(&*e.name, "agent:status");
        assert_eq!(
            e.data,
            Data::Json(r#"{"agentId":"a1","n":3,"f":1.5}"#.into())
        );
        assert_eq!(e.keys, vec![(Arc::from("agentId"), Box::from("a1"))]);
        assert!(e.except.is_empty());
    }

    #[test]
    fn rooms_route_by_room_and_except_is_kept() {
        let data = vec![Value::from("m"), obj(&[("agentId", Value::from("a1"))])];
        let e = decode(
            &msg(packet("/", 2, data), opts(&["r1", "r2"], &["r3"])),
            &fields(),
            Instant::now(),
        )
        .unwrap();
        let keys: Vec<(&str, &str)> = e.keys.iter().map(|(f, v)| (&**f, &**v)).collect();
        assert_eq!(keys, [("room", "r1"), ("room", "r2")]);
        assert_eq!(&*e.except, [Box::from("r3")]);
    }

    #[test]
    fn several_and_binary_arguments() {
        let data = vec![
            Value::from("multi"),
            obj(&[("agentId", Value::from(7))]),
            Value::from("two"),
            Value::Binary(vec![1, 2, 3]),
        ];
        let e = decode(
            &msg(packet("/", 2, data), Value::Nil),
            &fields(),
            Instant::now(),
        )
        .unwrap();
        let Data::Args(args) = &e.data else {
            panic!("{:?}", e.data)
        };
        assert_eq!(&*args.native, r#"[{"agentId":7},"two","AQID"]"#);
        assert_eq!(
            &*args.socketio,
            r#"{"agentId":7},"two",{"_placeholder":true,"num":0}"#
        );
        assert_eq!(&*args.attachments, [Bytes::from_static(&[1, 2, 3])]);
        assert_eq!(e.keys, vec![(Arc::from("agentId"), Box::from("7"))]);
        let e = decode(
            &msg(packet("/", 2, vec![Value::from("none")]), Value::Nil),
            &fields(),
            Instant::now(),
        )
        .unwrap();
        let Data::Args(args) = &e.data else { panic!() };
        assert_eq!((&*args.native, &*args.socketio), ("null", ""));
        assert!(e.keys.is_empty());
    }

    #[test]
    fn javascript_values_come_out_as_json_stringify_writes_them() {
        let data = vec![
            Value::from("v"),
            Value::Array(vec![
                Value::Nil,
                Value::from(f64::NAN),
                Value::from(2.0),
                Value::Ext(-1, 1_700_000_000u32.to_be_bytes().to_vec()),
                Value::Map(vec![(Value::from(1), Value::from(true))]),
                Value::from("q\"\n"),
                Value::from(-5),
                Value::from(u64::MAX),
            ]),
        ];
        let e = decode(
            &msg(packet("/", 2, data), Value::Nil),
            &fields(),
            Instant::now(),
        )
        .unwrap();
        assert_eq!(
            e.data,
            Data::Json(
                r#"[null,null,2,"2023-11-14T22:13:20.000Z",{"1":true},"q\"\n",-5,18446744073709551615]"#
                    .into()
            )
        );
    }

    #[test]
    fn timestamps_64_and_96_bit() {
        let mut s = String::new();
        // 64-bit: 500 ms in nanoseconds above the seconds.
        let v: u64 = (500_000_000u64 << 34) | 86_400;
        push_iso8601(&mut s, timestamp_ms(&v.to_be_bytes()).unwrap());
        assert_eq!(s, "1970-01-02T00:00:00.500Z");
        let mut raw = 0u32.to_be_bytes().to_vec();
        raw.extend_from_slice(&(-86_400i64).to_be_bytes());
        s.clear();
        push_iso8601(&mut s, timestamp_ms(&raw).unwrap());
        assert_eq!(s, "1969-12-31T00:00:00.000Z");
        assert_eq!(timestamp_ms(&[0; 3]), None);
    }

    #[test]
    fn what_is_not_a_namespace_slash_event_is_a_typed_skip() {
        let ev = || vec![Value::from("x"), Value::from(1)];
        let d = |b: &[u8]| {
            decode(b, &fields(), Instant::now())
                .map(|_| ())
                .unwrap_err()
        };
        assert_eq!(
            d(&msg(packet("/admin", 2, ev()), Value::Nil)),
            Skip::OtherNamespace
        );
        assert_eq!(d(&msg(packet("/", 3, ev()), Value::Nil)), Skip::NotEvent);
        let bad = [
            &b""[..],
            &[0x93, 0xa1],                   // truncated
            &[0xdd, 0xff, 0xff, 0xff, 0xff], // array of 4G elements, no bytes
            &[0xc0],                         // nil
            &[0x91, 0xa1, b'u'],             // no packet
        ];
        for b in bad {
            assert!(matches!(d(b), Skip::Malformed(_)), "{b:?}");
        }
        let deep = {
            let mut v = Value::from(1);
            for _ in 0..200 {
                v = Value::Array(vec![v]);
            }
            v
        };
        assert!(matches!(
            d(&msg(
                packet("/", 2, vec![Value::from("x"), deep]),
                Value::Nil
            )),
            Skip::Malformed(_)
        ));
        assert!(matches!(
            d(&msg(packet("/", 2, vec![Value::from(1)]), Value::Nil)),
            Skip::Malformed(_)
        ));
        assert!(matches!(
            d(&msg(packet("/", 2, ev()), Value::from(3))),
            Skip::Malformed(_)
        ));
        assert!(matches!(
            d(&msg(
                packet("/", 2, ev()),
                opts(&[], &[])
                    .as_map()
                    .map(|_| Value::Map(vec![(Value::from("rooms"), Value::from(1))]))
                    .unwrap()
            )),
            Skip::Malformed(_)
        ));
        let mut trailing = msg(packet("/", 2, ev()), Value::Nil);
        trailing.push(0xc0);
        assert!(matches!(d(&trailing), Skip::Malformed(_)));
    }

    #[test]
    fn a_missing_namespace_is_slash() {
        let p = Value::Map(vec![
            (Value::from("type"), Value::from(2)),
            (Value::from("data"), Value::Array(vec![Value::from("x")])),
        ]);
        assert!(decode(&msg(p, Value::Nil), &fields(), Instant::now()).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode(&bytes, &fields(), Instant::now());
        }
    }
}
