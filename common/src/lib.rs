//! Code shared by the gateway and the fanout-worker.
//!
//! The pure core: no sockets, no runtime, no clock of its own. Every function takes values and returns
//! values, so all of it is unit- and property-tested without services, and its dependency list (serde,
//! serde_json, thiserror, xxhash, form_urlencoded) keeps it that way: the I/O helpers (Redis connections
//! and scripts, telemetry, backoff, clock, the binaries' main boilerplate) live in `common-io`
//! (`common/io/`).
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
//! - [`project`]: the one row projection (fields, field visibility, JSON values) for `init` and events.
//! - [`sql`]: parameterised SQL for init snapshots.
//! - [`shard`], [`keys`]: stable hashing and the Redis key schema.
//! - [`ws`]: RFC 6455 framing.
//! - [`delivery`]: positions, the worker→gateway batch format, snapshot visibility.
//! - [`ctl`]: registrations, replay requests and ctl stream entries, encoded and decoded in one place.
//! - [`change`]: captured transactions as they travel through the Redis change stream.
//! - [`env`]: configuration from environment variables.
//! - [`event`]: the protocol-neutral event (kind and shared `data`) workers send and gateways frame.
//! - [`error`]: fault classification of every error, and the client-facing [`error::RealtimeError`].

pub mod change;
pub mod ctl;
pub mod delivery;
pub mod env;
pub mod error;
pub mod event;
pub mod filter;
pub mod keys;
pub mod normalize;
pub mod project;
pub mod protocol;
pub mod query;
pub mod rights;
pub mod schema;
pub mod shard;
pub mod sql;
pub mod value;
pub mod ws;
