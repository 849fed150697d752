//! Claude Studio's payloads (a JSON value per message) turned into an
//! [`Event`], once: the routing values found in the payload, and the payload
//! itself, proven to be JSON.
//!
//! The payload is walked a single time with serde's visitor: top-level keys
//! that are routing fields are read as raw JSON text, everything else is
//! skipped without building a tree, and the same walk proves the payload is
//! valid JSON so every wire format can splice it byte for byte.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::event::{Data, Event};

/// What a payload says about routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing<'a> {
    /// Not JSON at all (delivered as a JSON string, to everyone).
    NotJson,
    /// JSON, but not an object: a global event.
    NotObject,
    /// A JSON object; `values[i]` is the routing value of field `i`, if any.
    Object(Vec<Option<Cow<'a, str>>>),
}

impl Routing<'_> {
    /// Whether every connection gets the event (SPEC §5 routing rule 1).
    pub fn is_global(&self) -> bool {
        match self {
            Routing::NotJson | Routing::NotObject => true,
            Routing::Object(values) => values.iter().all(Option::is_none),
        }
    }
}

/// Reads the routing fields of a payload's top level.
///
/// A string value is used as is (unescaped); a number by its JSON text;
/// null, booleans, arrays and objects count as absent (SPEC §9). With
/// duplicate keys the last one wins, as with `JSON.parse`.
pub fn extract<'a>(payload: &'a str, fields: &[impl AsRef<str>]) -> Routing<'a> {
    let mut de = serde_json::Deserializer::from_str(payload);
    let seed = TopLevel { fields };
    match seed.deserialize(&mut de).and_then(|r| de.end().map(|()| r)) {
        Ok(Some(values)) => Routing::Object(values),
        Ok(None) => Routing::NotObject,
        Err(_) => Routing::NotJson,
    }
}

struct TopLevel<'f, F> {
    fields: &'f [F],
}

type Values<'a> = Option<Vec<Option<Cow<'a, str>>>>;

