//! `[limits]`: connection counts, queue bounds and timers.

use serde::Deserialize;

use super::{Checked, Invalid};

/// Most runtime threads `limits.worker_threads` may ask for: beyond the
/// cores of any machine the relay runs on, more threads only add switches.
const MAX_WORKER_THREADS: usize = 1024;

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// WebSocket connections across all listeners.
    pub max_connections: usize,
    /// Subscriptions per connection (the firehose does not count).
    pub max_subscriptions: usize,
    /// Largest client message after reassembly.
    pub max_client_message_bytes: usize,
    /// Queued events per connection before it counts as slow.
    pub send_queue: usize,
    /// Queued bytes per connection before it counts as slow.
    pub send_queue_bytes: usize,
    /// Time allowed from TCP accept to a complete HTTP request head.
    pub handshake_timeout_ms: u64,
    /// Interval of relay -> client pings; 0 turns them off.
    pub ping_interval_ms: u64,
    /// Close a connection silent this long; 0 turns the idle close off.
    pub idle_timeout_ms: u64,
    /// A socket write that takes longer means the client stopped reading:
    /// the connection is dropped (an extension of SPEC §3).
    pub write_timeout_ms: u64,
    /// Deadline for the drain on shutdown.
    pub shutdown_grace_ms: u64,
    /// On shutdown, how long `/healthz` fails (and new sessions are
    /// refused) before the open connections are closed, so a load balancer
    /// notices first; part of `shutdown_grace_ms`.
    pub drain_delay_ms: u64,
    /// Write WebSocket frames on plain TCP from the routing task when the
    /// socket takes them, instead of waking each connection's task. Off:
    /// every write goes through the connection's task (for comparison).
    pub direct_writes: bool,
    /// Threads of the async runtime; 0 = one per core. Read at start.
    pub worker_threads: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 10_000,
            max_subscriptions: 256,
            max_client_message_bytes: 4096,
            send_queue: 1024,
            send_queue_bytes: 1 << 20,
            handshake_timeout_ms: 10_000,
            ping_interval_ms: 25_000,
            idle_timeout_ms: 60_000,
            write_timeout_ms: 10_000,
            shutdown_grace_ms: 5000,
            drain_delay_ms: 0,
            direct_writes: true,
            worker_threads: 0,
        }
    }
}

impl LimitsConfig {
    /// What is left of the grace once the drain delay has passed: the time
    /// connections get to flush and close with 1001.
    pub fn close_window(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.shutdown_grace_ms.saturating_sub(self.drain_delay_ms))
    }

    /// A zero here would refuse or drop every client, so it is a mistake.
    pub(super) fn validate(&self) -> Checked {
        for (key, value) in [
            ("limits.max_connections", self.max_connections as u64),
            ("limits.max_subscriptions", self.max_subscriptions as u64),
            ("limits.send_queue", self.send_queue as u64),
            ("limits.send_queue_bytes", self.send_queue_bytes as u64),
            ("limits.handshake_timeout_ms", self.handshake_timeout_ms),
            ("limits.write_timeout_ms", self.write_timeout_ms),
        ] {
            if value == 0 {
                return Err(Invalid::new(key, "must be above 0"));
            }
        }
        if self.max_client_message_bytes < 64 {
            return Err(Invalid::new(
                "limits.max_client_message_bytes",
                "must be at least 64 (a subscribe frame must fit)",
            ));
        }
        if self.drain_delay_ms > 0 && self.drain_delay_ms >= self.shutdown_grace_ms {
            return Err(Invalid::new(
                "limits.drain_delay_ms",
                "must be below limits.shutdown_grace_ms (the drain needs time left to close clients)",
            ));
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(Invalid::new(
                "limits.worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0 = one per core)"),
            ));
        }
        let mut warnings = Vec::new();
        // The client's pong is what keeps a quiet connection from counting as
        // idle; an idle close that comes first drops healthy clients.
        if self.ping_interval_ms > 0
            && self.idle_timeout_ms > 0
            && self.idle_timeout_ms <= self.ping_interval_ms
        {
            warnings.push(format!(
                "limits.idle_timeout_ms ({}) is not above limits.ping_interval_ms ({}): a client that only answers pings is closed as idle before the next ping",
                self.idle_timeout_ms, self.ping_interval_ms
            ));
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    #[test]
    fn zero_limit_is_located_at_its_value() {
        let e = parse("[limits]\n\nsend_queue = 0\n").unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line, e.column),
            ("limits.send_queue", 3, 14)
        );
    }

    #[test]
    fn drain_delay_must_leave_time_to_close() {
        let e = parse("[limits]\nshutdown_grace_ms = 2000\ndrain_delay_ms = 2000\n").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("limits.drain_delay_ms", 3));
        let l = parse("[limits]\nshutdown_grace_ms = 2000\ndrain_delay_ms = 500\n").unwrap();
        assert_eq!(
            l.config.limits.close_window(),
            std::time::Duration::from_millis(1500)
        );
        // 0 (the default) is always fine, even with a zero grace.
        assert!(parse("[limits]\nshutdown_grace_ms = 0\n").is_ok());
    }

    #[test]
    fn worker_threads_zero_means_per_core_and_is_bounded() {
        assert_eq!(parse("").unwrap().config.limits.worker_threads, 0);
        assert_eq!(
            parse("[limits]\nworker_threads = 1\n")
                .unwrap()
                .config
                .limits
                .worker_threads,
            1
        );
        let e = parse("[limits]\nworker_threads = 5000\n").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("limits.worker_threads", 2));
        assert!(e.message.contains("at most 1024"), "{}", e.message);
    }

    #[test]
    fn idle_timeout_not_above_ping_interval_warns() {
        let l = parse("[limits]\nping_interval_ms = 60000\nidle_timeout_ms = 30000\n").unwrap();
        assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
        assert!(l.warnings[0].contains("limits.idle_timeout_ms"));
        let l = parse("[limits]\nping_interval_ms = 30000\nidle_timeout_ms = 30000\n").unwrap();
        assert_eq!(l.warnings.len(), 1);
        for fine in [
            "",
            "[limits]\nping_interval_ms = 0\nidle_timeout_ms = 1000\n",
            "[limits]\nping_interval_ms = 60000\nidle_timeout_ms = 0\n",
        ] {
            assert!(parse(fine).unwrap().warnings.is_empty(), "{fine}");
        }
    }
}
