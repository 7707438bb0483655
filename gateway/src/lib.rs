//! The gateway: WebSocket connections speaking the Directus realtime protocol.
//!
//! Layers, in the order a message travels: [`http`] (routes and the upgrade) → [`conn`] (the task owning a
//! socket) → [`session`] (the protocol state machine, pure) → [`subscribe`] (normalisation, permissions,
//! snapshot) with [`auth`] and [`db`]. Events arrive through [`registrar`] (Redis registration and the
//! delivery channel) into the [`hub`] (local subscriptions, dedupe, gap-free init), which queues frames in
//! each connection's [`outbox`]. [`telemetry`] names every metric. [`server`] assembles them and runs the
//! staged shutdown; `main` only reads the configuration and sets up logging, tracing and metrics.

pub mod auth;
pub mod config;
pub mod conn;
pub mod db;
pub mod http;
pub mod hub;
pub mod outbox;
pub mod registrar;
pub mod rights;
pub mod server;
pub mod session;
pub mod state;
pub mod subscribe;
pub mod telemetry;
