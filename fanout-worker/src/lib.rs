//! The fanout-worker: captures committed changes from PostgreSQL, matches them against sharded
//! subscription indexes and publishes targeted payloads to gateways.
