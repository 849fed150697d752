//! NATS as a source (SPEC §10) against the real binary and a private
//! nats-server: routing, health beside Redis, the gap after a NATS restart,
//! the §5 payload rules, and the Claude Studio corpus delivered the same
//! through NATS as through Redis.

mod common;

use common::nats::{publish, NatsServer};
use common::{Client, Redis, Relay, RelayOpts, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A websocket-only Socket.IO session on `/` (as in tests/socketio.rs),
/// past its CONNECT reply.
async fn socketio_session(relay: &Relay, query: &str) -> RawWs {
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket{query}",
        relay.addr()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert!(sio_next(&mut ws).await.starts_with('0'), "Engine.IO open");
    ws.send(Message::Text("40".into())).await.unwrap();
    assert!(sio_next(&mut ws).await.starts_with("40"), "CONNECT reply");
    ws
}

/// The next Socket.IO packet, answering Engine.IO pings.
async fn sio_next(ws: &mut RawWs) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no packet within the wait")
            .unwrap()
            .unwrap();
        match msg {
            Message::Text(t) if t.as_str() == "2" => {
                ws.send(Message::Text("3".into())).await.unwrap()
            }
            Message::Text(t) => return t.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A relay reading `nats` (and Redis at `redis_url`, "" = none), with more
/// TOML sections in `extra`; waits for /healthz 200 when `wait`.
async fn relay(redis_url: &str, nats: &NatsServer, extra: &str, wait: bool) -> Relay {
    let opts = RelayOpts {
        extra: format!("[nats]\nurl = \"{}\"\n{extra}", nats.url()),
        wait_redis: wait,
        ..Default::default()
    };
    Relay::start_with(redis_url, opts).await
}

/// The event frames `c` gets up to the global `marker` event (so "not
/// delivered" is proven by order, not by waiting).
async fn events_until(c: &mut Client, marker: &str) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        let v = c.next_json().await;
        assert_eq!(v["type"], "event", "{v}");
        if v["event"] == marker {
            return got;
        }
        got.push(v);
    }
}

