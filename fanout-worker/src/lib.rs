//! The fanout-worker: captures committed changes from PostgreSQL, matches them against sharded
//! subscription indexes and publishes targeted payloads to gateways.
//!
//! Capture: [`capture`]: `pgoutput` (decoder, pure) → `assemble` (transactions and chunks, pure) → the
//! replication session, the Redis stream append and slot confirmation.
//!
//! Matching: [`matching`]: the subscription index, the matcher, the coordinator that keeps the
//! exactly-once rules, all pure, and the Redis driver around them.

pub mod capture;
pub mod config;
pub mod matching;
pub mod server;
