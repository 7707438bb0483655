//! The I/O helpers the gateway and the fanout-worker share, kept out of the pure core (`common`), whose
//! dependencies have no runtime, socket or client.
//!
//! - [`redis`]: connections to a single Redis, a Sentinel-managed primary or a Redis Cluster.
//! - [`scripts`]: the Lua scripts both roles run on the key schema of `common::keys`.
//! - [`telemetry`]: logs, OTLP trace export and the Prometheus recorder.
//! - [`backoff`]: the one retry delay every reconnect loop uses.
//! - [`clock`]: the one wall clock (Unix time).
//! - [`process`]: what each binary's `main` does the same way: exit on configuration errors, wait for a
//!   stop signal.

pub mod backoff;
pub mod clock;
pub mod process;
pub mod redis;
pub mod scripts;
pub mod telemetry;
