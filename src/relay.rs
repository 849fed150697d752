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
    /// An inherited socket could not be set up for the runtime.
    #[error("cannot use the socket passed for {addr}: {source}")]
    Inherited {
        /// The socket's address.
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

    /// Like [`bind`](Relay::bind), but a configured listener whose address
    /// matches a socket passed by the service manager uses that socket
    /// instead of binding (see [`activation::plan`](crate::activation::plan)).
    /// Must run inside the runtime.
    pub async fn bind_activated(
        config: Config,
        inherited: Vec<(std::net::TcpListener, SocketAddr)>,
    ) -> Result<Relay, StartError> {
        if inherited.is_empty() {
            return Relay::bind(config).await;
        }
        let configured = config.effective_listeners();
        let explicit = !config.listeners.is_empty();
        let plan = crate::activation::plan(&configured, explicit, inherited);
        let mut listeners = Vec::new();
        for (std_listener, addr) in plan.inherited {
            let tokio_listener = std_listener
                .set_nonblocking(true)
                .and_then(|()| TcpListener::from_std(std_listener))
                .map_err(|source| StartError::Inherited { addr, source })?;
            if plan.unconfigured.contains(&addr) {
                tracing::warn!(addr = %addr, "socket passed by systemd is not in [[listeners]]; serving it anyway");
            } else {
                tracing::info!(addr = %addr, "using socket passed by systemd");
            }
            listeners.push((tokio_listener, addr));
        }
        for addr in plan.bind {
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
        core.spawn(hub.run(
            commands,
            ingest_rx,
            self.live_tx.subscribe(),
            shutdown.clone(),
        ));
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
        // The grace as of now: a reload may have changed it.
        let grace = Duration::from_millis(state.config().limits.shutdown_grace_ms);
        tracing::info!(
            connections = state.open.load(Ordering::Acquire),
            grace_ms = grace.as_millis() as u64,
            "shutting down: draining connections"
        );
        state.tasks.close();
        // One deadline for everything: connections flush, spread their
        // closes and get their close replies within it; whatever is still
        // running then is dropped, so the process exits within the grace.
        let drained = tokio::time::timeout(grace, async {
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

/// What one reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new config is live; these changed keys wait for a restart.
    Applied {
        /// Dotted keys (`listeners`, `redis`, `log.format`) kept at their running values.
        restart_needed: Vec<&'static str>,
    },
    /// The file was invalid; the running config is unchanged.
    Rejected(String),
}

/// Re-reads the config file on SIGHUP: validate, then swap. Tokens, origins,
/// limits, routing and the log level apply at once (open connections whose
/// token is no longer valid are closed with 1008); listeners, `[redis]`
/// and `log.format` keep their running values until a restart, and saying so
/// is logged. An invalid file is logged and changes nothing.
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

    /// Performs one reload between `RELOADING=1` and `READY=1`.
    pub fn reload(&self) -> ReloadOutcome {
        crate::notify::reloading();
        let outcome = self.apply();
        let status = match &outcome {
            ReloadOutcome::Applied { restart_needed } if restart_needed.is_empty() => {
                "config reloaded".to_owned()
            }
            ReloadOutcome::Applied { restart_needed } => format!(
                "config reloaded; restart needed for {}",
                restart_needed.join(", ")
            ),
            ReloadOutcome::Rejected(_) => "reload failed; running config kept".to_owned(),
        };
        crate::notify::reloaded(&status);
        outcome
    }

    fn apply(&self) -> ReloadOutcome {
        let redis_url = std::env::var("REDIS_URL").ok();
        let loaded = match crate::config::load(&self.source, redis_url.as_deref()) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(error = %e, config = %self.source, "reload failed; keeping the running config");
                return ReloadOutcome::Rejected(e.to_string());
            }
        };
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let current = self.live.borrow().clone();
        let mut next = loaded.config;
        let mut restart_needed = current.restart_only_changes(&next);
        if next.log.format != current.log.format {
            restart_needed.push("log.format");
        }
        for key in &restart_needed {
            tracing::warn!(key, "changed in the file; needs a restart to apply");
        }
        next.listeners = current.listeners.clone();
        next.redis = current.redis.clone();
        next.log.format = current.log.format;

        if next.log.level != current.log.level {
            if self.log.pinned_by_env() {
                tracing::info!("log.level changed in the file; RUST_LOG is set and wins");
            } else if let Err(e) = self.log.set_level(&next.log.level) {
                tracing::warn!(error = %e, "log level not applied");
            }
        }
        let tokens_changed = next.auth.tokens != current.auth.tokens;
        let summary = next.summary();
        self.live.send_replace(Arc::new(next));
        tracing::info!(
            version = crate::VERSION,
            config = %self.source,
            summary = %summary,
            tokens_changed,
            "config reloaded"
        );
        ReloadOutcome::Applied { restart_needed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigSource;

    struct File(std::path::PathBuf);
    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn setup(text: &str) -> (File, Reloader, watch::Receiver<Arc<Config>>) {
        let path = std::env::temp_dir().join(format!(
            "studio-relay-reload-{}-{}.toml",
            std::process::id(),
            source::random_u64()
        ));
        std::fs::write(&path, text).unwrap();
        let source = ConfigSource::File(path.clone());
        let loaded = crate::config::load(&source, None).unwrap();
        let (tx, rx) = watch::channel(Arc::new(loaded.config));
        let log = crate::logging::LogHandle::detached("info");
        (File(path), Reloader::new(source, tx, log), rx)
    }

    const BASE: &str = "[redis]\nurl = \"redis://127.0.0.1:1\"\n[[listeners]]\nbind = \"127.0.0.1:1\"\n[auth]\ntokens = [\"a\"]\n";

    #[test]
    fn live_keys_apply_and_restart_keys_keep_their_running_values() {
        let (file, reloader, rx) = setup(BASE);
        std::fs::write(
            &file.0,
            "[redis]\nurl = \"redis://127.0.0.1:2\"\n[[listeners]]\nbind = \"127.0.0.1:2\"\n\
             [auth]\ntokens = [\"b\"]\n[limits]\nmax_subscriptions = 3\n\
             [security]\nallowed_origins = [\"https://x.example\"]\n\
             [log]\nformat = \"json\"\nlevel = \"debug\"\n",
        )
        .unwrap();
        assert_eq!(
            reloader.reload(),
            ReloadOutcome::Applied {
                restart_needed: vec!["listeners", "redis", "log.format"]
            }
        );
        let c = rx.borrow().clone();
        assert_eq!(c.auth.tokens, vec!["b".to_owned()]);
        assert_eq!(c.limits.max_subscriptions, 3);
        assert_eq!(c.security.allowed_origins.len(), 1);
        assert_eq!(c.log.level, "debug");
        assert_eq!(c.log.format, crate::config::LogFormat::Text);
        assert_eq!(c.redis.url, "redis://127.0.0.1:1");
        assert_eq!(
            c.effective_listeners(),
            vec!["127.0.0.1:1".parse().unwrap()]
        );
    }

    #[test]
    fn an_invalid_file_changes_nothing() {
        let (file, reloader, mut rx) = setup(BASE);
        let before = rx.borrow_and_update().clone();
        for bad in [
            "[auth\n",
            "[limits]\nmax_subscriptions = \"many\"\n",
            "[nope]\n",
        ] {
            std::fs::write(&file.0, bad).unwrap();
            assert!(
                matches!(reloader.reload(), ReloadOutcome::Rejected(_)),
                "{bad}"
            );
            assert!(!rx.has_changed().unwrap());
            assert!(Arc::ptr_eq(&before, &rx.borrow()));
        }
        std::fs::remove_file(&file.0).unwrap();
        assert!(matches!(reloader.reload(), ReloadOutcome::Rejected(_)));
    }
}
