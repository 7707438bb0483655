//! The fanout-worker: captures committed changes from PostgreSQL, matches them against sharded
//! subscription indexes and publishes targeted payloads to gateways.
//!
//! Capture: [`pgoutput`] (decoder, pure) → [`assemble`] (transactions and chunks, pure) → [`capture`]
//! (the replication session, the Redis stream append and slot confirmation).
//!
//! Matching: [`index`] (subscription index, pure) → [`matcher`] (events and frames per query, pure).

pub mod assemble;
pub mod capture;
pub mod config;
pub mod fanout;
pub mod index;
pub mod matcher;
pub mod pgoutput;
pub mod server;
pub mod shards;
