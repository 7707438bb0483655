//! The load-test harness and local-cluster launcher; its [`services`], [`client`] and [`cluster`] modules
//! are also the real-service test harness every integration test uses.

pub mod capture_bench;
pub mod client;
pub mod cluster;
pub mod procstat;
pub mod proxy;
pub mod services;
