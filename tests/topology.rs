//! SPEC §15 on real topologies started here: Redis Sentinel (1 master,
//! 1 replica, 3 Sentinels) and Redis Cluster (3 masters + 3 replicas).
//! A graceful `SENTINEL FAILOVER` (which leaves the old master running), a
//! SIGKILLed master and its return as a replica, and a SIGKILLed cluster
//! node: each time the relay notices, its clients get one `gap`, and
//! events published after it all arrive.

mod common;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, Client, Redis, Relay, RelayOpts, TempDir};
use common::{RedisConn, Reply};
use serde_json::{json, Value};

const CH: &str = "claude-studio:agent:status";
const SERVICE: &str = "mymaster";
const LIVENESS: &str = "liveness_interval_ms = 300\nliveness_timeout_ms = 1500\n";
const LIVENESS_TIMEOUT: Duration = Duration::from_millis(1500);

/// `redis-cli -p port args…`'s output.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli (apt-get install redis-tools)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` every 50 ms until it is true; panics with `what` after `within`.
async fn until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A master, a replica and three Sentinels watching them.
struct Sentinels {
    master: Redis,
    replica: Redis,
    sentinels: Vec<(u16, Child)>,
    _dir: TempDir,
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for (_, c) in &mut self.sentinels {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Sentinels {
    async fn start() -> Sentinels {
        let master = Redis::start().await;
        let replica = Redis::start_with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ])
        .await;
        until(Duration::from_secs(10), "the replica's link", || {
            cli(replica.port, &["INFO", "replication"]).contains("master_link_status:up")
        })
        .await;
        let dir = TempDir::new();
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.0.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {SERVICE} 2000\n\
                     sentinel failover-timeout {SERVICE} 10000\n",
                    dir.0.display(),
                    master.port
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            sentinels.push((port, child));
        }
        let s = Sentinels {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        // Each Sentinel knows the replica and the two others (hello
        // messages every 2 s), so a failover can be authorised.
        for (port, _) in &s.sentinels {
            let port = *port;
            until(Duration::from_secs(30), "sentinel discovery", || {
                cli(port, &["INFO", "sentinel"]).contains("slaves=1,sentinels=3")
            })
            .await;
        }
        s
    }

    fn url(&self) -> String {
        let ports: Vec<u16> = self.sentinels.iter().map(|(p, _)| *p).collect();
        format!(
            "redis-sentinel://127.0.0.1:{}?sentinelServiceName={SERVICE}&node=127.0.0.1:{}&node=127.0.0.1:{}",
            ports[0], ports[1], ports[2]
        )
    }

    fn sentinel(&self) -> u16 {
        self.sentinels[0].0
    }

    /// The master's port as the first Sentinel names it.
    fn master_port(&self) -> Option<u16> {
        let out = cli(
            self.sentinel(),
            &["SENTINEL", "get-master-addr-by-name", SERVICE],
        );
        out.lines().nth(1)?.trim().parse().ok()
    }
}

/// Publishes `{"n":…}` every 20 ms to whichever node `master` names, until
/// stopped; then a global end marker. `n` counts what was published.
struct Publisher {
    stop: Arc<AtomicBool>,
    n: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn start(master: impl Fn() -> Option<u16> + Send + 'static) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let n = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (stop, n) = (stop.clone(), n.clone());
            async move {
                let mut conns: HashMap<u16, RedisConn> = HashMap::new();
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                let mut done = false;
                loop {
                    tick.tick().await;
                    done |= stop.load(Ordering::Relaxed);
                    let Some(port) = master() else { continue };
                    if let std::collections::hash_map::Entry::Vacant(e) = conns.entry(port) {
                        match RedisConn::connect(port).await {
                            Ok(c) => {
                                e.insert(c);
                            }
                            Err(_) => continue,
                        }
                    }
                    let Some(conn) = conns.get_mut(&port) else {
                        continue;
                    };
                    let (channel, body) = if done {
                        ("claude-studio:end".to_owned(), "{}".to_owned())
                    } else {
                        let i = n.load(Ordering::Relaxed);
                        (CH.to_owned(), json!({"n": i}).to_string())
                    };
                    match conn
                        .command(&[b"PUBLISH", channel.as_bytes(), body.as_bytes()])
                        .await
                    {
                        Ok(Reply::Int(_)) if done => return,
                        Ok(Reply::Int(_)) => {
                            n.fetch_add(1, Ordering::Relaxed);
                        }
                        // A node that died or turned replica: reconnect to
                        // whichever is master next tick; the event is retried.
                        _ => {
                            conns.remove(&port);
                        }
                    }
                }
            }
        });
        Publisher { stop, n, task }
    }

    fn published(&self) -> u64 {
        self.n.load(Ordering::Relaxed)
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("publisher ended")
            .expect("publisher");
        self.n.load(Ordering::Relaxed)
    }
}

