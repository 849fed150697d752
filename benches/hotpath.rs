//! Micro-benchmarks of the per-event hot path, without sockets or brokers:
//! decode (routing fields + JSON validation), encode (one native frame),
//! and the hub's routing for a fan-out and a routed population.
//!
//! `make bench-micro` (= `cargo bench --bench hotpath`) prints ns per
//! operation. Under `cargo test` (no `--bench` argument) each case runs a
//! few iterations only, so the suite proves the harness still works.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use studio_relay::config::HistoryConfig;
use studio_relay::event::Event;
use studio_relay::hub::queue::{queue, QueueRx};
use studio_relay::hub::{Command, Hub, Resume, Welcome};
use studio_relay::metrics::Metrics;
use studio_relay::source::decode::studio_json;
use studio_relay::source::Ingest;
use studio_relay::wire::Wire;

/// Claude Studio's routing fields (see ../shared/corpus/README.md).
const FIELDS: [&str; 5] = [
    "agentId",
    "sessionId",
    "targetAgentId",
    "threadId",
    "projectId",
];

fn corpus() -> Vec<(String, String)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/corpus/claude-studio-events.jsonl"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| {
        r#"{"event":"message:new","data":{"sessionId":"dev_01","projectId":"proj_7","message":{"role":"assistant","content":"hello"}}}"#.to_owned()
    });
    text.lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((v["event"].as_str()?.to_owned(), v["data"].to_string()))
        })
        .collect()
}

