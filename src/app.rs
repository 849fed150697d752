//! Wiring: takes the listeners, starts the hub, the sources and one accept
//! loop per listener, and drains them on shutdown within the grace
//! deadline. Every task is tracked, so nothing outlives [`Relay::run`].
//! Also the SIGHUP [`Reloader`], and the task that re-reads TLS listeners'
//! certificates after each reload.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::ctx::{Admission, ConnIds, Health, Live};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::metrics::SourceLabel;
use crate::net::tls::TlsListener;
use crate::net::{self, StartError};
use crate::source::{self, Source, SourceCtx};
use crate::transport::{self, Server};
use crate::util::id::InstanceId;

/// Buffer between the sources and the hub, in events.
const INGEST_QUEUE: usize = 8192;

/// A listener to serve: its socket, address, and TLS pair (with the index
/// of its `[[listeners]]` entry, where reloads find the pair's paths).
struct Serving {
    socket: TcpListener,
    addr: SocketAddr,
    tls: Option<(usize, Arc<TlsListener>)>,
}

/// A relay with its listeners bound, ready to [`run`](Relay::run).
pub struct Relay {
    listeners: Vec<Serving>,
    live_tx: watch::Sender<Arc<Config>>,
    metrics: Arc<Metrics>,
    sources: Option<Vec<Box<dyn Source>>>,
}

impl Relay {
    /// Binds every listener of `config`. Fails naming the address that
    /// could not be bound.
    pub async fn bind(config: Config) -> Result<Relay, StartError> {
        Relay::bind_activated(config, Vec::new()).await
    }

    /// Like [`bind`](Relay::bind), but a configured listener whose address
    /// matches a socket passed by the service manager uses that socket
    /// instead of binding (see [`net::activation::plan`]); it speaks TLS when
    /// that entry has a pair. Must run inside the runtime.
    pub async fn bind_activated(
        config: Config,
        inherited: Vec<(std::net::TcpListener, SocketAddr)>,
    ) -> Result<Relay, StartError> {
        let explicit = !config.listeners.is_empty();
        let bound = net::listeners(&config.effective_listeners(), explicit, inherited)?;
        let mut listeners = Vec::with_capacity(bound.len());
        for l in bound {
            let entry = l
                .config
                .and_then(|i| config.listeners.get(i).map(|c| (i, c)));
            let tls = match entry {
                Some((i, c)) if c.is_tls() => {
                    let slot = TlsListener::load(&c.tls_cert, &c.tls_key).map_err(|error| {
                        StartError::Tls {
                            addr: c.bind,
                            error,
                        }
                    })?;
                    Some((i, Arc::new(slot)))
                }
                _ => None,
            };
            listeners.push(Serving {
                socket: l.socket,
                addr: l.addr,
                tls,
            });
        }
        Ok(Relay::new(config, listeners))
    }

    /// Uses already-bound listeners (tests); they serve plain HTTP, whatever
    /// TLS the config names.
    pub fn with_listeners(config: Config, listeners: Vec<(TcpListener, SocketAddr)>) -> Relay {
        let listeners = listeners
            .into_iter()
            .map(|(socket, addr)| Serving {
                socket,
                addr,
                tls: None,
            })
            .collect();
        Relay::new(config, listeners)
    }

    fn new(config: Config, listeners: Vec<Serving>) -> Relay {
        let (live_tx, _) = watch::channel(Arc::new(config));
        Relay {
            listeners,
            live_tx,
            metrics: Arc::new(Metrics::new()),
            sources: None,
        }
    }

    /// Replaces the sources the config names (Redis, NATS) with `sources`, e.g.
    /// an in-memory one for tests.
    pub fn with_sources(mut self, sources: Vec<Box<dyn Source>>) -> Relay {
        self.sources = Some(sources);
        self
    }

