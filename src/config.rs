//! `relay.toml`: the sections as serde structs with their defaults, lookup of
//! the file, validation with `FILE:LINE:COLUMN: KEY: message` errors, and the
//! reload diff (what applies live, what needs a restart).

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::util::pattern::Pattern;

/// Default listener when the file configures none.
pub const DEFAULT_BIND: &str = "127.0.0.1:4456";
/// Suffix appended to the first pattern's literal prefix to form the canary channel.
pub const CANARY_SUFFIX: &str = "__studio_relay__";
/// System-wide config path, the last place looked at.
pub const ETC_CONFIG: &str = "/etc/studio-relay/relay.toml";
/// URL schemes fred understands and this build supports.
const REDIS_SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "valkey",
    "valkeys",
    "valkey-cluster",
    "valkeys-cluster",
    "valkey-sentinel",
    "valkeys-sentinel",
];
/// Keys of client frames and query parameters that a routing field may not shadow.
const RESERVED_FIELDS: &[&str] = &["type", "all", "token", "event", "data"];

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[redis]`
    pub redis: RedisConfig,
    /// `[[listeners]]`; empty means one listener on [`DEFAULT_BIND`].
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
}

/// `[redis]`: where to subscribe and how to probe the subscription.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://`, `rediss://`, `redis-cluster://` or `redis-sentinel://` URL.
    pub url: String,
    /// Glob patterns to PSUBSCRIBE.
    pub patterns: Vec<String>,
    /// How often to probe the subscription; 0 turns the probe off.
    pub liveness_interval_ms: u64,
    /// How long a probe (and a connection attempt) may take.
    pub liveness_timeout_ms: u64,
    /// Channel for the canary; "" derives it from the first pattern.
    pub canary_channel: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            patterns: vec!["claude-studio:*".into()],
            liveness_interval_ms: 5000,
            liveness_timeout_ms: 5000,
            canary_channel: String::new(),
        }
    }
}

impl RedisConfig {
    /// The canary channel actually used: the configured one, or the first
    /// pattern's literal prefix + [`CANARY_SUFFIX`].
    pub fn effective_canary_channel(&self) -> String {
        if !self.canary_channel.is_empty() {
            return self.canary_channel.clone();
        }
        let prefix = self
            .patterns
            .first()
            .map(|p| Pattern::new(p).prefix().to_owned())
            .unwrap_or_default();
        format!("{prefix}{CANARY_SUFFIX}")
    }

    /// The URL with any password replaced, safe to log.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to bind, `IP:PORT`.
    pub bind: SocketAddr,
}

/// `[routing]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Top-level payload fields clients may filter on.
    pub fields: Vec<String>,
    /// Whether a client may ask for every event.
    pub allow_firehose: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            fields: vec!["agentId".into(), "sessionId".into()],
            allow_firehose: true,
        }
    }
}

/// `[auth]`
#[derive(Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accepted bearer tokens; empty means no token is needed.
    pub tokens: Vec<String>,
}

// Tokens never reach a log line, not even through `{:?}` of the config.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .finish()
    }
}