impl<'de, F: AsRef<str>> DeserializeSeed<'de> for TopLevel<'_, F> {
    type Value = Values<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: AsRef<str>> Visitor<'de> for TopLevel<'_, F> {
    type Value = Values<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values: Vec<Option<Cow<'de, str>>> = vec![None; self.fields.len()];
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match self
                .fields
                .iter()
                .position(|f| f.as_ref() == key.0.as_ref())
            {
                Some(i) => {
                    let raw: &'de RawValue = map.next_value()?;
                    values[i] = routing_value(raw.get());
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(values))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// An object key, borrowed unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Routing value of one raw JSON value (already validated by the walk).
fn routing_value(raw: &str) -> Option<Cow<'_, str>> {
    match raw.as_bytes().first()? {
        b'"' => {
            let inner = raw.get(1..raw.len() - 1)?;
            if inner.contains('\\') {
                serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
            } else {
                Some(Cow::Borrowed(inner))
            }
        }
        b'-' | b'0'..=b'9' => Some(Cow::Borrowed(raw)),
        _ => None,
    }
}

/// Builds the [`Event`] for a payload on `event_name`.
/// JSON whitespace around the payload is trimmed (SPEC §9); a payload that
/// is not JSON becomes [`Data::Text`] of the untrimmed text.
pub fn decode(event_name: &str, payload: &str, fields: &[Arc<str>], received: Instant) -> Event {
    let trimmed = payload.trim_matches([' ', '\t', '\n', '\r']);
    let routing = extract(trimmed, fields);
    let data = match routing {
        Routing::NotJson => Data::Text(payload.into()),
        _ => Data::Json(trimmed.into()),
    };
    let keys = match routing {
        Routing::Object(values) => values
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| Some((fields.get(i)?.clone(), Box::<str>::from(v?.as_ref()))))
            .collect(),
        _ => Vec::new(),
    };
    Event::new(event_name, data, keys, received)
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: [&str; 2] = ["agentId", "sessionId"];

    fn vals(payload: &str) -> Routing<'_> {
        extract(payload, &F)
    }

    fn obj(a: Option<&str>, s: Option<&str>) -> Routing<'static> {
        Routing::Object(vec![
            a.map(|x| Cow::Owned(x.to_owned())),
            s.map(|x| Cow::Owned(x.to_owned())),
        ])
    }

    #[test]
    fn extracts_top_level_strings_and_numbers() {
        assert_eq!(vals(r#"{"agentId":"a1","x":1}"#), obj(Some("a1"), None));
        assert_eq!(
            vals(r#"{"agentId":5,"sessionId":"s"}"#),
            obj(Some("5"), Some("s"))
        );
        assert_eq!(vals(r#"{"agentId":-1.5e3}"#), obj(Some("-1.5e3"), None));
        assert_eq!(vals(r#" { "agentId" : "a1" } "#), obj(Some("a1"), None));
    }

    #[test]
    fn non_scalar_values_count_as_absent() {
        for v in ["null", "true", "false", "[\"a\"]", "{\"agentId\":\"x\"}"] {
            let p = format!(r#"{{"agentId":{v}}}"#);
            let r = vals(&p);
            assert_eq!(r, obj(None, None), "{v}");
            assert!(r.is_global());
        }
    }

    #[test]
    fn nested_same_key_is_ignored() {
        let p = r#"{"data":{"agentId":"inner","sessionId":"x"},"agentId":"outer"}"#;
        assert_eq!(vals(p), obj(Some("outer"), None));
        let p = r#"{"list":[{"agentId":"inner"}]}"#;
        assert_eq!(vals(p), obj(None, None));
    }

    #[test]
    fn escapes_in_values_and_keys() {
        assert_eq!(
            vals(r#"{"agentId":"a\"b\\c\u00e9"}"#),
            obj(Some("a\"b\\cé"), None)
        );
        assert_eq!(vals(r#"{"agent\u0049d":"a1"}"#), obj(Some("a1"), None));
        assert_eq!(
            vals(r#"{"x":"he said \"agentId\":\"evil\"","agentId":"good"}"#),
            obj(Some("good"), None)
        );
    }

    #[test]
    fn duplicate_keys_last_wins() {
        assert_eq!(
            vals(r#"{"agentId":"a","agentId":"b"}"#),
            obj(Some("b"), None)
        );
    }

    #[test]
    fn non_objects_and_invalid() {
        assert_eq!(vals("[1,2]"), Routing::NotObject);
        assert_eq!(vals("\"str\""), Routing::NotObject);
        assert_eq!(vals("42"), Routing::NotObject);
        assert_eq!(vals("null"), Routing::NotObject);
        assert_eq!(vals("hello"), Routing::NotJson);
        assert_eq!(vals(""), Routing::NotJson);
        assert_eq!(vals(r#"{"agentId":"a"} trailing"#), Routing::NotJson);
        assert_eq!(vals(r#"{"agentId":"a""#), Routing::NotJson);
        assert_eq!(vals(r#"{"agentId":"a",}"#), Routing::NotJson);
    }

    #[test]
    fn huge_strings_and_deep_nesting() {
        let big = "x".repeat(5 << 20);
        let p = format!(r#"{{"pad":"{big}","agentId":"a1"}}"#);
        assert_eq!(vals(&p), obj(Some("a1"), None));
        // Skipped values are walked without recursion: deep nesting is fine.
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(vals(&deep), Routing::NotObject);
        let deep_obj = format!(
            r#"{{"x":{}1{},"agentId":"a"}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(vals(&deep_obj), obj(Some("a"), None));
        let unbalanced = "[".repeat(100_000);
        assert_eq!(vals(&unbalanced), Routing::NotJson);
    }

    fn studio(e: &Event) -> String {
        crate::wire::Wire::Studio.event_frame(e).as_str().to_owned()
    }

    #[test]
    fn decode_splices_json_and_stringifies_the_rest() {
        let t = Instant::now();
        let fields: Vec<Arc<str>> = F.iter().map(|f| Arc::from(*f)).collect();
        let f = fields.as_slice();
        let e = decode("agent:status", "  {\"agentId\":\"a1\"}\n", f, t);
        assert_eq!(
            studio(&e),
            r#"{"type":"event","event":"agent:status","data":{"agentId":"a1"}}"#
        );
        assert_eq!(e.keys, vec![(Arc::from("agentId"), "a1".into())]);
        assert!(!e.is_text());
        let e = decode("x", "not json", f, t);
        assert_eq!(
            studio(&e),
            r#"{"type":"event","event":"x","data":"not json"}"#
        );
        assert!(e.keys.is_empty() && e.is_text());
        let e = decode("x", "", f, t);
        assert_eq!(studio(&e), r#"{"type":"event","event":"x","data":""}"#);
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    const FIELDS: [&str; 3] = ["agentId", "sessionId", "k"];

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "[a-zA-Z0-9 \"\\\\\u{e9}\u{1}\n]{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop::sample::select(vec!["agentId", "sessionId", "k", "x", "a\"b"]),
                        inner
                    ),
                    0..6
                )
                .prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    /// What SPEC §9 says the routing value of `v` is, computed with serde_json.
    fn expected(v: &Value, field: &str) -> Option<String> {
        match v.as_object()?.get(field)? {
            Value::String(s) => Some(s.clone()),
            n @ Value::Number(_) => Some(n.to_string()),
            _ => None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn extraction_agrees_with_serde_json(v in json_value(), pretty in any::<bool>()) {
            let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
            let got = extract(&text, &FIELDS);
            match (&v, &got) {
                (Value::Object(_), Routing::Object(values)) => {
                    for (i, f) in FIELDS.iter().enumerate() {
                        prop_assert_eq!(values[i].as_deref().map(str::to_owned), expected(&v, f));
                    }
                }
                (Value::Object(_), other) => prop_assert!(false, "object read as {:?}", other),
                (_, Routing::NotObject) => {}
                (_, other) => prop_assert!(false, "{} read as {:?}", text, other),
            }
            // The frame built around it is valid JSON with data equal to the payload.
            let fields: Vec<Arc<str>> = FIELDS.iter().map(|f| Arc::from(*f)).collect();
            let e = decode("ev", &text, &fields, Instant::now());
            let frame = crate::wire::Wire::Studio.event_frame(&e);
            let frame_text = frame.as_str();
            let frame: Value = serde_json::from_str(frame_text).unwrap();
            // Compared with the text re-parsed: serde_json's float parsing is
            // not exact, the splice is (it copies the text).
            let reparsed: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&frame["data"], &reparsed);
            let data_at = frame_text.find(",\"data\":").unwrap() + 8;
            prop_assert_eq!(&frame_text[data_at..frame_text.len() - 1], text.trim());
        }

        #[test]
        fn arbitrary_text_never_panics_and_frames_stay_valid(s in "\\PC{0,64}|[\\[\\]{}\":,0-9a-z\\\\ ]{0,64}") {
            let fields: Vec<Arc<str>> = FIELDS.iter().map(|f| Arc::from(*f)).collect();
            let e = decode("ev", &s, &fields, Instant::now());
            let frame: Value = serde_json::from_str(crate::wire::Wire::Studio.event_frame(&e).as_str()).unwrap();
            prop_assert_eq!(frame["type"].as_str(), Some("event"));
            let parsed = serde_json::from_str::<Value>(s.trim_matches([' ', '\t', '\n', '\r']));
            prop_assert_eq!(e.is_text(), parsed.is_err());
        }
    }
}
