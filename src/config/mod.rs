//! `relay.toml`: lookup of the file, parsing with `FILE:LINE:COLUMN: KEY:
//! message` errors, and the reload diff (what applies live, what needs a
//! restart). Each section lives in its own file with its serde struct, its
//! defaults and its `validate`; this module only runs them in order.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod auth;
mod history;
mod limits;
mod listeners;
mod locate;
mod log;
mod nats;
mod publish;
mod redis;
mod routing;
mod security;
mod socketio;

pub use auth::{AuthConfig, JwtConfig};
pub use history::HistoryConfig;
pub use limits::LimitsConfig;
pub use listeners::{ListenerConfig, DEFAULT_BIND};
pub use log::{LogConfig, LogFormat};
pub use nats::NatsConfig;
pub use publish::{PublishConfig, PublishTo, PUBLISH_PATH};
pub use redis::{redact_url, RedisConfig, CANARY_SUFFIX};
pub use routing::RoutingConfig;
pub use security::SecurityConfig;
pub use socketio::{SocketIoConfig, Unsubscribed};

use locate::{key_span, line_col, syntax_key};

/// System-wide config path, the last place looked at.
pub const ETC_CONFIG: &str = "/etc/studio-relay/relay.toml";

/// Key named by a TOML syntax error whose line names nothing (SPEC-NOTES).
const SYNTAX_KEY: &str = "syntax";

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[redis]`
    pub redis: RedisConfig,
    /// `[[listeners]]`; empty means one listener on [`DEFAULT_BIND`].
    #[serde(deserialize_with = "listeners::deserialize_listeners")]
    pub listeners: Vec<ListenerConfig>,
    /// `[routing]`
    pub routing: RoutingConfig,
    /// `[auth]`
    pub auth: AuthConfig,
    /// `[security]`
    pub security: SecurityConfig,
    /// `[limits]`
    pub limits: LimitsConfig,
    /// `[log]`
    pub log: LogConfig,
    /// `[socketio]`
    pub socketio: SocketIoConfig,
    /// `[history]`
    pub history: HistoryConfig,
    /// `[nats]`
    pub nats: NatsConfig,
    /// `[publish]`
    pub publish: PublishConfig,
}

/// Why a section's values were refused: the dotted key at fault (which
/// locates the error in the file) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    /// Dotted key path, `listeners[1].bind`.
    pub(crate) key: String,
    /// What is wrong.
    pub(crate) message: String,
}

impl Invalid {
    /// Takes `&str` or `String` for either part, as rules build both ways.
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// What a section's `validate` returns: its warnings, or the first error.
pub(crate) type Checked = Result<Vec<String>, Invalid>;

/// Where the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file, found by the lookup order of SPEC §2.
    File(PathBuf),
    /// No file given and none found: built-in defaults.
    Defaults,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Defaults => f.write_str("(built-in defaults)"),
        }
    }
}

/// A configuration error, printed as `FILE:LINE:COLUMN: KEY: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {key}: {message}")]
pub struct ConfigError {
    /// The file, or `(built-in defaults)`.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted key path (`limits.send_queue`); `syntax` for a TOML syntax
    /// error on a line that names no key, `-` for a file that cannot be read.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// A validated configuration with the non-fatal remarks `--check` prints.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration, with `REDIS_URL` applied.
    pub config: Config,
    /// Where it came from.
    pub source: ConfigSource,
    /// Warnings, such as overlapping patterns.
    pub warnings: Vec<String>,
}

/// Picks the config file per SPEC §2: `--config`, `$STUDIO_RELAY_CONFIG`,
/// `./relay.toml`, `/etc/studio-relay/relay.toml`, else built-in defaults.
/// An explicitly named file (flag or variable) must exist.
pub fn resolve_path(cli: Option<&Path>, env: Option<&str>) -> Result<ConfigSource, ConfigError> {
    let explicit = cli
        .map(Path::to_path_buf)
        .or_else(|| env.filter(|s| !s.is_empty()).map(PathBuf::from));
    if let Some(path) = explicit {
        if !path.is_file() {
            return Err(file_error(&path, "config file not found"));
        }
        return Ok(ConfigSource::File(path));
    }
    for candidate in [Path::new("relay.toml"), Path::new(ETC_CONFIG)] {
        if candidate.is_file() {
            return Ok(ConfigSource::File(candidate.to_path_buf()));
        }
    }
    Ok(ConfigSource::Defaults)
}

