//! The load-test harness and local-cluster launcher; its [`services`], [`client`] and [`cluster`] modules
//! are also the real-service test harness every integration test uses ([`testkit`]: what the tests share).
//!
//! The harness (`loadtest run`), in the order a run uses it: [`scenario`] (flags, config file, plans) →
//! [`harness`] (the run) → [`agent`] (client connections over [`wsconn`], in-process or as `loadtest
//! agent` children) and [`writer`] (SQL or REST writes) → [`accounting`] (missing, duplicated,
//! out-of-order, latency; pure) → [`report`] and [`html`]. [`sampler`] and [`livehist`] feed the
//! timeline.

pub mod accounting;
pub mod agent;
pub mod capture_bench;
pub mod client;
pub mod cluster;
pub mod harness;
pub mod html;
pub mod livehist;
pub mod procstat;
pub mod proxy;
pub mod report;
pub mod sampler;
pub mod scenario;
pub mod services;
pub mod testkit;
pub mod writer;
pub mod wsconn;
