//! Where events come from. A [`Source`] runs until shutdown and hands the
//! hub [`Ingest`] items through a bounded channel; it reports its own health
//! through a [`SourceHealth`] flag, so `/healthz` needs no knowledge of any
//! broker. Redis is one implementation; [`memory::MemorySource`] lets tests
//! (and embedders) drive the hub and real listeners in-process.

pub mod decode;
pub mod memory;
pub mod nats;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ctx::{Live, SourceHealth};
use crate::event::{Event, GapReason};
use crate::metrics::Metrics;
use crate::util::id::InstanceId;

/// What a source hands the hub.
// Nearly every item is an event, so boxing it to shrink the rare gap would
// cost an allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Ingest {
    /// An event to route.
    Event(Event),
    /// Tell every connection that events were missed.
    Gap(GapReason),
}

/// The hub's inbox; cloned by every source.
pub type IngestTx = mpsc::Sender<Ingest>;

/// What a running source gets from the relay.
pub struct SourceCtx {
    /// Where its events go.
    pub ingest: IngestTx,
    /// Its up/down flag, registered under [`Source::name`].
    pub health: SourceHealth,
    /// The live config (routing fields follow reloads).
    pub live: Live,
    /// The metrics registry.
    pub metrics: Arc<Metrics>,
    /// This relay's id, e.g. to tag a liveness canary.
    pub instance: InstanceId,
}

/// The sources `config` turns on, in `/healthz` order. `POST /publish` is
/// not among them: it is a route, not a task, and its health is the
/// listener's own.
pub fn configured(config: &Config) -> Vec<Box<dyn Source>> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    if config.redis.enabled() {
        sources.push(Box::new(redis::RedisSource::new(config.redis.clone())));
    }
    if config.nats.enabled() {
        sources.push(Box::new(nats::NatsSource::new(config.nats.clone())));
    }
    sources
}

/// The routing fields a source decodes with, refreshed when a reload
/// changed the config (checked per message: a `watch` flag, no lock).
pub struct LiveFields {
    reloads: watch::Receiver<Arc<Config>>,
    fields: Vec<Arc<str>>,
}

impl LiveFields {
    /// Following `live`.
    pub fn new(live: &Live) -> Self {
        let mut reloads = live.watch();
        let fields = reloads.borrow_and_update().routing.shared_fields();
        LiveFields { reloads, fields }
    }

    /// The current fields.
    pub fn current(&mut self) -> &[Arc<str>] {
        if self.reloads.has_changed().unwrap_or(false) {
            self.fields = self.reloads.borrow_and_update().routing.shared_fields();
        }
        &self.fields
    }
}

/// A boxed source future.
pub type SourceRun = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A feed of events into the hub.
pub trait Source: Send {
    /// Short name for `/healthz` and logs (`redis`, `memory`, …).
    fn name(&self) -> &'static str;

    /// Runs until `shutdown` (or until the hub is gone).
    fn run(self: Box<Self>, ctx: SourceCtx, shutdown: CancellationToken) -> SourceRun;
}
