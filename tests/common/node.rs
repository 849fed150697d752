//! Real JavaScript clients: `socket.io-client` under Node and headless
//! Chromium, driven through the scripts in tests/js (JSON lines in and out).
//! `npm ci` runs once per machine state (a lock file keeps parallel test
//! binaries from racing), from the pinned package-lock.json.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::WAIT;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Makes sure tests/js/node_modules holds the pinned packages (`npm ci`
/// from package-lock.json when they are missing), once per test binary and
/// under `flock`, so parallel test binaries do not install over each other.
pub fn js_ready() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            let dir = js_dir();
            let lock = std::env::temp_dir().join("studio-relay-npm-ci.lock");
            let status = std::process::Command::new("flock")
                .arg(&lock)
                .args([
                    "sh",
                    "-c",
                    "test -d node_modules/socket.io-client && test -d node_modules/playwright-core \
                     || npm ci --no-audit --no-fund --loglevel=error",
                ])
                .current_dir(&dir)
                .status()
                .expect("flock, node and npm must be installed (.ci/run installs them)");
            assert!(status.success(), "npm ci in tests/js failed");
            dir
        })
        .clone()
}

/// The Chromium binary the browser tests use.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// A Node script speaking JSON lines; killed on drop.
pub struct NodeProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every line read so far.
    pub seen: Vec<Value>,
}

impl NodeProc {
    async fn spawn(script: &str, arg: &Value) -> NodeProc {
        let dir = js_ready();
        let mut child = Command::new("node")
            .arg(dir.join(script))
            .arg(arg.to_string())
            .current_dir(&dir)
            .env("CHROMIUM", chromium_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node must be installed");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().unwrap();
        NodeProc {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            seen: Vec::new(),
        }
    }

    /// `tests/js/sio-client.mjs` with `{"url":…,"opts":…}`; waits for `ready`.
    pub async fn socketio(url: &str, opts: Value) -> NodeProc {
        let mut p = Self::spawn(
            "sio-client.mjs",
            &serde_json::json!({"url": url, "opts": opts}),
        )
        .await;
        p.wait_for("ready").await;
        p
    }

    /// `tests/js/sio-server.mjs`: a Socket.IO server with the Redis adapter
    /// and a Redis emitter on `redis_url`; waits for `ready`, returns it and
    /// the port its own clients connect to.
    pub async fn sio_server(redis_url: &str) -> (NodeProc, u16) {
        let mut p = Self::spawn("sio-server.mjs", &serde_json::json!({"redis": redis_url})).await;
        let ready = p.wait_for("ready").await;
        let port = ready["port"].as_u64().expect("port") as u16;
        (p, port)
    }

    /// `tests/js/browser.mjs`: a page in headless Chromium connecting to `relay`.
    pub async fn browser(relay: &str, query: Value) -> NodeProc {
        Self::spawn(
            "browser.mjs",
            &serde_json::json!({"relay": relay, "query": query}),
        )
        .await
    }

    /// `tests/js/native-browser.mjs`: a page in headless Chromium running the
    /// real `clients/js/studio-relay.js` against `relay` (a `ws://…/ws` URL)
    /// with `opts` (its JSON-able `connect` options); waits for `page`.
    pub async fn native_browser(relay: &str, opts: Value) -> NodeProc {
        let mut p = Self::spawn(
            "native-browser.mjs",
            &serde_json::json!({"relay": relay, "opts": opts}),
        )
        .await;
        p.wait_for("page").await;
        p
    }

    /// The next line, within the harness's wait.
    pub async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no output from node within {WAIT:?}; so far: {:?}",
                    self.seen
                )
            })
            .expect("reading node's stdout")
            .unwrap_or_else(|| panic!("node exited; so far: {:?}", self.seen));
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON from node: {line}"));
        self.seen.push(v.clone());
        v
    }

    /// Skips lines until one with `"ev": ev` (kept in `seen`).
    pub async fn wait_for(&mut self, ev: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["ev"] == ev {
                return v;
            }
            assert_ne!(v["ev"], "pageerror", "page error: {v}");
        }
    }

    /// The first line with `"ev": ev`, already seen or still to come
    /// (for events whose order against others is the client's business).
    pub async fn saw(&mut self, ev: &str) -> Value {
        match self.seen.iter().find(|v| v["ev"] == ev) {
            Some(v) => v.clone(),
            None => self.wait_for(ev).await,
        }
    }

    /// The next `event` line's `[name, args]`, skipping other lines.
    pub async fn next_event(&mut self) -> (String, Vec<Value>) {
        let v = self.wait_for("event").await;
        let args = v["args"].as_array().cloned().unwrap_or_default();
        (v["name"].as_str().unwrap_or("").to_owned(), args)
    }

    /// Sends one command line.
    pub async fn send(&mut self, cmd: Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// The process id (to SIGSTOP a client in a stall test).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// Publishes `payloads` on `claude-studio:agent:status`, then a global
/// marker, and returns the `agent:status` data a Socket.IO client got up to
/// the marker (so "not delivered" is proven, not waited for). Any other
/// event fails the test.
pub async fn events_until_marker(
    redis: &super::Redis,
    c: &mut NodeProc,
    payloads: &[Value],
) -> Vec<Value> {
    for p in payloads {
        redis
            .publish("claude-studio:agent:status", p.to_string())
            .await;
    }
    redis.publish("claude-studio:marker", "{}").await;
    let mut got = Vec::new();
    loop {
        let (name, args) = c.next_event().await;
        if name == "marker" {
            return got;
        }
        assert_eq!(name, "agent:status", "unexpected event: {args:?}");
        got.push(args[0].clone());
    }
}
