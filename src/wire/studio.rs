//! The relay's own JSON protocol (SPEC §5) as pure functions: frames the
//! relay sends, frames a client may send, error codes. No I/O.

use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::WelcomeInfo;
use crate::event::{Data, Event, GapReason};

/// Why a frame from a client was rejected; the `code` of an error frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not JSON at all.
    BadJson,
    /// Unknown type, missing field, wrong value type.
    BadRequest,
    /// A key that is not a routing field.
    UnknownField,
    /// Would exceed `max_subscriptions`.
    TooManySubscriptions,
    /// The firehose was asked for while `allow_firehose` is false.
    FirehoseDisabled,
    /// A binary frame.
    Unsupported,
    /// A subscription the token's grants do not cover (SPEC §13).
    Forbidden,
}

impl ErrorCode {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::FirehoseDisabled => "firehose_disabled",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

/// A rejected client frame: code plus a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct FrameError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Explanation for the client developer.
    pub message: String,
}

impl FrameError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        FrameError {
            code,
            message: message.into(),
        }
    }
}

/// A subscription change asked for by a client frame or the URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Change {
    /// `(routing field, value)` pairs, in frame order.
    pub keys: Vec<(String, String)>,
    /// The firehose flag was named (`all: true`).
    pub all: bool,
    /// The frame's fields as sent (minus `type`), echoed in the ack.
    pub echo: Map<String, Value>,
}

/// A parsed client frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"type":"subscribe",…}`
    Subscribe(Change),
    /// `{"type":"unsubscribe",…}`
    Unsubscribe(Change),
    /// `{"type":"ping"}`
    Ping,
}

/// Parses one client text frame against the configured routing fields.
///
/// A frame with any invalid part is rejected whole; `unknown_field` wins over
/// `bad_request`. A field value is a string, or (an extension) an array of
/// strings. Extra keys on a ping are ignored.
pub fn parse_client_frame(text: &str, fields: &[String]) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| FrameError::new(ErrorCode::BadJson, format!("not JSON: {e}")))?;
    let Value::Object(mut object) = value else {
        return Err(FrameError::new(
            ErrorCode::BadRequest,
            "a frame must be a JSON object",
        ));
    };
    let kind = match object.remove("type") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err(FrameError::new(
                ErrorCode::BadRequest,
                "\"type\" must be a string",
            ))
        }
        None => return Err(FrameError::new(ErrorCode::BadRequest, "missing \"type\"")),
    };
    let subscribe = match kind.as_str() {
        "ping" => return Ok(ClientFrame::Ping),
        "subscribe" => true,
        "unsubscribe" => false,
        other => {
            return Err(FrameError::new(
                ErrorCode::BadRequest,
                format!("unknown type {other:?}; expected subscribe, unsubscribe or ping"),
            ))
        }
    };
    if let Some(unknown) = object
        .keys()
        .find(|k| k.as_str() != "all" && !fields.iter().any(|f| f == *k))
    {
        return Err(FrameError::new(
            ErrorCode::UnknownField,
            format!(
                "{unknown:?} is not a routing field (routing fields: {})",
                fields.join(", ")
            ),
        ));
    }
    let mut change = Change::default();
    for (key, value) in &object {
        if key == "all" {
            if value != &Value::Bool(true) {
                return Err(FrameError::new(
                    ErrorCode::BadRequest,
                    "\"all\" must be true",
                ));
            }
            change.all = true;
            continue;
        }
        let mut push = |v: &Value| match v {
            Value::String(s) if !s.is_empty() => {
                change.keys.push((key.clone(), s.clone()));
                Ok(())
            }
            Value::String(_) => Err(FrameError::new(
                ErrorCode::BadRequest,
                format!("{key:?} may not be empty"),
            )),
            _ => Err(FrameError::new(
                ErrorCode::BadRequest,
                format!("{key:?} must be a string (or an array of strings)"),
            )),
        };
        match value {
            Value::Array(items) if !items.is_empty() => items.iter().try_for_each(&mut push)?,
            Value::Array(_) => {
                return Err(FrameError::new(
                    ErrorCode::BadRequest,
                    format!("{key:?} is an empty array"),
                ))
            }
            other => push(other)?,
        }
    }
    if change.keys.is_empty() && !change.all {
        return Err(FrameError::new(
            ErrorCode::BadRequest,
            "name at least one routing field or \"all\": true",
        ));
    }
    change.echo = object;
    Ok(if subscribe {
        ClientFrame::Subscribe(change)
    } else {
        ClientFrame::Unsubscribe(change)
    })
}

