//! Harness configuration and the scenarios' plans.
//!
//! Owns: the `loadtest run` flags ([`RunArgs`]), the config file (TOML or JSON, keys are the long flag
//! names), their merge (command line over file over defaults) into a validated [`Config`], and the pure
//! functions that say which filter each subscription gets and which rows each write touches, so the
//! writer, the client agents and the accounting agree without talking to each other.

use crate::accounting::SubFilter;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Many subscribers on one filtered query; every matching write goes to all of them.
    Fanout,
    /// Many distinct equality filters (one per subscription); `match-fraction` of writes match one.
    Filters,
    /// One user per connection; a `$CURRENT_USER` permission filter makes every subscription distinct.
    PerUser,
    /// Connections connect, authenticate, subscribe, hold for `hold-secs` and leave, at `churn-rate`.
    Churn,
    /// A high change rate to few subscribers.
    WriteHeavy,
    /// A long fanout run to watch memory over time.
    Soak,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Filters => "filters",
            Scenario::PerUser => "per-user",
            Scenario::Churn => "churn",
            Scenario::WriteHeavy => "write-heavy",
            Scenario::Soak => "soak",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum QueryForm {
    /// REST string forms, as `@directus/sdk` sends them (`fields` CSV, `filter` JSON string).
    String,
    /// Native JSON values.
    Native,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CommitTime {
    /// `pg_xact_commit_timestamp(xmin)` when the database tracks commit timestamps, else `ack`.
    Auto,
    /// The writer's commit-acknowledged time (use when the database's clock is not this machine's).
    Ack,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `loadtest run` flags. Every value is optional here so that a config file can supply it; defaults live
/// in [`Config::default`].
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RunArgs {
    /// Config file (TOML, or JSON when it ends in .json); keys are the long flag names. Flags override it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Scenario to run [default: fanout].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scenario: Option<Scenario>,
    /// WebSocket URL of a gateway (or load balancer), repeatable: connections are spread over them.
    #[arg(long = "url")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub url: Vec<String>,
    /// Start a local cluster (PostgreSQL with track_commit_timestamp, Redis, gateways, workers) and stop it
    /// afterwards.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub local: bool,
    /// Gateways of the local cluster [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateways: Option<usize>,
    /// fanout-workers of the local cluster [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Extra gateway environment for the local cluster, `KEY=VALUE`, repeatable.
    #[arg(long = "gateway-env")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateway_env: Vec<String>,
    /// Extra worker environment for the local cluster, `KEY=VALUE`, repeatable.
    #[arg(long = "worker-env")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub worker_env: Vec<String>,
    /// PostgreSQL URL: table setup, SQL writes (the default writer) and the write log read back after the run.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub db: Option<String>,
    /// Write through Directus's REST API at this base URL (`POST /items/{collection}`) instead of SQL.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rest: Option<String>,
    /// Bearer token for REST writes; also the WebSocket `auth` token unless `--ws-token` is given.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// WebSocket `auth` access token (default: `--token`; with `--local`, the local admin token).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_token: Option<String>,
    /// Table/collection the harness writes (created with `--db` when missing) [default: loadtest_events].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// Client connections (for churn: concurrent connection slots) [default: 100].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    /// Subscriptions per connection [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subs_per_conn: Option<usize>,
    /// Writer connections; each writes its own ordered sequence [default: 2].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writers: Option<usize>,
    /// Writes per second over all writers (the first step of a ramp) [default: 100].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// Ramp: add this many writes/s every `step-secs` (0 = fixed rate) [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_step: Option<f64>,
    /// Ramp: seconds per step [default: 5].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_secs: Option<f64>,
    /// Ramp: highest rate.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<f64>,
    /// Ramp: stop after a step whose live p99 (write start → receive) exceeds this many milliseconds.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_p99_ms: Option<f64>,
    /// Writes in flight per SQL writer connection (pipelined, committed in order) [default: 16].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<usize>,
    /// Bytes of payload per written row [default: 100].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_bytes: Option<usize>,
    /// Seconds of writing (for a ramp: the longest it may run) [default: 10].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// Connection opening rate, connections/s over all client processes (0 = as fast as `max-inflight`
    /// allows) [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramp_up: Option<f64>,
    /// Handshakes in flight per client process [default: 256].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_inflight: Option<usize>,
    /// Loopback source addresses to bind before connecting, e.g. `127.0.0.2-127.0.0.20` or a comma list:
    /// each address gives another ~28 000 ports towards one gateway address.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ips: Option<String>,
    /// Client processes; 1 runs the clients inside this process, more start `loadtest agent` children
    /// [default: enough to stay under the fd limit, 18 000 connections each].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_procs: Option<usize>,
    /// Fraction of writes that match some subscription [default: 0.5 for filters, else 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_fraction: Option<f64>,
    /// Churn: new connections per second over all processes (0 = as fast as the slots cycle) [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub churn_rate: Option<f64>,
    /// Churn: seconds a connection stays subscribed before it leaves [default: 2].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_secs: Option<f64>,
    /// Milliseconds a leaving client keeps reading: writes committed before it began to leave must arrive
    /// within this time [default: 1000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linger_ms: Option<u64>,
    /// Longest wait in seconds after the last write for in-flight events [default: 30].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_secs: Option<f64>,
    /// Seconds to let connections sit idle before measuring gateway memory per connection [default: 2].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<f64>,
    /// Query value forms in `subscribe` [default: string].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_form: Option<QueryForm>,
    /// Subscriptions also ask for a many-to-one related field (`author.email`): each row points at one
    /// of 100 rows of `<collection>_authors`, read by the workers for every event.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub related: bool,
    /// Source of commit times for latency [default: auto].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_time: Option<CommitTime>,
    /// Prometheus endpoint of a gateway or worker to sample (CPU, RSS, connections), repeatable.
    #[arg(long = "metrics-url")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics_url: Vec<String>,
    /// Seconds between resource/throughput samples [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_secs: Option<f64>,
    /// Directory for report.json, report.html and writes.jsonl [default: loadtest-report].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Show progress bars even when stderr is not a terminal.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub progress: bool,
    /// Keep the run's rows and users in the database afterwards.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    pub keep_data: bool,
    /// Seed for the writers' random choices [default: random].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

/// The resolved configuration (also embedded in the report).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    pub scenario: Scenario,
    pub url: Vec<String>,
    pub local: bool,
    pub gateways: usize,
    pub workers: usize,
    pub gateway_env: Vec<String>,
    pub worker_env: Vec<String>,
    pub db: Option<String>,
    pub rest: Option<String>,
    pub token: Option<String>,
    pub ws_token: Option<String>,
    pub collection: String,
    pub connections: usize,
    pub subs_per_conn: usize,
    pub writers: usize,
    pub rate: f64,
    pub rate_step: f64,
    pub step_secs: f64,
    pub max_rate: Option<f64>,
    pub stop_p99_ms: Option<f64>,
    pub pipeline: usize,
    pub payload_bytes: usize,
    pub duration: f64,
    pub ramp_up: f64,
    pub max_inflight: usize,
    pub source_ips: Option<String>,
    pub client_procs: Option<usize>,
    pub match_fraction: f64,
    pub churn_rate: f64,
    pub hold_secs: f64,
    pub linger_ms: u64,
    pub drain_secs: f64,
    pub idle_secs: f64,
    pub query_form: QueryForm,
    pub related: bool,
    pub commit_time: CommitTime,
    pub metrics_url: Vec<String>,
    pub sample_secs: f64,
    pub out: PathBuf,
    pub progress: bool,
    pub keep_data: bool,
    pub seed: Option<u64>,
    /// Program to run as `agent` children (default: this executable). Not a flag: for tests and wrappers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_bin: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            scenario: Scenario::Fanout,
            url: Vec::new(),
            local: false,
            gateways: 1,
            workers: 1,
            gateway_env: Vec::new(),
            worker_env: Vec::new(),
            db: None,
            rest: None,
            token: None,
            ws_token: None,
            collection: "loadtest_events".into(),
            connections: 100,
            subs_per_conn: 1,
            writers: 2,
            rate: 100.0,
            rate_step: 0.0,
            step_secs: 5.0,
            max_rate: None,
            stop_p99_ms: None,
            pipeline: 16,
            payload_bytes: 100,
            duration: 10.0,
            ramp_up: 0.0,
            max_inflight: 256,
            source_ips: None,
            client_procs: None,
            match_fraction: 1.0,
            churn_rate: 0.0,
            hold_secs: 2.0,
            linger_ms: 1000,
            drain_secs: 30.0,
            idle_secs: 2.0,
            query_form: QueryForm::String,
            related: false,
            commit_time: CommitTime::Auto,
            metrics_url: Vec::new(),
            sample_secs: 1.0,
            out: PathBuf::from("loadtest-report"),
            progress: false,
            keep_data: false,
            seed: None,
            agent_bin: None,
        }
    }
}

