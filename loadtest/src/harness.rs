//! `loadtest run`: one benchmark from start to report.
//!
//! Order of a run: (optionally) start a local cluster → create the table (and the per-user users and
//! permission) → start the client agents and wait until every connection has its `init` → let them sit
//! idle and measure gateway memory per connection → start the writers (fixed rate, or a ramp of steps
//! that stops when the live p99 passes a limit) → stop the writers and wait for in-flight events → stop
//! the agents → read the write log back from the database (with commit timestamps) → have every agent
//! account its subscriptions → merge, judge, write `report.json` and `report.html`.
//!
//! Writing only starts after every client has its `init`, so (outside churn) every write is expected by
//! every subscription it matches.

use crate::accounting::{self, Tally, Write};
use crate::agent::{
    AgentEvent, AgentHandle, AgentResult, AgentSpec, AuthPlan, Cmd, Counters, EVENT_QUEUE,
    merge_pairs, now_us, raise_fd_limit, write_log_line,
};
use crate::livehist::Buckets;
use crate::report::{
    self, ConnectionsReport, DeliveryReport, KneeReport, MemoryReport, Pcts, Report, StepReport,
    TimePoint, WritesReport,
};
use crate::sampler::{Role, Sampler, Source};
use crate::scenario::{CommitTime, Config, Scenario};
use crate::writer::{self, RestTarget, WritePlan, WriterLog, WriterShared};
use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use testkit::cluster::{ADMIN_TOKEN, Cluster, ClusterOptions};

/// How often the harness looks at its agents while waiting (a poll with a deadline, never a fixed sleep).
const POLL: Duration = Duration::from_millis(50);
/// Agents report this often.
const PROGRESS_MS: u64 = 250;
/// Drain: stop waiting for stragglers once nothing has arrived for this long.
const DRAIN_QUIET: Duration = Duration::from_secs(5);
/// Above this many connections to loopback without `--source-ips`, source addresses are chosen
/// automatically (one source address gives ~28 000 ports towards one gateway address).
const AUTO_SOURCE_IPS_ABOVE: usize = 20_000;
/// Static-token prefix of per-user users: `lt<run>-<i>`.
fn user_token_prefix(run: i64) -> String {
    format!("lt{run}-")
}

/// What the harness knows about its agents, updated by the event pump.
#[derive(Default)]
struct Agg {
    counters: Vec<Counters>,
    ready: Vec<bool>,
    stopped: Vec<bool>,
    results: Vec<Option<Box<AgentResult>>>,
    errors: Vec<String>,
    live_step: Buckets,
    live_sample: Buckets,
}

impl Agg {
    fn total(&self) -> Counters {
        let mut t = Counters::default();
        for c in &self.counters {
            t.add(c);
        }
        t
    }
}

