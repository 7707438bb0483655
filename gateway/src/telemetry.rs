//! The gateway's metrics: every name and label in one place.
//!
//! Naming follows Prometheus conventions (`_total`, `_seconds`, `_bytes`); labels are bounded enums
//! (endpoint, auth state, close reason, error code, auth method), never a user, connection or query id.
//!
//! Hot-path counters are resolved once ([`hot`]) so a frame costs one atomic add, and sent frames are
//! counted per batch. Gauges that describe state (connections by auth state, subscriptions, queries, bytes
//! queued) are kept in plain atomics and published when `/metrics` is scraped ([`record_gauges`]), so
//! the delivery path never touches the metrics registry.

use metrics::{Counter, Histogram, counter, gauge, histogram};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicI64, Ordering};

/// The `endpoint` label of the Directus protocol socket (`graphql` joins it with GraphQL subscriptions).
pub const WEBSOCKET: &str = "websocket";

/// A connection's authentication state, for the connections gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthState {
    /// Handshake mode, before the first `auth` succeeded.
    Pending,
    /// Open with the public role.
    Public,
    /// Open as a user (or admin).
    Authenticated,
}

impl AuthState {
    const ALL: [AuthState; 3] = [
        AuthState::Pending,
        AuthState::Public,
        AuthState::Authenticated,
    ];

    fn label(self) -> &'static str {
        match self {
            AuthState::Pending => "pending",
            AuthState::Public => "public",
            AuthState::Authenticated => "authenticated",
        }
    }
}

/// Why a connection ended (the `reason` label of closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close frame.
    Client,
    /// The socket ended or failed without a close handshake.
    Disconnected,
    AuthFailed,
    AuthTimeout,
    HeartbeatTimeout,
    /// The send queue passed `REALTIME_SEND_BUFFER_BYTES` (close code 4008).
    SlowConsumer,
    /// An RFC 6455 violation or invalid UTF-8 (1002, 1007).
    ProtocolError,
    /// A message above `REALTIME_MAX_MESSAGE_BYTES` (1009).
    TooBig,
    /// The gateway is shutting down (1012).
    Shutdown,
    /// A dependency failed where going on could be unsafe (1011).
    Unavailable,
}

impl CloseReason {
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Disconnected => "disconnected",
            CloseReason::AuthFailed => "auth_failed",
            CloseReason::AuthTimeout => "auth_timeout",
            CloseReason::HeartbeatTimeout => "heartbeat_timeout",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::TooBig => "too_big",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Unavailable => "unavailable",
        }
    }
}

/// Counters touched per message or per write.
pub struct Hot {
    pub messages_received: Counter,
    pub messages_sent: Counter,
    pub received_bytes: Counter,
    pub sent_bytes: Counter,
    pub events_delivered: Counter,
    pub duplicate_events: Counter,
    /// Commit → frame queued for the subscribers, per (query, change).
    pub change_to_send: Histogram,
}

/// Resolved on first use, which is after `main` installed the recorder.
pub fn hot() -> &'static Hot {
    static HOT: LazyLock<Hot> = LazyLock::new(|| Hot {
        messages_received: counter!("realtime_gateway_messages_received_total", "endpoint" => WEBSOCKET),
        messages_sent: counter!("realtime_gateway_messages_sent_total", "endpoint" => WEBSOCKET),
        received_bytes: counter!("realtime_gateway_received_bytes_total", "endpoint" => WEBSOCKET),
        sent_bytes: counter!("realtime_gateway_sent_bytes_total", "endpoint" => WEBSOCKET),
        events_delivered: counter!("realtime_gateway_events_delivered_total"),
        duplicate_events: counter!("realtime_gateway_duplicate_events_total"),
        change_to_send: histogram!("realtime_change_to_send_seconds"),
    });
    &HOT
}

/// Connection state kept in atomics and published at scrape time.
#[derive(Default)]
pub struct ConnGauges {
    by_auth: [AtomicI64; 3],
    /// Bytes written into connections' buffers but not yet taken by their sockets.
    pub send_queue_bytes: AtomicI64,
}