/// Connections one client process opens at most: under the 20 000 fd hard limit with room for the
/// runtime, the database and the pipes.
pub const CONNECTIONS_PER_PROCESS: usize = 18_000;

/// Parse a config file's text: JSON when `json`, else TOML.
pub fn parse_file(text: &str, json: bool) -> Result<Json> {
    if json {
        Ok(serde_json::from_str(text)?)
    } else {
        let v: toml::Table = toml::from_str(text)?;
        Ok(serde_json::to_value(v)?)
    }
}

impl Config {
    /// File (if any) overlaid with the command line, over the defaults; then validated.
    pub fn resolve(args: &RunArgs) -> Result<Config> {
        let mut merged = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read {}", path.display()))?;
                let json = path.extension().is_some_and(|e| e == "json");
                parse_file(&text, json).with_context(|| format!("parse {}", path.display()))?
            }
            None => Json::Object(Default::default()),
        };
        let Json::Object(file) = &mut merged else {
            bail!("the config file must hold a table/object of settings");
        };
        let Json::Object(cli) = serde_json::to_value(args)? else {
            unreachable!("RunArgs serialises to an object")
        };
        for (k, v) in cli {
            file.insert(k, v);
        }
        let match_fraction_given = file.contains_key("match-fraction");
        let mut cfg: Config = serde_json::from_value(merged).context("invalid settings")?;
        // Scenario-specific default: with the global 1.0 the filters scenario would send every write to
        // some subscription, and it is about the index skipping most writes.
        if cfg.scenario == Scenario::Filters && !match_fraction_given {
            cfg.match_fraction = 0.5;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let mut errs = Vec::new();
        if !self.local && self.url.is_empty() {
            errs.push("give --url (repeatable) or --local".to_owned());
        }
        if self.local && !self.url.is_empty() {
            errs.push("--local and --url exclude each other".to_owned());
        }
        if !self.local && self.db.is_none() && self.rest.is_none() {
            errs.push("give --db (SQL writes) or --rest (REST writes), or --local".to_owned());
        }
        if self.rest.is_some() && self.token.is_none() {
            errs.push("--rest needs --token".to_owned());
        }
        if self.scenario == Scenario::PerUser && !self.local && self.db.is_none() {
            errs.push("per-user creates users and a permission with SQL: it needs --db".to_owned());
        }
        if self.connections == 0 {
            errs.push("--connections must be at least 1".to_owned());
        }
        if self.subs_per_conn == 0 {
            errs.push("--subs-per-conn must be at least 1".to_owned());
        }
        if self.writers == 0 {
            errs.push("--writers must be at least 1".to_owned());
        }
        if self.rate.is_nan() || self.rate < 0.0 {
            errs.push("--rate must be ≥ 0".to_owned());
        }
        if self.rate_step < 0.0 || self.step_secs <= 0.0 {
            errs.push("--rate-step must be ≥ 0 and --step-secs > 0".to_owned());
        }
        if !(0.0..=1.0).contains(&self.match_fraction) {
            errs.push("--match-fraction must be within 0..=1".to_owned());
        }
        if self.duration <= 0.0 {
            errs.push("--duration must be > 0".to_owned());
        }
        if self.pipeline == 0 || self.max_inflight == 0 {
            errs.push("--pipeline and --max-inflight must be ≥ 1".to_owned());
        }
        if self.sample_secs <= 0.0 {
            errs.push("--sample-secs must be > 0".to_owned());
        }
        if self.client_procs == Some(0) {
            errs.push("--client-procs must be ≥ 1".to_owned());
        }
        if !is_identifier(&self.collection) {
            errs.push("--collection must be a plain identifier ([a-z0-9_])".to_owned());
        }
        if let Err(e) = self.source_ip_list() {
            errs.push(format!("--source-ips: {e}"));
        }
        for kv in self.gateway_env.iter().chain(&self.worker_env) {
            if !kv.contains('=') {
                errs.push(format!("environment setting {kv:?} is not KEY=VALUE"));
            }
        }
        if let Some(procs) = self.client_procs
            && self.connections.div_ceil(procs) > CONNECTIONS_PER_PROCESS
        {
            errs.push(format!(
                "{} connections over {procs} client process(es) is more than {CONNECTIONS_PER_PROCESS} per process (the fd limit): raise --client-procs",
                self.connections
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            bail!("invalid settings:\n  {}", errs.join("\n  "))
        }
    }

    pub fn source_ip_list(&self) -> Result<Vec<Ipv4Addr>> {
        match &self.source_ips {
            None => Ok(Vec::new()),
            Some(s) => parse_ip_range(s),
        }
    }

    /// Client processes to use.
    pub fn procs(&self) -> usize {
        self.client_procs
            .unwrap_or_else(|| self.connections.div_ceil(CONNECTIONS_PER_PROCESS).max(1))
    }

    pub fn total_subscriptions(&self) -> usize {
        self.connections * self.subs_per_conn
    }

    /// A copy fit for a report: tokens and passwords replaced.
    pub fn redacted(&self) -> Config {
        const HIDDEN: &str = "<redacted>";
        let mut c = self.clone();
        c.token = c.token.map(|_| HIDDEN.into());
        c.ws_token = c.ws_token.map(|_| HIDDEN.into());
        let hide_url = |u: &String| match url::Url::parse(u) {
            Ok(mut parsed) => {
                if parsed.password().is_some() {
                    let _ = parsed.set_password(Some(HIDDEN));
                }
                if parsed.query().is_some_and(|q| q.contains("token")) {
                    parsed.set_query(Some(HIDDEN));
                }
                parsed.to_string()
            }
            Err(_) => HIDDEN.into(),
        };
        c.db = c.db.as_ref().map(hide_url);
        c.url = c.url.iter().map(hide_url).collect();
        c.metrics_url = c.metrics_url.iter().map(hide_url).collect();
        c
    }

    /// `KEY=VALUE` strings as pairs.
    pub fn env_pairs(list: &[String]) -> Vec<(String, String)> {
        list.iter()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.as_bytes()[0].is_ascii_digit()
}

/// `a.b.c.d-a.b.c.e` (inclusive range) or a comma list of addresses and ranges.
pub fn parse_ip_range(s: &str) -> Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a
                .trim()
                .parse()
                .with_context(|| format!("bad address {a:?}"))?;
            let b: Ipv4Addr = b
                .trim()
                .parse()
                .with_context(|| format!("bad address {b:?}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                bail!("bad range {part:?}");
            }
            out.extend((a..=b).map(Ipv4Addr::from));
        } else {
            out.push(
                part.parse()
                    .with_context(|| format!("bad address {part:?}"))?,
            );
        }
    }
    if out.is_empty() {
        bail!("no addresses in {s:?}");
    }
    Ok(out)
}