/// Progress bar when wanted, plain lines otherwise.
struct Progress {
    bar: ProgressBar,
    enabled: bool,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        let bar = if enabled {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{prefix:>10.bold} [{bar:32.cyan/blue}] {pos}/{len} {elapsed_precise} {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Progress { bar, enabled }
    }

    fn phase(&self, name: &'static str, len: u64) {
        self.bar.set_prefix(name);
        self.bar.set_length(len);
        self.bar.set_position(0);
        self.bar.set_message("");
        if !self.enabled {
            eprintln!("[loadtest] {name}");
        }
    }

    fn update(&self, pos: u64, msg: String) {
        self.bar.set_position(pos);
        self.bar.set_message(msg);
    }

    fn line(&self, s: &str) {
        if self.enabled {
            self.bar.println(s);
        } else {
            eprintln!("[loadtest] {s}");
        }
    }
}

/// Poll `cond` every [`POLL`] until it holds, an agent reports an error, or `deadline` passes.
async fn wait_for(
    agg: &Mutex<Agg>,
    deadline: Instant,
    what: &str,
    mut cond: impl FnMut(&Agg) -> bool,
    mut tick: impl FnMut(&Agg),
) -> Result<()> {
    loop {
        {
            let a = agg.lock();
            if let Some(e) = a.errors.first() {
                bail!("client agent failed while {what}: {e}");
            }
            if cond(&a) {
                return Ok(());
            }
            tick(&a);
        }
        if Instant::now() > deadline {
            bail!("timed out while {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn start_cluster(cfg: &Config) -> Result<Cluster> {
    let mut gateway_env = vec![("LOG_LEVEL".to_owned(), "warn".to_owned())];
    gateway_env.extend(Config::env_pairs(&cfg.gateway_env));
    let mut worker_env = vec![("LOG_LEVEL".to_owned(), "warn".to_owned())];
    worker_env.extend(Config::env_pairs(&cfg.worker_env));
    Cluster::start(ClusterOptions {
        gateways: cfg.gateways.max(1),
        workers: cfg.workers,
        gateway_env,
        worker_env,
        demo_schema: false,
        first_gateway_port: 0,
        // Exact commit times for latency: pg_xact_commit_timestamp(xmin) needs this at server start.
        postgres_settings: vec![("track_commit_timestamp".into(), "on".into())],
    })
    .await
}

async fn db_connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connect to the database")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Per-user: a role, a policy with a `$CURRENT_USER` row filter on the harness's table, and `n` users
/// with static tokens `lt<run>-<i>`, all in Directus's system tables.
async fn create_users(
    db: &tokio_postgres::Client,
    cfg: &Config,
    run: i64,
) -> Result<(String, String)> {
    let role = uuid::Uuid::new_v4().to_string();
    let policy = uuid::Uuid::new_v4().to_string();
    let name = format!("loadtest {run}");
    db.execute(
        "INSERT INTO directus_roles (id, name) VALUES ($1::text::uuid, $2)",
        &[&role, &name],
    )
    .await
    .context("create the per-user role (are the Directus system tables there?)")?;
    db.execute(
        "INSERT INTO directus_policies (id, name, admin_access, app_access) VALUES ($1::text::uuid, $2, false, false)",
        &[&policy, &name],
    )
    .await?;
    db.execute(
        "INSERT INTO directus_access (id, role, policy) VALUES ($1::text::uuid, $2::text::uuid, $3::text::uuid)",
        &[&uuid::Uuid::new_v4().to_string(), &role, &policy],
    )
    .await?;
    db.execute(
        "INSERT INTO directus_permissions (collection, action, permissions, fields, policy) VALUES ($1, 'read', $2::text::json, '*', $3::text::uuid)",
        &[&cfg.collection, &r#"{"owner":{"_eq":"$CURRENT_USER"}}"#, &policy],
    )
    .await?;
    // The uuid of user i is writer::user_uuid(run, i): the run in the first group, i in the last.
    db.execute(
        "INSERT INTO directus_users (id, email, role, status, token)
         SELECT (lpad(to_hex($1::bigint), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
                'lt' || $1::bigint || '-' || i || '@loadtest.invalid', $2::text::uuid, 'active', $3 || i
         FROM generate_series(0, $4::int - 1) AS i",
        &[&(run & 0xffff_ffff), &role, &user_token_prefix(run), &(cfg.connections as i32)],
    )
    .await
    .context("create the per-user users")?;
    Ok((role, policy))
}

async fn cleanup(
    db: &tokio_postgres::Client,
    cfg: &Config,
    run: i64,
    users: &Option<(String, String)>,
) -> Result<()> {
    db.execute(
        &format!("DELETE FROM {} WHERE run = $1", cfg.collection),
        &[&run],
    )
    .await?;
    if let Some((role, policy)) = users {
        db.execute(
            "DELETE FROM directus_users WHERE role = $1::text::uuid",
            &[role],
        )
        .await?;
        db.execute(
            "DELETE FROM directus_policies WHERE id = $1::text::uuid",
            &[policy],
        )
        .await?;
        db.execute(
            "DELETE FROM directus_roles WHERE id = $1::text::uuid",
            &[role],
        )
        .await?;
    }
    Ok(())
}

/// Sum of gateway RSS right now (local: /proc; remote: metrics of sources that report connections).
async fn gateway_rss(sampler: &tokio::sync::Mutex<Sampler>) -> Option<f64> {
    let samples = sampler.lock().await.sample().await;
    let rss: Vec<f64> = samples
        .iter()
        .filter(|s| s.role == Role::Gateway)
        .filter_map(|s| s.rss_bytes)
        .collect();
    (!rss.is_empty()).then(|| rss.iter().sum())
}

struct StepInfo {
    rate: f64,
    start_wall_us: i64,
    start_s: f64,
    secs: f64,
    writes: u64,
    delivered: u64,
    live_p99_ms: Option<f64>,
}

/// Run one benchmark.
pub async fn run(cfg: Config) -> Result<Report> {
    raise_fd_limit();
    let t_start = Instant::now();
    let started_at = now_us() as f64 / 1e6;
    let progress = Arc::new(Progress::new(
        cfg.progress || std::io::stderr().is_terminal(),
    ));
    let run_id: i64 = rand::random_range(1..i32::MAX as i64);

    // 1. The system under test.
    let cluster = if cfg.local {
        progress.line(&format!(
            "starting a local cluster: {} gateway(s), {} worker(s)",
            cfg.gateways, cfg.workers
        ));
        Some(start_cluster(&cfg).await?)
    } else {
        None
    };
    let db_url = match &cluster {
        Some(c) => Some(c.postgres.url(&c.database)),
        None => cfg.db.clone(),
    };
    let urls: Vec<String> = match &cluster {
        Some(c) => c
            .gateways
            .iter()
            .map(|g| format!("ws://{}/websocket", g.addr))
            .collect(),
        None => cfg.url.clone(),
    };
    let mut source_ips = cfg.source_ip_list()?;
    if source_ips.is_empty() && cfg.connections > AUTO_SOURCE_IPS_ABOVE {
        // One source address has ~28 000 ports per gateway address; past that, connects fail with
        // EADDRNOTAVAIL. On loopback any 127.x address is ours, so spread over enough of them.
        let all_loopback = urls.iter().all(|u| {
            testkit::ws::split_ws_url(u)
                .is_ok_and(|(h, _)| h.starts_with("127.") || h.starts_with("localhost:"))
        });
        if all_loopback {
            let n = cfg.connections.div_ceil(AUTO_SOURCE_IPS_ABOVE) as u8;
            source_ips = (0..n)
                .map(|i| std::net::Ipv4Addr::new(127, 0, 1, 1 + i))
                .collect();
            progress.line(&format!(
                "{} connections to loopback: spreading them over source addresses 127.0.1.1-127.0.1.{n}",
                cfg.connections
            ));
        }
    }
    let ws_token = cfg
        .ws_token
        .clone()
        .or_else(|| cfg.token.clone())
        .or_else(|| cfg.local.then(|| ADMIN_TOKEN.to_owned()));
    let auth = if cfg.scenario == Scenario::PerUser {
        AuthPlan::PerUser {
            prefix: user_token_prefix(run_id),
        }
    } else {
        AuthPlan::Token(ws_token.context("give --ws-token or --token for the WebSocket auth")?)
    };

    // 2. Schema, users, commit timestamps.
    let db = match &db_url {
        Some(u) => Some(db_connect(u).await?),
        None => None,
    };
    let mut users = None;
    let mut exact_commit_times = false;
    if let Some(db) = &db {
        db.batch_execute(&writer::table_ddl(&cfg.collection))
            .await
            .context("create the harness table")?;
        if cfg.scenario == Scenario::PerUser {
            users = Some(create_users(db, &cfg, run_id).await?);
        }
        let on: String = db
            .query_one("SELECT current_setting('track_commit_timestamp')", &[])
            .await?
            .get(0);
        exact_commit_times = on == "on" && cfg.commit_time == CommitTime::Auto;
    }

    // 3. Samplers.
    let mut sources = Vec::new();
    if let Some(c) = &cluster {
        for g in &c.gateways {
            if let Some(pid) = g.pid() {
                sources.push(Source::pid(&g.name, Role::Gateway, pid, false));
            }
        }
        for w in &c.workers {
            if let Some(pid) = w.pid() {
                sources.push(Source::pid(&w.name, Role::Worker, pid, false));
            }
        }
        if let Some(pid) = c.postgres.pid() {
            sources.push(Source::pid("postgres", Role::Postgres, pid, true));
        }
        if let Some(pid) = c.redis.pid() {
            sources.push(Source::pid("redis", Role::Redis, pid, false));
        }
    }
    for u in &cfg.metrics_url {
        sources.push(Source::metrics(u)?);
    }
    sources.push(Source::pid(
        "harness",
        Role::Client,
        std::process::id(),
        false,
    ));

    // 4. Agents.
    let procs = cfg.procs().min(cfg.connections).max(1);
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel::<(usize, AgentEvent)>(EVENT_QUEUE);
    let agg = Arc::new(Mutex::new(Agg {
        counters: vec![Counters::default(); procs],
        ready: vec![false; procs],
        stopped: vec![false; procs],
        results: (0..procs).map(|_| None).collect(),
        ..Default::default()
    }));
    let pump = {
        let agg = agg.clone();
        tokio::spawn(async move {
            while let Some((i, ev)) = ev_rx.recv().await {
                let mut a = agg.lock();
                match ev {
                    AgentEvent::Progress { counters, live } => {
                        a.counters[i] = counters;
                        a.live_step.merge(&live);
                        a.live_sample.merge(&live);
                    }
                    AgentEvent::Ready => a.ready[i] = true,
                    AgentEvent::Stopped { counters } => {
                        a.counters[i] = counters;
                        a.stopped[i] = true;
                    }
                    AgentEvent::Result(r) => a.results[i] = Some(r),
                    AgentEvent::Error { message } => a.errors.push(format!("agent {i}: {message}")),
                }
            }
        })
    };
    let mut agents = Vec::with_capacity(procs);
    let agent_bin = match &cfg.agent_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    for i in 0..procs {
        let spec = AgentSpec {
            index: i,
            urls: urls.clone(),
            conn_start: cfg.connections * i / procs,
            conn_end: cfg.connections * (i + 1) / procs,
            subs_per_conn: cfg.subs_per_conn,
            scenario: cfg.scenario,
            run: run_id,
            collection: cfg.collection.clone(),
            query_form: cfg.query_form,
            auth: auth.clone(),
            ramp_up: cfg.ramp_up / procs as f64,
            max_inflight: cfg.max_inflight,
            source_ips: source_ips.clone(),
            churn_rate: cfg.churn_rate / procs as f64,
            hold_ms: (cfg.hold_secs * 1000.0) as u64,
            linger_ms: cfg.linger_ms,
            progress_ms: PROGRESS_MS,
        };
        let h = if procs == 1 {
            AgentHandle::in_process(spec, ev_tx.clone())
        } else {
            AgentHandle::spawn(&agent_bin, spec, ev_tx.clone()).await?
        };
        if let Some(pid) = h.pid {
            sources.push(Source::pid(&format!("agent-{i}"), Role::Client, pid, false));
        }
        agents.push(h);
    }
    drop(ev_tx);
    let sampler = Arc::new(tokio::sync::Mutex::new(Sampler { sources }));
    let rss_before = gateway_rss(&sampler).await;

    // Timeline sampler.
    let wsh = Arc::new(WriterShared::default());
    let phase_name = Arc::new(Mutex::new("connect"));
    let timeline = Arc::new(Mutex::new(Vec::<TimePoint>::new()));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler_task = {
        let (sampler, agg, wsh, phase_name, timeline, sampling, progress) = (
            sampler.clone(),
            agg.clone(),
            wsh.clone(),
            phase_name.clone(),
            timeline.clone(),
            sampling.clone(),
            progress.clone(),
        );
        let every = Duration::from_secs_f64(cfg.sample_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last: Option<(Instant, u64, u64)> = None;
            while sampling.load(Ordering::Relaxed) {
                tick.tick().await;
                let procs = sampler.lock().await.sample().await;
                let now = Instant::now();
                let (c, live) = {
                    let mut a = agg.lock();
                    let live = a.live_sample.clone();
                    a.live_sample.clear();
                    (a.total(), live)
                };
                let writes = wsh.committed.load(Ordering::Relaxed);
                let (wps, dps) = match last {
                    Some((t, w0, d0)) => {
                        let dt = now.duration_since(t).as_secs_f64().max(1e-6);
                        (
                            (writes.saturating_sub(w0)) as f64 / dt,
                            (c.delivered.saturating_sub(d0)) as f64 / dt,
                        )
                    }
                    None => (0.0, 0.0),
                };
                last = Some((now, writes, c.delivered));
                let phase = *phase_name.lock();
                let p = TimePoint {
                    t: now.duration_since(t_start).as_secs_f64(),
                    phase: phase.to_owned(),
                    target_rate: if phase == "write" { wsh.rate() } else { 0.0 },
                    writes,
                    delivered: c.delivered,
                    writes_per_second: wps,
                    delivered_per_second: dps,
                    open_connections: c.open,
                    live_p50_ms: live.quantile(0.5).map(|v| v as f64 / 1000.0),
                    live_p99_ms: live.quantile(0.99).map(|v| v as f64 / 1000.0),
                    procs,
                };
                if phase != "connect" {
                    progress.bar.set_message(format!(
                        "{:.0} writes/s, {:.0} delivered/s, live p99 {}, {} open",
                        wps,
                        dps,
                        p.live_p99_ms.map_or("–".into(), |v| format!("{v:.1} ms")),
                        c.open
                    ));
                }
                timeline.lock().push(p);
            }
        })
    };

    // 5. Connect everyone.
    let churn = cfg.scenario == Scenario::Churn;
    let planned = cfg.connections as u64;
    progress.phase("connect", if churn { 0 } else { planned });
    // Generous: it only catches a run that hangs. Every subscription is one init snapshot on the
    // servers, which do some thousands per second.
    let connect_deadline = Instant::now()
        + Duration::from_secs_f64(
            120.0
                + cfg.connections as f64 / cfg.ramp_up.max(100.0)
                + (cfg.connections * cfg.subs_per_conn) as f64 / 500.0,
        );
    wait_for(
        &agg,
        connect_deadline,
        "connecting",
        |a| a.ready.iter().all(|r| *r),
        |a| {
            let t = a.total();
            progress.update(
                t.settled,
                format!(
                    "{} open, {} failed",
                    t.open,
                    t.connects_failed + t.auth_failed + t.subs_failed
                ),
            );
        },
    )
    .await?;
    let after_connect = agg.lock().total();
    progress.update(after_connect.settled, String::new());
    progress.line(&format!(
        "connected: {} open, {} subscriptions, {} failed, in {:.1} s",
        after_connect.open,
        after_connect.subs_ok,
        after_connect.connects_failed + after_connect.auth_failed + after_connect.subs_failed,
        t_start.elapsed().as_secs_f64()
    ));

    // 6. Idle memory.
    *phase_name.lock() = "idle";
    progress.phase("idle", 0);
    if !churn && cfg.idle_secs > 0.0 {
        // Deliberate: connections must sit idle before their memory is measured.
        tokio::time::sleep(Duration::from_secs_f64(cfg.idle_secs)).await;
    }
    let rss_idle = if churn {
        None
    } else {
        gateway_rss(&sampler).await
    };
    let open_idle = agg.lock().total().open;
    let memory = MemoryReport {
        source: if cluster.is_some() {
            "proc".into()
        } else {
            "metrics".into()
        },
        gateway_rss_before: rss_before,
        gateway_rss_idle: rss_idle,
        connections_idle: open_idle,
        bytes_per_connection: match (rss_before, rss_idle) {
            (Some(a), Some(b)) if open_idle > 0 => Some((b - a) / open_idle as f64),
            _ => None,
        },
    };

    // 7. Write.
    for a in &agents {
        a.cmds.send(Cmd::Start).await.context("agent gone")?;
    }
    *phase_name.lock() = "write";
    wsh.set_rate(cfg.rate);
    let plan = WritePlan {
        scenario: cfg.scenario,
        run: run_id,
        collection: cfg.collection.clone(),
        connections: cfg.connections,
        subs_per_conn: cfg.subs_per_conn,
        match_fraction: cfg.match_fraction,
        payload: "x".repeat(cfg.payload_bytes).into(),
        writers: cfg.writers,
        pipeline: cfg.pipeline,
        seed: cfg.seed.unwrap_or_else(rand::random),
    };
    let mut writer_tasks = Vec::new();
    for i in 0..cfg.writers as u32 {
        let (plan, wsh) = (plan.clone(), wsh.clone());
        writer_tasks.push(match (&cfg.rest, &db_url) {
            (Some(rest), _) => {
                let target = RestTarget::parse(rest)?;
                let token = cfg.token.clone().unwrap_or_default();
                tokio::spawn(writer::rest_writer(i, target, token, plan, wsh))
            }
            (None, Some(url)) => tokio::spawn(writer::sql_writer(i, url.clone(), plan, wsh)),
            (None, None) => bail!("no writer: give --db or --rest"),
        });
    }
    let ramp = cfg.rate_step > 0.0;
    let write_start = Instant::now();
    let write_end = write_start + Duration::from_secs_f64(cfg.duration);
    progress.phase("write", (cfg.duration * 10.0) as u64);
    let mut steps: Vec<StepInfo> = Vec::new();
    let mut knee = None;
    let mut rate = cfg.rate;
    loop {
        let step_start = Instant::now();
        let start_wall_us = now_us();
        wsh.set_rate(rate);
        let (w0, d0) = {
            let mut a = agg.lock();
            a.live_step.clear();
            (wsh.committed.load(Ordering::Relaxed), a.total().delivered)
        };
        let step_end = if ramp {
            (step_start + Duration::from_secs_f64(cfg.step_secs)).min(write_end)
        } else {
            write_end
        };
        wait_for(
            &agg,
            step_end + Duration::from_secs(1),
            "writing",
            |_| Instant::now() >= step_end,
            |_| {
                progress
                    .bar
                    .set_position((write_start.elapsed().as_secs_f64() * 10.0) as u64)
            },
        )
        .await?;
        let (w1, d1, live_p99) = {
            let a = agg.lock();
            (
                wsh.committed.load(Ordering::Relaxed),
                a.total().delivered,
                a.live_step.quantile(0.99).map(|v| v as f64 / 1000.0),
            )
        };
        let secs = step_start.elapsed().as_secs_f64();
        steps.push(StepInfo {
            rate,
            start_wall_us,
            start_s: step_start.duration_since(t_start).as_secs_f64(),
            secs,
            writes: w1 - w0,
            delivered: d1 - d0,
            live_p99_ms: live_p99,
        });
        if ramp {
            progress.line(&format!(
                "step {}: target {:.0}/s, wrote {:.0}/s, delivered {:.0}/s, live p99 {}",
                steps.len() - 1,
                rate,
                (w1 - w0) as f64 / secs,
                (d1 - d0) as f64 / secs,
                live_p99.map_or("–".into(), |v| format!("{v:.1} ms"))
            ));
        }
        if !ramp {
            break;
        }
        let last_good = || steps.iter().rev().nth(1).map(|s| s.rate);
        if let (Some(limit), Some(p99)) = (cfg.stop_p99_ms, live_p99)
            && p99 > limit
        {
            knee = Some(KneeReport {
                last_good_rate: last_good(),
                stopped_at_rate: rate,
                reason: format!("live p99 {p99:.1} ms > {limit} ms"),
            });
            break;
        }
        if Instant::now() >= write_end {
            if cfg.stop_p99_ms.is_some() {
                knee = Some(KneeReport {
                    last_good_rate: Some(rate),
                    stopped_at_rate: rate,
                    reason: "duration reached before p99 passed the limit".into(),
                });
            }
            break;
        }
        let next = rate + cfg.rate_step;
        if cfg.max_rate.is_some_and(|m| next > m) {
            knee = Some(KneeReport {
                last_good_rate: cfg.stop_p99_ms.map(|_| rate),
                stopped_at_rate: rate,
                reason: "max rate reached".into(),
            });
            break;
        }
        rate = next;
    }
    wsh.stop();
    let write_secs = write_start.elapsed().as_secs_f64();
    let mut logs: Vec<WriterLog> = Vec::new();
    let mut writer_errors = Vec::new();
    let mut writers_down = Vec::new();
    for t in writer_tasks {
        match t.await {
            Ok(Ok(l)) => {
                writer_errors.extend(l.errors.iter().map(|e| format!("writer {}: {e}", l.writer)));
                logs.push(l);
            }
            Ok(Err(e)) => writers_down.push(format!("writer: {e:#}")),
            Err(e) => writers_down.push(format!("writer task: {e}")),
        }
    }
    let last_write = Instant::now();

    // 8. Drain: wait until every expected delivery arrived (nothing new for a while, or the limit).
    *phase_name.lock() = "drain";
    let expected_deliveries = wsh.reaches.load(Ordering::Relaxed);
    progress.phase("drain", expected_deliveries);
    let mut last_seen = (agg.lock().total().delivered, Instant::now());
    let drain_limit = last_write + Duration::from_secs_f64(cfg.drain_secs);
    let mut drained_at = None;
    if !churn {
        loop {
            let d = agg.lock().total().delivered;
            progress.update(d, String::new());
            if d >= expected_deliveries {
                drained_at = Some(Instant::now());
                break;
            }
            if d != last_seen.0 {
                last_seen = (d, Instant::now());
            }
            if last_seen.1.elapsed() > DRAIN_QUIET || Instant::now() > drain_limit {
                break;
            }
            if let Some(e) = agg.lock().errors.first() {
                bail!("client agent failed while draining: {e}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
    let drain_secs = drained_at
        .unwrap_or_else(Instant::now)
        .duration_since(last_write)
        .as_secs_f64();

    // 9. Stop the clients.
    *phase_name.lock() = "stop";
    progress.phase("stop", procs as u64);
    for a in &agents {
        let _ = a.cmds.send(Cmd::Stop).await;
    }
    wait_for(
        &agg,
        Instant::now() + Duration::from_secs(120) + Duration::from_millis(cfg.linger_ms),
        "stopping the clients",
        |a| a.stopped.iter().all(|s| *s),
        |a| {
            progress.update(
                a.stopped.iter().filter(|s| **s).count() as u64,
                String::new(),
            )
        },
    )
    .await?;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler_task.await;

    // 10. The write log, as committed.
    let acks: HashMap<(u32, u32), i64> = logs
        .iter()
        .flat_map(|l| l.recs.iter().map(move |r| ((l.writer, r.seq), r.ack_us)))
        .collect();
    let writes: Vec<Write> = match (&db, &cfg.rest) {
        (Some(db), _) => {
            let rows = db
                .query(
                    &format!(
                        "SELECT writer, seq, room, owner::text,
                                CASE WHEN $2 THEN (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::int8 END
                         FROM {} WHERE run = $1 ORDER BY writer, seq",
                        cfg.collection
                    ),
                    &[&run_id, &exact_commit_times],
                )
                .await
                .context("read the write log back")?;
            rows.iter()
                .map(|r| {
                    let (writer, seq): (i32, i32) = (r.get(0), r.get(1));
                    let owner: Option<String> = r.get(3);
                    let commit: Option<i64> = r.get(4);
                    Write {
                        writer: writer as u32,
                        seq: seq as u32,
                        room: r.get(2),
                        owner: owner.as_deref().and_then(writer::user_index),
                        commit_us: commit
                            .or_else(|| acks.get(&(writer as u32, seq as u32)).copied()),
                    }
                })
                .collect()
        }
        (None, _) => logs
            .iter()
            .flat_map(|l| {
                l.recs.iter().map(move |r| Write {
                    writer: l.writer,
                    seq: r.seq,
                    room: r.room,
                    owner: r.owner,
                    commit_us: Some(r.ack_us),
                })
            })
            .collect(),
    };
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("create {}", cfg.out.display()))?;
    let out_dir = std::fs::canonicalize(&cfg.out)?;
    let log_path = out_dir.join("writes.jsonl");
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&log_path)?);
        for w in &writes {
            writeln!(f, "{}", write_log_line(w))?;
        }
        f.flush()?;
    }

    // 11. Accounting in every agent.
    progress.phase("account", procs as u64);
    let phases: Vec<i64> = steps.iter().map(|s| s.start_wall_us).collect();
    for a in &agents {
        a.cmds
            .send(Cmd::Account {
                writes: log_path.clone(),
                phases: phases.clone(),
            })
            .await
            .context("agent gone before accounting")?;
    }
    wait_for(
        &agg,
        Instant::now() + Duration::from_secs(600),
        "accounting",
        |a| a.results.iter().all(Option::is_some),
        |a| {
            progress.update(
                a.results.iter().filter(|r| r.is_some()).count() as u64,
                String::new(),
            )
        },
    )
    .await?;
    for a in &mut agents {
        a.wait().await;
    }
    drop(agents);
    let _ = pump.await;
    progress.bar.finish_and_clear();

    // 12. Merge and judge.
    let results: Vec<Box<AgentResult>> = {
        let mut a = agg.lock();
        a.results.iter_mut().filter_map(Option::take).collect()
    };
    let agent_errors = agg.lock().errors.clone();
    let mut tally = Tally::default();
    let mut counters = Counters::default();
    let mut latency = accounting::new_histogram();
    let mut phase_latency: Vec<_> = steps.iter().map(|_| accounting::new_histogram()).collect();
    let (mut connect_h, mut auth_h, mut sub_h) = (
        accounting::new_histogram(),
        accounting::new_histogram(),
        accounting::new_histogram(),
    );
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut examples = Vec::new();
    let mut negative = 0;
    for r in &results {
        tally.add(&r.tally);
        counters.add(&r.counters);
        merge_pairs(&mut latency, &r.latency_us);
        for (h, p) in phase_latency.iter_mut().zip(&r.phase_latency_us) {
            merge_pairs(h, p);
        }
        merge_pairs(&mut connect_h, &r.connect_us);
        merge_pairs(&mut auth_h, &r.auth_us);
        merge_pairs(&mut sub_h, &r.subscribe_us);
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
        examples.extend(r.examples.iter().cloned());
        negative += r.negative_latency;
    }
    examples.truncate(accounting::MAX_EXAMPLES);
    let timeline = std::mem::take(&mut *timeline.lock());
    let rate_of = |ok: u64, bad: u64| {
        if ok + bad == 0 {
            0.0
        } else {
            ok as f64 / (ok + bad) as f64
        }
    };
    let mut failures = report::failures(
        &tally,
        &counters,
        planned,
        (cfg.connections * cfg.subs_per_conn) as u64,
        churn,
        &agent_errors,
    );
    if wsh.failed.load(Ordering::Relaxed) > 0 {
        failures.push(format!(
            "{} writes failed",
            wsh.failed.load(Ordering::Relaxed)
        ));
    }
    failures.extend(writers_down.iter().cloned());
    writer_errors.extend(writers_down);
    let committed = writes.len() as u64;
    let report = Report {
        passed: failures.is_empty(),
        failures,
        scenario: cfg.scenario.name().into(),
        started_at,
        wall_seconds: t_start.elapsed().as_secs_f64(),
        run_id,
        urls,
        client_processes: procs,
        connections: ConnectionsReport {
            planned,
            subscriptions_planned: (cfg.connections * cfg.subs_per_conn) as u64,
            sessions: counters.connects_ok + counters.connects_failed,
            sessions_per_second: (counters.connects_ok + counters.connects_failed) as f64
                / write_secs,
            connect_success_rate: rate_of(counters.connects_ok, counters.connects_failed),
            auth_success_rate: rate_of(counters.auth_ok, counters.auth_failed),
            subscribe_success_rate: rate_of(counters.subs_ok, counters.subs_failed),
            connect_ms: Pcts::from_us(&connect_h),
            auth_ms: Pcts::from_us(&auth_h),
            subscribe_ms: Pcts::from_us(&sub_h),
            counters,
            errors,
        },
        writes: WritesReport {
            via: if cfg.rest.is_some() {
                "rest".into()
            } else {
                "sql".into()
            },
            writers: cfg.writers,
            committed,
            failed: wsh.failed.load(Ordering::Relaxed),
            fell_behind: wsh.behind.load(Ordering::Relaxed),
            seconds: write_secs,
            per_second: committed as f64 / write_secs,
            errors: writer_errors,
            commit_time_source: if exact_commit_times {
                "pg_xact_commit_timestamp".into()
            } else {
                "ack".into()
            },
        },
        delivery: DeliveryReport {
            per_second: tally.delivered as f64 / (write_secs + drain_secs).max(1e-6),
            peak_per_second: timeline
                .iter()
                .map(|p| p.delivered_per_second)
                .fold(0.0, f64::max),
            drain_seconds: drain_secs,
            negative_latency: negative,
            examples,
            tally,
        },
        latency_ms: Pcts::from_us(&latency),
        latency_distribution: report::distribution(&latency),
        steps: steps
            .iter()
            .zip(&phase_latency)
            .enumerate()
            .map(|(i, (s, h))| StepReport {
                index: i,
                target_rate: s.rate,
                start_s: s.start_s,
                seconds: s.secs,
                writes: s.writes,
                writes_per_second: s.writes as f64 / s.secs,
                delivered_per_second: s.delivered as f64 / s.secs,
                live_p99_ms: s.live_p99_ms,
                latency_ms: Pcts::from_us(h),
            })
            .collect(),
        knee,
        memory,
        resources: report::resource_summaries(&timeline),
        timeline,
        config: cfg.redacted(),
    };
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out_dir.join("report.html"), crate::html::render(&report))?;

    if let Some(db) = &db
        && !cfg.keep_data
        && cluster.is_none()
        && let Err(e) = cleanup(db, &cfg, run_id, &users).await
    {
        eprintln!("[loadtest] cleanup failed: {e:#}");
    }
    drop(db);
    drop(cluster);
    Ok(report)
}
