//! The write phase (fixed rate, or a ramp of steps that stops when the live p99 passes a limit) and the
//! drain after it.

use super::{DRAIN_QUIET, POLL, Run, wait_for};
use crate::agent::{AgentHandle, Cmd, now_us};
use crate::report::KneeReport;
use crate::writer::{self, RestTarget, WritePlan, WriterLog};
use anyhow::{Context, Result, bail};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub(super) struct StepInfo {
    pub rate: f64,
    pub start_wall_us: i64,
    pub start_s: f64,
    pub secs: f64,
    pub writes: u64,
    pub delivered: u64,
    pub live_p99_ms: Option<f64>,
}

/// What the write phase did.
pub(super) struct Written {
    pub steps: Vec<StepInfo>,
    pub knee: Option<KneeReport>,
    pub logs: Vec<WriterLog>,
    pub writer_errors: Vec<String>,
    pub writers_down: Vec<String>,
    pub write_secs: f64,
    pub last_write: Instant,
}

impl Run<'_> {
    /// Phase 7: start the agents' accounting clocks and the writers; run the steps; stop the writers.
    pub(super) async fn write(
        &self,
        agents: &[AgentHandle],
        db_url: Option<&str>,
    ) -> Result<Written> {
        let (cfg, progress, agg, wsh, run_id, t_start) = (
            self.cfg,
            &self.progress,
            &self.agg,
            &self.wsh,
            self.run_id,
            self.t_start,
        );
        for a in agents {
            a.cmds.send(Cmd::Start).await.context("agent gone")?;
        }
        *self.phase_name.lock() = "write";
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
            writer_tasks.push(match (&cfg.rest, db_url) {
                (Some(rest), _) => {
                    let target = RestTarget::parse(rest)?;
                    let token = cfg.token.clone().unwrap_or_default();
                    tokio::spawn(writer::rest_writer(i, target, token, plan, wsh))
                }
                (None, Some(url)) => tokio::spawn(writer::sql_writer(i, url.to_owned(), plan, wsh)),
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
                agg,
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
                    writer_errors
                        .extend(l.errors.iter().map(|e| format!("writer {}: {e}", l.writer)));
                    logs.push(l);
                }
                Ok(Err(e)) => writers_down.push(format!("writer: {e:#}")),
                Err(e) => writers_down.push(format!("writer task: {e}")),
            }
        }
        let last_write = Instant::now();
        Ok(Written {
            steps,
            knee,
            logs,
            writer_errors,
            writers_down,
            write_secs,
            last_write,
        })
    }

    /// Phase 8: wait until every expected delivery arrived (nothing new for a while, or the limit); the
    /// seconds it took after the last write.
    pub(super) async fn drain(&self, last_write: Instant) -> Result<f64> {
        let (cfg, progress, agg, wsh) = (self.cfg, &self.progress, &self.agg, &self.wsh);
        let churn = self.churn();
        *self.phase_name.lock() = "drain";
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
        Ok(drain_secs)
    }
}
