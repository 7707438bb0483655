//! A client agent: opens its share of the run's connections, authenticates, subscribes, records every
//! delivery, and after the run accounts its subscriptions against the write log.
//!
//! The harness runs one agent inside its own process, or several as `loadtest agent` children when the
//! connections do not fit under one process's fd limit. Both speak the same messages: the harness sends
//! [`Cmd`]s (`start`, `stop`, `account`) and receives [`AgentEvent`]s (`progress` every interval, `ready`,
//! `stopped`, `result`). A child takes its [`AgentSpec`] as the first line on stdin, then commands as
//! JSON lines on stdin, and answers with JSON lines on stdout.
//!
//! One task per connection; setup handshakes are bounded by a semaphore (`max-inflight`) and paced by
//! `ramp-up`. Every channel here is bounded: a slow harness only delays progress reports, never a
//! connection task.

use crate::accounting::{self, Delivery, Outcome, Problem, SubRecord, Tally, Write, WriteLog};
use crate::livehist::LiveHist;
use crate::scenario::{QueryForm, Scenario, sub_filter, subscribe_query};
use anyhow::{Context, Result};
use common::ws::{Message, OpCode, encode_masked_frame};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::ws::{Conn, ReadState, Target};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;

mod conn;
mod handle;
#[cfg(test)]
mod tests;

pub use conn::run;
pub use handle::{AgentHandle, run_stdio};

/// How long one handshake step (upgrade, auth, all inits) may take before the connection counts as failed.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Distinct error texts kept per agent (the rest are counted under "other").
const MAX_ERROR_KINDS: usize = 50;
/// Commands queued for an agent; the harness sends a handful per run.
const CMD_QUEUE: usize = 16;
/// Events queued towards the harness; when full, the progress reporter waits (connections never do).
pub const EVENT_QUEUE: usize = 256;

/// Wall clock in µs since the Unix epoch: the one clock writers, clients and the database share.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// How connections authenticate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthPlan {
    /// Everyone uses this access token.
    Token(String),
    /// Connection `i` uses static token `{prefix}{i}` (per-user).
    PerUser { prefix: String },
}

/// What one agent does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentSpec {
    pub index: usize,
    pub urls: Vec<String>,
    /// Global connection indices `[start, end)` (they pick target, source address, filter and user).
    pub conn_start: usize,
    pub conn_end: usize,
    pub subs_per_conn: usize,
    pub scenario: Scenario,
    pub run: i64,
    pub collection: String,
    pub query_form: QueryForm,
    /// Subscriptions ask for `author.email` too (`--related`).
    #[serde(default)]
    pub related: bool,
    pub auth: AuthPlan,
    /// This agent's share of the connection opening rate (0 = unpaced).
    pub ramp_up: f64,
    pub max_inflight: usize,
    pub source_ips: Vec<Ipv4Addr>,
    /// Churn: this agent's share of new connections per second (0 = as fast as slots cycle).
    pub churn_rate: f64,
    pub hold_ms: u64,
    pub linger_ms: u64,
    pub progress_ms: u64,
}

impl AgentSpec {
    fn churn(&self) -> bool {
        self.scenario == Scenario::Churn
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Cmd {
    /// Writes begin: churn slots start cycling.
    Start,
    /// Writes and drain are over: leave, close, and report `stopped`.
    Stop,
    /// Account every subscription against the write log in `writes` (JSON lines, see
    /// [`write_log_line`]) with latency split at `phases` (µs); answer `result` and exit.
    Account { writes: PathBuf, phases: Vec<i64> },
}

/// Cumulative counters of one agent.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    pub connects_ok: u64,
    pub connects_failed: u64,
    pub auth_ok: u64,
    pub auth_failed: u64,
    pub subs_ok: u64,
    pub subs_failed: u64,
    /// Connections open now.
    pub open: u64,
    /// Connections the server closed while we wanted them open.
    pub server_closed: u64,
    /// Connections that finished setup (successfully or not).
    pub settled: u64,
    /// Rows received in events.
    pub delivered: u64,
    /// Text frames received.
    pub frames: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.connects_ok += o.connects_ok;
        self.connects_failed += o.connects_failed;
        self.auth_ok += o.auth_ok;
        self.auth_failed += o.auth_failed;
        self.subs_ok += o.subs_ok;
        self.subs_failed += o.subs_failed;
        self.open += o.open;
        self.server_closed += o.server_closed;
        self.settled += o.settled;
        self.delivered += o.delivered;
        self.frames += o.frames;
    }
}

/// Sparse histogram: (value, count) pairs, as hdrhistogram iterates them.
pub type HistPairs = Vec<(u64, u64)>;

