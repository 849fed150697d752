//! Running as a service (SPEC §7, §8): the SIGTERM drain and a forced
//! second signal, SIGHUP reload, systemd's notify protocol and socket
//! activation, metrics after real traffic, JSON logs, the unit files and
//! `make install`. Everything against the real binary.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{http, ws_headers, Client, Redis, Relay, RelayOpts, TempDir, WAIT};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::MaybeTlsStream;

const CH: &str = "claude-studio:agent:message";

/// A client whose kernel receive buffer is tiny and which reads nothing
/// until told: what the relay sends it piles up in the relay's own queue
/// instead of in socket buffers.
async fn small_window_client(addr: SocketAddr, query: &str) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let req = format!("ws://{addr}/ws?{query}")
        .into_client_request()
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let mut c = Client {
        ws,
        welcome: Value::Null,
    };
    c.welcome = c.next_json().await;
    assert_eq!(c.welcome["type"], "welcome");
    c
}

/// Publishes `n` events of ~`size` bytes with a `seq` field, pipelined,
/// all for agent `zz` (so only the firehose gets them).
async fn publish_big(redis: &Redis, n: usize, size: usize) {
    let pad = "p".repeat(size);
    let items: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                CH.to_owned(),
                format!(r#"{{"agentId":"zz","seq":{i},"pad":"{pad}"}}"#),
            )
        })
        .collect();
    redis.conn().await.publish_many(&items).await;
}

