//! Test harness: a private `redis-server` on a free port and the real
//! `studio-relay` binary on port 0, both stopped on drop; a real WebSocket
//! client; raw HTTP. Readiness comes from signals (log lines, /healthz,
//! welcome frames), never from sleeps.
//!
//! Layout:
//! - `redis.rs`  a private redis-server process (start, kill, restart,
//!   signal) and [`RedisConn`], a connection over the bench's RESP client
//! - `relay.rs`  the relay process: start options, logs, health, metrics,
//!   reload, exit
//! - `client.rs` the WebSocket client
//! - `http.rs`   one raw HTTP/1.1 request
//! - `nats.rs`   a private nats-server process and a publishing client
//!
//! Every `tests/*.rs` compiles this module into its own binary and uses only
//! part of it, so what one binary leaves unused is not dead code.
#![allow(dead_code)]

mod client;
mod http;
pub mod nats;
pub mod node;
mod redis;
mod relay;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

// What the test files use; each binary uses some of it.
#[allow(unused_imports)]
pub use client::Client;
#[allow(unused_imports)]
pub use http::{http, request, ws_headers, HttpResponse};
#[allow(unused_imports)]
pub use redis::{Redis, RedisConn, Reply};
#[allow(unused_imports)]
pub use relay::{bin, metric_value, Relay, RelayOpts};

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

/// `kill -SIG pid`, asserting it was delivered.
fn signal(pid: u32, sig: &str) {
    // pid 0 (no child any more) would signal our own process group.
    assert_ne!(pid, 0, "no process to send SIG{sig} to");
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
