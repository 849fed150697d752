//! SPEC §12's Socket.IO connection state recovery with the real
//! socket.io-client 4.8 (no client option): the pid in the CONNECT reply,
//! the offset as the last argument, the same sid and subscriptions back
//! after `socket.io.engine.close()`, the missed events once and in order;
//! else a fresh session and `relay:gap`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::node::{events_until_marker, NodeProc};
use common::{Redis, Relay};
use serde_json::{json, Value};

const CH: &str = "claude-studio:agent:status";

fn url(relay: &Relay) -> String {
    format!("http://{}", relay.addr())
}

/// An `agent:status` event's `(agentId, n)`, checking the offset argument.
fn agent_n(args: &[Value]) -> (String, u64) {
    assert_eq!(args.len(), 2, "data and offset: {args:?}");
    let offset = args[1].as_str().expect("offset is a string");
    assert!(offset.parse::<u64>().is_ok(), "{offset}");
    (
        args[0]["agentId"].as_str().unwrap_or("").to_owned(),
        args[0]["n"].as_u64().unwrap_or(u64::MAX),
    )
}

/// A connected socket.io-client subscribed to `a1` by query and to `a2` by
/// an emitted `subscribe` (acked, so it is live); returns it and its sid.
async fn subscribed_client(relay: &Relay, opts: Value) -> (NodeProc, String) {
    let mut opts = opts;
    opts["query"] = json!({"agentId": "a1"});
    let mut c = NodeProc::socketio(&url(relay), opts).await;
    let connect = c.wait_for("connect").await;
    assert_eq!(connect["recovered"], false);
    c.send(
        json!({"cmd": "emitWithAck", "id": 1, "name": "subscribe", "args": [{"agentId": "a2"}]}),
    )
    .await;
    let ack = c.wait_for("ack").await;
    assert_eq!(ack["args"], json!([{"ok": true}]));
    (c, connect["id"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn engine_close_mid_stream_recovers_sid_subscriptions_and_every_event_once() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[history]\nsize = 100000\n").await;
    for transports in [json!(["polling", "websocket"]), json!(["polling"])] {
        let (mut c, sid) = subscribed_client(&relay, json!({"transports": transports})).await;
        // A publisher running flat out through the disconnect and the
        // recovery, until told to stop; then a global marker ends the stream.
        let stop = Arc::new(AtomicBool::new(false));
        let mut conn = redis.conn().await;
        let publisher = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let mut batch =
                        vec![(CH.to_owned(), json!({"agentId": "a1", "n": n}).to_string())];
                    if n % 10 == 0 {
                        batch.push((CH.to_owned(), json!({"agentId": "a2", "n": n}).to_string()));
                    }
                    batch.push((CH.to_owned(), json!({"agentId": "a3", "n": n}).to_string()));
                    conn.publish_many(&batch).await;
                    n += 1;
                    if n % 50 == 0 {
                        // Paced so a debug-build relay and Node keep up.
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                conn.publish_many(&[("claude-studio:marker".to_owned(), "{}".to_owned())])
                    .await;
                n
            }
        });
        let mut got: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let mut closed = false;
        let mut recovered_connect = None;
        let mut after_connect = 0;
        loop {
            let v = c.next().await;
            match v["ev"].as_str() {
                Some("event") if v["name"] == "marker" => break,
                Some("event") => {
                    assert_eq!(v["name"], "agent:status", "{v}");
                    let args = v["args"].as_array().cloned().unwrap_or_default();
                    let (agent, n) = agent_n(&args);
                    got.entry(agent).or_default().push(n);
                    if !closed && n >= 200 {
                        closed = true;
                        c.send(json!({"cmd": "engine-close"})).await;
                    }
                    if recovered_connect.is_some() {
                        after_connect += 1;
                        if after_connect == 300 {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
                Some("connect") => recovered_connect = Some(v.clone()),
                _ => {}
            }
        }
        let n = publisher.await.expect("publisher");
        let connect = recovered_connect.expect("reconnected");
        assert_eq!(connect["recovered"], true, "{transports}: {connect}");
        assert_eq!(connect["id"], sid, "same sid");
        assert!(
            c.seen.iter().any(|v| v["ev"] == "disconnect"),
            "it did drop"
        );
        let a1: Vec<u64> = (0..n).collect();
        let a2: Vec<u64> = (0..n).filter(|n| n % 10 == 0).collect();
        assert_eq!(
            got.get("a1"),
            Some(&a1),
            "{transports}: a1 once each, in order"
        );
        assert_eq!(
            got.get("a2"),
            Some(&a2),
            "{transports}: the emitted subscription came back"
        );
        assert_eq!(got.get("a3"), None);
        assert!(
            !c.seen.iter().any(|v| v["name"] == "relay:gap"),
            "no gap when recovered"
        );
    }
    assert!(
        relay
            .metric("relay_recoveries_total{result=\"recovered\"}")
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn back_after_ttl_is_a_fresh_session_with_a_gap() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[history]\nsize = 1000\nttl_ms = 300\n").await;
    // Reconnects only after the pid (and the history) expired.
    let opts = json!({"reconnectionDelay": 1200, "randomizationFactor": 0});
    let (mut c, sid) = subscribed_client(&relay, opts).await;
    let before = events_until_marker(&redis, &mut c, &[json!({"agentId": "a2", "n": 1})]).await;
    assert_eq!(before.len(), 1);
    c.send(json!({"cmd": "engine-close"})).await;
    c.wait_for("disconnect").await;
    redis
        .publish(CH, json!({"agentId": "a1", "n": 2}).to_string())
        .await;
    let connect = c.wait_for("connect").await;
    assert_eq!(connect["recovered"], false);
    assert_ne!(connect["id"], sid, "a fresh sid");
    let (name, args) = c.next_event().await;
    assert_eq!(name, "relay:gap");
    assert_eq!(args[0]["reason"], "history_unavailable");
    // Fresh: the query's subscription holds, the emitted one is gone.
    let got = events_until_marker(
        &redis,
        &mut c,
        &[
            json!({"agentId": "a2", "n": 3}),
            json!({"agentId": "a1", "n": 4}),
        ],
    )
    .await;
    assert_eq!(got, [json!({"agentId": "a1", "n": 4})]);
    assert!(
        relay
            .metric("relay_recoveries_total{result=\"unavailable\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_pid_not_ours_or_a_bad_offset_starts_fresh_with_a_gap() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[history]\nsize = 1000\n").await;
    // socket.io-client sends its own pid and offset only once it has one;
    // until then the auth object's keys go as given.
    for auth in [
        json!({"pid": "0123456789abcdef0123456789abcdef", "offset": "1"}),
        json!({"pid": "0123456789abcdef0123456789abcdef"}),
    ] {
        let mut c = NodeProc::socketio(
            &url(&relay),
            json!({"auth": auth, "query": {"agentId": "a1"}}),
        )
        .await;
        let connect = c.wait_for("connect").await;
        assert_eq!(connect["recovered"], false, "{auth}");
        let (name, args) = c.next_event().await;
        assert_eq!(
            (name.as_str(), &args[0]["reason"]),
            ("relay:gap", &json!("history_unavailable"))
        );
    }
    // A real pid: 128 random bits. Its client dies (no DISCONNECT), so the
    // session is parked; a CONNECT with that pid and an offset the relay
    // never wrote starts fresh, and the parked session is spent.
    let (mut c, _) = subscribed_client(&relay, json!({})).await;
    let pid = c.saw("connect").await["pid"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        pid.len() == 32 && pid.bytes().all(|b| b.is_ascii_hexdigit()),
        "{pid}"
    );
    kill(&c);
    drop(c);
    // Parked before the session stops counting as open.
    wait_metric(
        &relay,
        "relay_socketio_sessions_open{transport=\"websocket\"}",
        0.0,
    )
    .await;
    for offset in [json!("x"), json!("1")] {
        let mut c = NodeProc::socketio(
            &url(&relay),
            json!({"auth": {"pid": pid, "offset": offset}}),
        )
        .await;
        assert_eq!(c.wait_for("connect").await["recovered"], false, "{offset}");
        assert_eq!(c.next_event().await.0, "relay:gap");
    }
}

#[tokio::test]
async fn a_parked_session_is_counted_until_its_ttl_runs_out() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[history]\nsize = 1000\nttl_ms = 1500\n").await;
    wait_metric(&relay, "relay_socketio_parked_sessions", 0.0).await;
    // A client that does not come back: its session stays parked.
    let (mut c, _sid) = subscribed_client(&relay, json!({"reconnection": false})).await;
    c.send(json!({"cmd": "engine-close"})).await;
    c.wait_for("disconnect").await;
    wait_metric(&relay, "relay_socketio_parked_sessions", 1.0).await;
    // Swept when read once `ttl_ms` has passed, with nothing else going on.
    wait_metric(&relay, "relay_socketio_parked_sessions", 0.0).await;
}

async fn wait_metric(relay: &Relay, series: &str, want: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = relay.metric(series).await;
        if v == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} = {v}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kill(c: &NodeProc) {
    let status = std::process::Command::new("kill")
        .args(["-9", &c.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test]
async fn history_off_means_no_pid_and_no_offset_argument() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = NodeProc::socketio(&url(&relay), json!({"query": {"agentId": "a1"}})).await;
    c.wait_for("connect").await;
    redis
        .publish(CH, json!({"agentId": "a1"}).to_string())
        .await;
    let (_, args) = c.next_event().await;
    assert_eq!(args, [json!({"agentId": "a1"})], "no offset argument");
    c.send(json!({"cmd": "engine-close"})).await;
    let connect = c.wait_for("connect").await;
    assert_ne!(connect["recovered"], true, "nothing to recover with");
    assert_eq!(connect["pid"], Value::Null, "no pid in the CONNECT reply");
}

#[tokio::test]
async fn a_client_that_got_no_event_yet_recovers_from_its_pid_alone() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[history]\nsize = 1000\n").await;
    // Events before this client connected are not for it, even replayed.
    redis
        .publish(CH, json!({"agentId": "a1", "n": 0}).to_string())
        .await;
    let (mut c, sid) = subscribed_client(&relay, json!({"transports": ["websocket"]})).await;
    // socket.io-client has no offset to send: it received no event.
    c.send(json!({"cmd": "engine-close"})).await;
    c.wait_for("disconnect").await;
    redis
        .publish(CH, json!({"agentId": "a2", "n": 1}).to_string())
        .await;
    let connect = c.wait_for("connect").await;
    assert_eq!(
        (&connect["recovered"], &connect["id"]),
        (&json!(true), &json!(sid))
    );
    let got = events_until_marker(&redis, &mut c, &[json!({"agentId": "a1", "n": 2})]).await;
    assert_eq!(
        got,
        [
            json!({"agentId": "a2", "n": 1}),
            json!({"agentId": "a1", "n": 2})
        ]
    );
}

/// A TCP proxy to `upstream` whose connections can be silenced: from then
/// on nothing the client sends reaches the relay (its WebSocket close
/// frame, its FIN), so to the relay the old transport looks alive, as after
/// a silent network drop, noticed only at the ping timeout. Connections
/// opened afterwards pass through.
struct SilentDropProxy {
    addr: std::net::SocketAddr,
    /// Connections numbered below this are silenced.
    silenced_below: Arc<AtomicU64>,
    opened: Arc<AtomicU64>,
}

impl SilentDropProxy {
    async fn start(upstream: std::net::SocketAddr) -> SilentDropProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silenced_below = Arc::new(AtomicU64::new(0));
        let opened = Arc::new(AtomicU64::new(0));
        let (below, count) = (silenced_below.clone(), opened.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let id = count.fetch_add(1, Ordering::SeqCst);
                let below = below.clone();
                tokio::spawn(async move {
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    });
                    let mut buf = vec![0u8; 16 << 10];
                    loop {
                        let n = cr.read(&mut buf).await.unwrap_or(0);
                        let silenced = id < below.load(Ordering::SeqCst);
                        if n == 0 || silenced {
                            if silenced {
                                // Keep the relay's side open, saying nothing.
                                std::future::pending::<()>().await;
                            }
                            return;
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SilentDropProxy {
            addr,
            silenced_below,
            opened,
        }
    }

    /// Silences every connection opened so far.
    fn silence(&self) {
        let n = self.opened.load(Ordering::SeqCst);
        self.silenced_below.store(n, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_client_back_before_the_relay_saw_its_transport_die_takes_its_session_over() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[history]\nsize = 1000\n").await;
    let proxy = SilentDropProxy::start(relay.addr()).await;
    let opts = json!({"transports": ["websocket"], "query": {"agentId": "a1"}});
    let mut c = NodeProc::socketio(&format!("http://{}", proxy.addr), opts).await;
    let connect = c.wait_for("connect").await;
    c.send(
        json!({"cmd": "emitWithAck", "id": 1, "name": "subscribe", "args": [{"agentId": "a2"}]}),
    )
    .await;
    assert_eq!(c.wait_for("ack").await["args"], json!([{"ok": true}]));
    let got = events_until_marker(&redis, &mut c, &[json!({"agentId": "a1", "n": 1})]).await;
    assert_eq!(got.len(), 1);
    proxy.silence();
    c.send(json!({"cmd": "engine-close"})).await;
    c.wait_for("disconnect").await;
    // Still open on the relay's side.
    assert_eq!(
        relay
            .metric("relay_socketio_sessions_open{transport=\"websocket\"}")
            .await,
        1.0
    );
    redis
        .publish(CH, json!({"agentId": "a2", "n": 2}).to_string())
        .await;
    let back = c.wait_for("connect").await;
    assert_eq!(back["recovered"], true, "{back}");
    assert_eq!(back["id"], connect["id"]);
    let got = events_until_marker(&redis, &mut c, &[json!({"agentId": "a1", "n": 3})]).await;
    assert_eq!(
        got,
        [
            json!({"agentId": "a2", "n": 2}),
            json!({"agentId": "a1", "n": 3})
        ]
    );
    // The old session ended when its pid was taken over.
    assert_eq!(
        relay
            .metric("relay_socketio_sessions_open{transport=\"websocket\"}")
            .await,
        1.0
    );
}
