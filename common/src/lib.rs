//! Code shared by the gateway and the fanout-worker.
//!
//! Everything except [`redis`] and [`telemetry`] is pure: no sockets, no clock of its own; every function takes values and
//! returns values, so all of it is unit- and property-tested without services. The two I/O modules:
//! [`redis`] (connections to a single Redis, a Sentinel-managed primary or a Redis Cluster) and
//! [`telemetry`] (logs, trace export, the Prometheus recorder).
//!
//! - [`protocol`]: the Directus realtime wire protocol (parsing client messages, building server frames,
//!   error codes, close codes).
//! - [`value`]: PostgreSQL column types, typed datums, and the JSON encoding Directus's REST API uses.
//! - [`filter`]: the Directus filter language: parsing, dynamic variables, validation against the schema,
//!   and the in-memory evaluator that must agree with the SQL in [`sql`].
//! - [`query`]: the subscription query (`fields`, `filter`, `sort`, `limit`, ...) in native and string forms.
//! - [`schema`]: the collections the server knows about.
//! - [`normalize`]: a subscription plus the caller's permissions becomes a canonical [`normalize::NormalizedQuery`]
//!   whose hash is the query id.
//! - [`sql`]: parameterised SQL for init snapshots.
//! - [`shard`], [`keys`], [`scripts`]: stable hashing, the Redis key schema and the Lua scripts on it.
//! - [`redis`]: connections, subscriptions and multi-slot commands for every Redis deployment.
//! - [`ws`]: RFC 6455 framing.
//! - [`delivery`]: positions, the worker→gateway batch format, snapshot visibility.
//! - [`ctl`]: registrations, replay requests and ctl stream entries, encoded and decoded in one place.
//! - [`change`]: captured transactions as they travel through the Redis change stream.
//! - [`env`]: configuration from environment variables.

pub mod change;
pub mod ctl;
pub mod delivery;
pub mod env;
pub mod filter;
pub mod keys;
pub mod normalize;
pub mod protocol;
pub mod query;
pub mod redis;
pub mod schema;
pub mod scripts;
pub mod shard;
pub mod sql;
pub mod telemetry;
pub mod value;
pub mod ws;