/// What a client saw: event numbers, and for each gap the publisher's count
/// when it arrived and when.
#[derive(Default)]
struct Seen {
    ns: Vec<u64>,
    gaps: Vec<(u64, Instant)>,
}

/// Reads until `n` events arrived, or the end marker.
/// Reads until the first gap and returns when it arrived.
async fn first_gap(c: &mut Client, seen: &mut Seen, publisher: &Publisher) -> Instant {
    while seen.gaps.is_empty() {
        let want = seen.ns.len() + 1;
        read(c, seen, publisher, Some(want)).await;
    }
    seen.gaps[0].1
}

async fn read(c: &mut Client, seen: &mut Seen, publisher: &Publisher, until_n: Option<usize>) {
    loop {
        if until_n.is_some_and(|n| seen.ns.len() >= n) {
            return;
        }
        let f = c.next_json().await;
        match f["type"].as_str() {
            Some("gap") => {
                assert_eq!(f["source"], "redis", "{f}");
                seen.gaps.push((publisher.published(), Instant::now()));
            }
            Some("event") if f["event"] == "end" => return,
            Some("event") => seen.ns.push(f["data"]["n"].as_u64().unwrap()),
            _ => {}
        }
    }
}

/// Each event at most once, in order, and every one published from just
/// after the last gap to the end.
fn check_after_gap(seen: &Seen, published: u64) {
    let mut sorted = seen.ns.clone();
    sorted.dedup();
    assert_eq!(sorted, seen.ns, "no duplicate, in order");
    let (at_gap, _) = *seen.gaps.last().expect("a gap");
    // One event may have been on its way when the gap was sent.
    let from = at_gap + 1;
    let missing: Vec<u64> = (from..published)
        .filter(|n| seen.ns.binary_search(n).is_err())
        .collect();
    assert!(missing.is_empty(), "lost after the gap: {missing:?}");
}

