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

/// One connection's lifetime (for churn: one of a slot's sessions).
struct Session<'a> {
    sh: &'a Shared,
    conn_idx: usize,
    subs: Vec<SubRecord>,
    /// Per subscription: waiting for its init.
    pending_init: Vec<bool>,
    out: Vec<u8>,
    auth: Option<Result<(), String>>,
    closed_by_server: bool,
}

impl Session<'_> {
    fn handle(&mut self, msg: Message) {
        match msg {
            Message::Data { payload, .. } => self.handle_text(&payload),
            Message::Ping(p) => {
                encode_masked_frame(&mut self.out, OpCode::Pong, &p, rand::random())
            }
            Message::Close(_) => self.closed_by_server = true,
            Message::Pong(_) => {}
        }
    }

    fn handle_text(&mut self, payload: &[u8]) {
        inc(&self.sh.frames);
        let Ok(f) = serde_json::from_slice::<Frame>(payload) else {
            self.sh.error("unparseable message from the server");
            return;
        };
        match (&*f.ty, f.event.as_deref(), f.status.as_deref()) {
            ("ping", _, _) => encode_masked_frame(
                &mut self.out,
                OpCode::Text,
                br#"{"type":"pong"}"#,
                rand::random(),
            ),
            ("auth", _, Some("ok")) => self.auth = Some(Ok(())),
            ("auth", _, _) => {
                let code = f
                    .error
                    .as_ref()
                    .and_then(|e| e["code"].as_str())
                    .unwrap_or("?");
                if self.auth.is_none() {
                    self.auth = Some(Err(format!("auth failed: {code}")));
                } else {
                    self.sh.error(&format!("auth message while live: {code}"));
                }
            }
            ("subscription", Some("init"), _) => {
                let now = now_us();
                if let Some(j) = uid_index(&f.uid).filter(|&j| j < self.subs.len())
                    && self.pending_init[j]
                {
                    self.pending_init[j] = false;
                    let s = &mut self.subs[j];
                    s.init_at_us = now;
                    s.init_rows = rows(f.data)
                        .iter()
                        .map(|r| (r.writer as u32, r.seq as u32))
                        .collect();
                } else {
                    self.sh.error("init for an unknown or repeated uid");
                }
            }
            ("subscription", Some("create" | "update"), _) => {
                let now = now_us();
                let Some(j) = uid_index(&f.uid).filter(|&j| j < self.subs.len()) else {
                    self.sh.error("event for an unknown uid");
                    return;
                };
                for r in rows(f.data) {
                    self.sh.delivered.fetch_add(1, Ordering::Relaxed);
                    if let Some(t0) = r.t0 {
                        self.sh.live.record((now - t0).max(1) as u64);
                    }
                    self.subs[j].deliveries.push(Delivery {
                        writer: r.writer as u32,
                        seq: r.seq as u32,
                        at_us: now,
                    });
                }
            }
            ("subscription", Some(_), _) => {}
            ("subscribe", _, Some("error")) => {
                let code = f
                    .error
                    .as_ref()
                    .and_then(|e| e["code"].as_str())
                    .unwrap_or("?");
                self.sh.error(&format!("subscribe error: {code}"));
                // Directus's service errors carry no uid: charge the first subscription still waiting.
                let j = uid_index(&f.uid).or_else(|| self.pending_init.iter().position(|p| *p));
                if let Some(j) = j.filter(|&j| j < self.subs.len())
                    && self.pending_init[j]
                {
                    self.pending_init[j] = false;
                    self.subs[j].init_at_us = i64::MIN;
                    inc(&self.sh.subs_failed);
                }
            }
            (ty, _, _) => self.sh.error(&format!("unhandled message type {ty}")),
        }
    }
}

enum Wait {
    /// The awaited condition holds.
    Done,
    Closed,
    Timeout,
    Stopping,
}

/// Resolves when the agent is stopping; never, when `phase` is `None` or its sender is gone.
async fn until_stopping(phase: Option<&mut watch::Receiver<Phase>>) {
    if let Some(p) = phase
        && p.wait_for(|p| *p == Phase::Stopping).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await
}