fn json_lines(relay: &Relay) -> Vec<Value> {
    relay
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

// ---------------------------------------------------------------- signals

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_sends_what_is_queued_then_1001_on_both_listeners_and_exits_0() {
    let redis = Redis::start().await;
    let grace = Duration::from_millis(5000);
    let mut relay = Relay::start_with(
        &redis.url(),
        RelayOpts {
            extra: format!(
                "[limits]\nshutdown_grace_ms = {}\nsend_queue = 100000\n\
                 send_queue_bytes = 268435456\nwrite_timeout_ms = 60000\n",
                grace.as_millis()
            ),
            ..Default::default()
        },
    )
    .await;
    let mut late = small_window_client(relay.addrs[0], "all=true").await;
    let mut reader = Client::connect(relay.addrs[1], "all=true").await;

    // 12 MiB for a client that reads nothing: most of it is still in the
    // relay's queue for `late` when SIGTERM arrives. More events than one
    // write batch (64), so some are in the queue, not in a stuck write.
    const N: usize = 96;
    publish_big(&redis, N, 128 * 1024).await;
    // The hub hands each event to every matching queue at once, so once
    // `reader` has the last one, `late`'s queue has all of them too.
    for i in 0..N {
        assert_eq!(reader.next_json().await["data"]["seq"], i);
    }
    let signalled = Instant::now();
    relay.signal("TERM");

    let (code, reason) = reader.expect_close().await;
    assert_eq!((code, reason.as_str()), (1001, "relay shutting down"));
    for i in 0..N {
        let v = late.next_json().await;
        assert_eq!(
            v["data"]["seq"], i,
            "queued events come before the close, in order"
        );
    }
    let (code, reason) = late.expect_close().await;
    assert_eq!((code, reason.as_str()), (1001, "relay shutting down"));

    assert_eq!(relay.exited(WAIT).await, Some(0), "{}", relay.log_text());
    let took = signalled.elapsed();
    assert!(took < grace, "exit took {took:?}, grace is {grace:?}");
    let logs = relay.log_text();
    assert!(
        logs.contains("shutting down: draining connections"),
        "{logs}"
    );
    assert!(
        !logs.contains("drain deadline passed"),
        "everything drained in time: {logs}"
    );
}

#[tokio::test]
async fn sigint_closes_idle_clients_on_every_listener_within_the_grace() {
    let redis = Redis::start().await;
    let grace = Duration::from_millis(1500);
    let mut relay = Relay::with_extra(&redis, "[limits]\nshutdown_grace_ms = 1500\n").await;
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(Client::connect(relay.addrs[i % 2], "agentId=a").await);
    }
    let signalled = Instant::now();
    relay.signal("INT");
    for c in &mut clients {
        assert_eq!(c.expect_close().await.0, 1001);
    }
    assert_eq!(relay.exited(WAIT).await, Some(0));
    let took = signalled.elapsed();
    assert!(took < grace, "exit took {took:?}, grace is {grace:?}");
    assert!(relay.log_text().contains(r#""signal":"SIGINT""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delay_fails_healthz_first_then_closes_clients_and_keeps_serving_meanwhile() {
    let redis = Redis::start().await;
    let (grace, delay) = (Duration::from_millis(3000), Duration::from_millis(800));
    let mut relay = Relay::with_extra(
        &redis,
        &format!(
            "[limits]\nshutdown_grace_ms = {}\ndrain_delay_ms = {}\n",
            grace.as_millis(),
            delay.as_millis()
        ),
    )
    .await;
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(Client::connect(relay.addrs[i % 2], "agentId=a").await);
    }
    let signalled = Instant::now();
    relay.signal("TERM");
    // /healthz fails at once: well before the delay is over.
    relay.wait_health(503).await;
    let failed_after = signalled.elapsed();
    assert!(
        failed_after < delay,
        "healthz failed only after {failed_after:?}"
    );
    let (_, v) = relay.health().await;
    assert_eq!(v["status"], "draining", "{v}");
    assert_eq!(v["redis"], "up", "{v}");
    // New sessions are refused, the open ones are still served.
    let r = http(relay.addrs[1], "GET", "/ws?agentId=a", &ws_headers())
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.head);
    redis
        .publish(CH, r#"{"agentId":"a","during":"delay"}"#)
        .await;
    for c in &mut clients {
        assert_eq!(c.next_json().await["data"]["during"], "delay");
    }
    for c in &mut clients {
        assert_eq!(c.expect_close().await.0, 1001);
    }
    let closed_after = signalled.elapsed();
    assert!(
        closed_after >= delay,
        "clients closed after {closed_after:?}, before the {delay:?} drain delay"
    );
    assert_eq!(relay.exited(WAIT).await, Some(0), "{}", relay.log_text());
    let took = signalled.elapsed();
    assert!(took < grace, "exit took {took:?}, grace is {grace:?}");
    // The listeners closed with the process.
    assert!(tokio::net::TcpStream::connect(relay.addrs[0])
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_sigterm_exits_at_once_while_the_drain_waits_on_a_stuck_client() {
    let redis = Redis::start().await;
    let mut relay = Relay::with_extra(
        &redis,
        "[limits]\nshutdown_grace_ms = 60000\nsend_queue = 100000\n\
                    send_queue_bytes = 268435456\nwrite_timeout_ms = 60000\n",
    )
    .await;
    // Never reads: its drain can only end at the 60 s grace.
    let _stuck = small_window_client(relay.addrs[0], "all=true").await;
    let mut reader = Client::connect(relay.addrs[1], "all=true").await;
    const N: usize = 48;
    publish_big(&redis, N, 256 * 1024).await;
    for i in 0..N {
        assert_eq!(reader.next_json().await["data"]["seq"], i);
    }

    let from = relay.log_len();
    relay.signal("TERM");
    relay
        .wait_log(from, "shutting down: draining connections")
        .await;
    assert_eq!(reader.expect_close().await.0, 1001);
    // Stopped accepting clients, not health checks: while the drain waits,
    // both ports answer /healthz 503 "draining" and refuse new sessions.
    for addr in relay.addrs.clone() {
        let r = http(addr, "GET", "/healthz", &[]).await.unwrap();
        assert_eq!(r.status, 503, "{}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(v["status"], "draining", "{v}");
        let r = http(addr, "GET", "/ws", &ws_headers()).await.unwrap();
        assert_eq!(r.status, 503, "{}", r.head);
        assert!(r.body.contains("shutting down"), "{}", r.body);
    }

    let signalled = Instant::now();
    relay.signal("TERM");
    assert_eq!(
        relay.exited(Duration::from_secs(5)).await,
        Some(1),
        "a forced exit is not a clean shutdown: {}",
        relay.log_text()
    );
    assert!(signalled.elapsed() < Duration::from_secs(2));
    assert!(relay
        .log_text()
        .contains("second shutdown signal: exiting without drain"));
}

// ----------------------------------------------------------------- reload

#[tokio::test]
async fn reload_adding_tokens_closes_tokenless_connections_1008_and_keeps_holders() {
    let redis = Redis::start().await;
    let relay = Relay::start(&redis).await;
    let mut tokenless = relay.client("agentId=a").await;
    let mut keep = Client::connect(relay.addrs[1], "agentId=a&token=keep-tok").await;
    let mut gone = relay.client("agentId=a&token=gone-tok").await;

    // Tokens set for the first time: every tokenless connection goes.
    let line = relay
        .reload(
            "studio_relay=debug,info",
            "[auth]\ntokens = [\"keep-tok\", \"gone-tok\"]\n",
        )
        .await;
    assert_eq!(line["message"], "config reloaded", "{line}");
    let (code, reason) = tokenless.expect_close().await;
    assert_eq!((code, reason.as_str()), (1008, "token revoked"));

    // A token removed: only its holders go.
    relay
        .reload(
            "studio_relay=debug,info",
            "[auth]\ntokens = [\"keep-tok\"]\n",
        )
        .await;
    assert_eq!(gone.expect_close().await.0, 1008);

    // The holder of the kept token never noticed.
    redis.publish(CH, r#"{"agentId":"a","n":1}"#).await;
    let v = keep.next_json().await;
    assert_eq!(
        (v["type"].as_str(), v["data"]["n"].as_i64()),
        (Some("event"), Some(1))
    );
    // And the new token list guards new handshakes.
    let r = http(relay.addr(), "GET", "/ws", &ws_headers())
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    Client::connect(relay.addr(), "token=keep-tok").await;
    assert!(
        !relay.log_text().contains("keep-tok"),
        "tokens are never logged"
    );
}

#[tokio::test]
async fn reload_with_a_broken_file_logs_the_error_and_keeps_serving_the_old_config() {
    let redis = Redis::start().await;
    let relay = Relay::with_extra(&redis, "[limits]\nmax_subscriptions = 2\n").await;
    let path = relay.config_path.display().to_string();
    let broken = format!("{}[limits\nmax_subscriptions = 1\n", relay.base_config);
    let line = relay.reload_raw(&broken).await;
    assert_eq!(line["level"], "ERROR");
    assert_eq!(line["message"], "reload failed; keeping the running config");
    let error = line["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("{path}:")),
        "names FILE:LINE:COL: {error}"
    );

    let invalid = format!(
        "{}[limits]\nmax_subscriptions = 1\nmax_client_mesage_bytes = 10\n",
        relay.base_config
    );
    let line = relay.reload_raw(&invalid).await;
    assert_eq!(line["message"], "reload failed; keeping the running config");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("limits.max_client_mesage_bytes"),
        "{line}"
    );

    // Still serving, with the old limit of 2.
    assert_eq!(relay.health().await.0, 200);
    let mut c = relay.client("").await;
    c.subscribe(json!({"agentId": "x"})).await;
    c.subscribe(json!({"agentId": "y"})).await;
    c.send_json(json!({"type": "subscribe", "agentId": "z"}))
        .await;
    assert_eq!(c.next_json().await["code"], "too_many_subscriptions");
}

#[tokio::test]
async fn reload_applies_origins_limits_and_log_level_at_once_and_defers_redis_and_format() {
    let redis = Redis::start().await;
    let relay = Relay::start_with(
        &redis.url(),
        RelayOpts {
            log_level: "info".into(),
            ..Default::default()
        },
    )
    .await;
    let b_origin = [("Origin", "https://b.example")];
    let local = [("Origin", "http://localhost:5173")];
    assert!(
        Client::try_connect(relay.addr(), "", &b_origin)
            .await
            .is_err(),
        "the default admits loopback pages only"
    );
    Client::try_connect(relay.addr(), "", &local)
        .await
        .expect("a loopback page before the reload");
    let mut c = relay.client("").await;
    c.subscribe(json!({"agentId": "one"})).await;
    let quiet_until = relay.log_len();
    assert!(
        json_lines(&relay).iter().all(|v| v["level"] != "DEBUG"),
        "info level logs no debug lines"
    );

    // Live keys change, and so do [redis] and log.format, which wait for a restart.
    let other_redis = format!("redis://127.0.0.1:{}", common::free_port());
    let text = format!(
        "{}[log]\nformat = \"text\"\nlevel = \"studio_relay=debug,info\"\n\
         [security]\nallowed_origins = [\"https://a.example\"]\n\
         [limits]\nmax_subscriptions = 1\n",
        relay.base_config.replace(&redis.url(), &other_redis)
    );
    let line = relay.reload_raw(&text).await;
    assert_eq!(line["message"], "config reloaded", "{line}");
    assert!(line["version"].is_string() && line["summary"].is_string());
    let deferred: Vec<String> = json_lines(&relay)[quiet_until..]
        .iter()
        .filter(|v| v["message"] == "changed in the file; needs a restart to apply")
        .map(|v| v["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(deferred, ["redis", "log.format"]);

    // Origins: the next handshake.
    let err = Client::try_connect(relay.addr(), "", &b_origin).await;
    assert!(err.is_err(), "https://b.example is still not allowed");
    Client::try_connect(relay.addr(), "", &[("Origin", "https://a.example")])
        .await
        .unwrap();
    let err = Client::try_connect(relay.addr(), "", &local).await;
    assert!(err.is_err(), "the list replaced the default");
    // max_subscriptions: the next subscribe (held ones stay).
    c.send_json(json!({"type": "subscribe", "agentId": "two"}))
        .await;
    assert_eq!(c.next_json().await["code"], "too_many_subscriptions");
    // The log level: debug lines appear (the handshakes above log some).
    assert!(
        json_lines(&relay)[quiet_until..]
            .iter()
            .any(|v| v["level"] == "DEBUG"),
        "no debug line after switching to debug:\n{}",
        relay.log_text()
    );
    // Redis did not move, and logs stayed JSON.
    assert!(redis.publish(CH, r#"{"agentId":"one"}"#).await >= 1);
    assert_eq!(c.next_json().await["type"], "event");
    assert_eq!(relay.health().await.0, 200);
}

// ---------------------------------------------------------------- systemd

/// Each listener in READY=1's STATUS, and whether a connect to it succeeded then.
type ReadyProbe = Vec<(SocketAddr, bool)>;

/// Datagrams sent to a `NOTIFY_SOCKET`, as they arrive. On the first
/// READY=1 it connects at once to every address in its STATUS, proving the
/// listeners were bound when READY was sent.
struct NotifySocket {
    path: std::path::PathBuf,
    rx: mpsc::Receiver<(String, Option<ReadyProbe>)>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            let mut ready_seen = false;
            loop {
                let n = match sock.recv(&mut buf) {
                    Ok(n) => n,
                    Err(_) => {
                        // Timeout: stop once the test is done with us.
                        if tx.send((String::new(), None)).is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let mut probe = None;
                if !ready_seen && msg.lines().any(|l| l == "READY=1") {
                    ready_seen = true;
                    let status = msg
                        .lines()
                        .find_map(|l| l.strip_prefix("STATUS=listening on "))
                        .unwrap_or("");
                    probe = Some(
                        status
                            .split(", ")
                            .filter_map(|a| a.parse().ok())
                            .map(|a| (a, std::net::TcpStream::connect(a).is_ok()))
                            .collect(),
                    );
                }
                if tx.send((msg, probe)).is_err() {
                    return;
                }
            }
        });
        NotifySocket { path, rx }
    }

    /// The next datagram (skipping WATCHDOG=1 unless `watchdog`).
    fn next(&self, watchdog: bool) -> (String, Option<ReadyProbe>) {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (msg, probe) = self.rx.recv_timeout(left).expect("no notify datagram");
            if msg.is_empty() || (!watchdog && msg == "WATCHDOG=1\n") {
                continue;
            }
            return (msg, probe);
        }
    }
}

#[tokio::test]
async fn notify_protocol_ready_after_bind_reloading_ready_watchdog_stopping() {
    let redis = Redis::start().await;
    let dir = TempDir::new();
    let notify = NotifySocket::bind(&dir.0);
    let mut relay = Relay::start_with(
        &redis.url(),
        RelayOpts {
            env: vec![
                ("NOTIFY_SOCKET".into(), notify.path.display().to_string()),
                ("WATCHDOG_USEC".into(), "200000".into()),
            ],
            ..Default::default()
        },
    )
    .await;

    let (ready, probe) = notify.next(false);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let probe = probe.unwrap();
    let addrs: Vec<SocketAddr> = probe.iter().map(|(a, _)| *a).collect();
    let mut expected = relay.addrs.clone();
    expected.sort();
    let mut got = addrs.clone();
    got.sort();
    assert_eq!(got, expected, "STATUS names every listener: {ready:?}");
    assert!(
        probe.iter().all(|(_, ok)| *ok),
        "a listener refused a connection right at READY=1: {probe:?}"
    );

    // WATCHDOG_USEC=200 ms: pings at half that.
    let mut pings = 0;
    while pings < 3 {
        if notify.next(true).0 == "WATCHDOG=1\n" {
            pings += 1;
        }
    }

    // A reload: RELOADING=1 with a fresh MONOTONIC_USEC, then READY=1.
    let mut stamps = Vec::new();
    for _ in 0..2 {
        relay.reload("studio_relay=debug,info", "").await;
        let (reloading, _) = notify.next(false);
        let mut lines = reloading.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading:?}");
        let usec: u64 = lines
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no MONOTONIC_USEC: {reloading:?}"));
        stamps.push(usec);
        let (ready, _) = notify.next(false);
        assert!(ready.starts_with("READY=1\n"), "{ready:?}");
        assert!(ready.contains("STATUS=config reloaded"), "{ready:?}");
    }
    assert!(stamps[1] > stamps[0], "{stamps:?}");

    // A failed reload still ends the reload with READY=1, and says so.
    let broken = format!("{}[limits\n", relay.base_config);
    relay.reload_raw(&broken).await;
    assert!(notify.next(false).0.starts_with("RELOADING=1\n"));
    let (ready, _) = notify.next(false);
    assert!(ready.contains("STATUS=reload failed"), "{ready:?}");

    relay.signal("TERM");
    let (stopping, _) = notify.next(false);
    assert!(stopping.starts_with("STOPPING=1\n"), "{stopping:?}");
    assert_eq!(relay.exited(WAIT).await, Some(0));
}

/// `systemd-socket-activate` holds the listening socket, starts the relay on
/// the first connection and passes the socket as fd 3 (LISTEN_FDS=1).
#[tokio::test]
async fn socket_activation_serves_the_inherited_socket_and_binds_the_rest() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: systemd-socket-activate is not installed (apt-get install systemd)");
        return;
    }
    let redis = Redis::start().await;
    let dir = TempDir::new();
    let port = common::free_port();
    let inherited: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.0.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[redis]\nurl = \"{}\"\n[[listeners]]\nbind = \"127.0.0.1:0\"\n\
             [[listeners]]\nbind = \"{inherited}\"\n[log]\nformat = \"json\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let mut child = Command::new("systemd-socket-activate")
        .args(["--listen", &inherited.to_string(), "--"])
        .arg(common::bin())
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stderr = child.stderr.take().unwrap();
    let mut child = Reap(child);
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_line = |what: &str| -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what:?}"));
            if line.contains(what) {
                return line;
            }
        }
    };
    wait_line("Listening on");

    // The first connection starts the relay, which answers it on fd 3.
    let r = http(inherited, "GET", "/healthz", &[]).await.unwrap();
    assert!(matches!(r.status, 200 | 503), "{}", r.head);
    let used = wait_line("using socket passed by systemd");
    assert!(used.contains(&inherited.to_string()), "{used}");
    let mut listening = Vec::new();
    while listening.len() < 2 {
        let line: Value = serde_json::from_str(&wait_line("\"listening\"")).unwrap();
        listening.push(
            line["addr"]
                .as_str()
                .unwrap()
                .parse::<SocketAddr>()
                .unwrap(),
        );
    }
    assert_eq!(listening[0], inherited, "inherited first");
    let bound = listening[1];
    assert_ne!(bound.port(), 0);
    // Both serve WebSockets.
    for addr in [inherited, bound] {
        let mut c = Client::connect(addr, "agentId=sa").await;
        let deadline = Instant::now() + WAIT;
        while redis.publish(CH, r#"{"agentId":"sa"}"#).await < 1 {
            assert!(Instant::now() < deadline, "relay never subscribed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(c.next_json().await["type"], "event");
    }
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn unit_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

#[test]
fn unit_files_are_consistent_and_pass_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo().join("systemd/studio-relay.service")).unwrap();
    let socket = std::fs::read_to_string(repo().join("systemd/studio-relay.socket")).unwrap();
    for (key, value) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ProtectSystem", "strict"),
    ] {
        assert_eq!(unit_value(&unit, key).as_deref(), Some(value), "{key}");
    }
    let start = unit_value(&unit, "ExecStart").unwrap();
    assert_eq!(
        unit_value(&unit, "ExecStartPre").unwrap(),
        start.replace("--config", "--check --config"),
        "ExecStartPre checks the same file ExecStart runs"
    );
    // The stop timeout leaves the drain its whole grace (shipped relay.toml).
    let shipped = std::fs::read_to_string(repo().join("relay.toml")).unwrap();
    let grace_ms: u64 = shipped
        .lines()
        .find_map(|l| l.strip_prefix("shutdown_grace_ms = "))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let stop_s: u64 = unit_value(&unit, "TimeoutStopSec")
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(
        stop_s * 1000 > grace_ms + 1000,
        "TimeoutStopSec {stop_s}s vs grace {grace_ms} ms"
    );
    let watchdog: u64 = unit_value(&unit, "WatchdogSec").unwrap().parse().unwrap();
    assert!(watchdog >= 2);
    // Each socket the socket unit listens on is a listener in relay.toml.
    let binds: Vec<&str> = shipped
        .lines()
        .filter_map(|l| l.strip_prefix("bind = \""))
        .filter_map(|l| l.split('"').next())
        .collect();
    for l in socket
        .lines()
        .filter_map(|l| l.strip_prefix("ListenStream="))
    {
        assert!(
            binds.contains(&l),
            "ListenStream={l} is not a bind in relay.toml {binds:?}"
        );
    }

    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("skipped systemd-analyze verify: systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    // verify wants the ExecStart binary to exist: point the copy at ours.
    let dir = TempDir::new();
    std::fs::write(
        dir.0.join("studio-relay.service"),
        unit.replace("/usr/local/bin/studio-relay", common::bin()),
    )
    .unwrap();
    std::fs::write(dir.0.join("studio-relay.socket"), &socket).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "./studio-relay.service", "./studio-relay.socket"])
        .current_dir(&dir.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("studio-relay"), "{stderr}");
}

