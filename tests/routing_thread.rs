//! The sources and the hub run on a routing thread of their own, which
//! starts with the relay and is joined by its drain. Alone in its test
//! binary (its own process), so the threads counted are this relay's.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use studio_relay::app::Relay;
use studio_relay::service::shutdown::CancellationToken;
use studio_relay::source::memory;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(15);

/// Threads of this process named like the relay's routing thread.
fn routing_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| c.trim() == "studio-routing")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routing_thread_carries_events_and_ends_with_the_relay() {
    assert_eq!(routing_threads(), 0);
    let config =
        studio_relay::config::parse_str("[redis]\nliveness_interval_ms = 0\n", "routing", None)
            .unwrap()
            .config;
    let listener = studio_relay::net::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (source, publisher) = memory::pair();
    let relay = Relay::with_listeners(config, vec![listener]).with_sources(vec![Box::new(source)]);
    let addr = relay.local_addrs()[0];
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?agentId=a1"))
        .await
        .unwrap();
    let mut texts = Vec::new();
    let mut published = false;
    while texts.len() < 2 {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame within the wait")
            .expect("connection open")
            .unwrap();
        if let Message::Text(t) = msg {
            texts.push(serde_json::from_str::<Value>(t.as_str()).unwrap());
            if !published {
                // The welcome says the subscription is live.
                assert_eq!(routing_threads(), 1, "one routing thread while running");
                assert!(publisher.publish("m", r#"{"agentId":"a1","n":1}"#).await);
                published = true;
            }
        }
    }
    assert_eq!(texts[0]["type"], "welcome");
    assert_eq!(texts[1]["type"], "event");
    assert_eq!(texts[1]["data"]["n"], 1);

    shutdown.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert_eq!(routing_threads(), 0, "the drain joins the routing thread");
}
