//! `studio-relay [--config PATH] [--check]`: CLI, logging, runtime, exit codes.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use studio_relay::app::{Relay, Reloader};
use studio_relay::config::{self, ConfigSource};
use studio_relay::net::activation;
use studio_relay::service::shutdown::CancellationToken;
use studio_relay::service::{logging, notify, signals};

/// Exit code for a bad configuration (SPEC §2).
const EXIT_BAD_CONFIG: u8 = 2;
/// Exit code for any other fatal error.
const EXIT_FATAL: u8 = 1;
/// How long runtime teardown may wait for blocking tasks (DNS lookups)
/// after the drain, so exit stays within `shutdown_grace_ms`.
const TEARDOWN: Duration = Duration::from_millis(100);

type Inherited = Vec<(std::net::TcpListener, SocketAddr)>;

/// Redis pattern subscription -> routed WebSocket fan-out.
#[derive(Parser, Debug)]
#[command(name = "studio-relay", version, about)]
struct Cli {
    /// Config file (else $STUDIO_RELAY_CONFIG, ./relay.toml, /etc/studio-relay/relay.toml).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate the config, print a one-line summary and exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_BAD_CONFIG } else { 0 });
        }
    };
    // Before anything else opens a file: see `inherited_listeners`.
    let inherited = (!cli.check).then(inherited_listeners);
    let env_path = std::env::var("STUDIO_RELAY_CONFIG").ok();
    let redis_url = std::env::var("REDIS_URL").ok();
    let loaded = match config::resolve_path(cli.config.as_deref(), env_path.as_deref())
        .and_then(|source| config::load(&source, redis_url.as_deref()))
    {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if cli.check {
        for w in &loaded.warnings {
            eprintln!("warning: {w}");
        }
        println!("config ok: {}: {}", loaded.source, loaded.config.summary());
        return ExitCode::SUCCESS;
    }

    let log = logging::init(&loaded.config.log);
    raise_nofile(loaded.config.limits.max_connections);
    let result = inherited
        .unwrap_or(Ok(Vec::new()))
        .and_then(|inherited| run(loaded, inherited, log));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("fatal: {e:#}");
            // Say it even when log.level filters errors out; with errors
            // logged, a second plain line would break JSON-only stderr.
            if !tracing::enabled!(tracing::Level::ERROR) {
                eprintln!("studio-relay: {e:#}");
            }
            ExitCode::from(EXIT_FATAL)
        }
    }
}

/// Sockets passed by systemd socket activation (`LISTEN_FDS`, for this
/// process per `LISTEN_PID`), checked to be listening TCP sockets. Empty
/// when not socket-activated.
fn inherited_listeners() -> anyhow::Result<Inherited> {
    let fds: Vec<_> = sd_notify::listen_fds()
        .context("invalid LISTEN_FDS/LISTEN_PID")?
        .collect();
    let owned: Vec<(OwnedFd, i32)> = fds
        .into_iter()
        .map(|raw| {
            // SAFETY: `listen_fds` yields 3..3+LISTEN_FDS only when
            // LISTEN_PID names this process, i.e. the service manager opened
            // these fds for us (and it already checked each is open by
            // setting FD_CLOEXEC on it). Nothing else in the process owns or
            // closes them: this runs once, first thing in `main`, before any
            // file is opened (so the numbers cannot have been reused), and
            // each fd is wrapped exactly once. This is the crate's only
            // `unsafe`; the library is `#![forbid(unsafe_code)]`.
            (unsafe { OwnedFd::from_raw_fd(raw) }, raw)
        })
        .collect();
    let mut listeners = Vec::with_capacity(owned.len());
    for (fd, raw) in owned {
        listeners.push(activation::tcp_listener(fd, raw)?);
    }
    Ok(listeners)
}

/// File descriptors per connection beyond the socket itself: none today;
/// this margin covers listeners, Redis, logs and HTTP-only clients.
const FD_MARGIN: u64 = 256;

/// Raises the soft open-file limit to the hard one, as daemons holding
/// many sockets do (a shell's default of 1024 would cap the relay near a
/// thousand clients), and warns when even that is below `max_connections`.
fn raise_nofile(max_connections: usize) {
    let wanted = max_connections as u64 + FD_MARGIN;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < wanted => tracing::warn!(
            limit,
            max_connections,
            "open-file limit is below max_connections; raise LimitNOFILE / ulimit -Hn"
        ),
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

fn run(
    loaded: config::Loaded,
    inherited: Inherited,
    log: logging::LogHandle,
) -> anyhow::Result<()> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    // 0 leaves tokio's default: TOKIO_WORKER_THREADS, else one per core.
    if loaded.config.limits.worker_threads > 0 {
        builder.worker_threads(loaded.config.limits.worker_threads);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async move {
        let config::Loaded { config, source, warnings } = loaded;
        tracing::info!(version = studio_relay::VERSION, config = %source, summary = %config.summary(), "starting");
        if source == ConfigSource::Defaults {
            tracing::info!("no config file found; running on built-in defaults");
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let relay = Relay::bind_activated(config, inherited).await?;
        let shutdown = CancellationToken::new();
        let reloader = Reloader::new(source, relay.config_sender(), log);
        let signals = signals::install().context("cannot install signal handlers")?;
        tokio::spawn(signals::handle(signals, shutdown.clone(), move || {
            reloader.reload();
        }));
        tokio::spawn(notify::watchdog(shutdown.clone()));
        let addrs: Vec<String> = relay.local_addrs().iter().map(ToString::to_string).collect();
        notify::ready(&format!("listening on {}", addrs.join(", ")));
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            stopping.cancelled().await;
            notify::stopping();
        });
        relay.run(shutdown).await;
        tracing::info!(version = studio_relay::VERSION, "stopped");
        Ok(())
    });
    runtime.shutdown_timeout(TEARDOWN);
    result
}
