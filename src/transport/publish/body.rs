//! The `POST /publish` body, checked whole before anything is published:
//! one `{"event":…,"data":…}` object or an array of them, each event name
//! turned into the channel it travels on (pure, no I/O).

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::config::RedisConfig;
use crate::util::pattern::Pattern;

/// Longest event name accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 256;

/// One event of a body, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<'a> {
    /// The event name, as clients will see it (`agent:status`).
    pub event: String,
    /// The channel it is published on: the first pattern's prefix + `event`.
    pub channel: String,
    /// The payload's JSON text, byte for byte (`null` when `data` is absent).
    pub data: &'a str,
}

/// Why a body was refused (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyError {
    /// Machine-readable: `not_utf8`, `bad_json`, `bad_body`, `bad_event`.
    pub code: &'static str,
    /// The array index of the offending element, for arrays.
    pub index: Option<usize>,
    /// What is wrong, for a human.
    pub message: String,
}

impl BodyError {
    fn new(code: &'static str, index: Option<usize>, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = match index {
            Some(i) => format!("[{i}]: {message}"),
            None => message,
        };
        BodyError {
            code,
            index,
            message,
        }
    }
}

/// How event names become channels, from `[redis]`: published channels
/// start with the first pattern's literal prefix and must match a pattern
/// (else no relay would deliver them) and not be the canary.
#[derive(Debug, Clone)]
pub struct Channels {
    prefix: String,
    /// Most specific first, as the Redis source names events.
    patterns: Vec<Pattern>,
    canary: String,
}

impl Channels {
    /// The channel rules of `redis` (its patterns also apply without Redis).
    pub fn new(redis: &RedisConfig) -> Self {
        let prefix = redis
            .patterns
            .first()
            .map(|p| Pattern::new(p).prefix().to_owned())
            .unwrap_or_default();
        let mut patterns: Vec<Pattern> = redis.patterns.iter().map(|p| Pattern::new(p)).collect();
        patterns.sort_by_key(|p| std::cmp::Reverse(p.prefix().len()));
        Channels {
            prefix,
            patterns,
            canary: redis.effective_canary_channel(),
        }
    }

    /// What this relay's Redis source would make of a message on `channel`:
    /// the event name (minus the most specific matching prefix) and how many
    /// times it arrives (once per matching pattern, as Redis sends it).
    pub fn delivery<'c>(&self, channel: &'c str) -> (&'c str, usize) {
        let mut matching = self
            .patterns
            .iter()
            .filter(|p| p.matches(channel.as_bytes()));
        let name = matching
            .next()
            .and_then(|p| channel.get(p.prefix().len()..))
            .unwrap_or(channel);
        (name, 1 + matching.count())
    }

    fn channel(&self, event: &str) -> Result<String, String> {
        if event.is_empty() {
            return Err("\"event\" may not be empty".into());
        }
        if event.len() > MAX_EVENT_BYTES {
            return Err(format!("\"event\" is longer than {MAX_EVENT_BYTES} bytes"));
        }
        if let Some(c) = event
            .chars()
            .find(|c| c.is_control() || c.is_whitespace() || "*?[]\\".contains(*c))
        {
            return Err(format!(
                "\"event\" may not contain {c:?} (no whitespace, control or glob characters)"
            ));
        }
        let channel = format!("{}{event}", self.prefix);
        if channel == self.canary {
            return Err(format!(
                "channel {channel:?} is reserved for the liveness canary"
            ));
        }
        if !self.patterns.iter().any(|p| p.matches(channel.as_bytes())) {
            return Err(format!(
                "channel {channel:?} matches none of redis.patterns, so no relay would deliver it"
            ));
        }
        Ok(channel)
    }
}