/// Room of the single fanout query.
pub const FANOUT_ROOM: i32 = 1;
/// First room of the filters scenario (subscription `i` gets `FILTER_ROOM_BASE + i`).
pub const FILTER_ROOM_BASE: i32 = 1000;
/// Room of writes that match no subscription.
pub const NO_ROOM: i32 = 0;

/// The filter of subscription `sub` on connection `conn` (global indices).
pub fn sub_filter(scenario: Scenario, conn: usize, sub: usize, subs_per_conn: usize) -> SubFilter {
    match scenario {
        Scenario::Filters => {
            SubFilter::Room(FILTER_ROOM_BASE + (conn * subs_per_conn + sub) as i32)
        }
        Scenario::PerUser => SubFilter::Owner(conn as u32),
        _ => SubFilter::Room(FANOUT_ROOM),
    }
}

/// Where one write goes: its room and owner, and how many subscriptions (of a setup that stays connected)
/// it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub room: i32,
    pub owner: Option<u32>,
    pub reaches: u64,
}

/// Choose a write's target. `u`: uniform in [0,1) (match or not); `pick`: a uniform random integer.
pub fn write_target(
    scenario: Scenario,
    connections: usize,
    subs_per_conn: usize,
    match_fraction: f64,
    u: f64,
    pick: u64,
) -> Target {
    let hit = u < match_fraction;
    let subs = (connections * subs_per_conn) as u64;
    match scenario {
        Scenario::Filters if hit => Target {
            room: FILTER_ROOM_BASE + (pick % subs) as i32,
            owner: None,
            reaches: 1,
        },
        Scenario::PerUser if hit => Target {
            room: NO_ROOM,
            owner: Some((pick % connections as u64) as u32),
            reaches: subs_per_conn as u64,
        },
        Scenario::Filters | Scenario::PerUser => Target {
            room: NO_ROOM,
            owner: None,
            reaches: 0,
        },
        _ if hit => Target {
            room: FANOUT_ROOM,
            owner: None,
            reaches: subs,
        },
        _ => Target {
            room: NO_ROOM,
            owner: None,
            reaches: 0,
        },
    }
}

