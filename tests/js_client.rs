//! The browser client `clients/js/studio-relay.js`, loaded as an ES module
//! in headless Chromium (tests/js/native-browser.mjs) against the real relay
//! binary and a real Redis: routing by subscription, subscribe/unsubscribe
//! promises, the current subscriptions carried across a reconnect, resumes
//! that lose and repeat nothing under a running publisher, and one `onGap`
//! when a restarted relay cannot honour the resume.

mod common;

use common::node::NodeProc;
use common::{Redis, Relay, RelayOpts};
use serde_json::{json, Value};

const CH: &str = "claude-studio:agent:status";
const HISTORY: &str = "[history]\nsize = 10000\n";

fn ws_url(relay: &Relay) -> String {
    format!("ws://{}/ws", relay.addr())
}

fn need_chromium() {
    if !common::node::chromium_path().exists() {
        panic!("Debian chromium is required (apt-get install chromium; .ci/run installs it)");
    }
}

/// The page's `event` lines' data up to the event named `end` (skipping
/// every other line, kept in `page.seen`).
async fn data_until(page: &mut NodeProc, end: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let e = page.wait_for("event").await;
        if e["name"] == end {
            return got;
        }
        got.push(e["data"].clone());
    }
}

/// Publishes `payloads` then a global `end` event; returns what the page got before it.
async fn routed(redis: &Redis, page: &mut NodeProc, payloads: &[Value]) -> Vec<Value> {
    for p in payloads {
        redis.publish(CH, p.to_string()).await;
    }
    redis.publish("claude-studio:end", "{}").await;
    data_until(page, "end").await
}

/// Sends `cmd` with `arg` and returns the page's `resolved`/`rejected` line for it.
async fn request(page: &mut NodeProc, id: u64, cmd: &str, arg: Value) -> Value {
    page.send(json!({"id": id, "cmd": cmd, "arg": arg})).await;
    loop {
        let v = page.next().await;
        if (v["ev"] == "resolved" || v["ev"] == "rejected") && v["id"] == id {
            return v;
        }
    }
}

/// The next `status` line saying "open".
async fn opened(page: &mut NodeProc) -> Value {
    loop {
        let s = page.wait_for("status").await;
        if s["status"] == "open" {
            return s;
        }
    }
}

fn count(page: &NodeProc, ev: &str) -> usize {
    page.seen.iter().filter(|v| v["ev"] == ev).count()
}

#[tokio::test]
async fn routes_by_subscription_and_carries_the_current_ones_across_a_reconnect() {
    need_chromium();
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, HISTORY).await;
    let mut page = NodeProc::native_browser(
        &ws_url(&relay),
        json!({"subscribe": {"agentId": ["dev_01"]}}),
    )
    .await;
    let open = opened(&mut page).await;
    assert!(
        open["recovered"].is_null(),
        "a first connection resumes nothing: {open}"
    );

    let ack = request(&mut page, 1, "subscribe", json!({"sessionId": "s1"})).await;
    assert_eq!(ack["ev"], "resolved", "{ack}");
    assert_eq!(
        ack["frame"],
        json!({"type": "subscribed", "sessionId": "s1"})
    );
    let got = routed(
        &redis,
        &mut page,
        &[
            json!({"agentId": "other", "n": 0}),
            json!({"agentId": "dev_01", "n": 1}),
            json!({"sessionId": "s1", "n": 2}),
            json!({"sessionId": "s2", "n": 3}),
            json!({"n": 4}),
        ],
    )
    .await;
    assert_eq!(
        got,
        [
            json!({"agentId": "dev_01", "n": 1}),
            json!({"sessionId": "s1", "n": 2}),
            json!({"n": 4}),
        ]
    );
    // Per-event handlers (relay.on) see their event too.
    redis.publish("claude-studio:marker", r#"{"m":1}"#).await;
    assert_eq!(page.wait_for("on:marker").await["data"], json!({"m": 1}));

    // An error frame rejects the promise with the relay's code; nothing changes.
    let bad = request(&mut page, 2, "subscribe", json!({"nope": "x"})).await;
    assert_eq!(bad["ev"], "rejected");
    assert_eq!(bad["code"], "unknown_field");
    let ack = request(&mut page, 3, "unsubscribe", json!({"agentId": "dev_01"})).await;
    assert_eq!(ack["ev"], "resolved", "{ack}");
    assert_eq!(ack["subscriptions"], json!({"sessionId": ["s1"]}));

    // A new connection asks for what is held now: s1, and no longer dev_01.
    page.send(json!({"id": 4, "cmd": "reconnect"})).await;
    let open = opened(&mut page).await;
    assert_eq!(open["recovered"], true, "{open}");
    let got = routed(
        &redis,
        &mut page,
        &[
            json!({"agentId": "dev_01", "n": 5}),
            json!({"sessionId": "s1", "n": 6}),
        ],
    )
    .await;
    assert_eq!(got, [json!({"sessionId": "s1", "n": 6})]);
    assert_eq!(count(&page, "gap"), 0, "{:?}", page.seen);
    assert_eq!(count(&page, "error"), 0, "{:?}", page.seen);
}