    /// The bound addresses, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.addr).collect()
    }

    /// Publishes a new live configuration (after validation by the caller).
    pub fn config_sender(&self) -> watch::Sender<Arc<Config>> {
        self.live_tx.clone()
    }

    /// The metrics registry this relay reports into.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains: `/healthz` fails
    /// and new sessions are refused at once; after `drain_delay_ms`
    /// connections flush what is queued and close with 1001; the listeners
    /// close last. All within `shutdown_grace_ms`.
    pub async fn run(self, shutdown: CancellationToken) {
        // `shutdown` starts the drain; `close` (what every task awaits) is
        // cancelled once the drain delay has passed; `accepting` once the
        // connections are gone, so the listeners answer `/healthz` until then.
        let close = CancellationToken::new();
        let accepting = CancellationToken::new();
        let live = Live::new(self.live_tx.subscribe());
        let config = live.get();
        let instance = InstanceId::random();
        let (hub_handle, commands) = Hub::channel();
        let (ingest_tx, ingest_rx) = mpsc::channel(INGEST_QUEUE);
        let health = Arc::new(Health::default());
        let server = Arc::new(Server::new(
            live.clone(),
            hub_handle,
            ingest_tx.clone(),
            self.metrics.clone(),
            Arc::new(Admission::default()),
            health.clone(),
            ConnIds::new(instance.clone()),
            close.clone(),
            TaskTracker::new(),
        ));

        let core = TaskTracker::new();
        let routing = RoutingThread::start();
        let on = routing.handle();
        let hub = Hub::new(self.metrics.clone());
        core.spawn_on(
            hub.run(commands, ingest_rx, live.watch(), close.clone()),
            &on,
        );
        let sources = self.sources.unwrap_or_else(|| source::configured(&config));
        for source in sources {
            let name = source.name();
            self.metrics.add_source(name);
            let gauge = self
                .metrics
                .source_up
                .get_or_create(&SourceLabel { source: name });
            let ctx = SourceCtx {
                ingest: ingest_tx.clone(),
                health: health.register(name).with_gauge(gauge.clone()),
                live: live.clone(),
                metrics: self.metrics.clone(),
                instance: instance.clone(),
            };
            core.spawn_on(source.run(ctx, close.clone()), &on);
        }
        drop(ingest_tx);
        let publisher = server.clone();
        let stop = close.clone();
        core.spawn(async move { publisher.publish.run(stop).await });
        let mut reloadable = Vec::new();
        for Serving { socket, addr, tls } in self.listeners {
            let name: Arc<str> = Arc::from(addr.to_string());
            self.metrics.add_listener(&name);
            // Where to point a client, not only the socket address.
            let (ws, http) = match tls {
                Some(_) => ("wss", "https"),
                None => ("ws", "http"),
            };
            let socketio = match config.socketio.enabled {
                true => format!("{http}://{addr}{}", config.socketio.path),
                false => "off".to_owned(),
            };
            let cert = tls
                .as_ref()
                .and_then(|(i, _)| config.listeners.get(*i))
                .map_or("", |c| c.tls_cert.as_str());
            tracing::info!(addr = %addr, url = %format!("{ws}://{addr}/ws"), socketio = %socketio, tls = tls.is_some(), cert, "listening");
            let acceptor = tls.map(|(i, slot)| {
                self.metrics.add_tls_listener();
                reloadable.push((i, name.clone(), slot.clone()));
                slot
            });
            core.spawn(transport::http::serve(
                socket,
                name,
                server.clone(),
                acceptor,
                accepting.clone(),
            ));
        }
        if !reloadable.is_empty() {
            core.spawn(reload_certificates(live.watch(), reloadable, close.clone()));
        }
        core.close();

        shutdown.cancelled().await;
        // Fail the health check first, so a load balancer stops sending
        // new clients here before the open ones are told to go.
        health.set_draining();
        server.admission.close();
        // The grace as of now: a reload may have changed it. One deadline
        // for everything, counted from the signal.
        let limits = live.get().limits.clone();
        let grace = Duration::from_millis(limits.shutdown_grace_ms);
        let deadline = tokio::time::Instant::now() + grace;
        tracing::info!(
            connections = server.admission.open(),
            grace_ms = limits.shutdown_grace_ms,
            drain_delay_ms = limits.drain_delay_ms,
            "shutting down: draining connections"
        );
        if limits.drain_delay_ms > 0 {
            // Clients are still served meanwhile; validation keeps the
            // delay below the grace.
            tokio::time::sleep(Duration::from_millis(limits.drain_delay_ms)).await;
            tracing::info!(
                connections = server.admission.open(),
                "drain delay over: closing connections"
            );
        }
        close.cancel();
        server.tasks.close();
        // Connections flush, spread their closes and get their close
        // replies within the deadline; whatever is still running then is
        // dropped, so the process exits within the grace.
        let drained = tokio::time::timeout_at(deadline, async {
            server.tasks.wait().await;
            accepting.cancel();
            core.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = server.tasks.len(),
                "drain deadline passed; dropping remaining connections"
            );
        }
        routing.stop().await;
    }
}