async fn relay_on(url: &str) -> Relay {
    Relay::start_with(
        url,
        RelayOpts {
            redis_extra: LIVENESS.into(),
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_sentinel_failover_is_noticed_though_the_old_master_runs_on() {
    let s = Sentinels::start().await;
    let relay = relay_on(&s.url()).await;
    let mut c = relay.client("").await;
    // A relay whose probes come too rarely to matter: the Sentinels'
    // +switch-master announcement moves it.
    let slow = Relay::start_with(
        &s.url(),
        RelayOpts {
            redis_extra: "liveness_interval_ms = 60000\nliveness_timeout_ms = 5000\n".into(),
            ..Default::default()
        },
    )
    .await;
    let mut slow_c = slow.client("").await;
    let sentinel = s.sentinel();
    let master = move || {
        let out = cli(sentinel, &["SENTINEL", "get-master-addr-by-name", SERVICE]);
        out.lines().nth(1)?.trim().parse().ok()
    };
    let publisher = Publisher::start(master);
    let mut seen = Seen::default();
    read(&mut c, &mut seen, &publisher, Some(20)).await;

    let old = s.master.port;
    assert!(cli(sentinel, &["SENTINEL", "FAILOVER", SERVICE]).contains("OK"));
    until(Duration::from_secs(15), "the switch", || {
        s.master_port() == Some(s.replica.port)
    })
    .await;
    let switched = Instant::now();
    // The old master keeps running (Sentinel demotes it a while later).
    assert!(cli(old, &["PING"]).contains("PONG"));
    let gap_at = first_gap(&mut c, &mut seen, &publisher).await;
    eprintln!(
        "sentinel failover: gap {:?} after the switch",
        gap_at.duration_since(switched)
    );
    assert!(
        gap_at.duration_since(switched) < LIVENESS_TIMEOUT + Duration::from_secs(1),
        "gap {:?} after the switch",
        gap_at.duration_since(switched)
    );
    let lost = relay
        .wait_log(0, "redis subscription lost; reconnecting")
        .await;
    assert!(lost["reason"].is_string(), "{lost}");
    let gap = tokio::time::timeout(Duration::from_secs(5), slow_c.next_of_type("gap"))
        .await
        .expect("the slow-probing relay moved on +switch-master");
    assert_eq!(gap["reason"], "redis_reconnected");
    eprintln!(
        "slow-probing relay: gap {:?} after the switch",
        switched.elapsed()
    );
    let lost = slow
        .wait_log(0, "redis subscription lost; reconnecting")
        .await;
    assert!(
        lost["reason"]
            .as_str()
            .is_some_and(|r| r.contains("+switch-master")),
        "{lost}"
    );
    // Flowing again, through the new master.
    let before = seen.ns.len();
    read(&mut c, &mut seen, &publisher, Some(before + 20)).await;
    let published = publisher.finish().await;
    read(&mut c, &mut seen, &publisher_done(), None).await;
    assert_eq!(seen.gaps.len(), 1, "one gap");
    check_after_gap(&seen, published);
    assert_eq!(relay.health().await.0, 200);
}

/// A stand-in for reads after the publisher finished (its count is final).
fn publisher_done() -> Publisher {
    Publisher {
        stop: Arc::new(AtomicBool::new(true)),
        n: Arc::new(AtomicU64::new(u64::MAX)),
        task: tokio::spawn(async {}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sentinel_master_and_its_return_as_a_replica() {
    let mut s = Sentinels::start().await;
    let relay = relay_on(&s.url()).await;
    let mut c = relay.client("").await;
    let sentinel = s.sentinel();
    let publisher = Publisher::start(move || {
        let out = cli(sentinel, &["SENTINEL", "get-master-addr-by-name", SERVICE]);
        out.lines().nth(1)?.trim().parse().ok()
    });
    let mut seen = Seen::default();
    read(&mut c, &mut seen, &publisher, Some(20)).await;

    s.master.kill();
    let killed = Instant::now();
    relay.wait_health(503).await;
    assert!(
        killed.elapsed() < LIVENESS_TIMEOUT + Duration::from_secs(1),
        "503 {:?} after the kill",
        killed.elapsed()
    );
    let gap_at = first_gap(&mut c, &mut seen, &publisher).await;
    eprintln!(
        "sentinel kill: gap {:?} after the kill",
        gap_at.duration_since(killed)
    );
    assert!(
        gap_at.duration_since(killed) < Duration::from_secs(10),
        "recovered {:?} after the kill",
        gap_at.duration_since(killed)
    );
    assert_eq!(s.master_port(), Some(s.replica.port));
    let want = seen.ns.len() + 20;
    read(&mut c, &mut seen, &publisher, Some(want)).await;

    // The old master comes back; Sentinel makes it a replica of the new one.
    // The relay stays where it is: no second gap, nothing lost.
    s.master.restart().await;
    let old = s.master.port;
    until(Duration::from_secs(30), "the old master demoted", || {
        cli(old, &["INFO", "replication"]).contains("role:slave")
    })
    .await;
    let want = seen.ns.len() + 20;
    read(&mut c, &mut seen, &publisher, Some(want)).await;
    let published = publisher.finish().await;
    read(&mut c, &mut seen, &publisher_done(), None).await;
    assert_eq!(seen.gaps.len(), 1, "one gap");
    check_after_gap(&seen, published);
}

/// Three masters and three replicas.
struct Cluster {
    nodes: Vec<Redis>,
}

impl Cluster {
    async fn start() -> Cluster {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(
                Redis::start_with(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        // The cluster's own failover takes longer than
                        // this, so a fast re-subscription is the relay's.
                        "--cluster-node-timeout",
                        "5000",
                    ]
                    .map(String::from)
                    .to_vec(),
                )
                .await,
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Slots covered is not enough: a PUBLISH reaches only the nodes its
        // node has a live bus link to, so wait until every node knows all
        // six as connected (no handshake still under way).
        for n in &nodes {
            let port = n.port;
            until(
                Duration::from_secs(30),
                "cluster_state:ok, all linked",
                || {
                    let links = cli(port, &["CLUSTER", "NODES"]);
                    let linked = links
                        .lines()
                        .filter(|l| l.contains(" connected") && !l.contains("handshake"))
                        .count();
                    cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok") && linked == 6
                },
            )
            .await;
        }
        Cluster { nodes }
    }

    fn url(&self) -> String {
        format!(
            "redis-cluster://127.0.0.1:{}?node=127.0.0.1:{}&node=127.0.0.1:{}",
            self.nodes[0].port, self.nodes[1].port, self.nodes[2].port
        )
    }

    /// The node holding the relay's pattern subscription.
    fn subscribed(&self) -> Option<usize> {
        self.nodes.iter().position(|n| {
            cli(n.port, &["PUBSUB", "NUMPAT"])
                .trim()
                .parse::<u64>()
                .is_ok_and(|k| k > 0)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_delivers_from_every_node_and_survives_losing_its_node_at_once() {
    let mut cluster = Cluster::start().await;
    let relay = relay_on(&cluster.url()).await;
    let mut c = relay.client("").await;
    // Published on every node, each event arrives once.
    for (i, n) in cluster.nodes.iter().enumerate() {
        n.publish(CH, json!({"n": i}).to_string()).await;
    }
    let mut seen = Seen::default();
    read(&mut c, &mut seen, &publisher_done(), Some(6)).await;
    // Across nodes the cluster bus sets the order; each arrives once.
    seen.ns.sort();
    assert_eq!(seen.ns, (0..6).collect::<Vec<u64>>());

    let victim = cluster.subscribed().expect("a node holds the subscription");
    let survivor = cluster.nodes[(victim + 1) % 6].port;
    let publisher = Publisher::start(move || Some(survivor));
    let mut seen = Seen::default();
    read(&mut c, &mut seen, &publisher, Some(10)).await;
    cluster.nodes[victim].kill();
    let killed = Instant::now();
    let gap_at = first_gap(&mut c, &mut seen, &publisher).await;
    let took = gap_at.duration_since(killed);
    eprintln!("cluster: re-subscribed {took:?} after the kill");
    // cluster-node-timeout is 5 s: the cluster has not even marked the node
    // failed yet, let alone promoted its replica.
    assert!(
        took < Duration::from_secs(3),
        "re-subscribed {took:?} after the kill"
    );
    let now_on = cluster.subscribed().expect("subscribed again");
    assert_ne!(now_on, victim);
    let want = seen.ns.len() + 20;
    read(&mut c, &mut seen, &publisher, Some(want)).await;
    let published = publisher.finish().await;
    read(&mut c, &mut seen, &publisher_done(), None).await;
    assert_eq!(seen.gaps.len(), 1, "one gap");
    check_after_gap(&seen, published);
    let (status, v): (u16, Value) = relay.health().await;
    assert_eq!(status, 200, "{v}");
}