#[tokio::test]
async fn connections_dropped_mid_stream_lose_and_repeat_nothing() {
    const N: u64 = 1500;
    need_chromium();
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, HISTORY).await;
    let mut page =
        NodeProc::native_browser(&ws_url(&relay), json!({"subscribe": {"agentId": "a1"}})).await;
    opened(&mut page).await;
    let mut conn = redis.conn().await;
    let publisher = tokio::spawn(async move {
        for start in (0..N).step_by(10) {
            let items: Vec<(String, String)> = (start..(start + 10).min(N))
                .flat_map(|n| {
                    [
                        (CH.to_owned(), json!({"agentId": "a1", "n": n}).to_string()),
                        (CH.to_owned(), json!({"agentId": "a2", "n": n}).to_string()),
                    ]
                })
                .collect();
            conn.publish_many(&items).await;
            // Paced (about 1.5 s in all), so the drops below land while it
            // is still publishing.
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        conn.publish("claude-studio:end", "{}").await;
    });
    let mut seen = Vec::new();
    let mut last_offset = 0;
    let mut drops = 0;
    loop {
        let e = page.wait_for("event").await;
        if e["name"] == "end" {
            break;
        }
        assert_eq!(e["data"]["agentId"], "a1", "{e}");
        let offset = e["offset"].as_u64().expect("offset");
        assert!(offset > last_offset, "{offset} after {last_offset}");
        last_offset = offset;
        seen.push(e["data"]["n"].as_u64().unwrap());
        if [200, 600, 1000].contains(&seen.len()) {
            page.send(json!({"id": seen.len(), "cmd": "reconnect"}))
                .await;
            drops += 1;
        }
    }
    publisher.await.unwrap();
    assert_eq!(drops, 3);
    assert_eq!(
        seen,
        (0..N).collect::<Vec<_>>(),
        "every number once, in order"
    );
    // A drop asked for near the end may land after the last event; its
    // resume still has to come.
    let is_resume = |v: &serde_json::Value| {
        v["ev"] == "status" && v["status"] == "open" && v["recovered"] == true
    };
    while page.seen.iter().filter(|v| is_resume(v)).count() < 3 {
        let v = page.next().await;
        assert!(
            !(v["ev"] == "status" && v["status"] == "open" && v["recovered"] == false),
            "{v}"
        );
    }
    let resumed = page.seen.iter().filter(|v| is_resume(v)).count();
    assert_eq!(resumed, 3, "{:?}", page.seen);
    assert_eq!(count(&page, "gap"), 0);
    assert!(
        relay
            .metric("relay_recoveries_total{result=\"recovered\"}")
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn a_restarted_relay_refuses_the_resume_one_gap_then_events_flow() {
    need_chromium();
    let redis = Redis::start().await;
    // One fixed port, so the restarted relay is where the page reconnects.
    let port = common::free_port();
    let opts = || RelayOpts {
        listeners: 0,
        extra: format!("[[listeners]]\nbind = \"127.0.0.1:{port}\"\n{HISTORY}"),
        ..Default::default()
    };
    let relay = Relay::start_with(&redis.url(), opts()).await;
    let mut page = NodeProc::native_browser(
        &ws_url(&relay),
        json!({"subscribe": {"agentId": "a1"}, "minBackoffMs": 50, "maxBackoffMs": 500}),
    )
    .await;
    opened(&mut page).await;
    let got = routed(&redis, &mut page, &[json!({"agentId": "a1", "n": 1})]).await;
    assert_eq!(got, [json!({"agentId": "a1", "n": 1})]);

    drop(relay);
    let relay = Relay::start_with(&redis.url(), opts()).await;
    let open = opened(&mut page).await;
    assert_eq!(open["recovered"], false, "a new epoch: {open}");
    let got = routed(&redis, &mut page, &[json!({"agentId": "a1", "n": 2})]).await;
    assert_eq!(got, [json!({"agentId": "a1", "n": 2})]);
    let gaps: Vec<&Value> = page.seen.iter().filter(|v| v["ev"] == "gap").collect();
    assert_eq!(
        gaps,
        [&json!({"ev": "gap", "reason": "history_unavailable", "source": "history"})],
        "onGap once for the incident: {:?}",
        page.seen
    );
    assert_eq!(
        relay
            .metric("relay_recoveries_total{result=\"unavailable\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_revoked_token_is_terminal_and_stops_the_client() {
    need_chromium();
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[auth]\ntokens = [\"t1\"]\n").await;
    let mut page = NodeProc::native_browser(
        &ws_url(&relay),
        json!({"token": "t1", "subscribe": {"agentId": "a1"}, "minBackoffMs": 10, "maxBackoffMs": 50}),
    )
    .await;
    opened(&mut page).await;
    let outcome = relay
        .reload("studio_relay=debug,info", "[auth]\ntokens = [\"t2\"]\n")
        .await;
    assert_eq!(outcome["message"], "config reloaded", "{outcome}");
    let err = page.wait_for("error").await;
    assert_eq!(err["code"], "close_code", "{err}");
    let closed = page.wait_for("status").await;
    assert_eq!(closed["status"], "closed", "{closed}");
    assert_eq!(closed["code"], 1008);
    assert_eq!(closed["retrying"], false);
    // The client knows it is closed for good: a change is refused at once.
    let refused = request(&mut page, 1, "subscribe", json!({"sessionId": "s1"})).await;
    assert_eq!(refused["ev"], "rejected");
    assert_eq!(refused["code"], "closed");
    assert!(
        !page
            .seen
            .iter()
            .skip_while(|v| v["code"] != 1008)
            .any(|v| v["status"] == "connecting"),
        "no new attempt after 1008: {:?}",
        page.seen
    );
}

#[tokio::test]
async fn the_heartbeat_notices_a_stalled_connection_and_the_resume_fills_the_hole() {
    need_chromium();
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, HISTORY).await;
    let mut page = NodeProc::native_browser(
        &ws_url(&relay),
        json!({
            "subscribe": {"agentId": "a1"},
            "heartbeatMs": 200,
            "connectTimeoutMs": 1000,
            "minBackoffMs": 50,
            "maxBackoffMs": 200,
        }),
    )
    .await;
    opened(&mut page).await;
    let batch = |r: std::ops::Range<u64>| -> Vec<Value> {
        r.map(|n| json!({"agentId": "a1", "n": n})).collect()
    };
    let mut got = routed(&redis, &mut page, &batch(0..10)).await;

    // Offline: the socket stays "open" but nothing moves either way.
    page.send(json!({"id": 1, "cmd": "offline", "arg": true}))
        .await;
    page.wait_for("done").await;
    for p in batch(10..20) {
        redis.publish(CH, p.to_string()).await;
    }
    loop {
        let s = page.wait_for("status").await;
        if s["reason"] == "heartbeat timeout" {
            assert_eq!(s["retrying"], true, "{s}");
            break;
        }
    }
    page.send(json!({"id": 2, "cmd": "offline", "arg": false}))
        .await;
    let open = opened(&mut page).await;
    assert_eq!(open["recovered"], true, "{open}");
    got.extend(routed(&redis, &mut page, &batch(20..30)).await);
    assert_eq!(got, batch(0..30), "every number once, in order");
    assert_eq!(count(&page, "gap"), 0, "{:?}", page.seen);
}