/// Parses and checks a whole body. Any fault refuses all of it: nothing is
/// published from a body that is not entirely valid.
///
/// An empty array is valid (nothing to publish); `data` absent is `null`;
/// keys other than `event` and `data` are refused (a typo would otherwise
/// publish `null`); with duplicate keys the last one wins, as with
/// `JSON.parse`.
pub fn parse<'a>(body: &'a [u8], channels: &Channels) -> Result<Vec<Item<'a>>, BodyError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        BodyError::new(
            "not_utf8",
            None,
            format!("body is not UTF-8 (byte {})", e.valid_up_to()),
        )
    })?;
    if text.trim().is_empty() {
        return Err(BodyError::new("bad_json", None, "body is empty"));
    }
    let top: &'a RawValue = serde_json::from_str(text)
        .map_err(|e| BodyError::new("bad_json", None, format!("body is not JSON: {e}")))?;
    match top.get().as_bytes().first() {
        Some(b'{') => Ok(vec![item(top, None, channels)?]),
        Some(b'[') => {
            let elements: Vec<&'a RawValue> = serde_json::from_str(top.get())
                .map_err(|e| BodyError::new("bad_json", None, format!("body is not JSON: {e}")))?;
            elements
                .into_iter()
                .enumerate()
                .map(|(i, e)| item(e, Some(i), channels))
                .collect()
        }
        _ => Err(BodyError::new(
            "bad_body",
            None,
            format!(
                "expected an object {{\"event\":…,\"data\":…}} or an array of them, got {}",
                kind(top.get())
            ),
        )),
    }
}

fn item<'a>(
    raw: &'a RawValue,
    index: Option<usize>,
    channels: &Channels,
) -> Result<Item<'a>, BodyError> {
    let bad = |m: String| BodyError::new("bad_event", index, m);
    if !raw.get().starts_with('{') {
        return Err(bad(format!("expected an object, got {}", kind(raw.get()))));
    }
    let fields: BTreeMap<String, &'a RawValue> =
        serde_json::from_str(raw.get()).map_err(|e| bad(format!("unreadable object: {e}")))?;
    if let Some(k) = fields.keys().find(|k| *k != "event" && *k != "data") {
        return Err(bad(format!(
            "unknown key {k:?} (an event has only \"event\" and \"data\")"
        )));
    }
    let event = match fields.get("event") {
        None => return Err(bad("missing \"event\"".into())),
        Some(v) => serde_json::from_str::<String>(v.get())
            .map_err(|_| bad(format!("\"event\" must be a string, got {}", kind(v.get()))))?,
    };
    let channel = channels.channel(&event).map_err(bad)?;
    let data = fields.get("data").map_or("null", |v| v.get());
    Ok(Item {
        event,
        channel,
        data,
    })
}