/// Read and handle messages until `done(session)` holds, the socket closes, the deadline passes or the
/// agent is stopping (when `phase` is given).
async fn wait_until(
    conn: &mut Conn,
    s: &mut Session<'_>,
    msgs: &mut Vec<Message>,
    deadline: Instant,
    mut phase: Option<&mut watch::Receiver<Phase>>,
    done: impl Fn(&Session) -> bool,
) -> Result<Wait> {
    loop {
        for m in msgs.drain(..) {
            s.handle(m);
        }
        if !s.out.is_empty() {
            let out = std::mem::take(&mut s.out);
            conn.send_raw(&out).await?;
        }
        if done(s) {
            return Ok(Wait::Done);
        }
        if s.closed_by_server {
            return Ok(Wait::Closed);
        }
        tokio::select! {
            r = conn.readable() => {
                r?;
                if conn.read_available(msgs)? == ReadState::Closed {
                    for m in msgs.drain(..) {
                        s.handle(m);
                    }
                    s.closed_by_server = true;
                    return Ok(Wait::Closed);
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Ok(Wait::Timeout),
            _ = until_stopping(phase.as_deref_mut()) => return Ok(Wait::Stopping),
        }
    }
}

/// Run one connection: setup, live, leave. `hold`: leave after this long (churn); otherwise stay until the
/// agent stops. Returns the records of the subscriptions that got their `init`.
async fn session(
    sh: &Shared,
    conn_idx: usize,
    mut phase: watch::Receiver<Phase>,
    hold: Option<Duration>,
) -> Vec<SubRecord> {
    let permit = sh.handshakes.clone().acquire_owned().await;
    let spec = &sh.spec;
    let target = &sh.targets[conn_idx % sh.targets.len()];
    let source =
        (!spec.source_ips.is_empty()).then(|| spec.source_ips[conn_idx % spec.source_ips.len()]);
    let mut s = Session {
        sh,
        conn_idx,
        subs: (0..spec.subs_per_conn)
            .map(|j| SubRecord {
                filter: sub_filter(spec.scenario, conn_idx, j, spec.subs_per_conn),
                init_at_us: 0,
                end_at_us: None,
                init_rows: Vec::new(),
                deliveries: Vec::new(),
            })
            .collect(),
        pending_init: vec![true; spec.subs_per_conn],
        out: Vec::new(),
        auth: None,
        closed_by_server: false,
    };
    // A connection settles (finishes its setup, well or not) exactly once: the harness waits for all.
    let settled = std::sync::atomic::AtomicBool::new(false);
    let settle = || {
        if !settled.swap(true, Ordering::Relaxed) {
            inc(&sh.settled);
        }
    };
    let started = Instant::now();
    let mut conn = match tokio::time::timeout(SETUP_TIMEOUT, Conn::open(target, source)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            inc(&sh.connects_failed);
            sh.error(&format!("{:#}", e).chars().take(120).collect::<String>());
            settle();
            return Vec::new();
        }
        Err(_) => {
            inc(&sh.connects_failed);
            sh.error("connect timed out");
            settle();
            return Vec::new();
        }
    };
    sh.connect_us
        .lock()
        .saturating_record(started.elapsed().as_micros().max(1) as u64);
    inc(&sh.connects_ok);
    inc(&sh.open);
    let result = live(&mut conn, &mut s, &mut phase, permit.ok(), hold, &settle).await;
    sh.open.fetch_sub(1, Ordering::Relaxed);
    if !settled.load(Ordering::Relaxed) {
        // The socket failed mid-handshake (an I/O error): charge the step it was in.
        if !matches!(s.auth, Some(Ok(()))) {
            inc(&sh.auth_failed);
        } else {
            let pending = s.pending_init.iter().filter(|p| **p).count() as u64;
            sh.subs_failed.fetch_add(pending, Ordering::Relaxed);
        }
        settle();
    }
    if let Err(e) = result {
        sh.error(
            &format!("connection error: {e:#}")
                .chars()
                .take(120)
                .collect::<String>(),
        );
    }
    if s.closed_by_server {
        conn_closed_by_server(sh, &mut s);
    } else {
        conn.close().await;
    }
    s.subs.into_iter().filter(|r| r.init_at_us > 0).collect()
}

fn conn_closed_by_server(sh: &Shared, s: &mut Session) {
    let now = now_us();
    let mut charged = false;
    for r in &mut s.subs {
        if r.init_at_us > 0 && r.end_at_us.is_none() {
            r.end_at_us = Some(now);
            charged = true;
        }
    }
    if charged {
        inc(&sh.server_closed);
        sh.error("server closed a live connection");
    }
}

async fn live(
    conn: &mut Conn,
    s: &mut Session<'_>,
    phase: &mut watch::Receiver<Phase>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    hold: Option<Duration>,
    settle: &(dyn Fn() + Sync),
) -> Result<()> {
    let sh = s.sh;
    let spec = &sh.spec;
    let mut msgs = Vec::new();
    conn.decode_pending(&mut msgs)?;
    // Auth.
    let token = match &spec.auth {
        AuthPlan::Token(t) => t.clone(),
        AuthPlan::PerUser { prefix } => format!("{prefix}{}", s.conn_idx),
    };
    let t = Instant::now();
    conn.send_text(&serde_json::json!({"type":"auth","access_token":token}).to_string())
        .await?;
    let w = wait_until(conn, s, &mut msgs, t + SETUP_TIMEOUT, Some(phase), |s| {
        s.auth.is_some()
    })
    .await?;
    match (&w, &s.auth) {
        (Wait::Done, Some(Ok(()))) => {
            inc(&sh.auth_ok);
            sh.auth_us
                .lock()
                .saturating_record(t.elapsed().as_micros().max(1) as u64);
        }
        // The harness stopped us mid-handshake (a churn session that began just before the end): our
        // choice, not a failure.
        (Wait::Stopping, None) => {
            settle();
            return Ok(());
        }
        _ => {
            inc(&sh.auth_failed);
            let why = match (&w, &s.auth) {
                (_, Some(Err(e))) => e.clone(),
                (Wait::Closed, _) => "closed during auth".into(),
                _ => "auth timed out".into(),
            };
            sh.error(&why);
            settle();
            s.closed_by_server = false;
            return Ok(());
        }
    }
    // Subscribe, all at once; then wait for every init.
    let t = Instant::now();
    let mut batch = Vec::new();
    for (j, r) in s.subs.iter().enumerate() {
        let msg = serde_json::json!({
            "type": "subscribe",
            "collection": spec.collection,
            "uid": format!("s{j}"),
            "query": subscribe_query(spec.query_form, spec.run, r.filter, spec.churn()),
        });
        encode_masked_frame(
            &mut batch,
            OpCode::Text,
            msg.to_string().as_bytes(),
            rand::random(),
        );
    }
    conn.send_raw(&batch).await?;
    drop(batch);
    // A gateway answers one connection's subscribes one after another (each is an init snapshot), so
    // the wait grows with how many this connection sent.
    let wait = SETUP_TIMEOUT + Duration::from_millis(250) * s.subs.len() as u32;
    let w = wait_until(conn, s, &mut msgs, t + wait, Some(phase), |s| {
        s.pending_init.iter().all(|p| !p)
    })
    .await?;
    let ok = s.subs.iter().filter(|r| r.init_at_us > 0).count() as u64;
    sh.subs_ok.fetch_add(ok, Ordering::Relaxed);
    let unanswered = s.pending_init.iter().filter(|p| **p).count() as u64;
    match w {
        Wait::Closed if unanswered > 0 => sh.error("closed while subscribing"),
        Wait::Timeout if unanswered > 0 => sh.error("subscribe timed out"),
        _ => {}
    }
    // Stopped by the harness mid-subscribe is not a failure (see auth above).
    if !matches!(w, Wait::Stopping) {
        sh.subs_failed.fetch_add(unanswered, Ordering::Relaxed);
    }
    if ok > 0 {
        sh.subscribe_us
            .lock()
            .saturating_record(t.elapsed().as_micros().max(1) as u64);
    }
    settle();
    drop(permit);
    if ok == 0 || !matches!(w, Wait::Done) {
        return Ok(());
    }
    // Live until we leave (hold elapsed or stop), then linger so events for writes committed before we
    // began to leave can still arrive.
    let leave_at = hold.map_or(Instant::now() + Duration::from_secs(365 * 86_400), |h| {
        Instant::now() + h
    });
    let w = wait_until(conn, s, &mut msgs, leave_at, Some(phase), |_| false).await?;
    if matches!(w, Wait::Closed) {
        return Ok(());
    }
    let leaving = now_us();
    if hold.is_some() {
        for r in &mut s.subs {
            r.end_at_us = Some(leaving);
        }
        let linger = Instant::now() + Duration::from_millis(spec.linger_ms);
        if let Wait::Closed = wait_until(conn, s, &mut msgs, linger, None, |_| false).await? {
            // Closed while lingering: the window is over anyway.
            s.closed_by_server = false;
        }
    }
    Ok(())
}

/// Run an agent until it has answered `account` (or its command channel closes).
pub async fn run(
    spec: AgentSpec,
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<AgentEvent>,
) -> Result<()> {
    let mut targets = Vec::new();
    for u in &spec.urls {
        targets.push(testkit::ws::resolve(u).await?);
    }
    let sh = Arc::new(Shared {
        targets,
        connects_ok: AtomicU64::new(0),
        connects_failed: AtomicU64::new(0),
        auth_ok: AtomicU64::new(0),
        auth_failed: AtomicU64::new(0),
        subs_ok: AtomicU64::new(0),
        subs_failed: AtomicU64::new(0),
        open: AtomicU64::new(0),
        server_closed: AtomicU64::new(0),
        settled: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        frames: AtomicU64::new(0),
        live: LiveHist::default(),
        connect_us: Mutex::new(accounting::new_histogram()),
        auth_us: Mutex::new(accounting::new_histogram()),
        subscribe_us: Mutex::new(accounting::new_histogram()),
        errors: Mutex::new(BTreeMap::new()),
        handshakes: Arc::new(Semaphore::new(spec.max_inflight)),
        spec,
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let count = (sh.spec.conn_end - sh.spec.conn_start) as u64;

    // Progress reporter (also says `ready` once).
    let mut reporter = Some({
        let sh = sh.clone();
        let events = events.clone();
        let mut phase = phase_rx.clone();
        tokio::spawn(async move {
            let mut ready = false;
            let mut tick =
                tokio::time::interval(Duration::from_millis(sh.spec.progress_ms.max(10)));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = phase.wait_for(|p| *p == Phase::Stopping) => {}
                }
                let counters = sh.counters();
                let ev = AgentEvent::Progress {
                    counters,
                    live: sh.live.take(),
                };
                if events.send(ev).await.is_err() {
                    return;
                }
                if !ready && (sh.spec.churn() || counters.settled >= count) {
                    ready = true;
                    if events.send(AgentEvent::Ready).await.is_err() {
                        return;
                    }
                }
                if *phase.borrow() == Phase::Stopping {
                    return;
                }
            }
        })
    });

    // Connections: for churn, slots that cycle once writes start; otherwise one task per connection,
    // opened at the ramp-up rate.
    let spawner = {
        let sh = sh.clone();
        let phase_rx = phase_rx.clone();
        tokio::spawn(async move {
            let spec = &sh.spec;
            let mut tasks = Vec::with_capacity(count as usize);
            if spec.churn() {
                let mut phase = phase_rx.clone();
                let _ = phase.wait_for(|p| *p != Phase::Setup).await;
                // Tickets pace new connections; the queue holds at most one per slot (full = the pacer
                // waits, so tickets never pile up while slots are busy).
                let (tx, rx) = mpsc::channel::<()>(count.max(1) as usize);
                let rx = Arc::new(tokio::sync::Mutex::new(rx));
                let pacer = (spec.churn_rate > 0.0).then(|| {
                    let every = Duration::from_secs_f64(1.0 / spec.churn_rate);
                    let mut phase = phase_rx.clone();
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(every);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        loop {
                            tokio::select! {
                                _ = tick.tick() => {}
                                _ = phase.wait_for(|p| *p == Phase::Stopping) => return,
                            }
                            if tx.send(()).await.is_err() {
                                return;
                            }
                        }
                    })
                });
                for c in spec.conn_start..spec.conn_end {
                    let sh = sh.clone();
                    let rx = rx.clone();
                    let paced = pacer.is_some();
                    let phase = phase_rx.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut records = Vec::new();
                        let hold = Duration::from_millis(sh.spec.hold_ms);
                        loop {
                            if *phase.borrow() == Phase::Stopping {
                                break;
                            }
                            if paced {
                                let mut p = phase.clone();
                                let got = tokio::select! {
                                    t = async { rx.lock().await.recv().await } => t.is_some(),
                                    _ = p.wait_for(|p| *p == Phase::Stopping) => false,
                                };
                                if !got {
                                    break;
                                }
                            }
                            let got = session(&sh, c, phase.clone(), Some(hold)).await;
                            if got.is_empty() {
                                // Failed before subscribing: back off so a dead target is not hammered.
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            records.extend(got);
                        }
                        records
                    }));
                }
                let _ = pacer;
            } else {
                let start = Instant::now();
                for (i, c) in (spec.conn_start..spec.conn_end).enumerate() {
                    if spec.ramp_up > 0.0 {
                        let at = start + Duration::from_secs_f64(i as f64 / spec.ramp_up);
                        tokio::time::sleep_until(at).await;
                    }
                    if *phase_rx.borrow() == Phase::Stopping {
                        break;
                    }
                    let sh = sh.clone();
                    let phase = phase_rx.clone();
                    tasks.push(tokio::spawn(
                        async move { session(&sh, c, phase, None).await },
                    ));
                }
            }
            tasks
        })
    };

    let mut spawner = Some(spawner);
    let mut records: Vec<SubRecord> = Vec::new();
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            Cmd::Start => {
                let _ = phase_tx.send(Phase::Running);
            }
            Cmd::Stop => {
                let _ = phase_tx.send(Phase::Stopping);
                if let Some(sp) = spawner.take() {
                    for t in sp.await.context("connection spawner")? {
                        records.extend(t.await.context("connection task")?);
                    }
                }
                if let Some(r) = reporter.take() {
                    let _ = r.await;
                }
                let _ = events
                    .send(AgentEvent::Stopped {
                        counters: sh.counters(),
                    })
                    .await;
            }
            Cmd::Account { writes, phases } => {
                let log = read_write_log(&writes)?;
                let mut out = Outcome::new(phases);
                for r in &records {
                    accounting::account(&log, r, &mut out);
                }
                let result = AgentResult {
                    tally: out.tally,
                    latency_us: hist_pairs(&out.latency),
                    phase_latency_us: out.phase_latency.iter().map(hist_pairs).collect(),
                    negative_latency: out.negative_latency,
                    examples: out.examples,
                    connect_us: hist_pairs(&sh.connect_us.lock()),
                    auth_us: hist_pairs(&sh.auth_us.lock()),
                    subscribe_us: hist_pairs(&sh.subscribe_us.lock()),
                    counters: sh.counters(),
                    errors: sh.errors.lock().clone(),
                };
                let _ = events.send(AgentEvent::Result(Box::new(result))).await;
                return Ok(());
            }
        }
    }
    Ok(())
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

