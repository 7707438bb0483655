//! The load-test harness and local-cluster launcher; its [`services`], [`client`] and [`cluster`] modules
//! are also the real-service test harness every integration test uses.

pub mod client;
pub mod cluster;
pub mod services;