/// `{"type":"welcome",…}`: every routing field is listed, empty or not.
pub fn welcome(
    connection_id: &str,
    fields: &[String],
    subscriptions: &[(String, String)],
    all: bool,
    history: &WelcomeInfo<'_>,
) -> Utf8Bytes {
    let mut subs = Map::new();
    for field in fields {
        let values: Vec<Value> = subscriptions
            .iter()
            .filter(|(f, _)| f == field)
            .map(|(_, v)| Value::String(v.clone()))
            .collect();
        subs.insert(field.clone(), Value::Array(values));
    }
    let mut frame = Map::new();
    frame.insert("type".into(), "welcome".into());
    frame.insert("connectionId".into(), connection_id.into());
    frame.insert("version".into(), crate::VERSION.into());
    frame.insert("subscriptions".into(), Value::Object(subs));
    frame.insert("all".into(), all.into());
    if let Some(epoch) = history.epoch {
        frame.insert("epoch".into(), epoch.into());
        frame.insert("offset".into(), history.offset.into());
    }
    if let Some(recovered) = history.recovered {
        frame.insert("recovered".into(), recovered.into());
    }
    Value::Object(frame).to_string().into()
}

/// `{"type":"subscribed"|"unsubscribed", …fields echoed…}`
pub fn ack(subscribe: bool, echo: &Map<String, Value>) -> Utf8Bytes {
    let mut frame = Map::new();
    frame.insert(
        "type".into(),
        if subscribe {
            "subscribed"
        } else {
            "unsubscribed"
        }
        .into(),
    );
    for (k, v) in echo {
        frame.insert(k.clone(), v.clone());
    }
    Value::Object(frame).to_string().into()
}

/// `{"type":"error","code":…,"message":…}`
pub fn error(err: &FrameError) -> Utf8Bytes {
    serde_json::json!({"type": "error", "code": err.code.as_str(), "message": err.message})
        .to_string()
        .into()
}