/// Runs `f` repeatedly for about `budget`, returns ns per call.
fn time(budget: Duration, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget || n == 0 {
        for _ in 0..64 {
            f();
        }
        n += 64;
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

fn register(hub: &mut Hub, id: u64, keys: Vec<(String, String)>, all: bool) -> QueueRx {
    register_from(hub, id, keys, all, None)
}

fn register_from(
    hub: &mut Hub,
    id: u64,
    keys: Vec<(String, String)>,
    all: bool,
    resume: Option<Resume>,
) -> QueueRx {
    let (tx, rx) = queue(1 << 20, usize::MAX);
    hub.apply(Command::Register {
        id,
        wire: Wire::Studio,
        queue: tx,
        keys,
        all,
        welcome: Welcome::new(|info| info.epoch.unwrap_or("").to_owned().into()),
        resume,
    });
    rx
}

fn history(size: usize) -> HistoryConfig {
    HistoryConfig {
        size,
        ..HistoryConfig::default()
    }
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let budget = if bench {
        Duration::from_secs(2)
    } else {
        Duration::from_millis(5)
    };
    let fields: Vec<Arc<str>> = FIELDS.iter().map(|f| Arc::from(*f)).collect();
    let events = corpus();
    let bytes: usize = events.iter().map(|(_, d)| d.len()).sum::<usize>() / events.len().max(1);
    println!(
        "hot path, {} corpus events of {bytes} bytes on average",
        events.len()
    );

    let mut i = 0;
    let ns = time(budget, || {
        let (name, data) = &events[i % events.len()];
        i += 1;
        black_box(studio_json::decode(name, data, &fields, Instant::now()));
    });
    println!("decode (routing fields + JSON check)   {ns:>10.0} ns/event");

    let decoded: Vec<Event> = events
        .iter()
        .map(|(n, d)| studio_json::decode(n, d, &fields, Instant::now()))
        .collect();
    let mut i = 0;
    let ns = time(budget, || {
        let e = &decoded[i % decoded.len()];
        i += 1;
        // A fresh event each time: the frame cache would hide the cost.
        let fresh = Event::new(&*e.name, e.data.clone(), Vec::new(), e.received);
        black_box(Wire::Studio.event_frame(&fresh));
    });
    println!("encode (native frame, once per event)  {ns:>10.0} ns/event");

    for (label, clients, agents, kept) in [
        ("fanout", 1000usize, 0usize, 0usize),
        ("routed", 1000, 100, 0),
        ("fanout+history", 1000, 0, 100_000),
        ("routed+history", 1000, 100, 100_000),
    ] {
        let mut hub = Hub::new(Arc::new(Metrics::new()));
        hub.set_history(history(kept));
        let mut queues: Vec<QueueRx> = (0..clients)
            .map(|c| {
                let keys = match agents {
                    0 => Vec::new(),
                    a => vec![("agentId".to_owned(), format!("a{}", c % a))],
                };
                register(&mut hub, c as u64, keys, agents == 0)
            })
            .collect();
        let mut sink = Vec::new();
        let mut k = 0usize;
        let per_event = clients.checked_div(agents).unwrap_or(clients);
        let ns = time(budget, || {
            let payload = match agents {
                0 => r#"{"n":1}"#.to_owned(),
                a => format!(r#"{{"agentId":"a{}","n":1}}"#, k % a),
            };
            k += 1;
            let e = studio_json::decode("m", &payload, &fields, Instant::now());
            hub.ingest(Ingest::Event(e));
            // Keep queues short, as connections draining them would.
            if k % 64 == 0 {
                for q in &mut queues {
                    q.drain_now(&mut sink, usize::MAX);
                    sink.clear();
                }
            }
        });
        println!(
            "route {label:<15} {clients} clients, {per_event:>4}/event {ns:>10.0} ns/event = {:>6.1} ns/delivery",
            ns / per_event as f64
        );
    }

    resumes(bench, &fields);
}

/// A resume's cost: one client catching up on 10,000 missed events, and
/// 1,000 clients (100 agents) resuming at once after 10,000 events.
fn resumes(bench: bool, fields: &[Arc<str>]) {
    let missed = if bench { 10_000 } else { 200 };
    let mut hub = Hub::new(Arc::new(Metrics::new()));
    hub.set_history(history(2 * missed));
    let mut first = register(&mut hub, 0, Vec::new(), true);
    let mut sink = Vec::new();
    first.drain_now(&mut sink, 1);
    let epoch = sink
        .pop()
        .map(|o| o.frame.payload().to_string())
        .unwrap_or_default();
    for k in 0..missed {
        let payload = format!(r#"{{"agentId":"a{}","n":{k}}}"#, k % 100);
        let e = studio_json::decode("m", &payload, fields, Instant::now());
        hub.ingest(Ingest::Event(e));
    }
    drop(first);
    let start = Instant::now();
    let resume = Some(Resume {
        epoch: epoch.clone(),
        offset: 0,
        restore: None,
    });
    let mut rx = register_from(&mut hub, 1, Vec::new(), true, resume);
    let took = start.elapsed();
    rx.drain_now(&mut sink, usize::MAX);
    assert_eq!(sink.len(), missed + 1, "welcome + every missed event");
    println!(
        "resume  1 client, {missed} missed events   {:>10.0} ns/event = {:>8.0} events/s",
        took.as_nanos() as f64 / missed as f64,
        missed as f64 / took.as_secs_f64()
    );
    sink.clear();

    let clients = if bench { 1000 } else { 20 };
    let start = Instant::now();
    let mut queues = Vec::with_capacity(clients);
    for c in 0..clients {
        let keys = vec![("agentId".to_owned(), format!("a{}", c % 100))];
        let resume = Some(Resume {
            epoch: epoch.clone(),
            offset: 0,
            restore: None,
        });
        queues.push(register_from(&mut hub, 10 + c as u64, keys, false, resume));
    }
    let took = start.elapsed();
    let replayed: usize = queues
        .iter_mut()
        .map(|q| {
            q.drain_now(&mut sink, usize::MAX);
            let n = sink.len() - 1;
            sink.clear();
            n
        })
        .sum();
    println!(
        "resume  {clients} clients at once, 100 agents  {:>10.1} ms until all queued ({replayed} events replayed)",
        took.as_secs_f64() * 1000.0
    );
}