/// `[security]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Allowed `Origin` values (`scheme://host[:port]`); empty allows any.
    pub allowed_origins: Vec<String>,
}

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
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// An `EnvFilter` directive such as `info` or `studio_relay=debug`.
    pub level: String,
    /// Line format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `log.format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

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
    /// Dotted key path (`limits.send_queue`), or `-` when no key applies.
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
        let (line, column) = line_col(text, e.span());
        ConfigError {
            file: file.to_owned(),
            line,
            column,
            key: "-".into(),
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
    let warnings = config.validate().map_err(|(key, message)| {
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

    /// Checks what serde cannot: ranges, formats and cross-field rules.
    /// Returns warnings, or the offending key path and message.
    pub fn validate(&self) -> Result<Vec<String>, (String, String)> {
        let err = |key: &str, msg: String| Err((key.to_owned(), msg));
        let mut warnings = Vec::new();

        let scheme = self.redis.url.split_once("://").map_or("", |(s, _)| s);
        if !REDIS_SCHEMES.contains(&scheme) {
            return err(
                "redis.url",
                format!(
                    "unsupported scheme {scheme:?}; use one of {}",
                    REDIS_SCHEMES.join(", ")
                ),
            );
        }
        if let Err(e) = fred::types::config::Config::from_url(&self.redis.url) {
            return err("redis.url", format!("invalid Redis URL: {}", e.details()));
        }
        if self.redis.patterns.is_empty() {
            return err("redis.patterns", "at least one pattern is required".into());
        }
        if self.redis.patterns.iter().any(|p| p.is_empty()) {
            return err("redis.patterns", "a pattern may not be empty".into());
        }
        let patterns: Vec<Pattern> = self
            .redis
            .patterns
            .iter()
            .map(|p| Pattern::new(p))
            .collect();
        for (i, a) in patterns.iter().enumerate() {
            for b in &patterns[i + 1..] {
                if a.raw() == b.raw() {
                    return err("redis.patterns", format!("duplicate pattern {:?}", a.raw()));
                }
                if a.prefix().starts_with(b.prefix()) || b.prefix().starts_with(a.prefix()) {
                    warnings.push(format!(
                        "patterns {:?} and {:?} overlap: a message matching both is delivered once per pattern",
                        a.raw(),
                        b.raw()
                    ));
                }
            }
        }
        if self.redis.liveness_interval_ms > 0 {
            if self.redis.liveness_timeout_ms == 0 {
                return err(
                    "redis.liveness_timeout_ms",
                    "must be above 0 while liveness_interval_ms is set".into(),
                );
            }
            let canary = self.redis.effective_canary_channel();
            if !patterns.iter().any(|p| p.matches(canary.as_bytes())) {
                return err(
                    "redis.canary_channel",
                    format!("canary channel {canary:?} matches no pattern, so the liveness probe could never see it"),
                );
            }
        }

        let mut seen = Vec::new();
        for (i, l) in self.listeners.iter().enumerate() {
            // Port 0 means "any free port": several of those never clash.
            if l.bind.port() != 0 && seen.contains(&l.bind) {
                return err(
                    &format!("listeners[{i}].bind"),
                    format!("{} is listed twice", l.bind),
                );
            }
            seen.push(l.bind);
        }

        for (i, f) in self.routing.fields.iter().enumerate() {
            if f.is_empty() {
                return err(&format!("routing.fields[{i}]"), "may not be empty".into());
            }
            if RESERVED_FIELDS.contains(&f.as_str()) {
                return err(
                    &format!("routing.fields[{i}]"),
                    format!("{f:?} is reserved by the protocol"),
                );
            }
            if self.routing.fields[..i].contains(f) {
                return err(
                    &format!("routing.fields[{i}]"),
                    format!("{f:?} is listed twice"),
                );
            }
        }

        if let Some(i) = self.auth.tokens.iter().position(|t| t.is_empty()) {
            return err(
                &format!("auth.tokens[{i}]"),
                "a token may not be empty".into(),
            );
        }

        for (i, o) in self.security.allowed_origins.iter().enumerate() {
            if let Err(m) = check_origin(o) {
                return err(&format!("security.allowed_origins[{i}]"), m);
            }
        }

        let l = &self.limits;
        for (key, value) in [
            ("limits.max_connections", l.max_connections as u64),
            ("limits.max_subscriptions", l.max_subscriptions as u64),
            ("limits.send_queue", l.send_queue as u64),
            ("limits.send_queue_bytes", l.send_queue_bytes as u64),
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
            ("limits.write_timeout_ms", l.write_timeout_ms),
        ] {
            if value == 0 {
                return err(key, "must be above 0".into());
            }
        }
        if l.max_client_message_bytes < 64 {
            return err(
                "limits.max_client_message_bytes",
                "must be at least 64 (a subscribe frame must fit)".into(),
            );
        }

        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            return err("log.level", format!("invalid filter: {e}"));
        }
        Ok(warnings)
    }

    /// One-line summary for `--check` and the start log line.
    pub fn summary(&self) -> String {
        let listeners: Vec<String> = self
            .effective_listeners()
            .iter()
            .map(ToString::to_string)
            .collect();
        format!(
            "listeners [{}], redis {}, patterns {:?}, routing {:?}, firehose {}, {} token(s), {} origin(s), max_connections {}",
            listeners.join(", "),
            self.redis.redacted_url(),
            self.redis.patterns,
            self.routing.fields,
            if self.routing.allow_firehose { "allowed" } else { "disabled" },
            self.auth.tokens.len(),
            self.security.allowed_origins.len(),
            self.limits.max_connections,
        )
    }

    /// Keys whose change is ignored until restart, as dotted names.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.effective_listeners() != new.effective_listeners() {
            changed.push("listeners");
        }
        if self.redis != new.redis {
            changed.push("redis");
        }
        changed
    }
}

