//! tracing-subscriber setup: text or JSON lines on stderr, an `EnvFilter`
//! from `log.level` (or `RUST_LOG`, which wins), reloadable on SIGHUP.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

/// Handle to change the filter of the running subscriber.
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    env_override: bool,
}

impl LogHandle {
    /// True when `RUST_LOG` is set: it wins over `log.level`, on reload too.
    pub fn pinned_by_env(&self) -> bool {
        self.env_override
    }

    /// Applies a reloaded `log.level`, unless `RUST_LOG` pins it.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        if self.env_override {
            return Ok(());
        }
        let filter = EnvFilter::builder()
            .parse(level)
            .map_err(|e| e.to_string())?;
        self.filter.reload(filter).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
impl LogHandle {
    /// A handle to a filter that is not installed (unit tests).
    pub(crate) fn detached(level: &str) -> LogHandle {
        let (_layer, filter) = reload::Layer::<EnvFilter, Registry>::new(EnvFilter::new(level));
        LogHandle {
            filter,
            env_override: false,
        }
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`.
pub fn init(config: &LogConfig) -> LogHandle {
    let env = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let directive = env.as_deref().unwrap_or(&config.level);
    // Invalid RUST_LOG: fall back to the validated config level rather than fail.
    let filter = EnvFilter::builder()
        .parse(directive)
        .or_else(|_| EnvFilter::builder().parse(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let result = match config.format {
        LogFormat::Text => registry.with(fmt.with_ansi(false)).try_init(),
        LogFormat::Json => registry
            .with(
                fmt.json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
    LogHandle {
        filter: handle,
        env_override: env.is_some(),
    }
}