/// The thread the sources and the hub run on: a current-thread runtime of
/// their own. An event then goes from the broker's socket through the
/// broker client, the decode and the routing to the clients' sockets on one
/// thread, woken once by its socket, as Redis's own event loop is; on the
/// shared runtime those three tasks could sit on different workers, and an
/// event reaching an idle relay paid a cross-core wakeup per hand-off (the
/// tail of the latency at a steady rate). Connections, handshakes, TLS and
/// long-polling stay on the shared runtime's threads.
struct RoutingThread {
    /// None if the thread could not be started: the shared runtime then
    /// runs the sources and the hub, as it did before.
    started: Option<(
        tokio::runtime::Handle,
        CancellationToken,
        std::thread::JoinHandle<()>,
    )>,
}

impl Drop for RoutingThread {
    /// A relay dropped before its drain (a test's, say) leaves no thread behind.
    fn drop(&mut self) {
        if let Some((_, stop, _)) = &self.started {
            stop.cancel();
        }
    }
}

impl RoutingThread {
    fn start() -> Self {
        let stop = CancellationToken::new();
        let started = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .and_then(|rt| {
                let handle = rt.handle().clone();
                let until = stop.clone();
                std::thread::Builder::new()
                    .name("studio-routing".into())
                    .spawn(move || {
                        rt.block_on(until.cancelled());
                        // What is left (only after the drain deadline)
                        // is dropped, as on the shared runtime.
                        rt.shutdown_timeout(Duration::from_millis(100));
                    })
                    .map(|thread| (handle, stop, thread))
            });
        match started {
            Ok(started) => RoutingThread {
                started: Some(started),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the routing thread; routing on the shared runtime");
                RoutingThread { started: None }
            }
        }
    }

    /// Where the sources and the hub are spawned.
    fn handle(&self) -> tokio::runtime::Handle {
        match &self.started {
            Some((handle, _, _)) => handle.clone(),
            None => tokio::runtime::Handle::current(),
        }
    }

