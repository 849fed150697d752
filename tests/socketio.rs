//! SPEC §11 at the protocol level: Engine.IO 4 polling and websocket, the
//! upgrade, Socket.IO CONNECT/EVENT/ACK, refusals and slow or abandoned
//! sessions — spoken by hand over raw HTTP and a raw websocket, so each
//! answer is checked byte for byte. (socket.io-client itself: tests/socketio_client.rs.)

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{request, Redis, Relay, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const CH: &str = "claude-studio:agent:status";
const SEP: char = '\u{1e}';

/// One polling session spoken by hand.
struct Polling {
    addr: SocketAddr,
    sid: String,
    open: Value,
}

impl Polling {
    async fn open(addr: SocketAddr, query: &str) -> Polling {
        let r = get(
            addr,
            &format!("/socket.io/?EIO=4&transport=polling{query}"),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(
            r.head
                .to_ascii_lowercase()
                .contains("content-type: text/plain"),
            "{}",
            r.head
        );
        let open: Value =
            serde_json::from_str(r.body.strip_prefix('0').expect("open packet")).unwrap();
        Polling {
            addr,
            sid: open["sid"].as_str().unwrap().to_owned(),
            open,
        }
    }

    fn path(&self) -> String {
        format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid)
    }

    /// One long-poll: the packets of its body.
    async fn poll(&self) -> (u16, Vec<String>) {
        let r = get(self.addr, &self.path(), &[]).await;
        (r.status, r.body.split(SEP).map(str::to_owned).collect())
    }

    async fn post(&self, packets: &[&str]) -> (u16, String) {
        let body = packets.join(&SEP.to_string());
        let r = request(self.addr, "POST", &self.path(), &[], body.as_bytes(), WAIT)
            .await
            .unwrap();
        (r.status, r.body)
    }

    /// Polls until a packet other than a ping (answered) arrives.
    async fn next(&self) -> Vec<String> {
        loop {
            let (status, packets) = self.poll().await;
            assert_eq!(status, 200, "{packets:?}");
            let rest: Vec<String> = packets.into_iter().filter(|p| p != "2").collect();
            if rest.is_empty() {
                self.post(&["3"]).await;
                continue;
            }
            return rest;
        }
    }
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> common::HttpResponse {
    request(addr, "GET", path, headers, b"", WAIT)
        .await
        .unwrap()
}

#[tokio::test]
async fn polling_handshake_connect_events_and_routing() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let s = Polling::open(relay.addr(), "&agentId=a1").await;
    assert_eq!(s.open["upgrades"], json!(["websocket"]));
    assert_eq!(s.open["pingInterval"], 25000);
    assert_eq!(s.open["pingTimeout"], 20000);
    assert_eq!(
        s.open["maxPayload"], 4096,
        "limits.max_client_message_bytes"
    );
    assert_eq!(s.post(&["40"]).await, (200, "ok".to_owned()));
    let connect = s.next().await;
    assert_eq!(connect.len(), 1);
    let reply: Value = serde_json::from_str(connect[0].strip_prefix("40").unwrap()).unwrap();
    assert!(
        reply["sid"].as_str().is_some_and(|x| !x.is_empty()),
        "{reply}"
    );

    // Live before the CONNECT reply: an event published now is routed.
    let payload = r#"{"agentId":"a1","status":"busy","n":[1,2.50]}"#;
    redis
        .publish(CH, r#"{"agentId":"a2","status":"not yours"}"#)
        .await;
    redis.publish(CH, payload).await;
    let got = s.next().await;
    assert_eq!(
        got,
        [format!(r#"42["agent:status",{payload}]"#)],
        "byte for byte"
    );
    assert_eq!(
        relay
            .metric("relay_socketio_sessions_open{transport=\"polling\"}")
            .await,
        1.0
    );
    assert_eq!(relay.health().await.1["connections"], 1);
}

#[tokio::test]
async fn protocol_refusals_have_the_reference_answers() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let a = relay.addr();
    for (path, body) in [
        (
            "/socket.io/?EIO=3&transport=polling",
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "/socket.io/?transport=polling",
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
        ),
        (
            "/socket.io/?EIO=4&transport=carrier-pigeon",
            r#"{"code":0,"message":"Transport unknown"}"#,
        ),
        (
            "/socket.io/?EIO=4&transport=polling&sid=nope",
            r#"{"code":1,"message":"Session ID unknown"}"#,
        ),
    ] {
        let r = get(a, path, &[]).await;
        assert_eq!((r.status, r.body.as_str()), (400, body), "{path}");
    }
    let r = request(
        a,
        "POST",
        "/socket.io/?EIO=4&transport=polling",
        &[],
        b"40",
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, r#"{"code":2,"message":"Bad handshake method"}"#)
    );

    // Another namespace: CONNECT_ERROR for it; the session stays usable.
    let s = Polling::open(a, "").await;
    s.post(&["40/admin,"]).await;
    assert_eq!(
        s.next().await,
        [r#"44/admin,{"message":"Invalid namespace"}"#]
    );
    s.post(&["40"]).await;
    assert!(s.next().await[0].starts_with("40{\"sid\":"));

    // Two GETs at once: the second is refused and the session closed.
    let first = tokio::spawn({
        let (addr, path) = (s.addr, s.path());
        async move { get(addr, &path, &[]).await }
    });
    // Wait until the first GET is parked in the session, then a second one.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = get(a, &s.path(), &[]).await;
    assert_eq!(second.status, 400, "{}", second.body);
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body.as_str()), (200, "1"), "closed");
    assert_eq!(s.poll().await.0, 400, "session gone");
}

#[tokio::test]
async fn subscribe_and_unsubscribe_emits_with_acks() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[limits]\nmax_subscriptions = 2\n").await;
    let s = Polling::open(relay.addr(), "").await;
    s.post(&["40"]).await;
    s.next().await;
    s.post(&[r#"421["subscribe",{"agentId":"x"}]"#]).await;
    assert_eq!(s.next().await, [r#"431[{"ok":true}]"#]);
    redis.publish(CH, r#"{"agentId":"x","n":1}"#).await;
    assert_eq!(
        s.next().await,
        [r#"42["agent:status",{"agentId":"x","n":1}]"#]
    );
    for (packet, reply) in [
        (
            r#"422["subscribe",{"agentId":["y","z"]}]"#,
            r#"432[{"error":"too_many_subscriptions""#,
        ),
        (
            r#"423["subscribe",{"userId":"u"}]"#,
            r#"433[{"error":"unknown_field""#,
        ),
        (r#"424["subscribe","x"]"#, r#"434[{"error":"bad_request""#),
        (r#"425["hello",{}]"#, r#"435[{"error":"unsupported""#),
    ] {
        s.post(&[packet]).await;
        let got = s.next().await;
        assert!(got[0].starts_with(reply), "{packet} -> {got:?}");
    }
    // No ack asked for: applied all the same, nothing sent back.
    s.post(&[r#"42["unsubscribe",{"agentId":"x"}]"#]).await;
    redis.publish(CH, r#"{"agentId":"x","n":2}"#).await;
    redis.publish(CH, r#"{"marker":true}"#).await;
    assert_eq!(s.next().await, [r#"42["agent:status",{"marker":true}]"#]);
}

#[tokio::test]
async fn websocket_from_the_start_and_the_upgrade_from_polling() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&agentId=a1",
        relay.addr()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let open = next_text(&mut ws).await;
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(open["upgrades"], json!([]));
    ws.send(Message::Text("40".into())).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with("40{\"sid\":"));
    redis.publish(CH, r#"{"agentId":"a1","v":1}"#).await;
    assert_eq!(
        next_text(&mut ws).await,
        r#"42["agent:status",{"agentId":"a1","v":1}]"#
    );

    // Upgrade: probe on a new websocket, the pending poll gets a noop, then 5.
    let s = Polling::open(relay.addr(), "&agentId=a2").await;
    s.post(&["40"]).await;
    s.next().await;
    let pending = tokio::spawn({
        let (addr, path) = (s.addr, s.path());
        async move { get(addr, &path, &[]).await }
    });
    let url = format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket&sid={}",
        relay.addr(),
        s.sid
    );
    let (mut up, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    up.send(Message::Text("2probe".into())).await.unwrap();
    assert_eq!(next_text(&mut up).await, "3probe");
    let released = pending.await.unwrap();
    assert_eq!((released.status, released.body.as_str()), (200, "6"));
    up.send(Message::Text("5".into())).await.unwrap();
    redis.publish(CH, r#"{"agentId":"a2","v":2}"#).await;
    assert_eq!(
        next_text(&mut up).await,
        r#"42["agent:status",{"agentId":"a2","v":2}]"#
    );
    assert_eq!(s.poll().await.0, 400, "polling is over once upgraded");
    assert_eq!(
        relay
            .metric("relay_socketio_sessions_open{transport=\"websocket\"}")
            .await,
        2.0
    );
}

#[tokio::test]
async fn cors_on_polling_answers_and_preflight() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(
        &redis,
        "[security]\nallowed_origins = [\"http://app.example\"]\n",
    )
    .await;
    let r = get(
        relay.addr(),
        "/socket.io/?EIO=4&transport=polling",
        &[("Origin", "http://app.example")],
    )
    .await;
    let head = r.head.to_ascii_lowercase();
    assert_eq!(r.status, 200);
    assert!(
        head.contains("access-control-allow-origin: http://app.example"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-credentials: true"),
        "{head}"
    );
    let r = get(
        relay.addr(),
        "/socket.io/?EIO=4&transport=polling",
        &[("Origin", "http://evil.example")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(!r
        .head
        .to_ascii_lowercase()
        .contains("access-control-allow-origin"));
    let r = request(
        relay.addr(),
        "OPTIONS",
        "/socket.io/?EIO=4&transport=polling",
        &[
            ("Origin", "http://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
        WAIT,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("access-control-allow-methods"),
        "{}",
        r.head
    );
}

#[tokio::test]
async fn tokens_in_the_handshake_or_in_connect_auth() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[auth]\ntokens = [\"sekret\"]\n").await;
    let r = get(
        relay.addr(),
        "/socket.io/?EIO=4&transport=polling&token=wrong",
        &[],
    )
    .await;
    assert_eq!(r.status, 401, "a wrong token is refused at once");
    let s = Polling::open(relay.addr(), "").await;
    s.post(&["40"]).await;
    assert_eq!(s.next().await, [r#"44{"message":"unauthorized"}"#]);
    s.post(&[r#"40{"token":"sekret","agentId":"a9"}"#]).await;
    assert!(s.next().await[0].starts_with("40{\"sid\":"));
    redis.publish(CH, r#"{"agentId":"a9"}"#).await;
    assert_eq!(s.next().await, [r#"42["agent:status",{"agentId":"a9"}]"#]);
}

#[tokio::test]
async fn a_polling_client_that_stops_polling_is_dropped_and_leaves_nothing() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(
        &redis,
        "[limits]\nsend_queue = 8\n[socketio]\nping_interval_ms = 300\nping_timeout_ms = 300\n",
    )
    .await;
    // Slow: subscribed, never polls while events pile up.
    let slow = Polling::open(relay.addr(), "&all=true").await;
    slow.post(&["40"]).await;
    slow.next().await;
    for n in 0..20 {
        redis.publish(CH, format!(r#"{{"n":{n}}}"#)).await;
    }
    // Abandoned: connected, then nothing at all.
    let gone = Polling::open(relay.addr(), "&agentId=a").await;
    gone.post(&["40"]).await;
    gone.next().await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let h = relay.health().await.1;
        if h["connections"] == 0 && h["routing_index_entries"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sessions not freed: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        relay.metric("relay_slow_consumer_disconnects_total").await,
        1.0
    );
    let r = get(relay.addr(), &slow.path(), &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (400, r#"{"code":1,"message":"Session ID unknown"}"#)
    );
    assert_eq!(
        relay
            .metric("relay_socketio_sessions_open{transport=\"polling\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn an_oversized_post_ends_the_session() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let s = Polling::open(relay.addr(), "").await;
    let big = format!("4{}", "x".repeat(5000));
    let (status, _) = s.post(&[&big]).await;
    assert_eq!(status, 413);
    assert_eq!(s.poll().await.0, 400);
}

#[tokio::test]
async fn gap_after_a_redis_restart_reaches_both_transports() {
    let mut redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let (mut ws, _) = ws_session(relay.addr(), "&agentId=a").await;
    let s = Polling::open(relay.addr(), "&agentId=a").await;
    s.post(&["40"]).await;
    s.next().await;
    redis.restart().await;
    let gap = r#"42["relay:gap",{"reason":"redis_reconnected","source":"redis"}]"#;
    assert_eq!(next_text(&mut ws).await, gap);
    assert_eq!(s.next().await, [gap]);
}

#[tokio::test]
async fn shutdown_closes_websockets_1001_and_answers_a_pending_poll_with_close() {
    let redis = Redis::start().await;
    let mut relay = Relay::start(&redis).await;
    let (mut ws, _) = ws_session(relay.addr(), "").await;
    let s = Polling::open(relay.addr(), "").await;
    s.post(&["40"]).await;
    s.next().await;
    let pending = tokio::spawn({
        let (addr, path) = (s.addr, s.path());
        async move { get(addr, &path, &[]).await }
    });
    // The poll must be parked before the signal; there is no signal for that.
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.signal("TERM");
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close, 1001);
    let r = pending.await.unwrap();
    assert_eq!((r.status, r.body.as_str()), (200, "1"));
    assert_eq!(relay.exited(WAIT).await, Some(0));
}

#[tokio::test]
async fn a_reload_that_revokes_the_token_closes_the_session_1008() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[auth]\ntokens = [\"old\"]\n").await;
    let (mut ws, _) = ws_session(relay.addr(), "&token=old").await;
    relay.reload("info", "[auth]\ntokens = [\"new\"]\n").await;
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close, 1008);
}

#[tokio::test]
async fn hostile_packets_get_defined_answers() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    // Malformed Engine.IO or Socket.IO packets, or binary: the session closes.
    for bad in [
        "",
        "x",
        "4",
        "42{}",
        "42abc[1]",
        "4251-[\"a\"]",
        "b4AAA",
        r#"42["connect"]"#,
    ] {
        let (mut ws, _) = ws_session(relay.addr(), "").await;
        match bad {
            "" => ws.send(Message::Text("".into())).await.unwrap(),
            _ => ws.send(Message::Text(bad.into())).await.unwrap(),
        }
        let ended = tokio::time::timeout(WAIT, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return true,
                    Some(Ok(Message::Text(t))) if t.as_str() == "2" => {}
                    Some(Ok(_)) => {}
                }
            }
        })
        .await
        .unwrap();
        assert!(ended, "{bad:?} should close the session");
    }
    let (mut ws, _) = ws_session(relay.addr(), "").await;
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, ws.next()).await.unwrap(),
        Some(Ok(Message::Close(_))) | None | Some(Err(_))
    ));

    // A flood of harmless packets is taken in stride: the session answers after it.
    let (mut ws, _) = ws_session(relay.addr(), "").await;
    for i in 0..5000 {
        let p = if i % 2 == 0 {
            "3".to_owned()
        } else {
            format!(r#"42["noise",{{"i":{i}}}]"#)
        };
        ws.feed(Message::Text(p.into())).await.unwrap();
    }
    ws.flush().await.unwrap();
    ws.send(Message::Text(r#"429["subscribe",{"agentId":"z"}]"#.into()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await, r#"439[{"ok":true}]"#);

    // A polling body with too many records, or a trailing separator: 400, session closed.
    for body in [vec!["3"; 300].join("\u{1e}"), "3\u{1e}".to_owned()] {
        let s = Polling::open(relay.addr(), "").await;
        let r = request(relay.addr(), "POST", &s.path(), &[], body.as_bytes(), WAIT)
            .await
            .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(s.poll().await.0, 400);
    }
    // Binary in a polling body.
    let s = Polling::open(relay.addr(), "").await;
    assert_eq!(s.post(&["bAQID"]).await.0, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_sessions_abandoned_mid_poll_leave_nothing_behind() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(
        &redis,
        "[socketio]\nping_interval_ms = 2000\nping_timeout_ms = 1000\n",
    )
    .await;
    let addr = relay.addr();
    let rss = || rss_kib(relay.pid());
    // At most 100 sessions being set up at once, so each reaches its first
    // poll well within the heartbeat (a session that never polls is dropped).
    let setup = std::sync::Arc::new(tokio::sync::Semaphore::new(100));
    let round = |n: usize| {
        let setup = setup.clone();
        async move {
            let mut tasks = Vec::new();
            for i in 0..n {
                let setup = setup.clone();
                tasks.push(tokio::spawn(async move {
                    let _slot = setup.acquire_owned().await.unwrap();
                    let s = Polling::open(addr, &format!("&agentId=a{}", i % 50)).await;
                    s.post(&["40"]).await;
                    s.next().await;
                    // A long-poll whose client goes away mid-wait.
                    let path = s.path();
                    let _ = tokio::time::timeout(Duration::from_millis(50), get(addr, &path, &[]))
                        .await;
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    let wait_empty = || async {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let h = relay.health().await.1;
            if h["connections"] == 0 && h["routing_index_entries"] == 0 {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "not freed: {h}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    round(500).await;
    wait_empty().await;
    let before = rss();
    round(2000).await;
    assert!(
        relay.health().await.1["connections"].as_u64().unwrap() > 0,
        "sessions were open"
    );
    wait_empty().await;
    let after = rss();
    println!("relay RSS {before} KiB after 500 abandoned sessions, {after} KiB after 2000 more");
    assert!(
        after < before + 16 * 1024,
        "RSS grew from {before} to {after} KiB"
    );
    assert_eq!(
        relay
            .metric("relay_socketio_sessions_open{transport=\"polling\"}")
            .await,
        0.0
    );
}

#[tokio::test]
async fn first_ping_after_the_interval_and_silent_clients_are_dropped() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(
        &redis,
        "[socketio]\nping_interval_ms = 400\nping_timeout_ms = 300\n",
    )
    .await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", relay.addr());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let opened = std::time::Instant::now();
    let raw = |m: Option<Result<Message, _>>| match m {
        Some(Ok(Message::Text(t))) => Some(t.as_str().to_owned()),
        Some(Ok(Message::Close(_))) | None | Some(Err(_)) => None,
        Some(Ok(_)) => Some(String::new()),
    };
    assert!(raw(ws.next().await).is_some_and(|t| t.starts_with('0')));
    // Answered pings keep it open for several intervals.
    for _ in 0..3 {
        let ping = loop {
            let t = raw(tokio::time::timeout(WAIT, ws.next()).await.unwrap()).expect("still open");
            if !t.is_empty() {
                break t;
            }
        };
        assert_eq!(ping, "2");
        ws.send(Message::Text("3".into())).await.unwrap();
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(3 * 400),
        "pings come every interval, not sooner"
    );
    // Silent from now on: dropped after one more interval + the timeout.
    let silent = std::time::Instant::now();
    while raw(tokio::time::timeout(WAIT, ws.next()).await.unwrap()).is_some() {}
    assert!(
        silent.elapsed() >= Duration::from_millis(400 + 300 - 50),
        "{:?}",
        silent.elapsed()
    );
    assert_eq!(relay.health().await.1["connections"], 0);
}

#[tokio::test]
async fn unsubscribed_all_reproduces_io_emit_and_capacity_counts_sessions() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(
        &redis,
        "[socketio]\nunsubscribed = \"all\"\n[limits]\nmax_connections = 2\n",
    )
    .await;
    let (mut everything, _) = ws_session(relay.addr(), "").await;
    let (mut routed, _) = ws_session(relay.addr(), "&agentId=a1").await;
    redis.publish(CH, r#"{"agentId":"zz"}"#).await;
    redis.publish(CH, r#"{"agentId":"a1"}"#).await;
    assert_eq!(
        next_text(&mut everything).await,
        r#"42["agent:status",{"agentId":"zz"}]"#
    );
    assert_eq!(
        next_text(&mut everything).await,
        r#"42["agent:status",{"agentId":"a1"}]"#
    );
    assert_eq!(
        next_text(&mut routed).await,
        r#"42["agent:status",{"agentId":"a1"}]"#,
        "a subscribed client stays routed"
    );
    // Two sessions held: a third handshake, of either protocol, is 503.
    let r = get(relay.addr(), "/socket.io/?EIO=4&transport=polling", &[]).await;
    assert_eq!(r.status, 503);
    let r = common::http(relay.addr(), "GET", "/ws", &common::ws_headers())
        .await
        .unwrap();
    assert_eq!(r.status, 503);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

type RawWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A websocket-only Socket.IO session, connected to `/`; returns the CONNECT reply.
async fn ws_session(addr: SocketAddr, query: &str) -> (RawWs, Value) {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket{query}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert!(next_text(&mut ws).await.starts_with('0'));
    ws.send(Message::Text("40".into())).await.unwrap();
    let reply = next_text(&mut ws).await;
    let v: Value = serde_json::from_str(reply.strip_prefix("40").expect("CONNECT reply")).unwrap();
    (ws, v)
}

async fn next_text(ws: &mut RawWs) -> String {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
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
