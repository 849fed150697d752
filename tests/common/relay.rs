//! The real relay binary as a child process: its config file, its stderr
//! (JSON log lines, collected as they arrive), /healthz, /metrics, SIGHUP
//! reloads and its exit.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{http, Client, Redis, TempDir, WAIT};

/// The relay binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_studio-relay")
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
    /// Extra keys for each `[[listeners]]` table, by position (e.g. a TLS
    /// listener's `tls_cert` / `tls_key`); part of `base_config`.
    pub listener_keys: Vec<String>,
    /// Extra TOML appended after `[redis]` url and the listeners; must only
    /// add whole sections (and may add `[redis]` keys via `redis_extra`).
    pub extra: String,
    pub redis_extra: String,
    pub env: Vec<(String, String)>,
    /// Wait for /healthz 200 before returning.
    pub wait_redis: bool,
    /// `log.level` written to the file (`log.format` is always "json": the
    /// helpers here read JSON lines).
    pub log_level: String,
}

impl Default for RelayOpts {
    fn default() -> Self {
        RelayOpts {
            listeners: 2,
            listener_keys: Vec::new(),
            extra: String::new(),
            redis_extra: "liveness_interval_ms = 200\nliveness_timeout_ms = 1000\n".into(),
            env: Vec::new(),
            wait_redis: true,
            log_level: "studio_relay=debug,info".into(),
        }
    }
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

    /// Writes the config, starts the binary and returns once every listener
    /// has logged `listening` (and, with `wait_redis`, /healthz is 200).
    pub async fn start_with(redis_url: &str, opts: RelayOpts) -> Relay {
        let dir = TempDir::new();
        let mut toml = format!("[redis]\nurl = \"{redis_url}\"\n{}\n", opts.redis_extra);
        for i in 0..opts.listeners {
            toml.push_str("[[listeners]]\nbind = \"127.0.0.1:0\"\n");
            if let Some(keys) = opts.listener_keys.get(i) {
                toml.push_str(keys);
            }
        }
        let base_config = toml.clone();
        toml.push_str(&log_section(&opts.log_level));
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

    /// Sends `SIG{sig}` (TERM, INT, HUP, …) to the relay.
    pub fn signal(&self, sig: &str) {
        super::signal(self.pid(), sig);
    }

    /// Waits for the process to exit; returns its exit code (None: still
    /// running at the deadline, or killed by a signal).
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
        let text = format!("{}{}{extra}", self.base_config, log_section(log_level));
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

    /// A WebSocket client on the first listener (`/ws?{query}`), past its welcome.
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

fn log_section(level: &str) -> String {
    format!("[log]\nformat = \"json\"\nlevel = \"{level}\"\n")
}

/// The address of a JSON "listening" log line.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v = serde_json::from_str::<Value>(line).ok()?;
    if v["message"] != "listening" {
        return None;
    }
    v["addr"].as_str()?.parse().ok()
}

/// The value of `series` (`name{labels}` exactly as printed) in a /metrics text.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
