//! 10,000 events in Redis order, no duplicates, no loss, on clients spread
//! over two listeners with different subscriptions: with the hub writing
//! to the sockets itself (the default) and with every write through the
//! connection's task (`direct_writes = false`).

mod common;

use std::collections::HashMap;

use common::{Client, Redis, Relay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_in_order_over_two_listeners() {
    in_order(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_in_order_when_connection_tasks_write() {
    in_order(false).await;
}

async fn in_order(direct_writes: bool) {
    const N: usize = 10_000;
    let redis = Redis::start().await;
    // Roomy queues: this test is about order, not backpressure (see outage tests).
    let relay = Relay::with_extra(
        &redis,
        &format!("[limits]\nsend_queue = 20000\nsend_queue_bytes = 16777216\ndirect_writes = {direct_writes}\n"),
    )
    .await;
    // Per listener: one firehose client, one per agent, one on a session.
    let mut clients = Vec::new();
    for addr in &relay.addrs {
        clients.push(("all", Client::connect(*addr, "all=true").await));
        clients.push(("a0", Client::connect(*addr, "agentId=a0").await));
        clients.push(("a1", Client::connect(*addr, "agentId=a1").await));
        clients.push(("s", Client::connect(*addr, "sessionId=s&agentId=a2").await));
    }
    let items: Vec<(String, String)> = (0..N)
        .map(|i| {
            let payload = match i % 4 {
                0 => format!(r#"{{"agentId":"a0","seq":{i}}}"#),
                1 => format!(r#"{{"agentId":"a1","seq":{i}}}"#),
                2 => format!(r#"{{"agentId":"a2","sessionId":"s","seq":{i}}}"#),
                _ => format!(r#"{{"seq":{i}}}"#),
            };
            ("claude-studio:tick".to_owned(), payload)
        })
        .collect();
    let expected = |who: &str, i: usize| match who {
        "all" => true,
        "a0" => i % 4 == 0 || i % 4 == 3,
        "a1" => i % 4 == 1 || i % 4 == 3,
        _ => i % 4 == 2 || i % 4 == 3,
    };

    let mut pubconn = redis.conn().await;
    let publisher = tokio::spawn(async move {
        for chunk in items.chunks(500) {
            pubconn.publish_many(chunk).await;
        }
    });

    let mut readers = Vec::new();
    for (who, mut c) in clients {
        readers.push(tokio::spawn(async move {
            let want: Vec<usize> = (0..N).filter(|&i| expected(who, i)).collect();
            let mut got = Vec::with_capacity(want.len());
            while got.len() < want.len() {
                let v = c.next_json().await;
                assert_eq!(v["type"], "event", "{v}");
                got.push(v["data"]["seq"].as_u64().unwrap() as usize);
            }
            assert_eq!(got, want, "{who}: order, loss or duplicates");
            who
        }));
    }
    publisher.await.unwrap();
    let mut done: HashMap<&str, usize> = HashMap::new();
    for r in readers {
        *done.entry(r.await.unwrap()).or_default() += 1;
    }
    assert_eq!(done.values().sum::<usize>(), 8);
    assert_eq!(relay.metric("relay_redis_messages_total").await, N as f64);
}
