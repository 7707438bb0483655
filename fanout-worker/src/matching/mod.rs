//! The matching role: follow the change stream, match each change against the owned shards' queries,
//! and publish each gateway its events.
//!
//! [`index`] (the subscription index, pure) → [`matcher`] (events and frames per query and chunk, pure)
//! → [`coordinator`] (the exactly-once rules: registrations, replays, shard moves; pure) → [`driver`]
//! (the Redis loop that feeds the coordinator and carries out what it asks), with [`shards`] (leases).

pub mod coordinator;
pub mod driver;
pub mod index;
pub mod matcher;
pub mod shards;

pub use driver::{FanoutStats, run};