/// The `query` of a subscription: its filter (ANDed with the run id) and the fields the harness reads.
/// Churn subscriptions ask for the newest rows in their `init`, so rows committed just before the
/// subscription show up there rather than being lost beyond the snapshot's limit.
pub fn subscribe_query(
    form: QueryForm,
    run: i64,
    filter: SubFilter,
    newest_first: bool,
    related: bool,
) -> serde_json::Map<String, Json> {
    let mut f = serde_json::Map::new();
    f.insert("run".into(), serde_json::json!({"_eq": run}));
    if let SubFilter::Room(r) = filter {
        f.insert("room".into(), serde_json::json!({"_eq": r}));
    }
    let fields: &[&str] = if related {
        &["writer", "seq", "t0", "payload", "author.email"]
    } else {
        &["writer", "seq", "t0", "payload"]
    };
    let mut q = serde_json::Map::new();
    match form {
        QueryForm::Native => {
            q.insert("fields".into(), serde_json::json!(fields));
            q.insert("filter".into(), Json::Object(f));
            if newest_first {
                q.insert("sort".into(), serde_json::json!(["-id"]));
                q.insert("limit".into(), serde_json::json!(100));
            }
        }
        QueryForm::String => {
            q.insert("fields".into(), Json::String(fields.join(",")));
            q.insert("filter".into(), Json::String(Json::Object(f).to_string()));
            if newest_first {
                q.insert("sort".into(), Json::String("-id".into()));
                q.insert("limit".into(), Json::String("100".into()));
            }
        }
    }
    q
}

#[cfg(test)]
mod tests;
