//! The hub, sessions and a real listener driven in-process through the
//! source seam: an in-memory source instead of redis-server, no binary.
//! Clients are real WebSocket clients over loopback TCP.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use studio_relay::app::Relay;
use studio_relay::event::GapReason;
use studio_relay::metrics::Metrics;
use studio_relay::service::shutdown::CancellationToken;
use studio_relay::source::memory::{self, MemoryPublisher};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(15);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A relay on two loopback listeners fed by a memory source; stopped on drop.
struct InProcess {
    addrs: Vec<SocketAddr>,
    publisher: MemoryPublisher,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    async fn start(extra: &str) -> InProcess {
        let text = format!("[redis]\nliveness_interval_ms = 0\n{extra}");
        let config = studio_relay::config::parse_str(&text, "inprocess", None)
            .unwrap()
            .config;
        let mut listeners = Vec::new();
        for _ in 0..2 {
            listeners.push(studio_relay::net::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        }
        let (source, publisher) = memory::pair();
        let relay = Relay::with_listeners(config, listeners).with_sources(vec![Box::new(source)]);
        let addrs = relay.local_addrs();
        let metrics = relay.metrics();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relay.run(shutdown.clone()));
        InProcess {
            addrs,
            publisher,
            metrics,
            shutdown,
            task: Some(task),
        }
    }

    async fn client(&self, listener: usize, query: &str) -> (Ws, Value) {
        let url = format!("ws://{}/ws?{query}", self.addrs[listener]);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let welcome = next_json(&mut ws).await;
        assert_eq!(welcome["type"], "welcome");
        (ws, welcome)
    }

    async fn publish(&self, name: &str, payload: Value) {
        assert!(self.publisher.publish(name, &payload.to_string()).await);
    }

