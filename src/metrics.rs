//! Every metric of SPEC §8, registered up front so each is visible at 0
//! before any traffic. Counters are bumped in batches on the hot path.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `{listener="127.0.0.1:4456"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// The bound address.
    pub listener: String,
}

/// `{reason="…"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why a handshake was refused.
    pub reason: &'static str,
}

/// `{kind="…"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// What was wrong with a payload.
    pub kind: &'static str,
}

/// `{transport="polling"|"websocket"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// The Engine.IO transport a Socket.IO session is on.
    pub transport: &'static str,
}

/// `{source="redis"|"nats"|"publish"|…}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// A source's name, as in `/healthz`.
    pub source: &'static str,
}

/// `{result="recovered"|"unavailable"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// How a resume went.
    pub result: &'static str,
}

/// Handshake refusal reasons, in SPEC §9's refusal order.
pub const REJECT_REASONS: [&str; 4] = ["bad_request", "origin", "unauthorized", "capacity"];

/// `relay_handshake_rejections_total` reason for a TLS handshake that failed
/// on a TLS listener (plain HTTP sent to it, no ClientHello within
/// `handshake_timeout_ms`, the client refusing the certificate…).
pub const TLS_REJECT_REASON: &str = "tls";

/// Invalid payload kinds: dropped (not UTF-8), delivered as a string (not
/// JSON); Socket.IO adapter messages dropped as malformed (`bad_msgpack`),
/// for another namespace or not an event.
pub const PAYLOAD_KINDS: [&str; 5] = [
    "not_utf8",
    "not_json",
    "bad_msgpack",
    "other_namespace",
    "not_event",
];

/// All metrics; cheap to share behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    /// `relay_connections_open{listener}`
    pub connections_open: Family<ListenerLabel, Gauge>,
    /// `relay_connections_accepted_total{listener}`
    pub connections_accepted: Family<ListenerLabel, Counter>,
    /// `relay_handshake_rejections_total{reason}`
    pub handshake_rejections: Family<ReasonLabel, Counter>,
    /// `relay_redis_messages_total` (canaries excluded)
    pub redis_messages: Counter,
    /// `relay_events_delivered_total`: frames handed to client sockets.
    pub events_delivered: Counter,
    /// `relay_slow_consumer_disconnects_total`
    pub slow_consumer_disconnects: Counter,
    /// `relay_invalid_payloads_total{kind}`
    pub invalid_payloads: Family<KindLabel, Counter>,
    /// `relay_redis_up`
    pub redis_up: Gauge,
    /// `relay_redis_reconnects_total`
    pub redis_reconnects: Counter,
    /// `relay_fanout_latency_seconds`: Redis receipt -> frame written.
    pub fanout_latency: Histogram,
    /// `relay_routing_index_entries`: (field, value) keys plus firehose members.
    pub routing_index_entries: Gauge,
    /// `relay_redis_lagged_messages_total`: messages skipped because the reader fell behind.
    pub redis_lagged: Counter,
    /// `relay_socketio_sessions_open{transport}`
    pub socketio_sessions: Family<TransportLabel, Gauge>,
    /// `relay_socketio_parked_sessions`: Socket.IO sessions that lost their
    /// transport and wait for their client (by pid, SPEC §12); set when
    /// `/metrics` is read.
    pub socketio_parked: Gauge,
    /// `relay_source_messages_total{source}`: messages taken from each source
    /// (for Redis the same count as `relay_redis_messages_total`).
    pub source_messages: Family<SourceLabel, Counter>,
    /// `relay_source_up{source}`: 1 while the source is live.
    pub source_up: Family<SourceLabel, Gauge>,
    /// `relay_history_events`: events kept for resumes.
    pub history_events: Gauge,
    /// `relay_history_bytes`: what they count against `history.max_bytes`.
    pub history_bytes: Gauge,
    /// `relay_recoveries_total{result}`: resumes honoured or not.
    pub recoveries: Family<ResultLabel, Counter>,
    /// `relay_publish_rejections_total{reason}`: refused `POST /publish` requests.
    pub publish_rejections: Family<ReasonLabel, Counter>,
}

impl Metrics {
    /// Shows `source` at 0 in the per-source families (call when it starts).
    pub fn add_source(&self, source: &'static str) {
        drop(self.source_messages.get_or_create(&SourceLabel { source }));
        drop(self.source_up.get_or_create(&SourceLabel { source }));
    }

    /// The message counter of `source`, to keep instead of looking it up per message.
    pub fn source_counter(&self, source: &'static str) -> Counter {
        self.source_messages
            .get_or_create(&SourceLabel { source })
            .clone()
    }

