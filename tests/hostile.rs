//! Hostile input from both sides: malformed client frames and odd Redis
//! payloads. Every case has a defined answer and the relay keeps serving.

mod common;

use common::{Redis, Relay};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

async fn big_relay(redis: &Redis) -> Relay {
    Relay::with_extra(redis, "[limits]\nmax_client_message_bytes = 2097152\n").await
}

#[tokio::test]
async fn malformed_client_frames_get_error_codes_and_the_connection_survives() {
    let redis = Redis::start().await;
    let relay = big_relay(&redis).await;
    let mut c = relay.client("").await;
    let deep = "[".repeat(3000) + &"]".repeat(3000);
    let deep_obj = format!(
        r#"{{"type":"subscribe","agentId":{}"a"{}}}"#,
        "[".repeat(3000),
        "]".repeat(3000)
    );
    let many_values: Vec<String> = (0..100_000).map(|i| format!("a{i}")).collect();
    let many = json!({"type": "subscribe", "agentId": many_values}).to_string();
    let zeros = format!("[{}0]", "0,".repeat(99_999));
    let cases: Vec<(String, &str)> = vec![
        (String::new(), "bad_json"),
        ("   ".into(), "bad_json"),
        ("null".into(), "bad_request"),
        ("\"subscribe\"".into(), "bad_request"),
        (deep, "bad_json"),
        (deep_obj, "bad_json"),
        (many, "too_many_subscriptions"),
        (zeros, "bad_request"),
        (r#"{"type":"subscribe","agentId":1e999}"#.into(), "bad_json"),
        (
            r#"{"type":"subscribe","agentId":123456789012345678901234567890}"#.into(),
            "bad_request",
        ),
        (
            r#"{"type":"subscribe","agentId":{"$gt":""}}"#.into(),
            "bad_request",
        ),
        (
            r#"{"type":"subscribe","agentId":null}"#.into(),
            "bad_request",
        ),
        (r#"{"type":"subscribe","all":1}"#.into(), "bad_request"),
        (
            r#"{"type":"SUBSCRIBE","agentId":"a"}"#.into(),
            "bad_request",
        ),
        ("{\"type\":\"ping\"}garbage".into(), "bad_json"),
    ];
    for (frame, code) in &cases {
        c.send_text(frame).await;
        let v = c.next_json().await;
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some(*code)),
            "{:.80}",
            frame
        );
    }
    // Duplicate keys: the last one wins, as with JSON.parse.
    c.send_text(r#"{"type":"subscribe","agentId":"first","agentId":"last"}"#)
        .await;
    assert_eq!(
        c.next_json().await,
        json!({"type": "subscribed", "agentId": "last"})
    );
    assert_eq!(relay.health().await.1["connections"], 1);
}

#[tokio::test]
async fn invalid_utf8_text_frame_closes_1007() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = relay.client("").await;
    let mut other = relay.client("").await;
    c.ws.send(Message::Frame(Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(Data::Text),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(c.expect_close().await.0, 1007);
    other.send_json(json!({"type": "ping"})).await;
    assert_eq!(other.next_json().await["type"], "pong");
}

#[tokio::test]
async fn floods_of_pings_are_answered_in_order() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let c = relay.client("").await;
    const N: usize = 5000;
    let (mut tx, mut rx) = c.ws.split();
    let writer = tokio::spawn(async move {
        for i in 0..N {
            // Interleave protocol-level pings with JSON pings.
            if i % 2 == 0 {
                tx.feed(Message::Ping(vec![1, 2, 3].into())).await.unwrap();
            }
            tx.feed(Message::Text(r#"{"type":"ping"}"#.into()))
                .await
                .unwrap();
        }
        tx.flush().await.unwrap();
        tx
    });
    let mut pongs = 0;
    while pongs < N {
        match tokio::time::timeout(common::WAIT, rx.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                assert_eq!(t.as_str(), r#"{"type":"pong"}"#);
                pongs += 1;
            }
            Some(Ok(Message::Pong(_) | Message::Ping(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let _sink = writer.await.unwrap();
    assert_eq!(relay.health().await.1["connections"], 1);
}

#[tokio::test]
async fn odd_redis_payloads() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = relay.client("all=true").await;
    let ch = "claude-studio:odd";

    // 10 MiB JSON payload: more than send_queue_bytes, still delivered byte for byte.
    let big = format!(r#"{{"agentId":"a","blob":"{}"}}"#, "z".repeat(10 << 20));
    redis.publish(ch, &big).await;
    let text = c.next_text().await;
    assert_eq!(
        text.len(),
        big.len() + r#"{"type":"event","event":"odd","data":}"#.len()
    );
    assert!(text.ends_with(&format!("{big}}}")));

    // Whitespace around the payload is trimmed; inside it is kept.
    redis.publish(ch, "  \n{\"a\" : 1}\t ").await;
    assert_eq!(
        c.next_text().await,
        r#"{"type":"event","event":"odd","data":{"a" : 1}}"#
    );
    // Routing field of every JSON type.
    for v in ["1", "-0.5", "\"s\"", "null", "true", "{}", "[]"] {
        redis.publish(ch, format!(r#"{{"agentId":{v}}}"#)).await;
        let got = c.next_json().await;
        assert_eq!(
            got["data"]["agentId"],
            serde_json::from_str::<serde_json::Value>(v).unwrap()
        );
    }
    // Truncated JSON and a lone surrogate escape arrive as strings.
    redis.publish(ch, r#"{"agentId":"a""#).await;
    assert_eq!(c.next_json().await["data"], r#"{"agentId":"a""#);
    redis.publish(ch, "\u{0}\u{1f}").await;
    assert_eq!(c.next_json().await["data"], "\u{0}\u{1f}");
    // Not UTF-8: dropped; the next event still flows.
    redis.publish(ch, [b'"', 0xc3, 0x28, b'"']).await;
    redis.publish(ch, "{\"after\":true}").await;
    assert_eq!(c.next_json().await["data"]["after"], true);
    assert_eq!(
        relay
            .metric("relay_invalid_payloads_total{kind=\"not_utf8\"}")
            .await,
        1.0
    );
}
