//! The real-service test kit: what the integration tests of every crate and the load-test harness share.
//!
//! - [`services`]: PostgreSQL (logical replication on), Redis and the workspace's binaries, each started on
//!   a free loopback port and stopped with the test.
//! - [`cluster`]: a local cluster of those (gateways, workers) with the demo schema and an admin user.
//! - [`ws`]: the one WebSocket client, on the core's RFC 6455 codec (`common::ws`): the upgrade, lean
//!   non-blocking reads for the load agents' many connections, and [`client::WsClient`], the test-facing
//!   layer that queues what arrives and answers pings.
//! - [`client`]: [`client::WsClient`] and [`client::http`] (one request on hyper's HTTP/1.1 client).
//! - [`proxy`]: a TCP proxy that can cut connections (network faults in tests).
//! - [`procstat`]: CPU and memory of a process from `/proc`.
//! - [`wait`]: polling with a deadline (tests never sleep to wait for readiness) and small helpers.

pub mod client;
pub mod cluster;
pub mod procstat;
pub mod proxy;
pub mod services;
pub mod wait;
pub mod ws;
