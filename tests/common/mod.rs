//! Test harness: a private `redis-server` on a free port and the real
//! `studio-relay` binary on port 0, both stopped on drop; a real WebSocket
//! client; raw HTTP. Readiness comes from signals (log lines, /healthz,
//! welcome frames), never from sleeps.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous upper bound for anything the tests wait on.
pub const WAIT: Duration = Duration::from_secs(15);

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "studio-relay-test-{}-{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private redis-server; killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl Redis {
    pub async fn start() -> Redis {
        for _ in 0..5 {
            let mut r = Redis {
                port: free_port(),
                child: None,
                dir: TempDir::new(),
            };
            r.spawn();
            if r.wait_ready().await {
                return r;
            }
        }
        panic!("redis-server did not start");
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.0.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            if let Ok(mut c) = RedisConn::connect(self.port).await {
                if c.command(&[b"PING"]).await.is_ok() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        for _ in 0..50 {
            self.spawn();
            if self.wait_ready().await {
                return;
            }
            self.kill();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub async fn conn(&self) -> RedisConn {
        RedisConn::connect(self.port).await.unwrap()
    }

    /// PUBLISH; returns the number of receivers Redis reported.
    pub async fn publish(&self, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
        self.conn().await.publish(channel, payload).await
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// A minimal RESP client for publishing.
pub struct RedisConn {
    r: TokioBufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl RedisConn {
    pub async fn connect(port: u16) -> std::io::Result<RedisConn> {
        let s = tokio::time::timeout(
            Duration::from_secs(1),
            TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .map_err(|_| std::io::Error::other("connect timeout"))??;
        let (r, w) = s.into_split();
        Ok(RedisConn {
            r: TokioBufReader::new(r),
            w,
        })
    }

    fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    async fn read_reply(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), self.r.read_line(&mut line))
            .await
            .map_err(|_| std::io::Error::other("reply timeout"))??;
        if let Some(len) = line.strip_prefix('$') {
            let n: i64 = len.trim().parse().unwrap_or(-1);
            if n >= 0 {
                let mut buf = vec![0; n as usize + 2];
                self.r.read_exact(&mut buf).await?;
                return Ok(String::from_utf8_lossy(&buf[..n as usize]).into_owned());
            }
        }
        Ok(line.trim_end().to_owned())
    }

    pub async fn command(&mut self, args: &[&[u8]]) -> std::io::Result<String> {
        self.w.write_all(&Self::encode(args)).await?;
        self.read_reply().await
    }

    pub async fn publish(&mut self, channel: &str, payload: impl AsRef<[u8]>) -> i64 {
        let reply = self
            .command(&[b"PUBLISH", channel.as_bytes(), payload.as_ref()])
            .await
            .unwrap();
        reply.trim_start_matches(':').parse().unwrap()
    }

    /// Pipelines many PUBLISHes, then reads every reply.
    pub async fn publish_many(&mut self, items: &[(String, String)]) {
        let mut buf = Vec::new();
        for (c, p) in items {
            buf.extend(Self::encode(&[b"PUBLISH", c.as_bytes(), p.as_bytes()]));
        }
        self.w.write_all(&buf).await.unwrap();
        for _ in items {
            self.read_reply().await.unwrap();
        }
    }
}

/// The real relay binary with its own config file; killed on drop.
pub struct Relay {
    child: Option<Child>,
    pub addrs: Vec<SocketAddr>,
    pub config_path: PathBuf,
    pub logs: Arc<Mutex<Vec<String>>>,
    /// The config file up to (not including) its `[log]` section.
    pub base_config: String,
    _dir: TempDir,
}

/// Options for [`Relay::start_with`].
pub struct RelayOpts {
    pub listeners: usize,
    /// Extra TOML appended after `[redis]` url and the listeners; must only
    /// add whole sections (and may add `[redis]` keys via `redis_extra`).
    pub extra: String,
    pub redis_extra: String,
    pub env: Vec<(String, String)>,
    /// Wait for /healthz 200 before returning.
    pub wait_redis: bool,
    /// `log.level` written to the file.
    pub log_level: String,
    /// `log.format` written to the file ("json" or "text").
    pub log_format: String,
}

impl Default for RelayOpts {
    fn default() -> Self {
        RelayOpts {
            listeners: 2,
            extra: String::new(),
            redis_extra: "liveness_interval_ms = 200\nliveness_timeout_ms = 1000\n".into(),
            env: Vec::new(),
            wait_redis: true,
            log_level: "studio_relay=debug,info".into(),
            log_format: "json".into(),
        }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_studio-relay")
}

impl Relay {
    pub async fn start(redis: &Redis) -> Relay {
        Self::start_with(&redis.url(), RelayOpts::default()).await
    }

    /// Starts against a port where no Redis listens (Redis down at boot).
    pub async fn start_without_redis(port: u16) -> Relay {
        let opts = RelayOpts {
            wait_redis: false,
            ..Default::default()
        };
        Self::start_with(&format!("redis://127.0.0.1:{port}"), opts).await
    }

    /// Starts against `redis` with extra TOML sections appended.
    pub async fn with_extra(redis: &Redis, extra: &str) -> Relay {
        let opts = RelayOpts {
            extra: extra.to_owned(),
            ..Default::default()
        };
        Self::start_with(&redis.url(), opts).await
    }

    pub async fn start_with(redis_url: &str, opts: RelayOpts) -> Relay {
        let dir = TempDir::new();
        let mut toml = format!("[redis]\nurl = \"{redis_url}\"\n{}\n", opts.redis_extra);
        for _ in 0..opts.listeners {
            toml.push_str("[[listeners]]\nbind = \"127.0.0.1:0\"\n");
        }
        let base_config = toml.clone();
        toml.push_str(&log_section(&opts.log_format, &opts.log_level));
        toml.push_str(&opts.extra);
        let config_path = dir.0.join("relay.toml");
        std::fs::write(&config_path, toml).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(&config_path)
            .env_remove("REDIS_URL")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(a) = listening_addr(&line) {
                        let _ = tx.send(a);
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let mut addrs = Vec::new();
        let n = opts.listeners.max(1);
        while addrs.len() < n {
            match rx.recv_timeout(WAIT) {
                Ok(a) => addrs.push(a),
                Err(_) => panic!(
                    "relay did not report its listeners; logs:\n{}",
                    logs.lock().unwrap().join("\n")
                ),
            }
        }
        let relay = Relay {
            child: Some(child),
            addrs,
            config_path,
            logs,
            base_config,
            _dir: dir,
        };
        if opts.wait_redis {
            relay.wait_health(200).await;
        }
        relay
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls /healthz until it answers `status` (the relay's own readiness signal).
    pub async fn wait_health(&self, status: u16) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = http(self.addr(), "GET", "/healthz", &[]).await {
                if r.status == status {
                    return serde_json::from_str(&r.body).unwrap();
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "/healthz never answered {status}; logs:\n{}",
                    self.logs.lock().unwrap().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn health(&self) -> (u16, Value) {
        let r = http(self.addr(), "GET", "/healthz", &[]).await.unwrap();
        (r.status, serde_json::from_str(&r.body).unwrap())
    }

    pub async fn metrics(&self) -> String {
        http(self.addr(), "GET", "/metrics", &[])
            .await
            .unwrap()
            .body
    }

    /// The value of one metric line (`name{labels}` exactly as printed).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        metric_value(&text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Number of stderr lines so far (a cursor for [`Relay::wait_log`]).
    pub fn log_len(&self) -> usize {
        self.logs.lock().unwrap().len()
    }

    /// Waits for a JSON log line at index `from` or later whose `message`
    /// starts with `message`; returns it.
    pub async fn wait_log(&self, from: usize, message: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let found = {
                let logs = self.logs.lock().unwrap();
                logs[from.min(logs.len())..]
                    .iter()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|v| {
                        v["message"]
                            .as_str()
                            .is_some_and(|m| m.starts_with(message))
                    })
            };
            if let Some(v) = found {
                return v;
            }
            if Instant::now() > deadline {
                panic!("no log line {message:?}; logs:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Rewrites the config file (same `[redis]` and listeners, the given log
    /// level and extra sections, JSON logs) and sends SIGHUP; returns the
    /// reload's outcome line ("config reloaded" or "reload failed…").
    pub async fn reload(&self, log_level: &str, extra: &str) -> Value {
        let text = format!(
            "{}{}{extra}",
            self.base_config,
            log_section("json", log_level)
        );
        self.reload_raw(&text).await
    }

    /// Writes `text` as the config file verbatim, SIGHUP, waits for the outcome line.
    pub async fn reload_raw(&self, text: &str) -> Value {
        std::fs::write(&self.config_path, text).unwrap();
        let from = self.log_len();
        self.signal("HUP");
        let deadline = Instant::now() + WAIT;
        loop {
            let found = {
                let logs = self.logs.lock().unwrap();
                logs[from..]
                    .iter()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|v| {
                        let m = v["message"].as_str().unwrap_or("");
                        m == "config reloaded" || m.starts_with("reload failed")
                    })
            };
            if let Some(v) = found {
                return v;
            }
            if Instant::now() > deadline {
                panic!("no reload outcome; logs:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Async wait for the process to exit; returns its exit code (None:
    /// still running at the deadline, or killed by a signal).
    pub async fn exited(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn client(&self, query: &str) -> Client {
        Client::connect(self.addr(), query).await
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn log_section(format: &str, level: &str) -> String {
    format!("[log]\nformat = \"{format}\"\nlevel = \"{level}\"\n")
}

/// The address of a "listening" log line, JSON or text format.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    if let Ok(v) = serde_json::from_str::<Value>(line) {
        if v["message"] == "listening" {
            return v["addr"].as_str()?.parse().ok();
        }
        return None;
    }
    let rest = line.split_once(": listening addr=")?.1;
    rest.split_whitespace().next()?.parse().ok()
}

pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`).
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect(addr).await?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("http timeout"))??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// Headers of a valid WebSocket upgrade request.
pub fn ws_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ]
}

/// A real WebSocket client.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
}

impl Client {
    /// Connects to `/ws?{query}` and waits for the welcome frame.
    pub async fn connect(addr: SocketAddr, query: &str) -> Client {
        Self::try_connect(addr, query, &[]).await.unwrap()
    }

    pub async fn try_connect(
        addr: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}/ws?{query}").into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timed out")?;
        let mut c = Client {
            ws,
            welcome: Value::Null,
        };
        let welcome = c.next_json().await;
        assert_eq!(
            welcome["type"], "welcome",
            "first frame must be welcome: {welcome}"
        );
        c.welcome = welcome;
        Ok(c)
    }

    /// The next text frame as JSON (pings are answered by tungstenite).
    pub async fn next_json(&mut self) -> Value {
        let text = self.next_text().await;
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"))
    }

    pub async fn next_text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no frame within the wait")
                .expect("stream ended")
                .expect("read error");
            match msg {
                Message::Text(t) => return t.as_str().to_owned(),
                Message::Close(c) => panic!("closed unexpectedly: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Next frame whose `type` is not `gap`/`pong`… unless asked for.
    pub async fn next_of_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.next_json().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_owned().into()))
            .await
            .unwrap();
    }

    /// Subscribes and waits for the ack.
    pub async fn subscribe(&mut self, v: Value) -> Value {
        let mut frame = v;
        frame["type"] = "subscribe".into();
        self.send_json(frame).await;
        self.next_of_type("subscribed").await
    }

    /// Reads until a close frame; returns its code. Text frames before it are skipped.
    pub async fn expect_close(&mut self) -> (u16, String) {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("no close within the wait");
            match msg {
                Some(Ok(Message::Close(Some(f)))) => {
                    return (u16::from(f.code), f.reason.as_str().to_owned())
                }
                Some(Ok(Message::Close(None))) => {
                    return (u16::from(CloseCode::Status), String::new())
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before close frame: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// Asserts that nothing arrives within `d` (used only to prove absence,
    /// after a later frame that must arrive has been awaited).
    pub async fn assert_silent(&mut self, d: Duration) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(d, self.ws.next()).await {
            panic!("unexpected frame: {t}");
        }
    }
}
