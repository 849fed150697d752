//! Redis misbehaving for real: down at boot, SIGKILLed and restarted on the
//! same port, SIGSTOPped (a hung server that still holds its sockets).

mod common;

use std::time::Duration;

use common::{Redis, Relay, RelayOpts};
use serde_json::json;

const CH: &str = "claude-studio:agent:status";

/// Publishes until the relay delivers (it may take a probe interval after
/// /healthz turns green on another code path); returns the frame.
async fn publish_until_received(
    redis: &Redis,
    c: &mut common::Client,
    payload: &str,
) -> serde_json::Value {
    assert!(
        redis.publish(CH, payload).await >= 1,
        "relay is not subscribed"
    );
    c.next_of_type("event").await
}

#[tokio::test]
async fn redis_down_at_boot_then_appears_without_a_gap() {
    let port = common::free_port();
    let relay = Relay::start_without_redis(port).await;
    assert_eq!(relay.health().await.0, 503);
    let mut c = relay.client("agentId=a").await;

    // Redis appears on that port later.
    let mut redis = Redis::start().await;
    redis.kill();
    redis.port = port;
    redis.restart().await;
    relay.wait_health(200).await;
    let v = publish_until_received(&redis, &mut c, r#"{"agentId":"a","n":1}"#).await;
    assert_eq!(v["data"]["n"], 1);
    // The first subscription after start is not a gap: the event above came first.
    assert_eq!(relay.metric("relay_redis_reconnects_total").await, 0.0);
}

#[tokio::test]
async fn redis_killed_and_restarted_keeps_clients_and_sends_one_gap_each() {
    let mut redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut a = relay.client("agentId=a").await;
    let mut b = common::Client::connect(relay.addrs[1], "all=true").await;
    redis.publish(CH, r#"{"agentId":"a","n":0}"#).await;
    assert_eq!(a.next_json().await["data"]["n"], 0);
    assert_eq!(b.next_json().await["data"]["n"], 0);

    redis.kill();
    let (status, body) = {
        relay.wait_health(503).await;
        relay.health().await
    };
    assert_eq!((status, body["redis"].as_str()), (503, Some("down")));
    assert_eq!(relay.metric("relay_redis_up").await, 0.0);

    redis.restart().await;
    relay.wait_health(200).await;
    for c in [&mut a, &mut b] {
        let gap = c.next_json().await;
        assert_eq!(
            gap,
            json!({"type": "gap", "reason": "redis_reconnected", "source": "redis"})
        );
    }
    // Events flow again without the clients doing anything, and no second gap.
    redis.publish(CH, r#"{"agentId":"a","n":1}"#).await;
    assert_eq!(a.next_json().await["data"]["n"], 1);
    assert_eq!(b.next_json().await["data"]["n"], 1);
    assert_eq!(relay.metric("relay_redis_reconnects_total").await, 1.0);
    assert_eq!(relay.metric("relay_redis_up").await, 1.0);
    assert_eq!(
        relay.health().await.1["connections"],
        2,
        "no WebSocket was closed"
    );
}

#[tokio::test]
async fn long_outage_backs_off_without_flooding_the_log() {
    let mut redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = relay.client("agentId=a").await;
    redis.kill();
    relay.wait_health(503).await;
    // The outage itself is what is being tested, so it lasts a fixed time.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let logs = relay.log_text();
    let attempts = logs.matches("redis connect failed").count();
    let warnings = logs
        .matches("redis unavailable; retrying with backoff")
        .count();
    // 100 ms doubling: ~5 attempts in 4 s (not 40), and at most one warning per minute.
    assert!(
        (2..=8).contains(&attempts),
        "{attempts} attempts in 4 s:\n{logs}"
    );
    assert!(warnings <= 1, "{warnings} warnings");
    redis.restart().await;
    relay.wait_health(200).await;
    assert_eq!(c.next_json().await["type"], "gap");
}

#[tokio::test]
async fn hung_redis_is_detected_by_the_liveness_probe() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = relay.client("agentId=a").await;
    redis.signal("STOP");
    // TCP stays open; only the probe can tell. 503 within the probe timeout.
    let body = relay.wait_health(503).await;
    assert_eq!(body["redis"], "down");
    assert_eq!(relay.metric("relay_redis_up").await, 0.0);
    assert!(
        relay.log_text().contains("liveness probe"),
        "{}",
        relay.log_text()
    );
    redis.signal("CONT");
    relay.wait_health(200).await;
    assert_eq!(
        c.next_json().await,
        json!({"type": "gap", "reason": "redis_reconnected", "source": "redis"})
    );
    let v = publish_until_received(&redis, &mut c, r#"{"agentId":"a","after":"stop"}"#).await;
    assert_eq!(v["data"]["after"], "stop");
}

#[tokio::test]
async fn liveness_off_still_notices_a_closed_connection() {
    let mut redis = Redis::start().await;
    let relay = Relay::start_with(
        &redis.url(),
        RelayOpts {
            redis_extra: "liveness_interval_ms = 0\n".into(),
            ..Default::default()
        },
    )
    .await;
    let mut c = relay.client("agentId=a").await;
    redis.kill();
    relay.wait_health(503).await;
    redis.restart().await;
    relay.wait_health(200).await;
    assert_eq!(c.next_json().await["type"], "gap");
}