#[tokio::test]
async fn nats_events_reach_ws_clients_routed_by_agent_id() {
    let nats = NatsServer::start().await;
    let relay = relay("", &nats, "", true).await;
    let mut a = relay.client("agentId=a1").await;
    let mut b = Client::connect(relay.addrs[1], "agentId=b1").await;
    let mut all = relay.client("all=true").await;
    let nc = nats.client().await;
    publish(
        &nc,
        &[
            ("claude-studio.agent:status", br#"{"agentId":"a1","n":1}"#),
            ("claude-studio.agent:status", br#"{"agentId":"b1","n":2}"#),
            ("claude-studio.marker", b"{}"),
        ],
    )
    .await;
    let frame = |n: u64, agent: &str| json!({"type": "event", "event": "agent:status", "data": {"agentId": agent, "n": n}});
    assert_eq!(events_until(&mut a, "marker").await, [frame(1, "a1")]);
    assert_eq!(events_until(&mut b, "marker").await, [frame(2, "b1")]);
    assert_eq!(
        events_until(&mut all, "marker").await,
        [frame(1, "a1"), frame(2, "b1")]
    );
    assert_eq!(
        relay
            .metric("relay_source_messages_total{source=\"nats\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn a_nats_only_relay_is_healthy_with_redis_off() {
    let nats = NatsServer::start().await;
    let relay = relay("", &nats, "", true).await;
    let (status, body) = relay.health().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redis"], "off");
    assert_eq!(body["sources"], json!({"nats": "up"}));
    assert_eq!(relay.metric("relay_source_up{source=\"nats\"}").await, 1.0);
}

#[tokio::test]
async fn nats_down_at_boot_then_appears_without_a_gap() {
    let mut nats = NatsServer::not_started();
    let relay = relay("", &nats, "", false).await;
    let (status, body) = relay.health().await;
    assert_eq!((status, &body["sources"]["nats"]), (503, &json!("down")));
    let mut c = relay.client("agentId=a1").await;

    nats.restart().await;
    relay.wait_health(200).await;
    let nc = nats.client().await;
    publish(&nc, &[("claude-studio.x", br#"{"agentId":"a1"}"#)]).await;
    // The first subscription after start is not a gap: the event comes first.
    let v = c.next_json().await;
    assert_eq!(
        v,
        json!({"type": "event", "event": "x", "data": {"agentId": "a1"}})
    );
}

#[tokio::test]
async fn nats_killed_then_restarted_sends_one_gap_and_events_flow_again() {
    let mut nats = NatsServer::start().await;
    let relay = relay("", &nats, "", true).await;
    let mut a = relay.client("agentId=a1").await;
    let mut all = Client::connect(relay.addrs[1], "all=true").await;

    nats.kill();
    let body = relay.wait_health(503).await;
    assert_eq!(body["sources"]["nats"], "down", "{body}");
    assert_eq!(relay.metric("relay_source_up{source=\"nats\"}").await, 0.0);

    nats.restart().await;
    let body = relay.wait_health(200).await;
    assert_eq!(body["sources"]["nats"], "up");
    for c in [&mut a, &mut all] {
        assert_eq!(
            c.next_json().await,
            json!({"type": "gap", "reason": "nats_reconnected", "source": "nats"})
        );
    }
    let nc = nats.client().await;
    publish(
        &nc,
        &[
            ("claude-studio.agent:status", br#"{"agentId":"a1","n":1}"#),
            ("claude-studio.marker", b"{}"),
        ],
    )
    .await;
    // Events flow again, and no second gap comes before them.
    for c in [&mut a, &mut all] {
        let got = events_until(c, "marker").await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["data"]["n"], 1);
    }
}

#[tokio::test]
async fn a_socketio_client_gets_routed_nats_events_and_the_nats_gap() {
    let mut nats = NatsServer::start().await;
    let relay = relay("", &nats, "", true).await;
    let mut ws = socketio_session(&relay, "&agentId=a1").await;
    let nc = nats.client().await;
    publish(
        &nc,
        &[
            ("claude-studio.agent:status", br#"{"agentId":"b1","n":0}"#),
            ("claude-studio.agent:status", br#"{"agentId":"a1","n":1}"#),
        ],
    )
    .await;
    assert_eq!(
        sio_next(&mut ws).await,
        r#"42["agent:status",{"agentId":"a1","n":1}]"#
    );

    nats.restart().await;
    assert_eq!(
        sio_next(&mut ws).await,
        r#"42["relay:gap",{"reason":"nats_reconnected","source":"nats"}]"#
    );
}

#[tokio::test]
async fn redis_down_while_nats_up_is_unhealthy_but_nats_events_still_flow() {
    let mut redis = Redis::start().await;
    let nats = NatsServer::start().await;
    let relay = relay(&redis.url(), &nats, "", true).await;
    let (_, body) = relay.health().await;
    assert_eq!(body["sources"], json!({"redis": "up", "nats": "up"}));
    let mut c = relay.client("agentId=a1").await;

    redis.kill();
    let body = relay.wait_health(503).await;
    assert_eq!(body["redis"], "down", "{body}");
    assert_eq!(body["sources"], json!({"redis": "down", "nats": "up"}));
    let nc = nats.client().await;
    publish(
        &nc,
        &[("claude-studio.agent:status", br#"{"agentId":"a1"}"#)],
    )
    .await;
    let v = c.next_json().await;
    assert_eq!(
        (v["type"].as_str(), v["event"].as_str()),
        (Some("event"), Some("agent:status")),
        "{v}"
    );
}

#[tokio::test]
async fn bad_payloads_are_counted_and_text_arrives_as_a_string() {
    let nats = NatsServer::start().await;
    let relay = relay("", &nats, "", true).await;
    let mut all = relay.client("all=true").await;
    let nc = nats.client().await;
    publish(
        &nc,
        &[
            ("claude-studio.bin", b"\xff\xfe{}"),
            ("claude-studio.text", b"plain words"),
            ("claude-studio.marker", b"{}"),
        ],
    )
    .await;
    assert_eq!(
        events_until(&mut all, "marker").await,
        [json!({"type": "event", "event": "text", "data": "plain words"})]
    );
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
        1.0
    );
    // Every message is counted as received, the dropped one too.
    assert_eq!(
        relay
            .metric("relay_source_messages_total{source=\"nats\"}")
            .await,
        3.0
    );
}

/// The corpus: `{"event": NAME, "data": PAYLOAD}` per line.
fn corpus() -> Vec<(String, String)> {
    let here = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/corpus/claude-studio-events.jsonl"
    );
    let text = std::fs::read_to_string(here)
        .or_else(|_| std::fs::read_to_string("/work/shared/corpus/claude-studio-events.jsonl"))
        .expect("shared/corpus/claude-studio-events.jsonl beside the repository");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["event"].as_str().unwrap().to_owned(),
                v["data"].to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_corpus_is_delivered_the_same_through_nats_and_redis() {
    let redis = Redis::start().await;
    let nats = NatsServer::start().await;
    let routing = "[routing]\nfields = [\"agentId\", \"sessionId\", \"targetAgentId\", \"threadId\", \"projectId\"]\n";
    let relay = relay(&redis.url(), &nats, routing, true).await;
    let queries = [
        "agentId=dev_01",
        "sessionId=dev_01",
        "targetAgentId=reviewer_02",
        "threadId=th_42",
        "projectId=proj_7",
        "agentId=nobody",
        "all=true",
    ];
    let mut clients = Vec::new();
    for q in queries {
        clients.push(relay.client(q).await);
    }
    let events = corpus();
    assert!(events.len() >= 10, "corpus too small: {}", events.len());

    let mut conn = redis.conn().await;
    let mut items: Vec<(String, String)> = events
        .iter()
        .map(|(e, d)| (format!("claude-studio:{e}"), d.clone()))
        .collect();
    items.push(("claude-studio:corpus-end".into(), "{}".into()));
    conn.publish_many(&items).await;
    let mut via_redis = Vec::new();
    for c in &mut clients {
        via_redis.push(events_until(c, "corpus-end").await);
    }

    let nc = nats.client().await;
    let subjects: Vec<String> = events
        .iter()
        .map(|(e, _)| format!("claude-studio.{e}"))
        .collect();
    let mut items: Vec<(&str, &[u8])> = subjects
        .iter()
        .zip(&events)
        .map(|(s, (_, d))| (s.as_str(), d.as_bytes()))
        .collect();
    items.push(("claude-studio.corpus-end", b"{}"));
    publish(&nc, &items).await;
    let mut via_nats = Vec::new();
    for c in &mut clients {
        via_nats.push(events_until(c, "corpus-end").await);
    }

    for ((q, r), n) in queries.iter().zip(&via_redis).zip(&via_nats) {
        assert_eq!(r, n, "client {q}: Redis and NATS deliveries differ");
    }
    // The comparison means something: the firehose got every event, byte
    // for byte, and routing picked subsets.
    let firehose = via_nats.last().unwrap();
    assert_eq!(firehose.len(), events.len());
    for (frame, (name, data)) in firehose.iter().zip(&events) {
        assert_eq!(frame["event"], name.as_str());
        assert_eq!(frame["data"], serde_json::from_str::<Value>(data).unwrap());
    }
    let sizes: Vec<usize> = via_nats.iter().map(Vec::len).collect();
    assert!(
        sizes[..sizes.len() - 1].iter().all(|&n| n < events.len()),
        "{sizes:?}"
    );
    assert!(
        sizes[0] > sizes[5],
        "dev_01 gets more than globals: {sizes:?}"
    );
}

#[tokio::test]
async fn a_reload_that_changes_nats_waits_for_a_restart_and_keeps_it_running() {
    let nats = NatsServer::start().await;
    let relay = relay("", &nats, "", true).await;
    let mut c = relay.client("agentId=a1").await;
    let from = relay.log_len();
    let elsewhere = format!(
        "[nats]\nurl = \"nats://u:hunter2@127.0.0.1:{}\"\nsubjects = [\"other.>\"]\n",
        common::free_port()
    );
    let line = relay.reload("studio_relay=debug,info", &elsewhere).await;
    assert_eq!(line["message"], "config reloaded", "{line}");
    let deferred = relay
        .wait_log(from, "changed in the file; needs a restart")
        .await;
    assert_eq!(deferred["key"], "nats", "{deferred}");
    assert!(
        !relay.log_text().contains("hunter2"),
        "a password was logged"
    );
    // The running subscription is untouched: same server, same subjects.
    assert_eq!(relay.health().await.0, 200);
    let nc = nats.client().await;
    publish(&nc, &[("claude-studio.still", br#"{"agentId":"a1"}"#)]).await;
    assert_eq!(c.next_json().await["event"], "still");
}
