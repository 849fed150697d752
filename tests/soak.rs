//! SPEC §12 memory: with history on, a 10 MiB/s stream for two minutes
//! keeps the ring within `max_bytes` and the relay's RSS flat, while a
//! client gets every event. Real binary, real Redis, real client.

mod common;

use std::time::Duration;

use common::{Client, Redis, Relay};
use serde_json::json;

const CH: &str = "claude-studio:agent:status";
const MAX_BYTES: u64 = 8 << 20;
/// 64 KiB payloads, 160 a second: 10 MiB/s.
const PAYLOAD: usize = 64 << 10;
const PER_TICK: usize = 16;
const TICK: Duration = Duration::from_millis(100);
const RUN: Duration = Duration::from_secs(120);
/// Past this the ring is full and the allocator has its working set.
const WARM: Duration = Duration::from_secs(20);
/// Room for the (debug-build) reader to fall behind for a moment without
/// being dropped as a slow consumer.
const QUEUE_BYTES: u64 = 8 << 20;
/// RSS is compared by its floor over this long at the start and the end:
/// the floor is where the queue was empty, so it shows what is kept.
const WINDOW: Duration = Duration::from_secs(30);

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn ten_mib_a_second_for_two_minutes_keeps_the_ring_bounded_and_rss_flat() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(
        &redis,
        &format!(
            "[history]\nsize = 1000000\nmax_bytes = {MAX_BYTES}\nttl_ms = 600000\n\
             [limits]\nsend_queue = 100000\nsend_queue_bytes = {QUEUE_BYTES}\n"
        ),
    )
    .await;
    let mut client = Client::connect(relay.addr(), "all=true").await;
    let pad = "x".repeat(PAYLOAD);
    let mut conn = redis.conn().await;
    let publisher = tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        let start = tokio::time::Instant::now();
        let mut n = 0u64;
        while start.elapsed() < RUN {
            tick.tick().await;
            let batch: Vec<(String, String)> = (0..PER_TICK)
                .map(|i| {
                    let body = json!({"n": n + i as u64, "pad": pad}).to_string();
                    (CH.to_owned(), body)
                })
                .collect();
            conn.publish_many(&batch).await;
            n += PER_TICK as u64;
        }
        conn.publish_many(&[(CH.to_owned(), json!({"end": true}).to_string())])
            .await;
        n
    });
    // The reader runs beside the sampler: every event must arrive, in order.
    // It only scans for the number: parsing 10 MiB/s of JSON in a debug
    // build would make it the slow consumer.
    let reader = tokio::spawn(async move {
        let mut next = 0u64;
        loop {
            let text = client.next_text().await;
            if text.contains(r#""data":{"end":true}"#) {
                return next;
            }
            let Some(at) = text.find(r#""data":{"n":"#) else {
                continue;
            };
            let digits: String = text[at + 12..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            assert_eq!(
                digits.parse::<u64>().ok(),
                Some(next),
                "in order, none lost"
            );
            next += 1;
        }
    });
    let started = tokio::time::Instant::now();
    let mut samples = Vec::new();
    let mut ring_peak = 0.0f64;
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        samples.push((started.elapsed(), rss_kib(relay.pid())));
        ring_peak = ring_peak.max(relay.metric("relay_history_bytes").await);
    }
    let published = publisher.await.expect("publisher");
    let received = reader.await.expect("reader");
    assert_eq!(received, published);
    assert!(
        published >= 15_000,
        "the stream ran at ~10 MiB/s: {published}"
    );
    assert!(
        ring_peak <= MAX_BYTES as f64 && ring_peak > (MAX_BYTES / 2) as f64,
        "ring full but within max_bytes: {ring_peak}"
    );
    let floor = |from: Duration, to: Duration| {
        samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, rss)| *rss)
            .min()
            .expect("samples in the window")
    };
    let early = floor(WARM, WARM + WINDOW);
    let late = floor(RUN - WINDOW, RUN + WINDOW);
    // Two minutes of this stream is 1.2 GB through the relay; a leak of
    // even 1% of it would be 12 MiB here.
    let growth = late.saturating_sub(early);
    assert!(
        growth < 8 << 10,
        "RSS floor grew {growth} KiB ({early} KiB after warm-up, {late} KiB at the end): {samples:?}"
    );
}