/// The harness's side of an agent.
pub struct AgentHandle {
    pub cmds: mpsc::Sender<Cmd>,
    /// The child process, for CPU/RSS sampling (`None` when in-process).
    pub pid: Option<u32>,
    child: Option<tokio::process::Child>,
}

impl AgentHandle {
    /// Run the agent as a task of this process; its events go to `events` tagged with its index.
    pub fn in_process(spec: AgentSpec, events: mpsc::Sender<(usize, AgentEvent)>) -> AgentHandle {
        let (cmd_tx, cmd_rx) = mpsc::channel(CMD_QUEUE);
        let (ev_tx, mut ev_rx) = mpsc::channel(EVENT_QUEUE);
        let index = spec.index;
        let fwd = events.clone();
        tokio::spawn(async move {
            while let Some(ev) = ev_rx.recv().await {
                if fwd.send((index, ev)).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            if let Err(e) = run(spec, cmd_rx, ev_tx).await {
                let _ = events
                    .send((
                        index,
                        AgentEvent::Error {
                            message: format!("{e:#}"),
                        },
                    ))
                    .await;
            }
        });
        AgentHandle {
            cmds: cmd_tx,
            pid: None,
            child: None,
        }
    }

    /// Run `bin agent` as a child process.
    pub async fn spawn(
        bin: &std::path::Path,
        spec: AgentSpec,
        events: mpsc::Sender<(usize, AgentEvent)>,
    ) -> Result<AgentHandle> {
        let index = spec.index;
        let mut child = tokio::process::Command::new(bin)
            .arg("agent")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {} agent", bin.display()))?;
        let pid = child.id();
        let mut stdin = child.stdin.take().context("agent stdin")?;
        let stdout = child.stdout.take().context("agent stdout")?;
        stdin
            .write_all(format!("{}\n", serde_json::to_string(&spec)?).as_bytes())
            .await?;
        let (cmd_tx, mut cmd_rx) = mpsc::channel::<Cmd>(CMD_QUEUE);
        tokio::spawn(async move {
            while let Some(cmd) = cmd_rx.recv().await {
                let line = serde_json::to_string(&cmd).expect("commands serialise") + "\n";
                if stdin.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut finished = false;
            while let Ok(Some(line)) = lines.next_line().await {
                let ev = match serde_json::from_str::<AgentEvent>(&line) {
                    Ok(ev) => ev,
                    Err(e) => AgentEvent::Error {
                        message: format!(
                            "agent {index} sent an unreadable line ({e}): {line:.200}"
                        ),
                    },
                };
                finished |= matches!(ev, AgentEvent::Result(_) | AgentEvent::Error { .. });
                if events.send((index, ev)).await.is_err() {
                    return;
                }
            }
            if !finished {
                let _ = events
                    .send((
                        index,
                        AgentEvent::Error {
                            message: format!("agent {index} exited before reporting its result"),
                        },
                    ))
                    .await;
            }
        });
        Ok(AgentHandle {
            cmds: cmd_tx,
            pid,
            child: Some(child),
        })
    }

    /// Wait for a child to exit (after its result).
    pub async fn wait(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = tokio::time::timeout(Duration::from_secs(10), c.wait()).await;
        }
    }
}

/// `loadtest agent`: the child side. Reads the spec and commands from stdin, writes events to stdout.
pub async fn run_stdio() -> Result<()> {
    raise_fd_limit();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let first = lines.next_line().await?.context("no agent spec on stdin")?;
    let spec: AgentSpec = serde_json::from_str(&first).context("agent spec")?;
    let (cmd_tx, cmd_rx) = mpsc::channel(CMD_QUEUE);
    let (ev_tx, mut ev_rx) = mpsc::channel::<AgentEvent>(EVENT_QUEUE);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Cmd>(&line) {
                Ok(c) => {
                    if cmd_tx.send(c).await.is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("agent: bad command {line:?}: {e}"),
            }
        }
    });
    let writer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        while let Some(ev) = ev_rx.recv().await {
            let line = serde_json::to_string(&ev).expect("events serialise") + "\n";
            if out.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            let _ = out.flush().await;
        }
    });
    let r = run(spec, cmd_rx, ev_tx.clone()).await;
    if let Err(e) = &r {
        let _ = ev_tx
            .send(AgentEvent::Error {
                message: format!("{e:#}"),
            })
            .await;
    }
    drop(ev_tx);
    let _ = writer.await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_accept_numbers_and_strings() {
        let raw: Box<RawValue> = serde_json::from_str(
            r#"[{"writer":1,"seq":"7","t0":"1700000000000000","payload":"xx"},{"writer":"2","seq":3,"t0":null}]"#,
        )
        .unwrap();
        let r = rows(Some(&raw));
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].writer, r[0].seq, r[0].t0),
            (1, 7, Some(1_700_000_000_000_000))
        );
        assert_eq!((r[1].writer, r[1].seq, r[1].t0), (2, 3, None));
    }

    #[test]
    fn write_log_round_trip() {
        let dir = testkit::services::TempDir::new("lt-log").unwrap();
        let p = dir.path().join("w.jsonl");
        let w = [
            Write {
                writer: 0,
                seq: 1,
                room: 1,
                owner: None,
                commit_us: Some(5),
            },
            Write {
                writer: 1,
                seq: 0,
                room: 0,
                owner: Some(3),
                commit_us: None,
            },
        ];
        std::fs::write(
            &p,
            w.iter().map(write_log_line).collect::<Vec<_>>().join("\n"),
        )
        .unwrap();
        let log = read_write_log(&p).unwrap();
        assert_eq!(log.writes(), &w[..]);
    }

    #[test]
    fn commands_and_events_are_json_lines() {
        let c: Cmd =
            serde_json::from_str(r#"{"cmd":"account","writes":"/tmp/x","phases":[1,2]}"#).unwrap();
        assert!(matches!(c, Cmd::Account { phases, .. } if phases == vec![1, 2]));
        let e = serde_json::to_string(&AgentEvent::Ready).unwrap();
        assert_eq!(e, r#"{"event":"ready"}"#);
    }
}
