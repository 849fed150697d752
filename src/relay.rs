//! Wiring: binds the listeners, starts the hub, the Redis source and one
//! accept loop per listener, and drains them on shutdown within the grace
//! deadline. Every task is tracked, so nothing outlives [`Relay::run`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connection::ConnIdString;
use crate::listener;
use crate::metrics::Metrics;
use crate::router::{Hub, HubHandle};
use crate::source::{self, RedisHealth, Source};

/// Buffer between the Redis source and the hub, in events.
const INGEST_QUEUE: usize = 8192;
/// Extra time past the drain grace for tasks to notice and finish.
const SHUTDOWN_SLACK: Duration = Duration::from_millis(500);

/// Failure to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("cannot bind listener {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What every task shares. Config is read through [`State::config`], which
/// always returns the latest reloaded version.
pub struct State {
    /// The live configuration; reloads replace it.
    pub live: watch::Receiver<Arc<Config>>,
    /// Commands to the hub.
    pub hub: HubHandle,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Redis subscription health.
    pub redis: Arc<RedisHealth>,
    /// Open WebSocket connections across all listeners.
    pub open: AtomicUsize,
    /// The one shutdown signal.
    pub shutdown: CancellationToken,
    /// Every connection and HTTP task.
    pub tasks: TaskTracker,
    next_id: AtomicU64,
    instance: String,
}

impl State {
    /// The current configuration.
    pub fn config(&self) -> Arc<Config> {
        self.live.borrow().clone()
    }

    /// A fresh connection id.
    pub fn next_connection_id(&self) -> ConnIdString {
        let num = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        ConnIdString {
            num,
            text: format!("{}-{num}", self.instance),
        }
    }
}

/// Accept backlog: tokio's default (1024) overflows when thousands of
/// clients reconnect at once (e.g. after a relay restart); the kernel caps
/// it at `net.core.somaxconn` anyway.
const LISTEN_BACKLOG: u32 = 4096;

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Restarting on the same port must not wait out TIME_WAIT sockets.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A relay with its listeners bound, ready to [`run`](Relay::run).
pub struct Relay {
    listeners: Vec<(TcpListener, SocketAddr)>,
    live_tx: watch::Sender<Arc<Config>>,
    metrics: Arc<Metrics>,
}

impl Relay {
    /// Binds every listener of `config`. Fails naming the address that
    /// could not be bound.
    pub async fn bind(config: Config) -> Result<Relay, StartError> {
        let mut listeners = Vec::new();
        for addr in config.effective_listeners() {
            let listener =
                bind_listener(addr).map_err(|source| StartError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            listeners.push((listener, local));
        }
        Ok(Relay::with_listeners(config, listeners))
    }

    /// Uses already-bound listeners (socket activation, tests).
    pub fn with_listeners(config: Config, listeners: Vec<(TcpListener, SocketAddr)>) -> Relay {
        let (live_tx, _) = watch::channel(Arc::new(config));
        Relay {
            listeners,
            live_tx,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// The bound addresses, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|(_, a)| *a).collect()
    }

    /// Publishes a new live configuration (after validation by the caller).
    pub fn config_sender(&self) -> watch::Sender<Arc<Config>> {
        self.live_tx.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains: connections flush
    /// what is queued and close with 1001 within `shutdown_grace_ms`.
    pub async fn run(self, shutdown: CancellationToken) {
        let config = self.live_tx.borrow().clone();
        let (hub_handle, commands) = Hub::channel();
        let (ingest_tx, ingest_rx) = mpsc::channel(INGEST_QUEUE);
        let redis = Arc::new(RedisHealth::default());
        let state = Arc::new(State {
            live: self.live_tx.subscribe(),
            hub: hub_handle,
            metrics: self.metrics.clone(),
            redis: redis.clone(),
            open: AtomicUsize::new(0),
            shutdown: shutdown.clone(),
            tasks: TaskTracker::new(),
            next_id: AtomicU64::new(0),
            instance: format!("{:08x}", source::random_u64() as u32),
        });

        let core = TaskTracker::new();
        let hub = Hub::new(self.metrics.clone());
        core.spawn(hub.run(commands, ingest_rx, self.live_tx.subscribe(), shutdown.clone()));
        let source = Source::new(
            self.live_tx.subscribe(),
            ingest_tx,
            redis,
            self.metrics.clone(),
        );
        core.spawn(source.run(shutdown.clone()));
        for (listener, addr) in self.listeners {
            let name: Arc<str> = Arc::from(addr.to_string());
            self.metrics.add_listener(&name);
            tracing::info!(addr = %addr, "listening");
            core.spawn(listener::serve(listener, name, state.clone()));
        }
        core.close();

        shutdown.cancelled().await;
        let grace = Duration::from_millis(config.limits.shutdown_grace_ms);
        tracing::info!(
            connections = state.open.load(Ordering::Acquire),
            grace_ms = grace.as_millis() as u64,
            "shutting down: draining connections"
        );
        state.tasks.close();
        let drained = tokio::time::timeout(grace + SHUTDOWN_SLACK, async {
            state.tasks.wait().await;
            core.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = state.tasks.len(),
                "drain deadline passed; dropping remaining connections"
            );
        }
    }
}

/// Re-reads the config file on SIGHUP: validate, then swap. Keys that need
/// a restart (listeners, redis) keep their running values and are logged.
pub struct Reloader {
    source: crate::config::ConfigSource,
    live: watch::Sender<Arc<Config>>,
    log: crate::logging::LogHandle,
}

impl Reloader {
    /// A reloader for the file the relay started from.
    pub fn new(
        source: crate::config::ConfigSource,
        live: watch::Sender<Arc<Config>>,
        log: crate::logging::LogHandle,
    ) -> Self {
        Reloader { source, live, log }
    }

    /// Performs one reload; a bad file is logged and the running config kept.
    pub fn reload(&self) {
        crate::notify::reloading();
        let redis_url = std::env::var("REDIS_URL").ok();
        match crate::config::load(&self.source, redis_url.as_deref()) {
            Err(e) => tracing::error!(error = %e, "reload failed; keeping the running config"),
            Ok(loaded) => {
                let current = self.live.borrow().clone();
                let mut next = loaded.config;
                for key in current.restart_only_changes(&next) {
                    tracing::warn!(key, "changed in the file; needs a restart to apply");
                }
                next.listeners = current.listeners.clone();
                next.redis = current.redis.clone();
                if let Err(e) = self.log.set_level(&next.log.level) {
                    tracing::warn!(error = %e, "log level not applied");
                }
                if next.log.format != current.log.format {
                    tracing::warn!(
                        key = "log.format",
                        "changed in the file; needs a restart to apply"
                    );
                    next.log.format = current.log.format;
                }
                let summary = next.summary();
                self.live.send_replace(Arc::new(next));
                tracing::info!(config = %self.source, summary = %summary, "config reloaded");
            }
        }
        crate::notify::reloaded("reloaded");
    }
}
