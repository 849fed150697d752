//! SPEC §12 for native clients, against the real binary and a real Redis:
//! offsets, `since=` resumes (exact replay, then live; no hole and no
//! duplicate under a publisher running flat out), and every way a resume
//! is refused (wrong epoch, evicted, a Redis restart, history off).

mod common;

use common::{Client, Redis, Relay};
use serde_json::{json, Value};

const CH: &str = "claude-studio:agent:status";

async fn relay_with_history(redis: &Redis, size: usize) -> Relay {
    Relay::with_extra(redis, &format!("[history]\nsize = {size}\n")).await
}

/// `since=<epoch>:<offset>` for the last event `c` saw (or its welcome).
fn since(epoch: &Value, offset: u64) -> String {
    format!("since={}:{offset}", epoch.as_str().unwrap())
}

/// Event frames up to the one named `end`, as (n, offset).
async fn until_end(c: &mut Client) -> Vec<(i64, u64)> {
    let mut got = Vec::new();
    loop {
        let f = c.next_of_type("event").await;
        if f["event"] == "end" {
            return got;
        }
        got.push((
            f["data"]["n"].as_i64().unwrap(),
            f["offset"].as_u64().unwrap(),
        ));
    }
}

#[tokio::test]
async fn a_resume_replays_exactly_the_missed_matching_events_once_then_live() {
    let redis = Redis::start().await;
    let relay = relay_with_history(&redis, 1000).await;
    let mut c = relay.client("agentId=a1&sessionId=s1").await;
    let epoch = c.welcome["epoch"].clone();
    assert!(epoch.is_string(), "{}", c.welcome);
    assert_eq!(c.welcome["offset"], 0);
    assert!(c.welcome.get("recovered").is_none());
    redis
        .publish(CH, json!({"agentId": "a1", "n": 0}).to_string())
        .await;
    let first = c.next_of_type("event").await;
    assert_eq!(first["offset"], 1);
    drop(c);

    // Missed: mine, someone else's, one matching two of my keys, a global one.
    for p in [
        json!({"agentId": "a1", "n": 1}),
        json!({"agentId": "a2", "n": -1}),
        json!({"agentId": "a1", "sessionId": "s1", "n": 2}),
        json!({"n": 3}),
        json!({"agentId": "a2", "n": -2}),
    ] {
        redis.publish(CH, p.to_string()).await;
    }
    // A firehose client proves all five were routed before the resume: the
    // marker after them got offset 7. (It may also see some of the five,
    // if they were still on their way to the hub when it registered.)
    let mut probe = relay.client("all=true").await;
    redis.publish("claude-studio:mark", r#"{"n":99}"#).await;
    let mark = loop {
        let f = probe.next_of_type("event").await;
        if f["data"]["n"] == 99 {
            break f;
        }
    };
    assert_eq!(mark["offset"], 7);

    let mut c = relay
        .client(&format!("agentId=a1&sessionId=s1&{}", since(&epoch, 1)))
        .await;
    assert_eq!(c.welcome["recovered"], true, "{}", c.welcome);
    assert_eq!(c.welcome["offset"], 7);
    redis
        .publish(CH, json!({"agentId": "a1", "n": 4}).to_string())
        .await;
    redis.publish("claude-studio:end", "{}").await;
    assert_eq!(
        until_end(&mut c).await,
        [(1, 2), (2, 4), (3, 5), (99, 7), (4, 8)]
    );
    assert_eq!(
        relay
            .metric("relay_recoveries_total{result=\"recovered\"}")
            .await,
        1.0
    );
    assert!(relay.metric("relay_history_events").await >= 9.0);
}

#[tokio::test]
async fn resumes_that_cannot_be_honoured_say_so_and_send_a_gap() {
    let mut redis = Redis::start().await;
    let relay = relay_with_history(&redis, 3).await;
    let c = relay.client("all=true").await;
    let epoch = c.welcome["epoch"].clone();
    drop(c);
    let mut probe = relay.client("all=true").await;
    for n in 0..5 {
        redis.publish(CH, json!({"n": n}).to_string()).await;
    }
    // All five routed (and kept, or evicted) before any resume below.
    for n in 1..=5 {
        assert_eq!(probe.next_of_type("event").await["offset"], n);
    }
    let gap = json!({"type": "gap", "reason": "history_unavailable", "source": "history"});
    let refused = |q: String| {
        let relay = &relay;
        let gap = gap.clone();
        async move {
            let mut c = relay.client(&format!("all=true&{q}")).await;
            assert_eq!(c.welcome["recovered"], false, "{q}: {}", c.welcome);
            assert_eq!(c.next_json().await, gap, "{q}");
        }
    };
    // Evicted: only offsets 3..5 are kept, so 1 and 2 are gone.
    refused(since(&epoch, 1)).await;
    // Another run's epoch, an offset never handed out, nonsense.
    refused(since(&json!("0000000000000000"), 4)).await;
    refused(since(&epoch, 99)).await;
    refused("since=garbage".into()).await;
    // Still kept: 2 → 3, 4, 5.
    let mut c = relay
        .client(&format!("all=true&{}", since(&epoch, 2)))
        .await;
    assert_eq!(c.welcome["recovered"], true);
    assert_eq!(c.next_of_type("event").await["offset"], 3);

    // A Redis restart loses what was published meanwhile: no resume across it.
    let last = relay.client("all=true").await.welcome["offset"]
        .as_u64()
        .unwrap();
    redis.restart().await;
    // `probe` was connected through the outage, so it sees the gap.
    assert_eq!(
        probe.next_of_type("gap").await["reason"],
        "redis_reconnected"
    );
    refused(since(&epoch, last)).await;
    assert_eq!(
        relay
            .metric("relay_recoveries_total{result=\"unavailable\"}")
            .await,
        5.0
    );
}

#[tokio::test]
async fn history_off_means_no_offsets_and_every_resume_is_refused() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = relay.client("all=true&since=abc:1").await;
    assert!(c.welcome.get("epoch").is_none(), "{}", c.welcome);
    assert_eq!(c.welcome["recovered"], false);
    assert_eq!(c.next_json().await["reason"], "history_unavailable");
    redis.publish(CH, "{}").await;
    let e = c.next_of_type("event").await;
    assert!(e.get("offset").is_none(), "{e}");
}

