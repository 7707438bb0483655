//! After the clients stopped: the write log read back as committed, accounting in every agent, and the
//! merged report with its verdict.

use super::setup::{Agents, System};
use super::write::Written;
use super::{Run, wait_for};
use crate::accounting::{self, Tally, Write};
use crate::agent::{AgentResult, Cmd, Counters, merge_pairs, write_log_line};
use crate::report::{
    self, ConnectionsReport, DeliveryReport, MemoryReport, Pcts, Report, StepReport, TimePoint,
    WritesReport,
};
use crate::writer::{self, WriterLog};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Run<'_> {
    /// Phase 10: the write log as committed (with commit timestamps when the server keeps them), written to
    /// `writes.jsonl` in the output folder. Returns the writes, the folder and the log's path.
    pub(super) async fn write_log(
        &self,
        db: Option<&tokio_postgres::Client>,
        logs: &[WriterLog],
        exact_commit_times: bool,
    ) -> Result<(Vec<Write>, PathBuf, PathBuf)> {
        let (cfg, run_id) = (self.cfg, self.run_id);
        let acks: HashMap<(u32, u32), i64> = logs
            .iter()
            .flat_map(|l| l.recs.iter().map(move |r| ((l.writer, r.seq), r.ack_us)))
            .collect();
        let writes: Vec<Write> = match (db, &cfg.rest) {
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
        std::fs::create_dir_all(&cfg.out)
            .with_context(|| format!("create {}", cfg.out.display()))?;
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
        Ok((writes, out_dir, log_path))
    }

    /// Phase 11: every agent accounts its subscriptions against the log; then the agents end.
    pub(super) async fn account(
        &self,
        mut agents: Agents,
        log_path: &Path,
        steps: &[super::write::StepInfo],
    ) -> Result<()> {
        let (progress, agg) = (&self.progress, &self.agg);
        let log_path = log_path.to_path_buf();
        progress.phase("account", agents.procs as u64);
        let phases: Vec<i64> = steps.iter().map(|s| s.start_wall_us).collect();
        for a in &agents.handles {
            a.cmds
                .send(Cmd::Account {
                    writes: log_path.clone(),
                    phases: phases.clone(),
                })
                .await
                .context("agent gone before accounting")?;
        }
        wait_for(
            agg,
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
        for a in &mut agents.handles {
            a.wait().await;
        }
        let pump = agents.pump;
        drop(agents.handles);
        let _ = pump.await;
        progress.bar.finish_and_clear();
        Ok(())
    }

    /// Phase 12: merge the agents' results and judge the run.
    pub(super) fn judge(&self, inputs: Judged) -> Report {
        let (cfg, agg, wsh, procs, t_start, run_id) = (
            self.cfg,
            &self.agg,
            &self.wsh,
            self.procs,
            self.t_start,
            self.run_id,
        );
        let churn = self.churn();
        let planned = cfg.connections as u64;
        let Judged {
            system,
            written,
            memory,
            drain_secs,
            timeline,
            writes,
            exact_commit_times,
            started_at,
        } = inputs;
        let Written {
            steps,
            knee,
            mut writer_errors,
            writers_down,
            write_secs,
            ..
        } = written;
        let urls = system.urls;
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

        Report {
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
        }
    }
}

/// What judging a run takes from the phases before.
pub(super) struct Judged {
    pub system: System,
    pub written: Written,
    pub memory: MemoryReport,
    pub drain_secs: f64,
    pub timeline: Vec<TimePoint>,
    pub writes: Vec<Write>,
    pub exact_commit_times: bool,
    pub started_at: f64,
}
