//! SPEC §11 with real clients: socket.io-client 4.8 under Node (default
//! transports, websocket only, polling only) and a page in headless
//! Chromium using socket.io-client's defaults, against the real binary.

mod common;

use common::node::{events_until_marker, NodeProc};
use common::{Redis, Relay};
use serde_json::json;

const CH: &str = "claude-studio:agent:status";

fn url(relay: &Relay) -> String {
    format!("http://{}", relay.addr())
}

#[tokio::test]
async fn default_transports_upgrade_to_websocket_and_route_with_no_leak() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = NodeProc::socketio(&url(&relay), json!({"query": {"agentId": "a1"}})).await;
    c.wait_for("connect").await;
    // An upgrade only starts from polling: seeing it proves both transports.
    assert_eq!(c.saw("upgrade").await["transport"], "websocket");
    let mine = json!({"agentId": "a1", "status": "busy", "n": [1, 2.5, {"x": null}]});
    let got = events_until_marker(&redis, &mut c, &[json!({"agentId": "a2"}), mine.clone()]).await;
    assert_eq!(got, [mine]);
    assert_eq!(
        relay
            .metric("relay_socketio_sessions_open{transport=\"websocket\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn websocket_only_and_polling_only_clients() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    for transports in [json!(["websocket"]), json!(["polling"])] {
        let mut c = NodeProc::socketio(
            &url(&relay),
            json!({"transports": transports, "query": {"sessionId": "s1"}}),
        )
        .await;
        let connect = c.wait_for("connect").await;
        assert_eq!(json!([connect["transport"]]), transports);
        let ev = json!({"sessionId": "s1", "k": "v"});
        let got =
            events_until_marker(&redis, &mut c, &[ev.clone(), json!({"sessionId": "s2"})]).await;
        assert_eq!(got, [ev], "{transports}");
    }
}

#[tokio::test]
async fn auth_subscriptions_emit_with_ack_and_unknown_namespaces() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[auth]\ntokens = [\"sekret\"]\n").await;
    let mut c = NodeProc::socketio(
        &url(&relay),
        json!({"auth": {"token": "sekret", "agentId": ["a", "b"]}}),
    )
    .await;
    c.wait_for("connect").await;
    c.send(
        json!({"cmd": "emitWithAck", "id": 1, "name": "subscribe", "args": [{"sessionId": "s9"}]}),
    )
    .await;
    let ack = c.wait_for("ack").await;
    assert_eq!(ack["args"], json!([{"ok": true}]));
    let got = events_until_marker(
        &redis,
        &mut c,
        &[
            json!({"agentId": "b"}),
            json!({"agentId": "c"}),
            json!({"sessionId": "s9"}),
        ],
    )
    .await;
    assert_eq!(got, [json!({"agentId": "b"}), json!({"sessionId": "s9"})]);
    c.send(json!({"cmd": "emitWithAck", "id": 2, "name": "subscribe", "args": [{"nope": "x"}]}))
        .await;
    assert_eq!(c.wait_for("ack").await["args"][0]["error"], "unknown_field");

    let mut no_token = NodeProc::socketio(&url(&relay), json!({"reconnection": false})).await;
    assert_eq!(
        no_token.wait_for("connect_error").await["message"],
        "unauthorized"
    );

    let mut admin = NodeProc::socketio(
        &format!("{}/admin", url(&relay)),
        json!({"auth": {"token": "sekret"}, "reconnection": false}),
    )
    .await;
    assert_eq!(
        admin.wait_for("connect_error").await["message"],
        "Invalid namespace"
    );
}

#[tokio::test]
async fn relay_gap_after_a_redis_restart() {
    let mut redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = NodeProc::socketio(&url(&relay), json!({"query": {"agentId": "a"}})).await;
    c.wait_for("connect").await;
    redis.restart().await;
    let (name, args) = c.next_event().await;
    assert_eq!(name, "relay:gap");
    assert_eq!(
        args[0],
        json!({"reason": "redis_reconnected", "source": "redis"})
    );
    relay.wait_health(200).await;
}

#[tokio::test]
async fn a_stalled_client_is_dropped_and_reconnects_by_itself() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(
        &redis,
        "[limits]\nsend_queue = 16\nsend_queue_bytes = 65536\n",
    )
    .await;
    let mut c = NodeProc::socketio(
        &url(&relay),
        json!({"transports": ["websocket"], "query": {"all": "true"}, "reconnectionDelay": 100}),
    )
    .await;
    c.wait_for("connect").await;
    // The whole client process stops: it reads nothing while events pile up.
    let pid = c.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    let pad = "x".repeat(64 * 1024);
    let mut conn = redis.conn().await;
    let deadline = std::time::Instant::now() + common::WAIT;
    let mut n = 0;
    while relay.metric("relay_slow_consumer_disconnects_total").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never counted as slow"
        );
        conn.publish(CH, format!(r#"{{"n":{n},"pad":"{pad}"}}"#))
            .await;
        n += 1;
    }
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    let reason = c.wait_for("disconnect").await["reason"].clone();
    assert!(
        reason == "transport close" || reason == "transport error",
        "{reason}"
    );
    c.wait_for("connect").await;
    let got = events_until_marker(&redis, &mut c, &[json!({"after": true})]).await;
    assert_eq!(
        got,
        [json!({"after": true})],
        "live again after reconnecting"
    );
}

#[tokio::test]
async fn a_browser_page_with_default_options_gets_its_routed_events() {
    if !common::node::chromium_path().exists() {
        panic!("Debian chromium is required (apt-get install chromium; .ci/run installs it)");
    }
    let redis = Redis::start().await;
    // The page's Origin is the test's own static server on 127.0.0.1, which
    // the default allowed_origins (loopback pages) admits; `[]` admits no page.
    let relay = Relay::start(&redis).await;
    let mut page = NodeProc::browser(&url(&relay), json!({"agentId": "web"})).await;
    let origin = page.wait_for("page").await["origin"].clone();
    assert!(origin
        .as_str()
        .is_some_and(|o| o.starts_with("http://127.0.0.1:")));
    page.wait_for("connect").await;
    assert_eq!(page.saw("upgrade").await["transport"], "websocket");
    let got = events_until_marker(
        &redis,
        &mut page,
        &[
            json!({"agentId": "other"}),
            json!({"agentId": "web", "text": "hello"}),
        ],
    )
    .await;
    assert_eq!(got, [json!({"agentId": "web", "text": "hello"})]);
}
