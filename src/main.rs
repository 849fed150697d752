//! `studio-relay [--config PATH] [--check]`: CLI, logging, runtime, exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use studio_relay::config::{self, ConfigSource};
use studio_relay::relay::{Relay, Reloader};
use studio_relay::shutdown::CancellationToken;
use studio_relay::{logging, notify, signals};

/// Exit code for a bad configuration (SPEC §2).
const EXIT_BAD_CONFIG: u8 = 2;
/// Exit code for any other fatal error.
const EXIT_FATAL: u8 = 1;

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
    match run(loaded, log) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("fatal: {e:#}");
            eprintln!("studio-relay: {e:#}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

fn run(loaded: config::Loaded, log: logging::LogHandle) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let config::Loaded { config, source, warnings } = loaded;
        tracing::info!(version = studio_relay::VERSION, config = %source, summary = %config.summary(), "starting");
        if source == ConfigSource::Defaults {
            tracing::info!("no config file found; running on built-in defaults");
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let relay = Relay::bind(config).await?;
        let shutdown = CancellationToken::new();
        let reloader = Reloader::new(source, relay.config_sender(), log);
        let signals = signals::install().context("cannot install signal handlers")?;
        tokio::spawn(signals::handle(signals, shutdown.clone(), move || reloader.reload()));
        tokio::spawn(notify::watchdog(shutdown.clone()));
        let addrs: Vec<String> = relay.local_addrs().iter().map(ToString::to_string).collect();
        notify::ready(&format!("listening on {}", addrs.join(", ")));
        let stopping = shutdown.clone();
        tokio::spawn(async move {
            stopping.cancelled().await;
            notify::stopping();
        });
        relay.run(shutdown).await;
        tracing::info!("stopped");
        Ok(())
    })
}
