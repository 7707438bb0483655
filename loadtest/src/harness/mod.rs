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
//!
//! [`run`] reads as that list: each phase is a function (`setup` for the system, the data, the samplers,
//! the agents and the timeline; `Run::connect`, `Run::idle` and `Run::stop_clients` here; `write` for the
//! writers and the drain; `judge` for the write log, the accounting and the report).

mod judge;
mod setup;
mod write;

use crate::agent::{AgentHandle, AgentResult, Cmd, Counters, now_us, raise_fd_limit};
use crate::livehist::Buckets;
use crate::report::{MemoryReport, Report};
use crate::sampler::{Role, Sampler};
use crate::scenario::{Config, Scenario};
use crate::writer::WriterShared;
use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// What every phase of a run shares.
struct Run<'a> {
    cfg: &'a Config,
    t_start: Instant,
    run_id: i64,
    progress: Arc<Progress>,
    agg: Arc<Mutex<Agg>>,
    procs: usize,
    wsh: Arc<WriterShared>,
    /// The phase the timeline labels its points with.
    phase_name: Arc<Mutex<&'static str>>,
}

/// Run one benchmark.
pub async fn run(cfg: Config) -> Result<Report> {
    raise_fd_limit();
    let cfg = &cfg;
    let t_start = Instant::now();
    let started_at = now_us() as f64 / 1e6;
    let progress = Arc::new(Progress::new(
        cfg.progress || std::io::stderr().is_terminal(),
    ));
    let run_id: i64 = rand::random_range(1..i32::MAX as i64);

    let system = setup::system_under_test(cfg, &progress).await?;
    let source_ips = setup::source_ips(cfg, &system.urls, &progress)?;
    let auth = setup::auth_plan(cfg, run_id)?;
    let data = setup::prepare_data(cfg, system.db_url.as_deref(), run_id).await?;
    let mut sources = setup::sources(cfg, system.cluster.as_ref())?;
    let agents =
        setup::spawn_agents(cfg, &system.urls, &source_ips, run_id, &auth, &mut sources).await?;
    let sampler = Arc::new(tokio::sync::Mutex::new(Sampler { sources }));
    let rss_before = gateway_rss(&sampler).await;
    let r = Run {
        cfg,
        t_start,
        run_id,
        progress,
        agg: agents.agg.clone(),
        procs: agents.procs,
        wsh: Arc::new(WriterShared::default()),
        phase_name: Arc::new(Mutex::new("connect")),
    };
    let timeline = setup::Timeline::start(&r, sampler.clone());

    r.connect().await?;
    let memory = r.idle(&sampler, rss_before, system.cluster.is_some()).await;
    let written = r.write(&agents.handles, system.db_url.as_deref()).await?;
    let drain_secs = r.drain(written.last_write).await?;
    r.stop_clients(&agents.handles).await?;
    let timeline = timeline.stop().await;

    let (writes, out_dir, log_path) = r
        .write_log(data.db.as_ref(), &written.logs, data.exact_commit_times)
        .await?;
    r.account(agents, &log_path, &written.steps).await?;
    let keep_cluster = system.cluster.is_some();
    let report = r.judge(judge::Judged {
        system,
        written,
        memory,
        drain_secs,
        timeline,
        writes,
        exact_commit_times: data.exact_commit_times,
        started_at,
    });
    std::fs::write(
        out_dir.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out_dir.join("report.html"), crate::html::render(&report))?;

    if let Some(db) = &data.db
        && !cfg.keep_data
        && !keep_cluster
        && let Err(e) = setup::cleanup(db, cfg, run_id, &data.users).await
    {
        eprintln!("[loadtest] cleanup failed: {e:#}");
    }
    Ok(report)
}

impl Run<'_> {
    fn churn(&self) -> bool {
        self.cfg.scenario == Scenario::Churn
    }

    /// Phase 5: wait until every agent has its connections open and subscribed.
    async fn connect(&self) -> Result<()> {
        let (cfg, progress, agg, t_start) = (self.cfg, &self.progress, &self.agg, self.t_start);
        let churn = self.churn();
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
            agg,
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
        Ok(())
    }

    /// Phase 6: let the connections sit idle, then measure gateway memory per connection.
    async fn idle(
        &self,
        sampler: &tokio::sync::Mutex<Sampler>,
        rss_before: Option<f64>,
        local: bool,
    ) -> MemoryReport {
        let (cfg, progress, agg) = (self.cfg, &self.progress, &self.agg);
        let churn = self.churn();
        *self.phase_name.lock() = "idle";
        progress.phase("idle", 0);
        if !churn && cfg.idle_secs > 0.0 {
            // Deliberate: connections must sit idle before their memory is measured.
            tokio::time::sleep(Duration::from_secs_f64(cfg.idle_secs)).await;
        }
        let rss_idle = if churn {
            None
        } else {
            gateway_rss(sampler).await
        };
        let open_idle = agg.lock().total().open;
        MemoryReport {
            source: if local {
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
        }
    }

    /// Phase 9: stop the clients and wait until every agent reported its final counters.
    async fn stop_clients(&self, agents: &[AgentHandle]) -> Result<()> {
        let (cfg, progress, agg, procs) = (self.cfg, &self.progress, &self.agg, self.procs);
        *self.phase_name.lock() = "stop";
        progress.phase("stop", procs as u64);
        for a in agents {
            let _ = a.cmds.send(Cmd::Stop).await;
        }
        wait_for(
            agg,
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
        Ok(())
    }
}
