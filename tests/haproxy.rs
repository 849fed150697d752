//! SPEC §15 with a real load balancer: two relays on one redis-server behind
//! the real `haproxy`, configured from the shipped `examples/haproxy.cfg`
//! (only addresses, the stats socket, the log target, maxconn and the check
//! timing replaced). Native clients and socket.io-client (polling only, websocket
//! only, and the default polling → websocket upgrade) get every event
//! exactly once through the proxy; then one relay is stopped with SIGTERM:
//! its `/healthz` fails and HAProxy marks it DOWN before it closes its
//! clients, which reconnect through the proxy to the other relay, are told
//! they lost history (`recovered:false` + gap / `relay:gap`), and get what
//! is published next.
//!
//! Skipped, saying so, when `haproxy` is not installed (`.ci/run` installs it).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::node::NodeProc;
use common::{free_port, http, Client, Redis, Relay, RelayOpts, TempDir, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CH: &str = "claude-studio:agent:status";
const MARKER: &str = "claude-studio:marker";
/// What the shipped config's health checks run at, and what the test uses.
const SHIPPED_TIMING: &str = "inter 2s fall 2 rise 2";
const TEST_TIMING: &str = "inter 200ms fall 2 rise 1";
/// The shipped `server` addresses, in order.
const SHIPPED_SERVERS: [&str; 2] = ["10.0.0.11:4456", "10.0.0.12:4456"];
/// Above fall x inter (2 x 200 ms) with room for a busy machine.
const DRAIN_DELAY_MS: u64 = 1500;

fn haproxy_installed() -> bool {
    Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The shipped example.
fn shipped() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/haproxy.cfg"))
        .unwrap()
}

/// `examples/haproxy.cfg` with this test's addresses: each replaced line
/// must exist, so the example cannot drift from what is tested.
fn generate(front: SocketAddr, relays: [SocketAddr; 2], socket: &Path) -> String {
    let mut text = shipped();
    let mut swap = |from: &str, to: &str| {
        assert!(text.contains(from), "examples/haproxy.cfg lost {from:?}");
        text = text.replace(from, to);
    };
    swap("    bind :80\n", &format!("    bind {front}\n"));
    swap(
        "stats socket /run/haproxy/studio-relay.sock",
        &format!("stats socket {}", socket.display()),
    );
    swap(
        "    log /dev/log local0\n",
        "    log stderr format raw local0\n",
    );
    // Needs 2 x maxconn file descriptors; a container's limit may be lower.
    swap("    maxconn 50000\n", "    maxconn 2000\n");
    swap(SHIPPED_TIMING, TEST_TIMING);
    for (shipped, real) in SHIPPED_SERVERS.iter().zip(relays) {
        swap(shipped, &real.to_string());
    }
    text
}

/// The real haproxy in the foreground; killed on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    socket: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl Haproxy {
    /// Checks and starts it, and waits until its health checks have found
    /// both relays UP.
    async fn start(relays: [SocketAddr; 2]) -> Haproxy {
        let dir = TempDir::new();
        let socket = dir.0.join("stats.sock");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = dir.0.join("haproxy.cfg");
        std::fs::write(&cfg, generate(addr, relays, &socket)).unwrap();
        assert_valid(&cfg);
        let log = dir.0.join("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.0.join("haproxy.err")).unwrap())
            .spawn()
            .unwrap();
        let h = Haproxy {
            child,
            addr,
            socket,
            log,
            _dir: dir,
        };
        for server in ["relay1", "relay2"] {
            h.wait_server(server, "UP").await;
        }
        h
    }

    /// `show stat` on the stats socket: one map per proxy/server row.
    async fn stat(&self) -> std::io::Result<Vec<HashMap<String, String>>> {
        let mut s = tokio::net::UnixStream::connect(&self.socket).await?;
        s.write_all(b"show stat\n").await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        let mut lines = out.lines();
        let header: Vec<String> = lines
            .next()
            .unwrap_or("")
            .trim_start_matches("# ")
            .split(',')
            .map(str::to_owned)
            .collect();
        Ok(lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                header
                    .iter()
                    .cloned()
                    .zip(l.split(',').map(str::to_owned))
                    .collect()
            })
            .collect())
    }

    /// The `relays` backend's row for `server`: (status, check_status).
    async fn server(&self, server: &str) -> Option<(String, String)> {
        let rows = self.stat().await.ok()?;
        rows.into_iter()
            .find(|r| r["pxname"] == "relays" && r["svname"] == server)
            .map(|r| (r["status"].clone(), r["check_status"].clone()))
    }

    /// Polls the stats socket until `server` is in `status` (UP after a
    /// passed check, DOWN); the proxy's own readiness signal.
    async fn wait_server(&self, server: &str, status: &str) -> Instant {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((s, check)) = self.server(server).await {
                let passed = status != "UP" || check.starts_with("L7OK");
                if s == status && passed {
                    return Instant::now();
                }
            }
            assert!(
                Instant::now() < deadline,
                "haproxy never saw {server} {status}: {:?}; log:\n{}",
                self.server(server).await,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_text(&self) -> String {
        let err = self.log.with_file_name("haproxy.err");
        format!(
            "{}{}",
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            std::fs::read_to_string(err).unwrap_or_default()
        )
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A relay as the README advises behind a load balancer: one listener,
/// history on (so resuming elsewhere is visibly refused), a drain delay.
async fn relay(redis: &Redis) -> Relay {
    Relay::start_with(
        &redis.url(),
        RelayOpts {
            listeners: 1,
            extra: format!(
                "[history]\nsize = 1000\n[limits]\nshutdown_grace_ms = 6000\n\
                 drain_delay_ms = {DRAIN_DELAY_MS}\n"
            ),
            ..Default::default()
        },
    )
    .await
}

/// The relay instance in a connection id `<instance>-<n>`.
fn instance(connection_id: &Value) -> String {
    let id = connection_id.as_str().expect("connectionId");
    id.rsplit_once('-').expect("instance-n").0.to_owned()
}

/// A native client through the proxy and where its history stands.
struct Native {
    c: Client,
    relay: String,
    epoch: String,
    offset: u64,
}

impl Native {
    async fn connect(proxy: SocketAddr, query: &str) -> Native {
        let c = Client::connect(proxy, query).await;
        Native {
            relay: instance(&c.welcome["connectionId"]),
            epoch: c.welcome["epoch"].as_str().expect("epoch").to_owned(),
            offset: c.welcome["offset"].as_u64().expect("offset"),
            c,
        }
    }

    /// The `seq`s of events up to the marker, in arrival order.
    async fn seqs_until_marker(&mut self) -> Vec<u64> {
        let mut got = Vec::new();
        loop {
            let v = self.c.next_of_type("event").await;
            self.offset = v["offset"].as_u64().expect("offset");
            if v["event"] == "marker" {
                return got;
            }
            got.push(v["data"]["seq"].as_u64().unwrap());
        }
    }
}

/// The `seq`s a Socket.IO client got up to the marker.
async fn sio_seqs_until_marker(c: &mut NodeProc) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        let (name, args) = c.next_event().await;
        match name.as_str() {
            "marker" => return got,
            "agent:status" => got.push(args[0]["seq"].as_u64().unwrap()),
            other => panic!("unexpected event {other}: {args:?}"),
        }
    }
}

async fn publish_range(redis: &Redis, seqs: std::ops::Range<u64>) -> Vec<u64> {
    for seq in seqs.clone() {
        redis
            .publish(CH, json!({"agentId": "a1", "seq": seq}).to_string())
            .await;
    }
    // Not for a1: must not arrive anywhere.
    redis
        .publish(CH, json!({"agentId": "a2", "seq": 999}).to_string())
        .await;
    redis.publish(MARKER, "{}").await;
    seqs.collect()
}

async fn sessions_open(relay: &Relay) -> f64 {
    let text = relay.metrics().await;
    ["polling", "websocket"]
        .iter()
        .map(|t| {
            common::metric_value(
                &text,
                &format!("relay_socketio_sessions_open{{transport=\"{t}\"}}"),
            )
            .unwrap_or(0.0)
        })
        .sum()
}

#[test]
fn the_shipped_config_is_valid_haproxy() {
    if !haproxy_installed() {
        eprintln!("skipping: haproxy is not installed (.ci/run installs it)");
        return;
    }
    let dir = TempDir::new();
    let cfg = dir.0.join("haproxy.cfg");
    std::fs::write(&cfg, shipped()).unwrap();
    assert_valid(&cfg);
    let text = shipped();
    for needed in [
        "timeout tunnel",
        "option httpchk",
        "uri /healthz",
        "http-check expect status 200",
        "balance source",
    ] {
        assert!(text.contains(needed), "examples/haproxy.cfg lacks {needed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_behind_haproxy_deliver_once_and_clients_move_when_one_drains() {
    if !haproxy_installed() {
        eprintln!("skipping: haproxy is not installed (.ci/run installs it)");
        return;
    }
    let redis = Redis::start().await;
    let mut relays = vec![relay(&redis).await, relay(&redis).await];
    let proxy = Haproxy::start([relays[0].addr(), relays[1].addr()]).await;
    let url = format!("http://{}", proxy.addr);

    // ---- every client gets every event once, through the proxy
    let mut natives = Vec::new();
    for _ in 0..4 {
        natives.push(Native::connect(proxy.addr, "agentId=a1").await);
    }
    let query = json!({"agentId": "a1"});
    let mut sio = Vec::new();
    for transports in [json!(["polling"]), json!(["websocket"]), Value::Null] {
        let mut opts = json!({"query": query, "reconnectionDelayMax": 1000});
        if !transports.is_null() {
            opts["transports"] = transports;
        }
        let mut c = NodeProc::socketio(&url, opts).await;
        let connect = c.wait_for("connect").await;
        assert!(connect["pid"].is_string(), "history on: a pid {connect}");
        sio.push(c);
    }
    // The default client went polling → websocket through the proxy: the
    // upgrade reached the relay that issued the sid.
    assert_eq!(sio[2].saw("upgrade").await["transport"], "websocket");

    // Native connections are spread over both relays (leastconn).
    let direct: Vec<String> = {
        let mut v = Vec::new();
        for r in &relays {
            v.push(instance(&r.client("").await.welcome["connectionId"]));
        }
        v
    };
    for d in &direct {
        assert!(
            natives.iter().any(|n| &n.relay == d),
            "no native client on relay {d}: {:?}",
            natives.iter().map(|n| &n.relay).collect::<Vec<_>>()
        );
    }
    // Socket.IO sessions from one address stick to one relay (balance source).
    let (s0, s1) = (
        sessions_open(&relays[0]).await,
        sessions_open(&relays[1]).await,
    );
    assert_eq!(s0 + s1, 3.0, "three Socket.IO sessions: {s0} + {s1}");
    assert!(
        s0 == 0.0 || s1 == 0.0,
        "one relay holds them all: {s0} + {s1}"
    );

    let sent = publish_range(&redis, 0..20).await;
    for n in &mut natives {
        assert_eq!(n.seqs_until_marker().await, sent, "native on {}", n.relay);
    }
    for c in &mut sio {
        assert_eq!(sio_seqs_until_marker(c).await, sent);
    }

    // ---- SIGTERM the relay holding the Socket.IO sessions
    let victim = if s0 > 0.0 { 0 } else { 1 };
    let server = ["relay1", "relay2"][victim];
    let victim_instance = direct[victim].clone();
    let on_victim = natives
        .iter()
        .filter(|n| n.relay == victim_instance)
        .count();
    assert!(on_victim > 0);
    let signalled = Instant::now();
    relays[victim].signal("TERM");

    // The victim's native clients, each timing its close as it arrives.
    let mut closing = Vec::new();
    let mut staying = Vec::new();
    for n in natives {
        if n.relay == victim_instance {
            closing.push(tokio::spawn(async move {
                let mut n = n;
                let close = n.c.expect_close().await;
                (n, close, Instant::now())
            }));
        } else {
            staying.push(n);
        }
    }
    let health_failed = {
        let v = relays[victim].wait_health(503).await;
        assert_eq!(v["status"], "draining", "{v}");
        Instant::now()
    };
    let marked_down = proxy.wait_server(server, "DOWN").await;
    let mut moved = Vec::new();
    for task in closing {
        let (n, (code, reason), closed_at) = task.await.unwrap();
        assert_eq!((code, reason.as_str()), (1001, "relay shutting down"));
        assert!(
            health_failed < closed_at && marked_down < closed_at,
            "healthz failed {:?} and DOWN {:?} after the signal, but the client was closed at {:?}",
            health_failed - signalled,
            marked_down - signalled,
            closed_at - signalled
        );
        moved.push(n);
    }

    // Native clients reconnect through the proxy with their position: the
    // other relay has no history of this epoch, and says so.
    for n in &mut moved {
        let query = format!("agentId=a1&since={}:{}", n.epoch, n.offset);
        let mut again = Native::connect(proxy.addr, &query).await;
        assert_ne!(
            again.relay, victim_instance,
            "reconnected to the stopped relay"
        );
        assert_eq!(again.c.welcome["recovered"], false, "{}", again.c.welcome);
        let gap = again.c.next_json().await;
        assert_eq!(
            (gap["type"].as_str(), gap["reason"].as_str()),
            (Some("gap"), Some("history_unavailable")),
            "{gap}"
        );
        *n = again;
    }
    // Socket.IO clients reconnect by themselves, to the other relay, and
    // are told they did not recover.
    for c in &mut sio {
        c.wait_for("disconnect").await;
        let connect = c.wait_for("connect").await;
        assert_eq!(connect["recovered"], false, "{connect}");
        let (name, args) = c.next_event().await;
        assert_eq!(name, "relay:gap", "{args:?}");
    }
    let survivor = 1 - victim;
    assert_eq!(sessions_open(&relays[survivor]).await, 3.0);
    assert_eq!(
        relays[victim].exited(WAIT).await,
        Some(0),
        "{}",
        relays[victim].log_text()
    );

    // ---- everyone gets what is published next, once
    let sent = publish_range(&redis, 100..110).await;
    for n in moved.iter_mut().chain(staying.iter_mut()) {
        assert_eq!(n.seqs_until_marker().await, sent, "native on {}", n.relay);
    }
    for c in &mut sio {
        assert_eq!(sio_seqs_until_marker(c).await, sent);
    }
    // The proxy answered health checks and nothing else about the relays.
    let r = http(proxy.addr, "GET", "/metrics", &[]).await.unwrap();
    assert_eq!(r.status, 404, "/metrics is not served through the proxy");
}

/// `haproxy -c`: the configuration at `cfg` is valid.
fn assert_valid(cfg: &std::path::Path) {
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}
