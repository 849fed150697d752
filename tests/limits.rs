//! Slow and stuck clients, per-connection limits, liveness timers and
//! connection churn — each provoked for real.

mod common;

use std::time::Duration;

use common::{Client, Redis, Relay};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::Message;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_reader_is_closed_1013_while_a_reader_on_the_same_listener_gets_everything() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(
        &redis,
        "[limits]\nsend_queue = 64\nsend_queue_bytes = 1048576\n",
    )
    .await;
    let mut stuck = relay.client("all=true").await;
    let mut reader = relay.client("all=true").await;
    let rss_before = rss_kib(relay.pid());

    const N: usize = 400;
    let pad = "x".repeat(64 * 1024);
    let mut conn = redis.conn().await;
    // The reader reports progress so the publisher never runs more than a
    // few events ahead of it: it keeps up, the stuck client does not.
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reading = tokio::spawn(async move {
        for i in 0..N {
            let v = reader.next_json().await;
            assert_eq!(v["data"]["seq"], i, "reader must get every event in order");
            let _ = progress_tx.send(i + 1);
        }
        reader
    });
    // 400 × 64 KiB = 25 MiB at a client that reads nothing.
    for i in 0..N {
        while i >= *progress.borrow() + 8 {
            progress.changed().await.unwrap();
        }
        conn.publish(
            "claude-studio:big",
            format!(r#"{{"seq":{i},"pad":"{pad}"}}"#),
        )
        .await;
    }
    let _reader = reading.await.unwrap();
    let rss_after = rss_kib(relay.pid());
    assert_eq!(
        relay.metric("relay_slow_consumer_disconnects_total").await,
        1.0
    );
    // Resume reading: buffered events, then the 1013 close.
    let (code, reason) = stuck.expect_close().await;
    assert_eq!((code, reason.as_str()), (1013, "slow consumer"));
    let grown = rss_after.saturating_sub(rss_before);
    println!("relay RSS: {rss_before} KiB before, {rss_after} KiB after 25 MiB to a stuck client (+{grown} KiB)");
    assert!(grown < 64 * 1024, "relay RSS grew by {grown} KiB");
    let deadline = std::time::Instant::now() + common::WAIT;
    while relay.health().await.1["connections"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "stuck client not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn message_over_the_limit_closes_1009_even_when_fragmented() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[limits]\nmax_client_message_bytes = 100\n").await;
    let mut c = relay.client("").await;
    c.send_text(&format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(200)))
        .await;
    assert_eq!(c.expect_close().await.0, 1009);

    // Three fragments of 60 bytes: each fits, the whole does not.
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let mut c = relay.client("").await;
    let part = "a".repeat(60);
    c.ws.send(Message::Frame(Frame::message(
        part.clone(),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    c.ws.send(Message::Frame(Frame::message(
        part.clone(),
        OpCode::Data(Data::Continue),
        false,
    )))
    .await
    .unwrap();
    c.ws.send(Message::Frame(Frame::message(
        part,
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(c.expect_close().await.0, 1009);
}

#[tokio::test]
async fn fragmented_frame_under_the_limit_is_reassembled() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut c = relay.client("").await;
    for (i, part) in [r#"{"type":"sub"#, r#"scribe","agen"#, r#"tId":"frag"}"#]
        .iter()
        .enumerate()
    {
        let op = if i == 0 { Data::Text } else { Data::Continue };
        c.ws.send(Message::Frame(Frame::message(
            part.to_string(),
            OpCode::Data(op),
            i == 2,
        )))
        .await
        .unwrap();
    }
    assert_eq!(
        c.next_json().await,
        json!({"type": "subscribed", "agentId": "frag"})
    );
}

#[tokio::test]
async fn handshake_timeout_drops_a_silent_tcp_client() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[limits]\nhandshake_timeout_ms = 300\n").await;
    let mut s = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    let mut buf = [0u8; 256];
    // The relay closes the connection: read returns (EOF or a 408) well before our bound.
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("relay kept a silent TCP client past handshake_timeout_ms");
    let text = String::from_utf8_lossy(&buf[..n.unwrap_or(0)]).to_string();
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
}

#[tokio::test]
async fn relay_pings_and_closes_idle_connections_with_1000() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(
        &redis,
        "[limits]\nping_interval_ms = 100\nidle_timeout_ms = 60000\n",
    )
    .await;
    let mut c = relay.client("").await;
    let mut pings = 0;
    while pings < 3 {
        match tokio::time::timeout(common::WAIT, c.ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Ping(_))) => pings += 1,
            other => panic!("expected pings, got {other:?}"),
        }
    }
    drop(relay);

    // No pings, short idle timeout, a client that never sends anything.
    let relay = Relay::with_extra(
        &redis,
        "[limits]\nping_interval_ms = 0\nidle_timeout_ms = 300\n",
    )
    .await;
    let mut c = relay.client("").await;
    assert_eq!(c.expect_close().await, (1000, "idle timeout".to_owned()));
}

#[tokio::test]
async fn client_frames_keep_a_connection_alive() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(
        &redis,
        "[limits]\nping_interval_ms = 0\nidle_timeout_ms = 400\n",
    )
    .await;
    let mut c = relay.client("").await;
    // Ten pongs over ~1 s: longer than the idle timeout, never idle.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.send_json(json!({"type": "ping"})).await;
        assert_eq!(c.next_json().await["type"], "pong");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_2000_abrupt_clients_leaves_nothing_behind() {
    const CHURN: usize = 2000;
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let addrs = relay.addrs.clone();
    let redis_port = redis.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut conn = common::RedisConn::connect(redis_port).await.unwrap();
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                conn.publish(
                    "claude-studio:churn",
                    format!(r#"{{"agentId":"a{}","i":{i}}}"#, i % 50),
                )
                .await;
                i += 1;
                // Paced (~1k events/s): events flow throughout, but the
                // firehose clients must not be closed as slow consumers.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            i
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CHURN {
        let addr = addrs[i % 2];
        tasks.spawn(async move {
            let mut c = Client::connect(addr, &format!("agentId=a{}", i % 50)).await;
            let mut frame = json!({"sessionId": format!("s{i}")});
            if i % 7 == 0 {
                frame["all"] = true.into();
            }
            c.subscribe(frame).await;
            // Abrupt: drop the TCP stream, no close frame.
            drop(c);
        });
        if tasks.len() >= 200 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.await.unwrap();
    assert!(published > 0);

    let deadline = std::time::Instant::now() + common::WAIT;
    loop {
        let (_, h) = relay.health().await;
        if h["connections"] == 0 && h["routing_index_entries"] == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leftovers after churn: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = relay.metrics().await;
    let open: f64 = addrs
        .iter()
        .map(|a| {
            common::metric_value(&m, &format!("relay_connections_open{{listener=\"{a}\"}}"))
                .unwrap()
        })
        .sum();
    assert_eq!(open, 0.0);
    assert_eq!(
        common::metric_value(&m, "relay_routing_index_entries"),
        Some(0.0)
    );
    let accepted: f64 = addrs
        .iter()
        .map(|a| {
            common::metric_value(
                &m,
                &format!("relay_connections_accepted_total{{listener=\"{a}\"}}"),
            )
            .unwrap()
        })
        .sum();
    assert_eq!(accepted, CHURN as f64);
}