/// The JSON type of a valid JSON text, for messages.
fn kind(json: &str) -> &'static str {
    match json.as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch() -> Channels {
        Channels::new(&RedisConfig::default())
    }

    fn ok(body: &str) -> Vec<(String, String, String)> {
        parse(body.as_bytes(), &ch())
            .unwrap_or_else(|e| panic!("{body}: {e:?}"))
            .into_iter()
            .map(|i| (i.event, i.channel, i.data.to_owned()))
            .collect()
    }

    fn err(body: &[u8]) -> BodyError {
        parse(body, &ch()).expect_err(&String::from_utf8_lossy(body))
    }

    fn triple(e: &str, d: &str) -> (String, String, String) {
        (e.into(), format!("claude-studio:{e}"), d.into())
    }

    #[test]
    fn one_object_or_an_array_keeps_data_byte_for_byte() {
        assert_eq!(
            ok(r#"{"event":"agent:status","data":{"agentId":"a1", "n":1.50}}"#),
            vec![triple("agent:status", r#"{"agentId":"a1", "n":1.50}"#)]
        );
        assert_eq!(
            ok(" [ {\"data\":[1,2],\"event\":\"a\"} , {\"event\":\"b\",\"data\":\"x\"} ]\n"),
            vec![triple("a", "[1,2]"), triple("b", "\"x\"")]
        );
        assert_eq!(ok("[]"), vec![]);
    }

    #[test]
    fn absent_data_is_null_and_the_last_duplicate_wins() {
        assert_eq!(ok(r#"{"event":"ping"}"#), vec![triple("ping", "null")]);
        assert_eq!(
            ok(r#"{"event":"a","data":1,"data":2,"event":"b"}"#),
            vec![triple("b", "2")]
        );
        // Escapes in the name are decoded before the checks.
        assert_eq!(
            ok(r#"{"event":"agent\u003astatus"}"#),
            vec![triple("agent:status", "null")]
        );
    }

    #[test]
    fn every_bad_body_has_a_code_and_says_why() {
        for (body, code, needle) in [
            (&b"\xff\xfe{}"[..], "not_utf8", "UTF-8"),
            (b"", "bad_json", "empty"),
            (b"  \n", "bad_json", "empty"),
            (b"{\"event\":", "bad_json", "not JSON"),
            (b"{\"event\":\"a\"} x", "bad_json", "not JSON"),
            (b"\"agent:status\"", "bad_body", "got a string"),
            (b"42", "bad_body", "got a number"),
            (b"null", "bad_body", "got null"),
            (b"{}", "bad_event", "missing \"event\""),
            (b"{\"data\":{}}", "bad_event", "missing \"event\""),
            (b"{\"event\":\"\"}", "bad_event", "may not be empty"),
            (
                b"{\"event\":5}",
                "bad_event",
                "must be a string, got a number",
            ),
            (
                b"{\"event\":null}",
                "bad_event",
                "must be a string, got null",
            ),
            (b"{\"event\":[\"a\"]}", "bad_event", "got an array"),
            (
                b"{\"event\":\"a\",\"payload\":{}}",
                "bad_event",
                "unknown key \"payload\"",
            ),
            (b"{\"event\":\"a b\"}", "bad_event", "' '"),
            (b"{\"event\":\"a\\nb\"}", "bad_event", "'\\n'"),
            (b"{\"event\":\"a*\"}", "bad_event", "'*'"),
            (b"{\"event\":\"a[1]\"}", "bad_event", "'['"),
            (b"{\"event\":\"__studio_relay__\"}", "bad_event", "canary"),
        ] {
            let e = err(body);
            assert_eq!(e.code, code, "{:?}: {e:?}", String::from_utf8_lossy(body));
            assert!(
                e.message.contains(needle),
                "{:?}: {e:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(e.index, None);
        }
        let long = format!("{{\"event\":\"{}\"}}", "a".repeat(MAX_EVENT_BYTES + 1));
        assert!(err(long.as_bytes()).message.contains("longer than 256"));
        let longest = format!("{{\"event\":\"{}\"}}", "a".repeat(MAX_EVENT_BYTES));
        assert_eq!(ok(&longest).len(), 1);
    }

    #[test]
    fn an_array_is_refused_whole_naming_the_first_bad_element() {
        let e = err(br#"[{"event":"a"},{"event":"b"},7,{"event":""}]"#);
        assert_eq!((e.code, e.index), ("bad_event", Some(2)));
        assert!(
            e.message
                .starts_with("[2]: expected an object, got a number"),
            "{e:?}"
        );
        let e = err(br#"[{"event":"a"},{"event":"b","x":1}]"#);
        assert_eq!(e.index, Some(1));
        // Nested arrays are elements that are not objects.
        assert_eq!(err(b"[[]]").index, Some(0));
    }

    #[test]
    fn channels_follow_the_first_pattern_and_must_match_one() {
        let redis = RedisConfig {
            patterns: vec!["app:evt:*".into(), "other:*".into()],
            ..Default::default()
        };
        let c = Channels::new(&redis);
        let items = parse(br#"{"event":"x"}"#, &c).unwrap();
        assert_eq!(items[0].channel, "app:evt:x");
        assert_eq!(c.delivery("app:evt:x"), ("x", 1));
        // A pattern the suffix must fit.
        let redis = RedisConfig {
            patterns: vec!["cs:agent:?".into()],
            canary_channel: "cs:agent:c".into(),
            ..Default::default()
        };
        let c = Channels::new(&redis);
        assert!(parse(br#"{"event":"a"}"#, &c).is_ok());
        let e = parse(br#"{"event":"ab"}"#, &c).unwrap_err();
        assert!(
            e.message.contains("matches none of redis.patterns"),
            "{e:?}"
        );
        assert!(parse(br#"{"event":"c"}"#, &c)
            .unwrap_err()
            .message
            .contains("canary"));
    }

    #[test]
    fn overlapping_patterns_deliver_as_redis_would() {
        let redis = RedisConfig {
            patterns: vec!["cs:*".into(), "cs:agent:*".into()],
            ..Default::default()
        };
        let c = Channels::new(&redis);
        // Twice (one pmessage per pattern), named by the most specific one.
        assert_eq!(c.delivery("cs:agent:status"), ("status", 2));
        assert_eq!(c.delivery("cs:ping"), ("ping", 1));
    }

    #[test]
    fn deep_and_large_data_is_fine() {
        let deep = format!(
            "{{\"event\":\"a\",\"data\":{}1{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let items = parse(deep.as_bytes(), &ch()).unwrap();
        assert_eq!(items[0].data.len(), 20_001);
        let big = format!("{{\"event\":\"a\",\"data\":\"{}\"}}", "x".repeat(1 << 20));
        assert_eq!(
            parse(big.as_bytes(), &ch()).unwrap()[0].data.len(),
            (1 << 20) + 2
        );
    }
}