    /// Registers every metric; labelled families get their known label values.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            connections_open: Family::default(),
            connections_accepted: Family::default(),
            handshake_rejections: Family::default(),
            redis_messages: Counter::default(),
            events_delivered: Counter::default(),
            slow_consumer_disconnects: Counter::default(),
            invalid_payloads: Family::default(),
            redis_up: Gauge::default(),
            redis_reconnects: Counter::default(),
            // 50 µs .. ~3.3 s: loopback delivery is sub-millisecond, a stalled one is seconds.
            fanout_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
            routing_index_entries: Gauge::default(),
            redis_lagged: Counter::default(),
            socketio_sessions: Family::default(),
            socketio_parked: Gauge::default(),
            source_messages: Family::default(),
            source_up: Family::default(),
            history_events: Gauge::default(),
            history_bytes: Gauge::default(),
            recoveries: Family::default(),
            publish_rejections: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "relay_connections_open",
            "Open WebSocket connections",
            m.connections_open.clone(),
        );
        registry.register(
            "relay_connections_accepted",
            "WebSocket connections accepted",
            m.connections_accepted.clone(),
        );
        registry.register(
            "relay_handshake_rejections",
            "WebSocket handshakes refused, by reason",
            m.handshake_rejections.clone(),
        );
        registry.register(
            "relay_redis_messages",
            "Messages received from Redis (canaries excluded)",
            m.redis_messages.clone(),
        );
        registry.register(
            "relay_events_delivered",
            "Event frames written to client sockets",
            m.events_delivered.clone(),
        );
        registry.register(
            "relay_slow_consumer_disconnects",
            "Connections closed because they read too slowly",
            m.slow_consumer_disconnects.clone(),
        );
        registry.register(
            "relay_invalid_payloads",
            "Source payloads that were not UTF-8 (dropped), not JSON (sent as a string), or Socket.IO adapter messages dropped (bad_msgpack, other_namespace, not_event)",
            m.invalid_payloads.clone(),
        );
        registry.register(
            "relay_source_messages",
            "Messages taken from each source (canaries excluded)",
            m.source_messages.clone(),
        );
        registry.register(
            "relay_source_up",
            "1 while the source is live",
            m.source_up.clone(),
        );
        registry.register(
            "relay_history_events",
            "Events kept for resumes",
            m.history_events.clone(),
        );
        registry.register(
            "relay_history_bytes",
            "Bytes of the events kept for resumes",
            m.history_bytes.clone(),
        );
        registry.register(
            "relay_recoveries",
            "Resumes (since= / Socket.IO recovery) honoured or not",
            m.recoveries.clone(),
        );
        registry.register(
            "relay_redis_up",
            "1 while the Redis subscription is live",
            m.redis_up.clone(),
        );
        registry.register(
            "relay_redis_reconnects",
            "Times the Redis subscription was restored after being lost",
            m.redis_reconnects.clone(),
        );
        registry.register(
            "relay_fanout_latency_seconds",
            "Time from reading a message from Redis to writing its frame to a client socket (sampled per write batch)",
            m.fanout_latency.clone(),
        );
        registry.register(
            "relay_routing_index_entries",
            "Entries in the routing index: (field, value) subscriptions plus firehose connections",
            m.routing_index_entries.clone(),
        );
        registry.register(
            "relay_redis_lagged_messages",
            "Redis messages skipped because the relay's reader fell behind",
            m.redis_lagged.clone(),
        );
        registry.register(
            "relay_socketio_sessions_open",
            "Open Socket.IO sessions, by the Engine.IO transport they are on",
            m.socketio_sessions.clone(),
        );
        for transport in ["polling", "websocket"] {
            let _ = m
                .socketio_sessions
                .get_or_create(&TransportLabel { transport });
        }
        registry.register(
            "relay_socketio_parked_sessions",
            "Socket.IO sessions whose transport was lost, kept for recovery by pid until history.ttl_ms",
            m.socketio_parked.clone(),
        );
        registry.register(
            "relay_publish_rejections",
            "POST /publish requests refused, by reason (503s are counted as unavailable)",
            m.publish_rejections.clone(),
        );
        for reason in REJECT_REASONS {
            let _ = m
                .handshake_rejections
                .get_or_create(&ReasonLabel { reason });
        }
        for result in ["recovered", "unavailable"] {
            let _ = m.recoveries.get_or_create(&ResultLabel { result });
        }
        for kind in PAYLOAD_KINDS {
            let _ = m.invalid_payloads.get_or_create(&KindLabel { kind });
        }
        Metrics { registry, ..m }
    }

    /// Makes a listener's series visible at 0 once it is bound.
    pub fn add_listener(&self, listener: &str) {
        let label = ListenerLabel {
            listener: listener.to_owned(),
        };
        let _ = self.connections_open.get_or_create(&label);
        let _ = self.connections_accepted.get_or_create(&label);
    }

    /// Makes `relay_handshake_rejections_total{reason="tls"}` visible at 0;
    /// called for each TLS listener, so plain-only relays do not show it.
    pub fn add_tls_listener(&self) {
        let _ = self.handshake_rejections.get_or_create(&ReasonLabel {
            reason: TLS_REJECT_REASON,
        });
    }

    /// Counts a refused handshake.
    pub fn reject(&self, reason: &'static str) {
        self.handshake_rejections
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts an invalid payload.
    pub fn invalid_payload(&self, kind: &'static str) {
        self.invalid_payloads
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    /// The Prometheus/OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_metric_is_visible_before_traffic() {
        let m = Metrics::new();
        m.add_listener("127.0.0.1:1");
        let text = m.encode();
        for name in [
            "relay_connections_open{listener=\"127.0.0.1:1\"} 0",
            "relay_connections_accepted_total{listener=\"127.0.0.1:1\"} 0",
            "relay_handshake_rejections_total{reason=\"unauthorized\"} 0",
            "relay_redis_messages_total 0",
            "relay_events_delivered_total 0",
            "relay_slow_consumer_disconnects_total 0",
            "relay_invalid_payloads_total{kind=\"not_utf8\"} 0",
            "relay_redis_up 0",
            "relay_redis_reconnects_total 0",
            "relay_fanout_latency_seconds_count 0",
            "relay_socketio_sessions_open{transport=\"polling\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