/// Reads, parses and validates the configuration from `source`, applying
/// `redis_url` (the `REDIS_URL` variable) over `redis.url`.
pub fn load(source: &ConfigSource, redis_url: Option<&str>) -> Result<Loaded, ConfigError> {
    let (text, file) = match source {
        ConfigSource::File(path) => match std::fs::read_to_string(path) {
            Ok(text) => (text, path.display().to_string()),
            Err(e) => return Err(file_error(path, &format!("cannot read: {e}"))),
        },
        ConfigSource::Defaults => (String::new(), source.to_string()),
    };
    let mut loaded = parse_str(&text, &file, redis_url)?;
    loaded.source = source.clone();
    Ok(loaded)
}

/// Parses and validates config text; `file` only labels errors.
pub fn parse_str(text: &str, file: &str, redis_url: Option<&str>) -> Result<Loaded, ConfigError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| {
        let span = e.span();
        let (line, column) = line_col(text, span.clone());
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            key: span
                .and_then(|s| syntax_key(text, s.start))
                .unwrap_or_else(|| SYNTAX_KEY.into()),
            message: e.message().trim().to_owned(),
        }
    })?;
    let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let (line, column) = line_col(text, inner.span());
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            key: if key == "." { "-".into() } else { key },
            message: inner.message().trim().to_owned(),
        }
    })?;
    let from_env = redis_url.filter(|u| !u.is_empty());
    if let Some(url) = from_env {
        config.redis.url = url.to_owned();
    }
    // The JWT key is read once the rules passed (SPEC §13: `--check`
    // loads it, a reload re-reads it).
    let warnings = config
        .validate()
        .and_then(|w| config.load_keys().map(|()| w))
        .map_err(|(key, message)| {
            // A bad REDIS_URL is not in the file: say where it came from.
            let from_env_key = key == "redis.url" && from_env.is_some();
            let span = if from_env_key {
                None
            } else {
                key_span(text, &key)
            };
            let (line, column) = line_col(text, span);
            ConfigError {
                file: if from_env_key {
                    "$REDIS_URL".into()
                } else {
                    file.to_owned()
                },
                line,
                column,
                key,
                message,
            }
        })?;
    Ok(Loaded {
        config,
        source: ConfigSource::Defaults,
        warnings,
    })
}

impl Config {
    /// The listeners to bind: the configured ones, or the single default.
    pub fn effective_listeners(&self) -> Vec<SocketAddr> {
        if self.listeners.is_empty() {
            // DEFAULT_BIND is a literal that always parses.
            vec![SocketAddr::from(([127, 0, 0, 1], 4456))]
        } else {
            self.listeners.iter().map(|l| l.bind).collect()
        }
    }

    /// Each effective listener's address and whether it speaks TLS: what a
    /// reload cannot change without a restart (the paths of a TLS pair it
    /// can, SPEC §14).
    pub fn listener_shape(&self) -> Vec<(SocketAddr, bool)> {
        self.effective_listeners()
            .into_iter()
            .enumerate()
            .map(|(i, addr)| (addr, self.listeners.get(i).is_some_and(|l| l.is_tls())))
            .collect()
    }

    /// The fields clients may subscribe by: `routing.fields`, plus
    /// [`ROOM_FIELD`](crate::event::ROOM_FIELD) while the Socket.IO adapter
    /// source is on (its rooms route by it, SPEC §10).
    pub fn routable_fields(&self) -> Vec<String> {
        let mut fields = self.routing.fields.clone();
        let room = crate::event::ROOM_FIELD;
        if self.redis.socketio_adapter && !fields.iter().any(|f| f == room) {
            fields.push(room.to_owned());
        }
        fields
    }

    /// Loads what the file only names: the `[auth.jwt]` key.
    pub fn load_keys(&mut self) -> Result<(), (String, String)> {
        self.auth.jwt.load().map_err(|e| (e.key, e.message))
    }

