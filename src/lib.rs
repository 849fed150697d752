//! studio-relay: one daemon that takes real-time events off a broker (Redis
//! today) and fans each one out to the clients that asked for it. The
//! external contract is `SPEC.md`; `docs/DESIGN.md` explains the internals.
//!
//! Layout, one folder per concern:
//! - [`app`]: wiring — listeners, hub, sources; drain on shutdown; SIGHUP reload
//! - [`ctx`]: the small shared handles (live config, admission, health, ids)
//! - [`config`]: `relay.toml` sections, defaults, validation, reload diff
//! - [`event`]: the wire-neutral event, with one cached frame per wire format
//! - [`source`]: the source seam; [`source::redis`], [`source::memory`], payload decoders
//! - [`hub`]: the hub task, routing index and bounded per-connection queues
//! - [`session`]: transport-agnostic client state and the subscription policy
//! - [`wire`]: frames in and out per protocol, close codes (pure)
//! - [`transport`]: HTTP routes, handshake checks, the WebSocket driver
//! - [`net`]: binding listeners, systemd socket activation
//! - [`auth`]: tokens and Origins
//! - [`metrics`]: every Prometheus metric
//! - [`service`]: shutdown, signals, systemd notify, logging
//! - [`util`]: backoff, ids, Redis glob patterns, log rate limiting

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod auth;
pub mod config;
pub mod ctx;
pub mod event;
pub mod hub;
pub mod metrics;
pub mod net;
pub mod service;
pub mod session;
pub mod source;
pub mod transport;
pub mod util;
pub mod wire;

/// The relay's version, as sent in the welcome frame.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
