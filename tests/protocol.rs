//! SPEC §5 end to end: real redis-server, real relay binary, real WebSocket
//! clients. Absence of a frame is proven by a later marker event that the
//! client must receive next (per-connection order is guaranteed).

mod common;

use common::{Redis, Relay};
use futures_util::SinkExt;
use serde_json::json;

const CH: &str = "claude-studio:agent:message";

/// Publishes a global marker and asserts it is the next event the client sees.
async fn assert_next_is_marker(redis: &Redis, clients: &mut [&mut common::Client], tag: &str) {
    let n = redis
        .publish("claude-studio:marker", json!({"marker": tag}).to_string())
        .await;
    assert!(n >= 1, "relay not subscribed");
    for c in clients.iter_mut() {
        let v = c.next_json().await;
        assert_eq!(v["type"], "event", "{v}");
        assert_eq!(v["data"]["marker"], tag, "expected marker {tag}, got {v}");
    }
}

#[tokio::test]
async fn welcome_lists_url_subscriptions_and_events_route_by_agent() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut a = relay.client("agentId=a1&sessionId=s1").await;
    let mut b = relay.client("agentId=a2").await;
    assert_eq!(
        a.welcome["subscriptions"],
        json!({"agentId": ["a1"], "sessionId": ["s1"]})
    );
    assert_eq!(a.welcome["all"], false);
    assert_eq!(a.welcome["version"], env!("CARGO_PKG_VERSION"));
    assert!(a.welcome["connectionId"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    assert_ne!(a.welcome["connectionId"], b.welcome["connectionId"]);

    // Right after the welcome the subscription is live: no sleep needed.
    let payload = r#"{"agentId":"a1","text":"hi","n":[1,2.50,{"x":null}]}"#;
    redis.publish(CH, payload).await;
    let text = a.next_text().await;
    assert_eq!(
        text,
        format!(r#"{{"type":"event","event":"agent:message","data":{payload}}}"#),
        "data must be spliced byte for byte"
    );
    // sessionId routing; b gets neither.
    redis.publish(CH, r#"{"sessionId":"s1"}"#).await;
    assert_eq!(a.next_json().await["data"], json!({"sessionId": "s1"}));
    assert_next_is_marker(&redis, &mut [&mut a, &mut b], "m1").await;
}

#[tokio::test]
async fn routing_rules() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut a = relay.client("agentId=5").await;
    let mut other = relay.client("agentId=zzz").await;

    // A number matches by its JSON text.
    redis.publish(CH, r#"{"agentId":5}"#).await;
    assert_eq!(a.next_json().await["data"]["agentId"], 5);
    // 5.0 is different text.
    redis.publish(CH, r#"{"agentId":5.0}"#).await;
    // Matching on one field is enough even if another field does not match.
    redis
        .publish(CH, r#"{"agentId":"5","sessionId":"nobody"}"#)
        .await;
    assert_eq!(a.next_json().await["data"]["sessionId"], "nobody");
    // null / bool / array / object routing values count as absent: global.
    for v in ["null", "true", "[\"5\"]", "{\"a\":1}"] {
        redis.publish(CH, format!(r#"{{"agentId":{v}}}"#)).await;
        for c in [&mut a, &mut other] {
            let got = c.next_json().await;
            assert_eq!(
                got["data"]["agentId"].to_string(),
                v.replace(' ', ""),
                "{v}"
            );
        }
    }
    // No routing field: global. Not an object: global.
    redis.publish(CH, r#"{"other":1}"#).await;
    redis.publish(CH, "[1,2]").await;
    redis.publish(CH, "42").await;
    for c in [&mut a, &mut other] {
        assert_eq!(c.next_json().await["data"], json!({"other": 1}));
        assert_eq!(c.next_json().await["data"], json!([1, 2]));
        assert_eq!(c.next_json().await["data"], json!(42));
    }
    // A nested agentId does not route.
    redis
        .publish(CH, r#"{"inner":{"agentId":"zzz"},"agentId":"5"}"#)
        .await;
    assert_eq!(a.next_json().await["data"]["agentId"], "5");
    assert_next_is_marker(&redis, &mut [&mut a, &mut other], "end").await;
}

#[tokio::test]
async fn non_json_payload_arrives_as_a_json_string_and_non_utf8_is_dropped() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = relay.client("agentId=a1").await;
    redis.publish(CH, "plain text with \"quotes\"").await;
    let v = c.next_json().await;
    assert_eq!(v["data"], "plain text with \"quotes\"");
    redis.publish(CH, "").await;
    assert_eq!(c.next_json().await["data"], "");
    redis.publish(CH, [0xff_u8, 0xfe, b'{']).await;
    assert_next_is_marker(&redis, &mut [&mut c], "after-binary").await;
    assert_eq!(
        relay
            .metric("relay_invalid_payloads_total{kind=\"not_utf8\"}")
            .await,
        1.0
    );
    assert_eq!(
        relay
            .metric("relay_invalid_payloads_total{kind=\"not_json\"}")
            .await,
        2.0
    );
    assert!(
        !relay.log_text().contains("quotes"),
        "payloads must not be logged"
    );
}

#[tokio::test]
async fn subscribe_unsubscribe_acks_and_firehose() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = relay.client("").await;
    assert_eq!(
        c.welcome["subscriptions"],
        json!({"agentId": [], "sessionId": []})
    );

    let ack = c
        .subscribe(json!({"agentId": "a1", "sessionId": "s9"}))
        .await;
    assert_eq!(
        ack,
        json!({"type": "subscribed", "agentId": "a1", "sessionId": "s9"})
    );
    redis.publish(CH, r#"{"agentId":"a1"}"#).await;
    assert_eq!(c.next_json().await["data"]["agentId"], "a1");
    // Subscribing again is a no-op that is still acked.
    let ack = c.subscribe(json!({"agentId": "a1"})).await;
    assert_eq!(ack["agentId"], "a1");
    redis
        .publish(CH, r#"{"agentId":"a1","sessionId":"s9"}"#)
        .await;
    assert_eq!(
        c.next_json().await["data"]["sessionId"],
        "s9",
        "delivered once"
    );

    c.send_json(json!({"type": "unsubscribe", "agentId": "a1"}))
        .await;
    assert_eq!(
        c.next_json().await,
        json!({"type": "unsubscribed", "agentId": "a1"})
    );
    redis.publish(CH, r#"{"agentId":"a1"}"#).await;
    // Still subscribed to s9: this must be the next frame, which proves the
    // a1 event was not delivered (checked before the firehose goes on, which
    // would legitimately deliver it if the hub saw it after the subscribe).
    redis
        .publish(CH, r#"{"sessionId":"s9","after":"unsubscribe"}"#)
        .await;
    let v = c.next_json().await;
    assert_eq!(
        v["data"]["after"], "unsubscribe",
        "the a1 event after unsubscribe must not arrive: {v}"
    );

    // Firehose on: receives everything, once.
    let ack = c.subscribe(json!({"all": true})).await;
    assert_eq!(ack, json!({"type": "subscribed", "all": true}));
    redis.publish(CH, r#"{"agentId":"someone-else"}"#).await;
    let v = c.next_json().await;
    assert_eq!(v["data"]["agentId"], "someone-else", "{v}");
    redis.publish(CH, r#"{"sessionId":"s9"}"#).await;
    assert_eq!(c.next_json().await["data"]["sessionId"], "s9");
    c.send_json(json!({"type": "unsubscribe", "all": true}))
        .await;
    assert_eq!(c.next_json().await["type"], "unsubscribed");
    redis.publish(CH, r#"{"agentId":"someone-else"}"#).await;
    assert_next_is_marker(&redis, &mut [&mut c], "done").await;
}

#[tokio::test]
async fn firehose_from_the_url() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = relay.client("all=true").await;
    let mut d = relay.client("all=1&agentId=x").await;
    assert_eq!(c.welcome["all"], true);
    assert_eq!(d.welcome["all"], true);
    redis.publish(CH, r#"{"agentId":"x"}"#).await;
    assert_eq!(c.next_json().await["data"]["agentId"], "x");
    assert_eq!(d.next_json().await["data"]["agentId"], "x");
    assert_next_is_marker(&redis, &mut [&mut c, &mut d], "once").await;
}

#[tokio::test]
async fn ping_pong_and_every_error_code() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[limits]\nmax_subscriptions = 2\n").await;
    let mut c = relay.client("agentId=a").await;
    c.send_json(json!({"type": "ping"})).await;
    assert_eq!(c.next_json().await, json!({"type": "pong"}));

    let cases: &[(&str, &str)] = &[
        ("{not json", "bad_json"),
        ("[1]", "bad_request"),
        (r#"{"type":"dance"}"#, "bad_request"),
        (r#"{"type":"subscribe"}"#, "bad_request"),
        (r#"{"type":"subscribe","agentId":7}"#, "bad_request"),
        (r#"{"type":"subscribe","userId":"u"}"#, "unknown_field"),
        (
            r#"{"type":"subscribe","agentId":7,"userId":"u"}"#,
            "unknown_field",
        ),
        (
            r#"{"type":"subscribe","agentId":["b","c"]}"#,
            "too_many_subscriptions",
        ),
    ];
    for (frame, code) in cases {
        c.send_text(frame).await;
        let v = c.next_json().await;
        assert_eq!(v["type"], "error", "{frame}: {v}");
        assert_eq!(v["code"], *code, "{frame}: {v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Rejected whole: neither b nor c was added, so one more still fits.
    let ack = c.subscribe(json!({"agentId": "b"})).await;
    assert_eq!(ack["agentId"], "b");
    // The firehose does not count toward max_subscriptions.
    c.subscribe(json!({"all": true})).await;

    c.ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        vec![1, 2, 3].into(),
    ))
    .await
    .unwrap();
    let v = c.next_json().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str()),
        (Some("error"), Some("unsupported"))
    );
    // Still open after every error.
    c.send_json(json!({"type": "ping"})).await;
    assert_eq!(c.next_json().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn firehose_disabled() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[routing]\nallow_firehose = false\n").await;
    let mut c = relay.client("agentId=a").await;
    c.send_json(json!({"type": "subscribe", "all": true})).await;
    assert_eq!(c.next_json().await["code"], "firehose_disabled");
    let r = common::http(relay.addr(), "GET", "/ws?all=true", &common::ws_headers())
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(r.body.contains("firehose"), "{}", r.body);
}

#[tokio::test]
async fn both_listeners_get_the_same_events_and_event_names_strip_the_prefix() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    assert_eq!(relay.addrs.len(), 2);
    let mut a = common::Client::connect(relay.addrs[0], "agentId=a1").await;
    let mut b = common::Client::connect(relay.addrs[1], "agentId=a1").await;
    for (channel, name) in [
        ("claude-studio:agent:status", "agent:status"),
        ("claude-studio:x", "x"),
        ("claude-studio:", ""),
    ] {
        redis.publish(channel, r#"{"agentId":"a1"}"#).await;
        for c in [&mut a, &mut b] {
            let v = c.next_json().await;
            assert_eq!(v["event"], name);
        }
    }
    // Channels outside the pattern never arrive.
    assert_eq!(redis.publish("other:agent", r#"{"agentId":"a1"}"#).await, 0);
}

#[tokio::test]
async fn canary_is_never_delivered_or_counted() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = relay.client("all=true").await;
    // The relay's own canaries flow every 200 ms in this config; a foreign one too.
    redis
        .publish("claude-studio:__studio_relay__", "someone-elses-canary")
        .await;
    redis.publish(CH, r#"{"n":1}"#).await;
    let v = c.next_json().await;
    assert_eq!(v["data"], json!({"n": 1}), "{v}");
    assert_eq!(relay.metric("relay_redis_messages_total").await, 1.0);
}