    /// Ends the thread once its tasks are done (or past the drain deadline).
    async fn stop(mut self) {
        let Some((_, stop, thread)) = self.started.take() else {
            return;
        };
        stop.cancel();
        // Joining blocks: off the async threads.
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// After every applied reload, re-reads each TLS listener's pair from the
/// paths the new config names: new handshakes use the new pair, and one that
/// does not load is logged and the old pair kept (SPEC §14). The reload
/// itself already refused a file whose pairs did not load; this catches
/// files changed in between.
async fn reload_certificates(
    mut live: watch::Receiver<Arc<Config>>,
    listeners: Vec<(usize, Arc<str>, Arc<TlsListener>)>,
    shutdown: CancellationToken,
) {
    live.borrow_and_update();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = live.changed() => if changed.is_err() { return },
        }
        let config = live.borrow_and_update().clone();
        for (index, name, slot) in &listeners {
            let Some(entry) = config.listeners.get(*index).filter(|c| c.is_tls()) else {
                continue;
            };
            match slot.reload(&entry.tls_cert, &entry.tls_key) {
                Ok(()) => {
                    tracing::info!(listener = %name, cert = %entry.tls_cert, "tls certificate reloaded")
                }
                Err(e) => {
                    tracing::error!(listener = %name, error = %e, "tls certificate reload failed; keeping the previous one")
                }
            }
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
/// token is no longer valid are closed with 1008); listeners, `[redis]`, `[nats]`
/// and `log.format` keep their running values until a restart, and saying so
/// is logged. An invalid file is logged and changes nothing.
pub struct Reloader {
    source: crate::config::ConfigSource,
    live: watch::Sender<Arc<Config>>,
    log: crate::service::logging::LogHandle,
}

impl Reloader {
    /// A reloader for the file the relay started from.
    pub fn new(
        source: crate::config::ConfigSource,
        live: watch::Sender<Arc<Config>>,
        log: crate::service::logging::LogHandle,
    ) -> Self {
        Reloader { source, live, log }
    }

    /// Performs one reload between `RELOADING=1` and `READY=1`.
    pub fn reload(&self) -> ReloadOutcome {
        crate::service::notify::reloading();
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
        crate::service::notify::reloaded(&status);
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
        // The sockets stay as bound; only when each listener keeps its
        // address and its TLS-or-not may the file's TLS paths apply (the
        // pairs are re-read by the relay on every reload, SPEC §14).
        if restart_needed.contains(&"listeners") {
            next.listeners = current.listeners.clone();
        }
        next.redis = current.redis.clone();
        next.nats = current.nats.clone();
        next.log.format = current.log.format;
        next.publish.enabled = current.publish.enabled;
        next.publish.to = current.publish.to;
        // What is kept must still fit what changed (publishing kept on
        // while the new file drops its tokens, say).
        if let Err((key, message)) = next.validate() {
            tracing::error!(key, message, config = %self.source, "reload failed; keeping the running config");
            return ReloadOutcome::Rejected(format!("{key}: {message}"));
        }

        if next.log.level != current.log.level {
            if self.log.pinned_by_env() {
                tracing::info!("log.level changed in the file; RUST_LOG is set and wins");
            } else if let Err(e) = self.log.set_level(&next.log.level) {
                tracing::warn!(error = %e, "log level not applied");
            }
        }
        let tokens_changed = next.auth != current.auth;
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
            crate::util::id::random_u64()
        ));
        std::fs::write(&path, text).unwrap();
        let source = ConfigSource::File(path.clone());
        let loaded = crate::config::load(&source, None).unwrap();
        let (tx, rx) = watch::channel(Arc::new(loaded.config));
        let log = crate::service::logging::LogHandle::detached("info");
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
    fn kept_publish_settings_must_still_fit_the_new_file() {
        let open = "[redis]\nurl = \"redis://127.0.0.1:1\"\n[[listeners]]\nbind = \"0.0.0.0:1\"\n";
        let (file, reloader, rx) = setup(&format!(
            "{open}[publish]\nenabled = true\ntokens = [\"a\"]\n"
        ));
        // Valid alone (publishing off), but publishing stays on until a
        // restart, and tokenless on 0.0.0.0 it must not be.
        std::fs::write(&file.0, format!("{open}[publish]\nenabled = false\n")).unwrap();
        match reloader.reload() {
            ReloadOutcome::Rejected(e) => assert!(e.starts_with("publish.enabled: "), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.borrow().publish.tokens, vec!["a".to_owned()]);
        // New tokens apply; `enabled` keeps its running value.
        std::fs::write(
            &file.0,
            format!("{open}[publish]\nenabled = false\ntokens = [\"b\"]\nmax_body_bytes = 10\n"),
        )
        .unwrap();
        assert_eq!(
            reloader.reload(),
            ReloadOutcome::Applied {
                restart_needed: vec!["publish.enabled"]
            }
        );
        let c = rx.borrow().clone();
        assert!(c.publish.enabled);
        assert_eq!(c.publish.tokens, vec!["b".to_owned()]);
        assert_eq!(c.publish.max_body_bytes, 10);
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
