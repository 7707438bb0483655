//! The run report: what `report.json` holds, the one-screen text summary, and the pass/fail verdict.
//!
//! A run fails when any subscription missed, doubled, reordered or got an unexpected delivery, when a
//! planned connection, authentication or subscription did not succeed, or when the server closed a live
//! connection. Every reason is listed in `failures`.

use crate::accounting::{Problem, Tally};
use crate::agent::Counters;
use crate::sampler::ProcSample;
use crate::scenario::Config;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Pcts {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Pcts {
    /// From a histogram of microseconds.
    pub fn from_us(h: &Histogram<u64>) -> Pcts {
        if h.is_empty() {
            return Pcts::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Pcts {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionsReport {
    pub planned: u64,
    pub subscriptions_planned: u64,
    /// Connection sessions started (each connect counts; for churn, many per slot).
    pub sessions: u64,
    /// Sessions per second of writing (the achieved churn rate).
    pub sessions_per_second: f64,
    pub counters: Counters,
    /// Successful connects / attempts.
    pub connect_success_rate: f64,
    pub auth_success_rate: f64,
    pub subscribe_success_rate: f64,
    /// TCP connect + WebSocket upgrade.
    pub connect_ms: Pcts,
    /// `auth` sent → `auth ok`.
    pub auth_ms: Pcts,
    /// All `subscribe`s sent → last `init` received.
    pub subscribe_ms: Pcts,
    pub errors: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WritesReport {
    /// `sql` or `rest`.
    pub via: String,
    pub writers: usize,
    pub committed: u64,
    pub failed: u64,
    /// Times a writer fell a second behind its schedule and skipped ahead (the database or REST API could
    /// not keep up).
    pub fell_behind: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub errors: Vec<String>,
    /// Where commit times come from: `pg_xact_commit_timestamp` or `ack`.
    pub commit_time_source: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryReport {
    pub tally: Tally,
    /// Rows delivered per second from the first write to the end of the drain.
    pub per_second: f64,
    /// Highest one-sample rate.
    pub peak_per_second: f64,
    /// Time from the last write to the last expected delivery (or the drain limit).
    pub drain_seconds: f64,
    /// Deliveries timed before their commit (clocks of different machines).
    pub negative_latency: u64,
    pub examples: Vec<Problem>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StepReport {
    pub index: usize,
    pub target_rate: f64,
    pub start_s: f64,
    pub seconds: f64,
    pub writes: u64,
    pub writes_per_second: f64,
    pub delivered_per_second: f64,
    /// Write start → receive, measured live (the stop rule uses it).
    pub live_p99_ms: Option<f64>,
    /// Commit → receive of writes committed in this step (exact, after the run).
    pub latency_ms: Pcts,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KneeReport {
    /// Highest target rate whose live p99 stayed within the limit.
    pub last_good_rate: Option<f64>,
    pub stopped_at_rate: f64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MemoryReport {
    /// `proc` (local processes) or `metrics` (scraped).
    pub source: String,
    pub gateway_rss_before: Option<f64>,
    pub gateway_rss_idle: Option<f64>,
    pub connections_idle: u64,
    /// (RSS idle − RSS before) / connections, user-space bytes.
    pub bytes_per_connection: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ResourceSummary {
    pub name: String,
    pub role: String,
    pub cpu_cores_mean: Option<f64>,
    pub cpu_cores_max: Option<f64>,
    pub rss_start_bytes: Option<f64>,
    pub rss_end_bytes: Option<f64>,
    pub rss_max_bytes: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TimePoint {
    /// Seconds since the harness started.
    pub t: f64,
    /// `connect`, `idle`, `write`, `drain`, `stop`.
    pub phase: String,
    pub target_rate: f64,
    pub writes: u64,
    pub delivered: u64,
    pub writes_per_second: f64,
    pub delivered_per_second: f64,
    pub open_connections: u64,
    pub live_p50_ms: Option<f64>,
    pub live_p99_ms: Option<f64>,
    pub procs: Vec<ProcSample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub passed: bool,
    pub failures: Vec<String>,
    pub scenario: String,
    /// Unix seconds.
    pub started_at: f64,
    pub wall_seconds: f64,
    pub run_id: i64,
    pub urls: Vec<String>,
    pub client_processes: usize,
    pub config: Config,
    pub connections: ConnectionsReport,
    pub writes: WritesReport,
    pub delivery: DeliveryReport,
    /// Commit → receive, every first delivery.
    pub latency_ms: Pcts,
    /// (percentile, ms) points of the latency distribution.
    pub latency_distribution: Vec<(f64, f64)>,
    pub steps: Vec<StepReport>,
    pub knee: Option<KneeReport>,
    pub memory: MemoryReport,
    pub resources: Vec<ResourceSummary>,
    pub timeline: Vec<TimePoint>,
}

/// Percentile points for the distribution plot: 0..99.9999 with more points in the tail.
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut qs: Vec<f64> = (0..=90).map(|p| p as f64).collect();
    for nines in 1..=5 {
        // 91..99, then 99.1..99.9, 99.91..99.99, …
        let base = 100.0 - 10f64.powi(2 - nines);
        for k in 1..=9 {
            qs.push(base + k as f64 * 10f64.powi(1 - nines));
        }
    }
    qs.push(100.0);
    qs.dedup();
    qs.into_iter()
        .map(|p| (p, h.value_at_percentile(p) as f64 / 1000.0))
        .collect()
}

/// Why the run failed (empty = passed).
pub fn failures(
    tally: &Tally,
    counters: &Counters,
    planned_connections: u64,
    planned_subs: u64,
    churn: bool,
    agent_errors: &[String],
) -> Vec<String> {
    let mut f = Vec::new();
    for (n, what) in [
        (tally.missing, "missing deliveries"),
        (tally.duplicated, "duplicated deliveries"),
        (tally.out_of_order, "out-of-order deliveries"),
        (tally.unexpected, "unexpected deliveries"),
    ] {
        if n > 0 {
            f.push(format!("{n} {what}"));
        }
    }
    if counters.connects_failed > 0 {
        f.push(format!("{} connections failed", counters.connects_failed));
    }
    if counters.auth_failed > 0 {
        f.push(format!("{} authentications failed", counters.auth_failed));
    }
    if counters.subs_failed > 0 {
        f.push(format!("{} subscriptions failed", counters.subs_failed));
    }
    if counters.server_closed > 0 {
        f.push(format!(
            "the server closed {} live connections",
            counters.server_closed
        ));
    }
    if !churn && counters.connects_ok < planned_connections {
        f.push(format!(
            "only {} of {planned_connections} connections opened",
            counters.connects_ok
        ));
    }
    if !churn && counters.subs_ok < planned_subs {
        f.push(format!(
            "only {} of {planned_subs} subscriptions got their init",
            counters.subs_ok
        ));
    }
    if tally.expected == 0 {
        f.push("no deliveries were expected: nothing was tested".into());
    }
    f.extend(agent_errors.iter().cloned());
    f
}

fn fmt_bytes(b: Option<f64>) -> String {
    match b {
        Some(b) if b.abs() >= 1e6 => format!("{:.1} MB", b / 1e6),
        Some(b) => format!("{:.0} B", b),
        None => "n/a".into(),
    }
}

impl Report {
    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        s.push_str(&format!(
            "{verdict}: scenario {} — {} connections × {} subscriptions, {} client process(es), {:.1} s\n",
            self.scenario,
            self.connections.planned,
            self.config.subs_per_conn,
            self.client_processes,
            self.wall_seconds
        ));
        for f in &self.failures {
            s.push_str(&format!("  FAILURE: {f}\n"));
        }
        let c = &self.connections;
        s.push_str(&format!(
            "connections: {} ok / {} failed (connect p50 {:.1} ms p99 {:.1} ms), auth p50 {:.1} ms p99 {:.1} ms, subscribe p50 {:.1} ms p99 {:.1} ms\n",
            c.counters.connects_ok,
            c.counters.connects_failed,
            c.connect_ms.p50,
            c.connect_ms.p99,
            c.auth_ms.p50,
            c.auth_ms.p99,
            c.subscribe_ms.p50,
            c.subscribe_ms.p99
        ));
        let w = &self.writes;
        s.push_str(&format!(
            "writes: {} committed ({:.0}/s over {:.1} s via {}), {} failed, commit times from {}\n",
            w.committed, w.per_second, w.seconds, w.via, w.failed, w.commit_time_source
        ));
        let d = &self.delivery;
        s.push_str(&format!(
            "delivered: {} rows ({:.0}/s, peak {:.0}/s); expected {}, missing {}, duplicated {}, out of order {}, unexpected {}\n",
            d.tally.delivered,
            d.per_second,
            d.peak_per_second,
            d.tally.expected,
            d.tally.missing,
            d.tally.duplicated,
            d.tally.out_of_order,
            d.tally.unexpected
        ));
        let l = &self.latency_ms;
        s.push_str(&format!(
            "latency commit→client: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms\n",
            l.p50, l.p90, l.p99, l.p999, l.max
        ));
        if self.steps.len() > 1 {
            for st in &self.steps {
                s.push_str(&format!(
                    "  step {}: target {:.0}/s → {:.0} writes/s, {:.0} delivered/s, p50 {:.2} ms, p99 {:.2} ms (live p99 {})\n",
                    st.index,
                    st.target_rate,
                    st.writes_per_second,
                    st.delivered_per_second,
                    st.latency_ms.p50,
                    st.latency_ms.p99,
                    st.live_p99_ms.map_or("n/a".into(), |v| format!("{v:.1} ms"))
                ));
            }
        }
        if let Some(k) = &self.knee {
            s.push_str(&format!(
                "knee: last good rate {} writes/s; stopped at {:.0}/s ({})\n",
                k.last_good_rate
                    .map_or("none".into(), |r| format!("{r:.0}")),
                k.stopped_at_rate,
                k.reason
            ));
        }
        let m = &self.memory;
        s.push_str(&format!(
            "gateway memory: {} before, {} with {} idle connections → {} per connection\n",
            fmt_bytes(m.gateway_rss_before),
            fmt_bytes(m.gateway_rss_idle),
            m.connections_idle,
            fmt_bytes(m.bytes_per_connection)
        ));
        for r in &self.resources {
            s.push_str(&format!(
                "  {:<14} cpu mean {:>5} cores, max {:>5}; rss max {}\n",
                r.name,
                r.cpu_cores_mean.map_or("n/a".into(), |v| format!("{v:.2}")),
                r.cpu_cores_max.map_or("n/a".into(), |v| format!("{v:.2}")),
                fmt_bytes(r.rss_max_bytes)
            ));
        }
        s
    }
}

/// Per-process summaries from the timeline.
pub fn resource_summaries(timeline: &[TimePoint]) -> Vec<ResourceSummary> {
    let mut order: Vec<String> = Vec::new();
    let mut by: BTreeMap<String, (String, Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for p in timeline {
        for s in &p.procs {
            if !by.contains_key(&s.name) {
                order.push(s.name.clone());
            }
            let e = by.entry(s.name.clone()).or_insert_with(|| {
                (
                    serde_json::to_value(s.role)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    Vec::new(),
                    Vec::new(),
                )
            });
            if let Some(c) = s.cpu_cores {
                e.1.push(c);
            }
            if let Some(r) = s.rss_bytes {
                e.2.push(r);
            }
        }
    }
    order
        .into_iter()
        .map(|name| {
            let (role, cpu, rss) = &by[&name];
            ResourceSummary {
                name: name.clone(),
                role: role.clone(),
                cpu_cores_mean: (!cpu.is_empty())
                    .then(|| cpu.iter().sum::<f64>() / cpu.len() as f64),
                cpu_cores_max: cpu.iter().copied().reduce(f64::max),
                rss_start_bytes: rss.first().copied(),
                rss_end_bytes: rss.last().copied(),
                rss_max_bytes: rss.iter().copied().reduce(f64::max),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let clean = Tally {
            subscriptions: 1,
            expected: 10,
            delivered: 10,
            ..Tally::default()
        };
        let ok = Counters {
            connects_ok: 2,
            auth_ok: 2,
            subs_ok: 2,
            ..Counters::default()
        };
        assert!(failures(&clean, &ok, 2, 2, false, &[]).is_empty());
        let mut bad = clean;
        bad.missing = 1;
        bad.out_of_order = 2;
        let f = failures(&bad, &ok, 2, 2, false, &[]);
        assert_eq!(f, vec!["1 missing deliveries", "2 out-of-order deliveries"]);
        assert_eq!(failures(&clean, &ok, 3, 2, false, &[]).len(), 1);
        assert_eq!(
            failures(&clean, &ok, 3, 2, true, &[]).len(),
            0,
            "churn counts sessions"
        );
        assert_eq!(failures(&Tally::default(), &ok, 2, 2, false, &[]).len(), 1);
    }

    #[test]
    fn distribution_points_rise() {
        let mut h = crate::accounting::new_histogram();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let d = distribution(&h);
        assert!(d.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(d.last().unwrap().0, 100.0);
        assert!((d.last().unwrap().1 - 10.0).abs() < 0.1);
    }
}