    /// Checks what serde cannot: ranges, formats and cross-field rules.
    /// Returns warnings, or the offending key path and message.
    pub fn validate(&self) -> Result<Vec<String>, (String, String)> {
        let all = || -> Checked {
            // File order, so the first error reported is the first one met.
            let mut warnings = self.redis.validate()?;
            warnings.extend(self.nats.validate()?);
            warnings.extend(listeners::validate(&self.listeners)?);
            warnings.extend(self.routing.validate()?);
            warnings.extend(self.auth.validate()?);
            warnings.extend(self.security.validate()?);
            warnings.extend(self.limits.validate()?);
            warnings.extend(self.log.validate()?);
            warnings.extend(self.socketio.validate(self.routing.allow_firehose)?);
            warnings.extend(self.history.validate()?);
            let listeners = self.effective_listeners();
            warnings.extend(
                self.publish
                    .validate(&self.redis, &self.socketio, &listeners)?,
            );
            Ok(warnings)
        };
        all().map_err(|e| (e.key, e.message))
    }

    /// One-line summary for `--check` and the start log line.
    pub fn summary(&self) -> String {
        let listeners: Vec<String> = self
            .listener_shape()
            .iter()
            .map(|(addr, tls)| match tls {
                true => format!("{addr} (tls)"),
                false => addr.to_string(),
            })
            .collect();
        format!(
            "listeners [{}], redis {}, patterns {:?}, routing {:?}, firehose {}, {} token(s){}, {} origin(s), max_connections {}{}",
            listeners.join(", "),
            if self.redis.enabled() { self.redis.redacted_url() } else { "off".to_owned() },
            self.redis.patterns,
            self.routing.fields,
            if self.routing.allow_firehose { "allowed" } else { "disabled" },
            self.auth.tokens.len(),
            match self.auth.jwt.algorithm() {
                Some(alg) => format!(", jwt {alg}"),
                None => String::new(),
            },
            self.security.allowed_origins.len(),
            self.limits.max_connections,
            self.publish.summary(),
        )
    }

    /// Keys whose change is ignored until restart, as dotted names.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listener_shape() != new.listener_shape() {
            changed.push("listeners");
        }
        if self.redis != new.redis {
            changed.push("redis");
        }
        if self.nats != new.nats {
            changed.push("nats");
        }
        // The publisher's Redis client is made at start, and the route with it.
        if self.publish.enabled != new.publish.enabled {
            changed.push("publish.enabled");
        }
        if self.publish.to != new.publish.to {
            changed.push("publish.to");
        }
        // The runtime is built once, before anything else.
        if self.limits.worker_threads != new.limits.worker_threads {
            changed.push("limits.worker_threads");
        }
        changed
    }
}

fn file_error(path: &Path, message: &str) -> ConfigError {
    ConfigError {
        file: path.display().to_string(),
        line: 1,
        column: 1,
        key: "-".into(),
        message: message.to_owned(),
    }
}