pub fn hist_pairs(h: &Histogram<u64>) -> HistPairs {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn merge_pairs(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, n) in pairs {
        h.saturating_record_n(v, n);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentResult {
    pub tally: Tally,
    pub latency_us: HistPairs,
    pub phase_latency_us: Vec<HistPairs>,
    pub negative_latency: u64,
    pub examples: Vec<Problem>,
    pub connect_us: HistPairs,
    pub auth_us: HistPairs,
    pub subscribe_us: HistPairs,
    pub counters: Counters,
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum AgentEvent {
    Progress {
        counters: Counters,
        /// Live latency (write start → receive) recorded since the last progress, as
        /// [`crate::livehist`] buckets.
        live: Vec<(u16, u64)>,
    },
    /// Every connection finished its setup (churn: immediately).
    Ready,
    Stopped {
        counters: Counters,
    },
    Result(Box<AgentResult>),
    Error {
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Running,
    Stopping,
}

struct Shared {
    spec: AgentSpec,
    targets: Vec<Target>,
    connects_ok: AtomicU64,
    connects_failed: AtomicU64,
    auth_ok: AtomicU64,
    auth_failed: AtomicU64,
    subs_ok: AtomicU64,
    subs_failed: AtomicU64,
    open: AtomicU64,
    server_closed: AtomicU64,
    settled: AtomicU64,
    delivered: AtomicU64,
    frames: AtomicU64,
    live: LiveHist,
    connect_us: Mutex<Histogram<u64>>,
    auth_us: Mutex<Histogram<u64>>,
    subscribe_us: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    handshakes: Arc<Semaphore>,
}

impl Shared {
    fn counters(&self) -> Counters {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counters {
            connects_ok: l(&self.connects_ok),
            connects_failed: l(&self.connects_failed),
            auth_ok: l(&self.auth_ok),
            auth_failed: l(&self.auth_failed),
            subs_ok: l(&self.subs_ok),
            subs_failed: l(&self.subs_failed),
            open: l(&self.open),
            server_closed: l(&self.server_closed),
            settled: l(&self.settled),
            delivered: l(&self.delivered),
            frames: l(&self.frames),
        }
    }

    fn error(&self, what: &str) {
        let mut e = self.errors.lock();
        let key = if e.len() < MAX_ERROR_KINDS || e.contains_key(what) {
            what.to_owned()
        } else {
            "other".to_owned()
        };
        *e.entry(key).or_default() += 1;
    }
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// A parsed server message (only the parts the harness looks at).
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    #[serde(default, borrow)]
    event: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    status: Option<Cow<'a, str>>,
    #[serde(default)]
    uid: Option<serde_json::Value>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// A delivered row: `int8` columns arrive as strings in Directus's JSON, so accept both.
#[derive(Deserialize)]
struct Row {
    #[serde(deserialize_with = "num")]
    writer: i64,
    #[serde(deserialize_with = "num")]
    seq: i64,
    #[serde(default, deserialize_with = "opt_num")]
    t0: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr<'a> {
    N(i64),
    F(f64),
    #[serde(borrow)]
    S(Cow<'a, str>),
}

fn to_i64<E: serde::de::Error>(v: NumOrStr) -> Result<i64, E> {
    match v {
        NumOrStr::N(n) => Ok(n),
        NumOrStr::F(f) => Ok(f as i64),
        NumOrStr::S(s) => s.parse().map_err(E::custom),
    }
}

fn num<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    to_i64(NumOrStr::deserialize(d)?)
}

fn opt_num<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<NumOrStr>::deserialize(d)?.map(to_i64).transpose()
}

/// Rows of an event's or init's `data` (an array, or one object for item subscriptions).
fn rows(data: Option<&RawValue>) -> Vec<Row> {
    let Some(raw) = data else {
        return Vec::new();
    };
    serde_json::from_str::<Vec<Row>>(raw.get())
        .or_else(|_| serde_json::from_str::<Row>(raw.get()).map(|r| vec![r]))
        .unwrap_or_default()
}

fn uid_index(uid: &Option<serde_json::Value>) -> Option<usize> {
    uid.as_ref()?.as_str()?.strip_prefix('s')?.parse().ok()
}

/// One line of the write log file: `[writer, seq, room, owner (-1 = none), commit µs or null]`.
pub fn write_log_line(w: &Write) -> String {
    serde_json::json!([
        w.writer,
        w.seq,
        w.room,
        w.owner.map_or(-1, |o| o as i64),
        w.commit_us
    ])
    .to_string()
}

pub fn read_write_log(path: &std::path::Path) -> Result<WriteLog> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut writes = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (writer, seq, room, owner, commit_us): (u32, u32, i32, i64, Option<i64>) =
            serde_json::from_str(line).with_context(|| format!("bad write log line {line:?}"))?;
        writes.push(Write {
            writer,
            seq,
            room,
            owner: (owner >= 0).then_some(owner as u32),
            commit_us,
        });
    }
    Ok(WriteLog::new(writes))
}

/// Raise the open-files soft limit to the hard limit (needs no privilege).
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum;
    // On failure the limit stays as it was; the caller reports what it got.
    let _ = setrlimit(Resource::Nofile, lim);
    // `None` is RLIM_INFINITY.
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}
