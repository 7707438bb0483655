//! Resource samples of the system under test: CPU and RSS of local processes from `/proc`, or of remote
//! gateways and workers from their Prometheus `/metrics` (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `realtime_gateway_connections`).
//!
//! A [`Source`] is one process; [`Sampler::sample`] reads them all and turns cumulative CPU seconds into
//! cores used since the previous sample.

use serde::Serialize;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use testkit::procstat;

/// Shortest interval over which CPU use is computed.
const MIN_CPU_INTERVAL: Duration = Duration::from_millis(250);

/// The metrics the sampler reads from a Prometheus text exposition (label sets summed per name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<f64>,
    pub connections: Option<f64>,
}

/// Parse Prometheus text format for the metrics the harness uses. Unknown lines are ignored; several
/// series of one metric (labels) are summed.
pub fn parse_prometheus(text: &str) -> Scrape {
    let mut sums: HashMap<&str, f64> = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // name{labels} value [timestamp]  |  name value [timestamp]
        let (name, rest) = match line.find(['{', ' ', '\t']) {
            Some(i) if line.as_bytes()[i] == b'{' => {
                let Some(close) = label_end(&line[i..]) else {
                    continue;
                };
                (&line[..i], &line[i + close + 1..])
            }
            Some(i) => (&line[..i], &line[i..]),
            None => continue,
        };
        if !matches!(
            name,
            "process_cpu_seconds_total"
                | "process_resident_memory_bytes"
                | "realtime_gateway_connections"
        ) {
            continue;
        }
        let Some(v) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        if v.is_finite() {
            *sums.entry(name).or_default() += v;
        }
    }
    Scrape {
        cpu_seconds: sums.get("process_cpu_seconds_total").copied(),
        rss_bytes: sums.get("process_resident_memory_bytes").copied(),
        connections: sums.get("realtime_gateway_connections").copied(),
    }
}

/// Offset of the `}` closing a label set that starts at `s[0] == '{'` (quotes and escapes respected).
fn label_end(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b'}' if !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

/// Where a process's figures come from.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A local process; `tree` adds its direct children (PostgreSQL's backends).
    Pid { pid: u32, tree: bool },
    /// A `/metrics` URL.
    Metrics { addr: String, path: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Gateway,
    Worker,
    Postgres,
    Redis,
    /// The harness and its client agents.
    Client,
    /// A metrics URL whose role is not known yet (a gateway once it reports connections).
    Remote,
}

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub role: Role,
    pub origin: Origin,
    last_cpu: Option<(Instant, f64)>,
}

impl Source {
    pub fn pid(name: &str, role: Role, pid: u32, tree: bool) -> Source {
        Source {
            name: name.into(),
            role,
            origin: Origin::Pid { pid, tree },
            last_cpu: None,
        }
    }

    pub fn metrics(url: &str) -> anyhow::Result<Source> {
        let u = url::Url::parse(url)?;
        let host = u.host_str().unwrap_or("127.0.0.1");
        let port = u.port_or_known_default().unwrap_or(80);
        let mut path = u.path().to_owned();
        if let Some(q) = u.query() {
            path.push('?');
            path.push_str(q);
        }
        Ok(Source {
            name: url.into(),
            role: Role::Remote,
            origin: Origin::Metrics {
                addr: format!("{host}:{port}"),
                path,
            },
            last_cpu: None,
        })
    }
}

/// One process at one time.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcSample {
    pub name: String,
    pub role: Role,
    /// Cores used since the previous sample (None on the first).
    pub cpu_cores: Option<f64>,
    pub rss_bytes: Option<f64>,
    /// `realtime_gateway_connections`, when scraped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<f64>,
}

pub struct Sampler {
    pub sources: Vec<Source>,
}

impl Sampler {
    pub async fn sample(&mut self) -> Vec<ProcSample> {
        let mut out = Vec::with_capacity(self.sources.len());
        for s in &mut self.sources {
            let now = Instant::now();
            let scrape = match &s.origin {
                Origin::Pid { pid, tree } => Scrape {
                    cpu_seconds: if *tree {
                        Some(procstat::tree_cpu_seconds(*pid))
                    } else {
                        procstat::cpu_seconds(*pid)
                    },
                    rss_bytes: procstat::rss_bytes(*pid).map(|b| b as f64),
                    connections: None,
                },
                Origin::Metrics { addr, path } => {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        testkit::client::http(addr, "GET", path, &[], None),
                    )
                    .await
                    {
                        Ok(Ok(r)) if r.status == 200 => {
                            parse_prometheus(&String::from_utf8_lossy(&r.body))
                        }
                        _ => Scrape::default(),
                    }
                }
            };
            if s.role == Role::Remote && scrape.connections.is_some() {
                s.role = Role::Gateway;
            }
            // CPU times tick in 10 ms steps: over a short interval one tick reads as a full core, so
            // an extra sample soon after the last one reports no CPU and keeps the older base.
            let cpu_cores = match (scrape.cpu_seconds, s.last_cpu) {
                (Some(c), Some((t, c0))) if now.duration_since(t) >= MIN_CPU_INTERVAL => {
                    s.last_cpu = Some((now, c));
                    Some(((c - c0) / now.duration_since(t).as_secs_f64()).max(0.0))
                }
                (Some(c), None) => {
                    s.last_cpu = Some((now, c));
                    None
                }
                _ => None,
            };
            out.push(ProcSample {
                name: s.name.clone(),
                role: s.role,
                cpu_cores,
                rss_bytes: scrape.rss_bytes,
                connections: scrape.connections,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let text = r#"
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
process_resident_memory_bytes 1.048576e+07
realtime_gateway_connections{endpoint="rest"} 100
realtime_gateway_connections{endpoint="graphql",x="a b}"} 5 1700000000000
realtime_gateway_connections_total 999
something_else 1
bad_line
"#;
        let s = parse_prometheus(text);
        assert_eq!(s.cpu_seconds, Some(12.5));
        assert_eq!(s.rss_bytes, Some(10_485_760.0));
        assert_eq!(s.connections, Some(105.0));
        assert_eq!(parse_prometheus(""), Scrape::default());
    }

    #[tokio::test]
    async fn samples_a_local_process() {
        let mut s = Sampler {
            sources: vec![Source::pid("me", Role::Client, std::process::id(), false)],
        };
        let a = s.sample().await;
        assert!(a[0].cpu_cores.is_none());
        assert!(a[0].rss_bytes.unwrap() > 0.0);
        // Burn CPU for longer than the shortest CPU interval.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < MIN_CPU_INTERVAL + Duration::from_millis(50) {
            for i in 0..100_000u64 {
                x = x.wrapping_add(i * i);
            }
        }
        std::hint::black_box(x);
        let b = s.sample().await;
        assert!(b[0].cpu_cores.unwrap() > 0.0);
    }
}