/// What the section tests parse through: the whole pipeline, so that keys
/// and positions are checked along with the rule.
#[cfg(test)]
fn parse(text: &str) -> Result<Loaded, ConfigError> {
    parse_str(text, "relay.toml", None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults() {
        let loaded = parse("").unwrap();
        assert_eq!(loaded.config, Config::default());
        assert_eq!(
            loaded.config.effective_listeners(),
            vec![DEFAULT_BIND.parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            loaded.config.redis.effective_canary_channel(),
            "claude-studio:__studio_relay__"
        );
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn the_shipped_relay_toml_is_valid_and_spells_out_every_default() {
        let text = include_str!("../../relay.toml");
        let loaded = parse(text).unwrap();
        let expected = Config {
            listeners: loaded.config.listeners.clone(),
            ..Config::default()
        };
        assert_eq!(loaded.config, expected);
        assert_eq!(loaded.config.listeners.len(), 2);
        assert!(loaded
            .config
            .listeners
            .iter()
            .all(|l| l.bind.ip().is_loopback()));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }

    #[test]
    fn unknown_key_names_file_line_column_and_path() {
        let e = parse("[limits]\nsend_queue = 5\nsend_qeue = 3\n").unwrap_err();
        assert_eq!((e.line, e.column), (3, 1));
        assert_eq!(e.key, "limits.send_qeue");
        assert!(e.message.contains("unknown field"), "{e}");
        assert_eq!(
            e.to_string().split(':').take(3).collect::<Vec<_>>(),
            ["relay.toml", "3", "1"]
        );
    }

    #[test]
    fn unknown_section_is_rejected() {
        let e = parse("[redis]\nurl = \"redis://x\"\n[extra]\na = 1\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn wrong_type_points_at_value() {
        let e = parse("[limits]\nsend_queue = \"lots\"\n").unwrap_err();
        assert_eq!(e.key, "limits.send_queue");
        assert_eq!((e.line, e.column), (2, 14));
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("[redis\nurl = 1\n").unwrap_err();
        assert_eq!(e.line, 1);
        // Was `-`: the broken header is named instead.
        assert_eq!(e.key, "redis");
    }

    #[test]
    fn syntax_error_names_the_key_of_the_broken_line() {
        let e = parse("[limits]\nsend_queue = = 3\n").unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line, e.column),
            ("limits.send_queue", 2, 14)
        );
        assert_eq!(
            e.to_string(),
            "relay.toml:2:14: limits.send_queue: extra `=`, expected nothing"
        );
        let e = parse("= 3\n").unwrap_err();
        assert_eq!(e.key, "syntax");
    }

    #[test]
    fn validation_errors_are_located() {
        // The section rules are tested beside each section; this is the
        // path from a rule's key back to the value in the file.
        let e = parse("[limits]\n\nsend_queue = 0\n").unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.line, e.column),
            ("limits.send_queue", 3, 14)
        );
        let e = parse("[routing]\nfields = [\"agentId\", \"type\"]\n").unwrap_err();
        assert_eq!(e.key, "routing.fields[1]");
        assert_eq!((e.line, e.column), (2, 22));
        let e = parse("[security]\nallowed_origins = [\"https://a.example/\"]\n").unwrap_err();
        assert_eq!(e.key, "security.allowed_origins[0]");
        let e = parse("[log]\nformat = \"xml\"\n").unwrap_err();
        assert_eq!(e.key, "log.format");
        let e = parse("[log]\nlevel = \"=[\"\n").unwrap_err();
        assert_eq!(e.key, "log.level");
        let e = parse("[redis]\nurl = \"http://x\"\n").unwrap_err();
        assert_eq!(e.key, "redis.url");
        let e = parse("[auth]\ntokens = [\"\"]\n").unwrap_err();
        assert_eq!(e.key, "auth.tokens[0]");
    }

    #[test]
    fn sections_are_validated_in_file_order() {
        let e = parse("[redis]\npatterns = []\n[limits]\nsend_queue = 0\n").unwrap_err();
        assert_eq!(e.key, "redis.patterns");
        let l =
            parse("[redis]\npatterns = [\"cs:*\", \"cs:a:*\"]\n[limits]\nidle_timeout_ms = 1\n")
                .unwrap();
        assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    }

    #[test]
    fn explicit_missing_path_is_an_error_and_lookup_falls_back() {
        assert!(resolve_path(Some(Path::new("/nonexistent/relay.toml")), None).is_err());
        assert!(resolve_path(None, Some("/nonexistent/relay.toml")).is_err());
    }

    #[test]
    fn restart_only_changes_are_detected() {
        let a = Config::default();
        let mut b = a.clone();
        b.auth.tokens = vec!["t".into()];
        assert!(a.restart_only_changes(&b).is_empty());
        b.redis.patterns = vec!["x:*".into()];
        assert_eq!(a.restart_only_changes(&b), vec!["redis"]);
        b.nats.url = "nats://127.0.0.1:4222".into();
        assert_eq!(a.restart_only_changes(&b), vec!["redis", "nats"]);
        b.limits.worker_threads = 1;
        assert_eq!(
            a.restart_only_changes(&b),
            vec!["redis", "nats", "limits.worker_threads"]
        );
    }
}