/// `scheme://host[:port]`, nothing after the authority.
fn check_origin(origin: &str) -> Result<(), String> {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!("{origin:?} is not scheme://host[:port]"));
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(format!("{origin:?} has an invalid scheme"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(format!(
            "{origin:?} must be scheme://host[:port] with no path or trailing slash"
        ));
    }
    Ok(())
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

/// Replaces the password in `scheme://user:pass@host` with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// 1-based line and column of a byte offset; 1:1 when unknown.
fn line_col(text: &str, span: Option<Range<usize>>) -> (usize, usize) {
    let Some(span) = span else { return (1, 1) };
    let offset = span.start.min(text.len());
    let before = text.get(..offset).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Byte span of the value at a dotted key path (`a.b[2].c`) in the document.
fn key_span(text: &str, key: &str) -> Option<Range<usize>> {
    let doc = toml::de::DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut span: Option<Range<usize>> = None;
    let mut segments = key.split('.').peekable();
    while let Some(seg) = segments.next() {
        let (name, index) = match seg.split_once('[') {
            Some((n, i)) => (n, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let value = table.get(name)?;
        let mut value_ref = value;
        span = Some(value.span());
        if let Some(i) = index {
            let item = value.get_ref().as_array()?.get(i)?;
            span = Some(item.span());
            value_ref = item;
        }
        if segments.peek().is_some() {
            table = value_ref.get_ref().as_table()?;
        }
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Loaded, ConfigError> {
        parse_str(text, "relay.toml", None)
    }

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
    }

    #[test]
    fn the_shipped_relay_toml_is_valid_and_spells_out_every_default() {
        let text = include_str!("../relay.toml");
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
        assert_eq!(e.key, "-");
    }

    #[test]
    fn bad_bind_address() {
        let e =
            parse("[[listeners]]\nbind = \"127.0.0.1:4456\"\n[[listeners]]\nbind = \"nohost\"\n")
                .unwrap_err();
        assert_eq!(e.key, "listeners[1].bind");
        assert_eq!(e.line, 4);
    }

    #[test]
    fn duplicate_listener_is_rejected_at_its_position() {
        let e =
            parse("[[listeners]]\nbind = \"127.0.0.1:1\"\n[[listeners]]\nbind = \"127.0.0.1:1\"\n")
                .unwrap_err();
        assert_eq!(e.key, "listeners[1].bind");
        assert_eq!((e.line, e.column), (4, 8));
    }

    #[test]
    fn validation_errors_are_located() {
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
    fn canary_must_match_a_pattern_while_liveness_is_on() {
        let e = parse("[redis]\npatterns = [\"a:*\"]\ncanary_channel = \"b:x\"\n").unwrap_err();
        assert_eq!(e.key, "redis.canary_channel");
        assert_eq!(e.line, 3);
        parse(
            "[redis]\npatterns = [\"a:*\"]\ncanary_channel = \"b:x\"\nliveness_interval_ms = 0\n",
        )
        .unwrap();
        // "app." + suffix does not match "app.[ab]*": the operator must pick a channel.
        let e = parse("[redis]\npatterns = [\"app.[ab]*\"]\n").unwrap_err();
        assert!(e.message.contains("app.__studio_relay__"), "{e}");
    }

    #[test]
    fn overlapping_patterns_warn() {
        let l = parse("[redis]\npatterns = [\"cs:*\", \"cs:agent:*\"]\n").unwrap();
        assert_eq!(l.warnings.len(), 1);
        let l = parse("[redis]\npatterns = [\"cs:*\", \"other:*\"]\n").unwrap();
        assert!(l.warnings.is_empty());
    }

    #[test]
    fn redis_url_env_overrides_and_is_blamed_when_bad() {
        let l = parse_str("", "f", Some("redis://10.0.0.1:7000")).unwrap();
        assert_eq!(l.config.redis.url, "redis://10.0.0.1:7000");
        let e = parse_str("", "f", Some("nope://")).unwrap_err();
        assert_eq!(e.file, "$REDIS_URL");
    }

    #[test]
    fn redaction_hides_password_only() {
        assert_eq!(redact_url("redis://u:secret@h:1/2"), "redis://u:***@h:1/2");
        assert_eq!(redact_url("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        assert!(!format!(
            "{:?}",
            AuthConfig {
                tokens: vec!["s3cret".into()]
            }
        )
        .contains("s3cret"));
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
    }
}
