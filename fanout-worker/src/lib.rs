//! The fanout-worker: captures committed changes from PostgreSQL, matches them against sharded
//! subscription indexes and publishes targeted payloads to gateways.
//!
//! Capture: [`pgoutput`] (decoder, pure) → [`assemble`] (transactions and chunks, pure) → [`capture`]
//! (the replication session, the Redis stream append and slot confirmation).

pub mod assemble;
pub mod capture;
pub mod config;
pub mod pgoutput;
pub mod server;
