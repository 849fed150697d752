//! How clients reach sessions: the HTTP server on every listener
//! ([`http`]), the checks every handshake passes ([`handshake`]), the
//! WebSocket driver of the native protocol ([`ws`]) and Engine.IO /
//! Socket.IO ([`engineio`]), and `POST /publish` ([`publish`]).

pub mod engineio;
pub mod handshake;
pub mod http;
pub mod publish;
pub mod socket;
pub mod ws;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::ctx::{Admission, ConnIds, Health, Live};
use crate::hub::HubHandle;
use crate::metrics::Metrics;
use crate::source::IngestTx;
use crate::util::ratelimit::RateLimit;

/// How often a refused handshake may be logged at info.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

/// The handles the transports need, built once by the app.
pub struct Server {
    /// The live config.
    pub live: Live,
    /// The hub.
    pub hub: HubHandle,
    /// The hub's inbox, for events that arrive over HTTP (`POST /publish`).
    pub ingest: IngestTx,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// `max_connections` slots.
    pub admission: Arc<Admission>,
    /// Source health, for `/healthz`.
    pub health: Arc<Health>,
    /// Connection ids.
    pub ids: ConnIds,
    /// The one shutdown signal.
    pub shutdown: CancellationToken,
    /// Every HTTP and connection task, waited for by the drain.
    pub tasks: TaskTracker,
    /// Live Engine.IO sessions by sid.
    pub sids: Arc<engineio::Sids>,
    /// Socket.IO sessions waiting, by pid, for their client to come back.
    pub recovery: engineio::recovery::Recovery,
    /// `POST /publish`: its Redis publisher and counters.
    pub publish: publish::Publish,
    refusal_log: RateLimit,
}

impl Server {
    /// Bundles the handles.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        live: Live,
        hub: HubHandle,
        ingest: IngestTx,
        metrics: Arc<Metrics>,
        admission: Arc<Admission>,
        health: Arc<Health>,
        ids: ConnIds,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let publish = publish::Publish::new(&live.get(), &metrics);
        Server {
            publish,
            live,
            hub,
            ingest,
            metrics,
            admission,
            health,
            ids,
            shutdown,
            tasks,
            sids: Arc::default(),
            recovery: Default::default(),
            refusal_log: RateLimit::new(REFUSAL_LOG_EVERY),
        }
    }
}
