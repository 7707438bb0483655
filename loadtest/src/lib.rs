//! The load-test harness and local-cluster launcher, on the `testkit` package beside it (services,
//! cluster, the WebSocket and HTTP clients every integration test uses too).
//!
//! The harness (`loadtest run`), in the order a run uses it: [`scenario`] (flags, config file, plans) →
//! [`harness`] (the run) → [`agent`] (client connections over `testkit::ws`, in-process or as `loadtest
//! agent` children) and [`writer`] (SQL or REST writes) → [`accounting`] (missing, duplicated,
//! out-of-order, latency; pure) → [`report`] and [`html`]. [`sampler`] and [`livehist`] feed the
//! timeline.

pub mod accounting;
pub mod agent;
pub mod capture_bench;
pub mod follow_bench;
pub mod harness;
pub mod html;
pub mod livehist;
pub mod report;
pub mod rights_bench;
pub mod sampler;
pub mod scenario;
pub mod writer;