/// `{"type":"pong"}`
pub const PONG: Utf8Bytes = Utf8Bytes::from_static(r#"{"type":"pong"}"#);

/// `{"type":"gap","reason":…,"source":…}`
pub fn gap(reason: GapReason) -> Utf8Bytes {
    // Gaps are rare: no need for static frames per reason.
    format!(
        r#"{{"type":"gap","reason":"{}","source":"{}"}}"#,
        reason.as_str(),
        reason.source()
    )
    .into()
}

/// `{"type":"event","event":<name>,"data":<data>}`, built once per event
/// for every native connection.
pub fn event_frame(event: &Event) -> Utf8Bytes {
    match &event.data {
        Data::Json(json) => event_frame_json(&event.name, event.offset, json),
        Data::Text(text) => {
            event_frame_with(&event.name, event.offset, |out| push_json_string(out, text))
        }
        Data::Args(args) => event_frame_json(&event.name, event.offset, &args.native),
    }
}

/// `data_json` must already be a JSON value's text.
fn event_frame_json(event: &str, offset: Option<u64>, data_json: &str) -> Utf8Bytes {
    event_frame_with(event, offset, |out| out.push_str(data_json))
}

fn event_frame_with(event: &str, offset: Option<u64>, data: impl FnOnce(&mut String)) -> Utf8Bytes {
    const HEAD: &str = r#"{"type":"event","event":"#;
    const MID: &str = r#","data":"#;
    let mut out = String::with_capacity(HEAD.len() + MID.len() + event.len() + 3);
    out.push_str(HEAD);
    push_json_string(&mut out, event);
    out.push_str(MID);
    data(&mut out);
    if let Some(n) = offset {
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = write!(out, r#","offset":{n}"#);
    }
    out.push('}');
    out.into()
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                use std::fmt::Write;
                let _ = write!(out, "\\u{b:04x}");
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> Vec<String> {
        vec!["agentId".into(), "sessionId".into()]
    }

    fn parse(s: &str) -> Result<ClientFrame, FrameError> {
        parse_client_frame(s, &fields())
    }

    fn code(s: &str) -> ErrorCode {
        parse(s).unwrap_err().code
    }

    #[test]
    fn subscribe_frames() {
        let ClientFrame::Subscribe(c) = parse(r#"{"type":"subscribe","agentId":"a1"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.keys, vec![("agentId".into(), "a1".into())]);
        assert!(!c.all);
        let ClientFrame::Subscribe(c) =
            parse(r#"{"type":"subscribe","agentId":["a1","a2"],"sessionId":"s","all":true}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(c.keys.len(), 3);
        assert!(c.all);
        assert!(matches!(
            parse(r#"{"type":"unsubscribe","all":true}"#).unwrap(),
            ClientFrame::Unsubscribe(Change { all: true, .. })
        ));
        assert_eq!(
            parse(r#"{"type":"ping","x":1}"#).unwrap(),
            ClientFrame::Ping
        );
    }

    #[test]
    fn error_codes() {
        assert_eq!(code("{"), ErrorCode::BadJson);
        assert_eq!(code(""), ErrorCode::BadJson);
        assert_eq!(code("[1]"), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"agentId":"a"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"nope"}"#), ErrorCode::BadRequest);
        assert_eq!(code(r#"{"type":"subscribe"}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(r#"{"type":"subscribe","agentId":5}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"subscribe","agentId":""}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"subscribe","agentId":[]}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"subscribe","agentId":["a",1]}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"subscribe","all":false}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"subscribe","all":"yes"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(r#"{"type":"subscribe","userId":"u"}"#),
            ErrorCode::UnknownField
        );
        // unknown_field wins over bad_request, whatever the key order.
        assert_eq!(
            code(r#"{"type":"subscribe","agentId":5,"zzz":"u"}"#),
            ErrorCode::UnknownField
        );
        assert_eq!(
            code(r#"{"type":"subscribe","aaa":"u","agentId":5}"#),
            ErrorCode::UnknownField
        );
    }

    #[test]
    fn hostile_frames_do_not_panic() {
        let deep = "[".repeat(100_000);
        assert_eq!(code(&deep), ErrorCode::BadJson);
        // A number too large for f64 is not JSON serde can represent: bad_json.
        assert_eq!(
            code(&format!(
                r#"{{"type":"subscribe","agentId":{}}}"#,
                "1".repeat(5000)
            )),
            ErrorCode::BadJson
        );
        assert_eq!(
            code(r#"{"type":"subscribe","agentId":1e400}"#),
            ErrorCode::BadJson
        );
        assert_eq!(
            code(r#"{"type":"subscribe","agentId":12345678901234567890123}"#),
            ErrorCode::BadRequest
        );
        let dup = parse(r#"{"type":"subscribe","agentId":"a","agentId":"b"}"#).unwrap();
        assert!(
            matches!(dup, ClientFrame::Subscribe(c) if c.keys == vec![("agentId".to_string(), "b".to_string())])
        );
    }

    const NO_HISTORY: WelcomeInfo<'static> = WelcomeInfo {
        epoch: None,
        offset: 0,
        recovered: None,
    };

    #[test]
    fn welcome_and_events_carry_history_positions() {
        let info = WelcomeInfo {
            epoch: Some("ep"),
            offset: 7,
            recovered: Some(false),
        };
        let w: Value =
            serde_json::from_str(welcome("c", &fields(), &[], true, &info).as_str()).unwrap();
        assert_eq!(
            (&w["epoch"], &w["offset"], &w["recovered"]),
            (
                &serde_json::json!("ep"),
                &serde_json::json!(7),
                &serde_json::json!(false)
            )
        );
        let mut e = Event::new(
            "n",
            Data::Json("1".into()),
            Vec::new(),
            std::time::Instant::now(),
        );
        e.offset = Some(8);
        assert_eq!(
            event_frame(&e).as_str(),
            r#"{"type":"event","event":"n","data":1,"offset":8}"#
        );
    }

    #[test]
    fn frames_out() {
        assert_eq!(
            welcome(
                "c1",
                &fields(),
                &[("agentId".into(), "a1".into())],
                false,
                &NO_HISTORY
            )
            .as_str(),
            r#"{"type":"welcome","connectionId":"c1","version":""#.to_owned()
                + crate::VERSION
                + r#"","subscriptions":{"agentId":["a1"],"sessionId":[]},"all":false}"#
        );
        let ClientFrame::Subscribe(c) = parse(r#"{"type":"subscribe","agentId":"a1"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            ack(true, &c.echo).as_str(),
            r#"{"type":"subscribed","agentId":"a1"}"#
        );
        assert_eq!(
            ack(false, &c.echo).as_str(),
            r#"{"type":"unsubscribed","agentId":"a1"}"#
        );
        let e = FrameError::new(ErrorCode::BadJson, "x\"y");
        assert_eq!(
            error(&e).as_str(),
            r#"{"type":"error","code":"bad_json","message":"x\"y"}"#
        );
    }

    #[test]
    fn event_frames_splice_data_and_escape_strings() {
        let t = std::time::Instant::now();
        let e = Event::new(
            "agent:status",
            Data::Json(r#"{"a":1}"#.into()),
            Vec::new(),
            t,
        );
        assert_eq!(
            event_frame(&e).as_str(),
            r#"{"type":"event","event":"agent:status","data":{"a":1}}"#
        );
        let e = Event::new(
            "e\"v",
            Data::Text("hi \"there\"\n\u{1}é".into()),
            Vec::new(),
            t,
        );
        let f = event_frame(&e);
        let v: Value = serde_json::from_str(f.as_str()).unwrap();
        assert_eq!(v["event"], "e\"v");
        assert_eq!(v["data"], "hi \"there\"\n\u{1}é");
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text gets a defined answer: a frame, or an error with a code.
        #[test]
        fn client_frames_never_panic(s in "\\PC{0,80}|[\\[\\]{}\":,0-9a-z\\\\ ]{0,80}|\\{\"type\":\"(sub|unsub)scribe\",\"(agentId|all|x)\":[\\[\\]{}\":,0-9a-z ]{0,30}\\}") {
            let fields = vec!["agentId".to_string(), "sessionId".to_string()];
            match parse_client_frame(&s, &fields) {
                Ok(ClientFrame::Subscribe(c)) | Ok(ClientFrame::Unsubscribe(c)) => {
                    prop_assert!(c.all || !c.keys.is_empty());
                    prop_assert!(c.keys.iter().all(|(f, v)| fields.contains(f) && !v.is_empty()));
                }
                Ok(ClientFrame::Ping) => {}
                Err(e) => prop_assert!(!e.message.is_empty()),
            }
        }
    }
}
