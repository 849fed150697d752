//! studio-relay: one daemon that PSUBSCRIBEs Redis and fans each message out
//! to the WebSocket clients that asked for it. The external contract is
//! `SPEC.md`; `docs/DESIGN.md` explains the internals.
//!
//! Layout:
//! - [`config`]: `relay.toml` sections, defaults, validation, reload diff
//! - [`source`]: the Redis subscriber, reconnect loop and liveness probe
//! - [`pattern`]: Redis glob matching and the event-name prefix
//! - [`event`]: one Redis message → routing keys + the shared event frame
//! - [`router`]: the hub task and its routing index, per-connection queues
//! - [`protocol`]: frames in and out, error and close codes (pure)
//! - [`listener`]: accept loop, HTTP dispatch, handshake checks
//! - [`access`]: tokens and Origins
//! - [`connection`]: one task per WebSocket client
//! - [`metrics`]: every Prometheus metric
//! - [`shutdown`], [`signals`], [`notify`], [`logging`]: process plumbing
//! - [`activation`]: systemd socket activation (inherited listeners)
//! - [`relay`]: wiring them together, SIGHUP reload

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod activation;
pub mod config;
pub mod connection;
pub mod event;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod pattern;
pub mod protocol;
pub mod relay;
pub mod router;
pub mod shutdown;
pub mod signals;
pub mod source;

/// The relay's version, as sent in the welcome frame.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