impl ConnGauges {
    fn slot(&self, s: AuthState) -> &AtomicI64 {
        &self.by_auth[s as usize]
    }

    /// A connection opened in state `s`.
    pub fn opened(&self, s: AuthState) {
        counter!("realtime_gateway_connections_opened_total", "endpoint" => WEBSOCKET).increment(1);
        self.slot(s).fetch_add(1, Ordering::Relaxed);
    }

    pub fn moved(&self, from: AuthState, to: AuthState) {
        if from != to {
            self.slot(from).fetch_sub(1, Ordering::Relaxed);
            self.slot(to).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection in state `s` ended for `reason`.
    pub fn closed(&self, s: AuthState, reason: CloseReason) {
        counter!("realtime_gateway_connections_closed_total", "endpoint" => WEBSOCKET, "reason" => reason.label())
            .increment(1);
        self.slot(s).fetch_sub(1, Ordering::Relaxed);
    }
}

/// An error frame sent to a client (`code` is the wire code, from a fixed set).
pub fn protocol_error(code: &'static str) {
    counter!("realtime_gateway_protocol_errors_total", "code" => code).increment(1);
}

/// A failed authentication: `password`, `access_token`, `refresh_token`, `upgrade` or `rest_login`.
pub fn auth_failure(method: &'static str) {
    counter!("realtime_gateway_auth_failures_total", "method" => method).increment(1);
}

/// A refused WebSocket upgrade: `unauthorized`, `conn_limit`, `draining` or `unavailable`.
pub fn upgrade_rejected(reason: &'static str) {
    counter!("realtime_gateway_upgrades_rejected_total", "reason" => reason).increment(1);
}

/// A rights change was applied (`crate::rights`), touching `connections` connections here.
pub fn rights_change(connections: usize) {
    counter!("realtime_gateway_rights_changes_total").increment(1);
    counter!("realtime_gateway_rights_connections_touched_total").increment(connections as u64);
}

/// One connection's rights were checked again after a change, in `took`.
pub fn rights_reevaluated(took: std::time::Duration) {
    histogram!("realtime_gateway_rights_reevaluation_seconds").record(took.as_secs_f64());
}

/// A subscription was ended because the connection's rights no longer allow it.
pub fn subscription_revoked() {
    counter!("realtime_gateway_subscriptions_revoked_total").increment(1);
}

pub fn slow_consumer() {
    counter!("realtime_gateway_slow_consumer_disconnects_total").increment(1);
}

/// What the state gauges show besides the connection counters.
pub struct GaugeReading {
    pub queries: usize,
    pub subscriptions: usize,
    pub draining: bool,
    /// Rights changes received but not yet in force (`crate::rights::Rights::pending`).
    pub rights_pending: usize,
    /// Commit LSN of the latest rights change received.
    pub rights_last_lsn: u64,
}

/// Publish the state gauges (called when `/metrics` is scraped).
pub fn record_gauges(gauges: &ConnGauges, reading: GaugeReading) {
    for s in AuthState::ALL {
        gauge!("realtime_gateway_connections", "endpoint" => WEBSOCKET, "auth" => s.label())
            .set(gauges.slot(s).load(Ordering::Relaxed) as f64);
    }
    gauge!("realtime_gateway_send_queue_bytes")
        .set(gauges.send_queue_bytes.load(Ordering::Relaxed).max(0) as f64);
    gauge!("realtime_gateway_queries").set(reading.queries as f64);
    gauge!("realtime_gateway_subscriptions").set(reading.subscriptions as f64);
    gauge!("realtime_gateway_draining").set(if reading.draining { 1.0 } else { 0.0 });
    gauge!("realtime_gateway_rights_pending").set(reading.rights_pending as f64);
    gauge!("realtime_gateway_rights_last_lsn").set(reading.rights_last_lsn as f64);
}