#[test]
fn make_install_and_uninstall_into_destdir() {
    if Command::new("make").arg("--version").output().is_err() {
        println!("skipped: make is not installed");
        return;
    }
    let dest = TempDir::new();
    let make = |target: &str| {
        let out = Command::new("make")
            .current_dir(repo())
            .args([
                "--no-print-directory",
                target,
                &format!("DESTDIR={}", dest.0.display()),
                "PREFIX=/usr",
                &format!("BIN={}", common::bin()),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "make {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    make("install");
    let bin = dest.0.join("usr/bin/studio-relay");
    let unit_path = dest.0.join("etc/systemd/system/studio-relay.service");
    let config = dest.0.join("etc/studio-relay/relay.toml");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert!(dest
        .0
        .join("etc/systemd/system/studio-relay.socket")
        .exists());
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    assert_eq!(
        unit_value(&unit, "ExecStart").as_deref(),
        Some("/usr/bin/studio-relay --config /etc/studio-relay/relay.toml")
    );
    assert!(
        !unit.contains("/usr/local/bin/studio-relay"),
        "every path rewritten"
    );
    // The installed binary accepts the installed config.
    let out = Command::new(&bin)
        .args(["--check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success());

    // A second install keeps an edited config.
    std::fs::write(&config, "# edited by the operator\n").unwrap();
    let out = make("install");
    assert!(out.contains("keeping existing"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "# edited by the operator\n"
    );

    make("uninstall");
    assert!(!bin.exists() && !unit_path.exists());
    assert!(config.exists(), "uninstall leaves the config");
}

// ---------------------------------------------------------------- metrics

fn series(m: &str, name: &str, label: &str, value: &str) -> f64 {
    common::metric_value(m, &format!("{name}{{{label}=\"{value}\"}}"))
        .unwrap_or_else(|| panic!("no {name}{{{label}={value}}} in\n{m}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_per_listener_and_through_a_redis_restart() {
    let mut redis = Redis::start().await;
    let relay = Relay::with_extra(
        &redis,
        "[auth]\ntokens = [\"t\"]\n[limits]\nsend_queue = 4\n",
    )
    .await;
    let (l0, l1) = (relay.addrs[0].to_string(), relay.addrs[1].to_string());
    let m = relay.metrics().await;
    let accepted = "relay_connections_accepted_total";
    assert_eq!(series(&m, accepted, "listener", &l0), 0.0);
    assert_eq!(
        common::metric_value(&m, "relay_fanout_latency_seconds_count"),
        Some(0.0)
    );

    // Two on listener 0, one on listener 1; one refused without a token.
    let mut a = Client::connect(relay.addrs[0], "token=t&agentId=a").await;
    // b will later stop reading; its small window makes that show at once.
    let mut b = small_window_client(relay.addrs[0], "token=t&all=true").await;
    let mut c = Client::connect(relay.addrs[1], "token=t&agentId=c").await;
    let refused = http(relay.addrs[1], "GET", "/ws", &ws_headers())
        .await
        .unwrap();
    assert_eq!(refused.status, 401);

    // 3 events: a gets 2 (one addressed, one global), b all 3, c 1 (global).
    for p in [
        r#"{"agentId":"a"}"#,
        r#"{"agentId":"zz"}"#,
        r#"{"kind":"global"}"#,
    ] {
        redis.publish(CH, p).await;
    }
    for _ in 0..2 {
        assert_eq!(a.next_json().await["type"], "event");
    }
    for _ in 0..3 {
        assert_eq!(b.next_json().await["type"], "event");
    }
    assert_eq!(c.next_json().await["type"], "event");

    let m = relay.metrics().await;
    assert_eq!(series(&m, accepted, "listener", &l0), 2.0);
    assert_eq!(series(&m, accepted, "listener", &l1), 1.0);
    assert_eq!(series(&m, "relay_connections_open", "listener", &l0), 2.0);
    assert_eq!(series(&m, "relay_connections_open", "listener", &l1), 1.0);
    assert_eq!(
        series(
            &m,
            "relay_handshake_rejections_total",
            "reason",
            "unauthorized"
        ),
        1.0
    );
    assert_eq!(
        common::metric_value(&m, "relay_redis_messages_total"),
        Some(3.0)
    );
    assert_eq!(
        common::metric_value(&m, "relay_events_delivered_total"),
        Some(6.0)
    );
    let count = common::metric_value(&m, "relay_fanout_latency_seconds_count").unwrap();
    let sum = common::metric_value(&m, "relay_fanout_latency_seconds_sum").unwrap();
    assert!(
        (1.0..=6.0).contains(&count),
        "one sample per write batch: {count}"
    );
    assert!(
        sum > 0.0 && sum < count * 1.0,
        "latencies are real and sub-second: {sum}"
    );
    assert_eq!(
        common::metric_value(&m, "relay_fanout_latency_seconds_bucket{le=\"+Inf\"}"),
        Some(count)
    );

    // c leaves: its listener's gauge goes down, the counter does not.
    c.ws.close(None).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let m = relay.metrics().await;
        if series(&m, "relay_connections_open", "listener", &l1) == 0.0 {
            assert_eq!(series(&m, accepted, "listener", &l1), 1.0);
            break;
        }
        assert!(Instant::now() < deadline, "gauge never went down");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Redis restarts: down, then up again, one reconnect; the gap frames
    // it causes are not counted as delivered events.
    redis.kill();
    relay.wait_health(503).await;
    assert_eq!(relay.metric("relay_redis_up").await, 0.0);
    redis.restart().await;
    relay.wait_health(200).await;
    assert_eq!(a.next_json().await["type"], "gap");
    assert_eq!(b.next_json().await["type"], "gap");
    let m = relay.metrics().await;
    assert_eq!(common::metric_value(&m, "relay_redis_up"), Some(1.0));
    assert_eq!(
        common::metric_value(&m, "relay_redis_reconnects_total"),
        Some(1.0)
    );
    assert_eq!(
        common::metric_value(&m, "relay_events_delivered_total"),
        Some(6.0)
    );

    // b stops reading while 8 MiB arrive for it: a slow-consumer close.
    publish_big(&redis, 64, 128 * 1024).await;
    let (code, _) = b.expect_close().await;
    assert_eq!(code, 1013);
    assert_eq!(
        relay.metric("relay_slow_consumer_disconnects_total").await,
        1.0,
        "{}",
        relay.log_text()
    );
    // a was not touched by any of it.
    redis.publish(CH, r#"{"agentId":"a","last":true}"#).await;
    assert_eq!(a.next_json().await["data"]["last"], true);
}

// ------------------------------------------------------------------- logs

#[tokio::test]
async fn json_logs_are_one_object_per_line_without_tokens_or_payloads() {
    let redis = Redis::start().await;
    const TOKEN: &str = "tok-5ecret-77";
    const MARK: &str = "PAYLOAD-MARK-93";
    let mut relay = Relay::start_with(
        &redis.url(),
        RelayOpts {
            log_level: "info".into(),
            extra: format!("[auth]\ntokens = [\"{TOKEN}\"]\n"),
            ..Default::default()
        },
    )
    .await;
    let mut c = relay.client(&format!("token={TOKEN}&agentId={MARK}")).await;
    let refused = http(
        relay.addr(),
        "GET",
        &format!("/ws?token={MARK}"),
        &ws_headers(),
    )
    .await
    .unwrap();
    assert_eq!(refused.status, 401);
    redis
        .publish(CH, format!(r#"{{"agentId":"{MARK}","text":"{MARK}"}}"#))
        .await;
    assert_eq!(c.next_json().await["data"]["text"], MARK);
    // Not JSON and not UTF-8 payloads are logged (as a warning) without their bytes.
    redis.publish(CH, format!("not json {MARK}")).await;
    assert_eq!(c.next_json().await["data"], format!("not json {MARK}"));
    let mut bad = MARK.as_bytes().to_vec();
    bad.push(0xff);
    redis.publish(CH, bad).await;
    c.send_text(&format!("{{\"type\":\"subscribe\",\"{MARK}\":1"))
        .await;
    assert_eq!(c.next_json().await["code"], "bad_json");
    relay
        .reload(
            "info",
            &format!("[auth]\ntokens = [\"{TOKEN}\", \"{MARK}\"]\n"),
        )
        .await;
    relay.signal("TERM");
    assert_eq!(relay.exited(WAIT).await, Some(0));

    let lines = relay.logs.lock().unwrap().clone();
    assert!(lines.len() >= 5, "{lines:?}");
    let mut messages = Vec::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(
            matches!(v["level"].as_str(), Some("INFO" | "WARN" | "ERROR")),
            "{line}"
        );
        assert!(v["message"].is_string(), "{line}");
        messages.push(v);
    }
    let find = |m: &str| {
        messages
            .iter()
            .find(|v| v["message"] == m)
            .unwrap_or_else(|| panic!("no {m:?} line"))
    };
    for (m, tokens) in [
        ("starting", "1 token(s)"),
        ("config reloaded", "2 token(s)"),
    ] {
        let v = find(m);
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"), "{v}");
        assert!(v["summary"].as_str().unwrap().contains(tokens), "{v}");
    }
    assert_eq!(find("stopped")["version"], env!("CARGO_PKG_VERSION"));
    // The start log says where to connect, not only the socket address.
    assert!(messages.iter().any(|v| v["message"] == "listening"
        && v["addr"].is_string()
        && v["url"] == format!("ws://{}/ws", v["addr"].as_str().unwrap_or(""))
        && v["socketio"] == format!("http://{}/socket.io/", v["addr"].as_str().unwrap_or(""))));
    let all = lines.join("\n");
    assert!(!all.contains(TOKEN), "a token was logged:\n{all}");
    assert!(
        !all.contains(MARK),
        "a payload, token or client value was logged:\n{all}"
    );
}