    /// Stops the relay and waits for the drain.
    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame within the wait")
            .expect("connection open")
            .unwrap();
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Events only, by their `data.n`, until the marker event arrives.
async fn events_until_marker(ws: &mut Ws) -> Vec<i64> {
    let mut seen = Vec::new();
    loop {
        let v = next_json(ws).await;
        assert_eq!(v["type"], "event", "{v}");
        if v["event"] == "marker" {
            return seen;
        }
        seen.push(v["data"]["n"].as_i64().unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_key_firehose_and_global_with_no_leak() {
    let relay = InProcess::start("").await;
    let (mut a1, _) = relay.client(0, "agentId=a1").await;
    let (mut s1, _) = relay.client(1, "sessionId=s1").await;
    let (mut fire, _) = relay.client(1, "all=true").await;
    let (mut none, _) = relay.client(0, "").await;

    relay.publish("m", json!({"agentId": "a1", "n": 1})).await;
    relay.publish("m", json!({"agentId": "a2", "n": 2})).await;
    relay
        .publish("m", json!({"agentId": "a2", "sessionId": "s1", "n": 3}))
        .await;
    relay.publish("m", json!({"n": 4})).await;
    relay.publish("m", json!({"agentId": 5, "n": 5})).await;
    // The marker is global: every client gets it, after everything above.
    relay.publish("marker", json!({})).await;

    assert_eq!(events_until_marker(&mut a1).await, [1, 4]);
    assert_eq!(events_until_marker(&mut s1).await, [3, 4]);
    assert_eq!(events_until_marker(&mut fire).await, [1, 2, 3, 4, 5]);
    assert_eq!(events_until_marker(&mut none).await, [4]);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_ack_comes_before_the_events_it_enables() {
    let relay = InProcess::start("").await;
    let (mut c, _) = relay.client(0, "").await;
    c.send(Message::Text(
        r#"{"type":"subscribe","agentId":"late"}"#.into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_json(&mut c).await,
        json!({"type":"subscribed","agentId":"late"})
    );
    relay.publish("m", json!({"agentId": "late", "n": 1})).await;
    relay.publish("marker", json!({})).await;
    assert_eq!(events_until_marker(&mut c).await, [1]);
    assert_eq!(relay.metrics.routing_index_entries.get(), 1);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_arrive_in_order_on_both_listeners() {
    let relay = InProcess::start("").await;
    let (mut x, _) = relay.client(0, "all=true").await;
    let (mut y, _) = relay.client(1, "agentId=a").await;
    const N: i64 = 10_000;
    let publisher = relay.publisher.clone();
    let publishing = tokio::spawn(async move {
        for n in 0..N {
            let p = json!({"agentId": "a", "n": n}).to_string();
            assert!(publisher.publish("m", &p).await);
        }
        assert!(publisher.publish("marker", "{}").await);
    });
    let want: Vec<i64> = (0..N).collect();
    let (gx, gy) = tokio::join!(events_until_marker(&mut x), events_until_marker(&mut y));
    publishing.await.unwrap();
    assert_eq!(gx, want);
    assert_eq!(gy, want);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_reader_is_closed_1013_and_a_reader_beside_it_gets_everything() {
    let relay = InProcess::start("[limits]\nsend_queue = 16\nsend_queue_bytes = 262144\n").await;
    let (mut stuck, _) = relay.client(0, "all=true").await;
    let (mut reader, _) = relay.client(0, "all=true").await;
    const N: i64 = 300;
    let pad = "x".repeat(64 * 1024);
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0i64);
    let reading = tokio::spawn(async move {
        for n in 0..N {
            let v = next_json(&mut reader).await;
            assert_eq!(v["data"]["n"], n, "the reader gets every event in order");
            let _ = progress_tx.send(n + 1);
        }
    });
    // ~19 MiB at a client that reads nothing; the publisher stays a few
    // events ahead of the reader, so only the stuck client falls behind.
    for n in 0..N {
        while n >= *progress.borrow() + 4 {
            progress.changed().await.unwrap();
        }
        relay.publish("big", json!({"n": n, "pad": pad})).await;
    }
    reading.await.unwrap();
    assert_eq!(relay.metrics.slow_consumer_disconnects.get(), 1);
    // Reading again: what was queued, then the close.
    let close = tokio::time::timeout(WAIT, async {
        while let Some(msg) = stuck.next().await {
            if let Ok(Message::Close(Some(f))) = msg {
                return (u16::from(f.code), f.reason.to_string());
            }
        }
        panic!("no close frame");
    })
    .await
    .unwrap();
    assert_eq!(close, (1013, "slow consumer".to_owned()));
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_reaches_every_client_and_health_follows_the_source() {
    let relay = InProcess::start("").await;
    let (mut a, _) = relay.client(0, "agentId=a").await;
    let (mut b, _) = relay.client(1, "").await;
    assert!(relay.publisher.gap(GapReason::RedisReconnected).await);
    for ws in [&mut a, &mut b] {
        assert_eq!(
            next_json(ws).await,
            json!({"type":"gap","reason":"redis_reconnected","source":"redis"})
        );
    }
    let health = |addr: SocketAddr| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (
            head.split(' ').nth(1).unwrap().to_owned(),
            serde_json::from_str::<Value>(body).unwrap(),
        )
    };
    let (status, body) = health(relay.addrs[0]).await;
    assert_eq!(status, "200");
    assert_eq!(body["sources"], json!({"memory": "up"}));
    assert_eq!(body["redis"], "off", "no Redis source configured");
    assert_eq!(body["connections"], 2);
    relay.publisher.set_up(false);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = health(relay.addrs[1]).await;
        if status == "503" {
            assert_eq!(body["sources"], json!({"memory": "down"}));
            assert_eq!(body["status"], "unavailable");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "health never went down"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_queued_events_then_closes_1001() {
    let relay = InProcess::start("[limits]\nshutdown_grace_ms = 3000\n").await;
    let (mut idle, _) = relay.client(0, "all=true").await;
    let (mut witness, _) = relay.client(1, "all=true").await;
    for n in 0..50 {
        relay.publish("m", json!({"n": n})).await;
    }
    relay.publish("marker", json!({})).await;
    // The hub routes an event to every queue at once: once the witness has
    // the marker, all 51 frames are queued for `idle`, which read nothing.
    assert_eq!(events_until_marker(&mut witness).await.len(), 50);
    let stopping = tokio::spawn(relay.stop());
    assert_eq!(
        events_until_marker(&mut idle).await,
        (0..50).collect::<Vec<_>>()
    );
    let close = tokio::time::timeout(WAIT, async {
        while let Some(msg) = idle.next().await {
            if let Ok(Message::Close(Some(f))) = msg {
                return u16::from(f.code);
            }
        }
        0
    })
    .await
    .unwrap();
    assert_eq!(close, 1001);
    stopping.await.unwrap();
}