#[tokio::test]
async fn reconnecting_under_a_flat_out_publisher_loses_and_repeats_nothing() {
    const N: usize = 4000;
    let redis = Redis::start().await;
    let relay = relay_with_history(&redis, 10 * N).await;
    let mut c = relay.client("agentId=a1").await;
    let epoch = c.welcome["epoch"].clone();
    let mut last = c.welcome["offset"].as_u64().unwrap();
    let mut conn = redis.conn().await;
    let publisher = tokio::spawn(async move {
        for chunk in (0..N).collect::<Vec<_>>().chunks(50) {
            let items: Vec<(String, String)> = chunk
                .iter()
                .map(|n| (CH.to_owned(), json!({"agentId": "a1", "n": n}).to_string()))
                .collect();
            conn.publish_many(&items).await;
        }
        conn.publish("claude-studio:end", "{}").await;
    });
    let mut seen = Vec::with_capacity(N);
    let mut reconnects = 0;
    loop {
        let f = c.next_of_type("event").await;
        if f["event"] == "end" {
            break;
        }
        let offset = f["offset"].as_u64().unwrap();
        assert!(offset > last, "offsets go up: {offset} after {last}");
        last = offset;
        seen.push(f["data"]["n"].as_u64().unwrap() as usize);
        // Drop the connection every 500 events, mid-stream.
        if seen.len() % 500 == 0 {
            drop(c);
            c = relay
                .client(&format!("agentId=a1&{}", since(&epoch, last)))
                .await;
            assert_eq!(c.welcome["recovered"], true, "{}", c.welcome);
            reconnects += 1;
        }
    }
    publisher.await.unwrap();
    assert!(reconnects >= 7);
    assert_eq!(
        seen,
        (0..N).collect::<Vec<_>>(),
        "every event once, in order"
    );
}
