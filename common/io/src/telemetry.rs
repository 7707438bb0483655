//! Telemetry for the gateway and the fanout-worker: logs, OpenTelemetry traces and Prometheus metrics,
//! configured from the same environment variables in both.
//!
//! - **Logs**: `LOG_LEVEL` (a level or a tracing filter) and `LOG_STYLE` (`pretty` text or `raw` JSON
//!   lines, Directus's names), on stderr.
//! - **Traces**: OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set, with
//!   the standard `OTEL_*` variables; off otherwise. Spans meant only for tracing use the target
//!   [`OTEL_TARGET`]: no layer enables them when tracing is off, so they cost nothing per connection then.
//! - **Change traces** follow one committed transaction through capture (one worker), matching (another)
//!   and delivery (every gateway) without carrying any context in the data path: every process derives
//!   the same trace id and parent span id from the transaction's commit LSN ([`change_trace`]), and the
//!   same sampling decision from it. A trace viewer then shows the stages of a change together, under a
//!   parent that no process exports.
//! - **Metrics**: a Prometheus recorder rendered on request ([`Metrics::render`]), with histogram buckets
//!   per unit and the standard `process_*` gauges read from `/proc/self`.
//!
//! Like [`crate::redis`], this module does I/O (the exporter's HTTP client, `/proc`), which is why it lives
//! here and not in the pure `common` core.

use common::env::EnvReader;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::KeyValue;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Setup errors (bad filter, exporter or recorder already installed).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Target of spans that exist only for tracing (connections, subscriptions, change stages).
pub const OTEL_TARGET: &str = "realtime::otel";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// Full URL traces are POSTed to (`…/v1/traces`).
    pub endpoint: String,
    pub json: bool,
    pub headers: HashMap<String, String>,
    pub timeout: Duration,
    pub service_name: String,
    pub resource: Vec<(String, String)>,
    /// Fraction of traces sampled (root spans and change traces); child spans follow their parent.
    pub ratio: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub log_level: String,
    pub metrics_enabled: bool,
    pub otlp: Option<OtlpSettings>,
}

impl TelemetrySettings {
    /// Read `LOG_*`, `METRICS_ENABLED` and `OTEL_*`; problems are recorded in `r`.
    pub fn from_env(r: &mut EnvReader, default_service: &str) -> TelemetrySettings {
        let log_format = match r
            .string("LOG_STYLE", "pretty")
            .to_ascii_lowercase()
            .as_str()
        {
            "raw" | "json" => LogFormat::Json,
            "pretty" | "text" => LogFormat::Text,
            other => {
                let other = other.to_owned();
                r.err(
                    "LOG_STYLE",
                    format!("expected pretty or raw, got {other:?}"),
                );
                LogFormat::Text
            }
        };
        let log_level = r.string("LOG_LEVEL", "info");
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            r.err(
                "LOG_LEVEL",
                "is not a valid level (trace, debug, info, warn, error) or filter",
            );
        }
        let metrics_enabled = r.bool("METRICS_ENABLED", true);
        let otlp = otlp_from_env(r, default_service);
        TelemetrySettings {
            log_format,
            log_level,
            metrics_enabled,
            otlp,
        }
    }
}

fn key_values(r: &mut EnvReader, name: &str) -> Vec<(String, String)> {
    let Some(raw) = r.opt(name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                let v = form_urlencoded::parse(format!("v={}", v.trim()).as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                out.push((k.trim().to_owned(), v));
            }
            _ => r.err(name, format!("expected key=value pairs, got {pair:?}")),
        }
    }
    out
}

fn otlp_from_env(r: &mut EnvReader, default_service: &str) -> Option<OtlpSettings> {
    let disabled = r.bool("OTEL_SDK_DISABLED", false);
    let endpoint = match (
        r.opt("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        r.opt("OTEL_EXPORTER_OTLP_ENDPOINT"),
    ) {
        (Some(full), _) => full,
        (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
        (None, None) => return None,
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        r.err(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "must be an http:// or https:// URL (OTLP over HTTP, usually port 4318)",
        );
    }
    let protocol = r
        .opt("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| r.opt("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|| "http/protobuf".into());
    let json = match protocol.as_str() {
        "http/protobuf" => false,
        "http/json" => true,
        other => {
            r.err(
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                format!("{other:?} is not supported: use http/protobuf or http/json"),
            );
            false
        }
    };
    let headers = key_values(r, "OTEL_EXPORTER_OTLP_HEADERS")
        .into_iter()
        .collect();
    let timeout = Duration::from_millis(r.number::<u64>("OTEL_EXPORTER_OTLP_TIMEOUT", 10_000, 1));
    let service_name = r.string("OTEL_SERVICE_NAME", default_service);
    let resource = key_values(r, "OTEL_RESOURCE_ATTRIBUTES");
    let arg = r.opt("OTEL_TRACES_SAMPLER_ARG");
    let ratio_arg = match arg.as_deref().map(str::parse::<f64>) {
        None => 1.0,
        Some(Ok(v)) if (0.0..=1.0).contains(&v) => v,
        Some(_) => {
            r.err("OTEL_TRACES_SAMPLER_ARG", "must be a number from 0 to 1");
            1.0
        }
    };
    let ratio = match r
        .string("OTEL_TRACES_SAMPLER", "parentbased_always_on")
        .as_str()
    {
        "always_on" | "parentbased_always_on" => 1.0,
        "always_off" | "parentbased_always_off" => 0.0,
        "traceidratio" | "parentbased_traceidratio" => ratio_arg,
        other => {
            let other = other.to_owned();
            r.err(
                "OTEL_TRACES_SAMPLER",
                format!("{other:?} is not supported: use always_on, always_off, traceidratio or their parentbased_ forms"),
            );
            1.0
        }
    };
    if disabled {
        return None;
    }
    Some(OtlpSettings {
        endpoint,
        json,
        headers,
        timeout,
        service_name,
        resource,
        ratio,
    })
}

/// Fraction of change traces sampled; unset while tracing is off.
static CHANGE_RATIO: OnceLock<f64> = OnceLock::new();

/// Keeps the trace pipeline alive; flushes buffered spans when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Install logging and, when configured, trace export. `quiet` adds filter directives for noisy
/// dependencies. Call it before starting a tokio runtime: the OTLP exporter's blocking HTTP client must
/// not be built inside one.
pub fn init(settings: &TelemetrySettings, quiet: &[&str]) -> Result<Telemetry, Error> {
    let mut directives = settings.log_level.clone();
    for q in quiet {
        if !directives.contains(q.split('=').next().unwrap_or(q)) {
            directives.push(',');
            directives.push_str(q);
        }
    }
    let fmt_filter =
        tracing_subscriber::EnvFilter::try_new(format!("{directives},{OTEL_TARGET}=off"))?;
    // Colours only for a terminal: a log file or a collector gets plain `key=value` text.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = match settings.log_format {
        LogFormat::Json => fmt.json().with_filter(fmt_filter).boxed(),
        LogFormat::Text => fmt.with_filter(fmt_filter).boxed(),
    };
    let Some(otlp) = &settings.otlp else {
        tracing_subscriber::registry().with(fmt).try_init()?;
        return Ok(Telemetry { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(otlp.endpoint.clone())
        .with_protocol(if otlp.json {
            Protocol::HttpJson
        } else {
            Protocol::HttpBinary
        })
        .with_headers(otlp.headers.clone())
        .with_timeout(otlp.timeout)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(otlp.service_name.clone())
        .with_attributes(
            otlp.resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            otlp.ratio,
        ))))
        .build();
    let tracer = provider.tracer("realtime");
    let otel_filter =
        tracing_subscriber::EnvFilter::try_new(format!("{directives},{OTEL_TARGET}=info"))?;
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(otel_filter);
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()?;
    let _ = CHANGE_RATIO.set(otlp.ratio);
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// Whether the transaction committed at `lsn` is traced (tracing on, and sampled). Check it before
/// creating a change span, so untraced changes cost nothing.
pub fn change_traced(lsn: u64) -> bool {
    CHANGE_RATIO
        .get()
        .is_some_and(|ratio| change_ids(lsn, *ratio).2)
}

/// Put `span` into the trace of the transaction committed at `lsn` (no-op when it is not traced).
pub fn join_change_trace(span: &tracing::Span, lsn: u64) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if let Some(cx) = change_trace(lsn) {
        let _ = span.set_parent(cx);
    }
}

/// Everything a binary sets up before its runtime starts: logs and traces ([`init`]) and, when
/// `METRICS_ENABLED`, the metrics recorder. The error says which part failed.
pub fn setup(
    settings: &TelemetrySettings,
    component: &'static str,
    quiet: &[&str],
) -> Result<(Telemetry, Option<Metrics>), String> {
    let telemetry =
        init(settings, quiet).map_err(|e| format!("cannot set up logging and tracing: {e}"))?;
    let metrics = if settings.metrics_enabled {
        Some(
            Metrics::install(component)
                .map_err(|e| format!("cannot install the metrics recorder: {e}"))?,
        )
    } else {
        None
    };
    Ok((telemetry, metrics))
}

/// The parent every process gives the spans of the transaction committed at `lsn`, or `None` when
/// tracing is off or this change is not sampled.
pub fn change_trace(lsn: u64) -> Option<opentelemetry::Context> {
    let ratio = *CHANGE_RATIO.get()?;
    let (trace, span, sampled) = change_ids(lsn, ratio);
    if !sampled {
        return None;
    }
    let sc = SpanContext::new(
        TraceId::from(trace),
        SpanId::from(span),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    Some(opentelemetry::Context::new().with_remote_span_context(sc))
}

/// Deterministic trace id, parent span id and sampling decision for a change (pure, so every process
/// agrees and tests can pin it).
pub fn change_ids(lsn: u64, ratio: f64) -> (u128, u64, bool) {
    let bytes = lsn.to_be_bytes();
    let trace = xxhash_rust::xxh3::xxh3_128_with_seed(&bytes, 0x7274_6368_616e_6765) | 1;
    let span = xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, 0x7274_7370_616e) | 1;
    // Same rule as TraceIdRatioBased: compare the low 63 bits of the trace id with the ratio.
    let sampled = ratio >= 1.0 || ((trace as u64) >> 1) < (ratio * (1u64 << 63) as f64) as u64;
    (trace, span, sampled)
}

/// Histogram buckets, in seconds, for the `_seconds` metrics that measure network-scale latencies.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for per-change CPU work (matching takes hundreds of nanoseconds).
const CPU_BUCKETS: &[f64] = &[
    1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 1e-3, 1e-2,
];

/// The process's Prometheus metrics.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// Install the global recorder (once per process) and describe the process metrics.
    pub fn install(component: &'static str) -> Result<Metrics, Error> {
        let handle = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)?
            .set_buckets_for_metric(
                Matcher::Suffix("matching_duration_seconds".into()),
                CPU_BUCKETS,
            )?
            .install_recorder()?;
        metrics::gauge!("realtime_build_info", "version" => env!("CARGO_PKG_VERSION"), "component" => component)
            .set(1.0);
        if let Some(start) = process::start_time_seconds() {
            metrics::gauge!("process_start_time_seconds").set(start);
        }
        Ok(Metrics { handle })
    }

    /// The exposition text, with the process gauges read now.
    pub fn render(&self) -> String {
        process::record();
        self.handle.run_upkeep();
        self.handle.render()
    }
}

/// `process_*` metrics from `/proc/self` (Linux), named as the Prometheus client libraries name them.
mod process {
    /// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on Linux).
    const TICKS: f64 = 100.0;
    const PAGE: f64 = 4096.0;

    fn stat_fields() -> Option<Vec<String>> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the parenthesised command name (which may contain spaces).
        let rest = &stat[stat.rfind(')')? + 2..];
        Some(rest.split_whitespace().map(str::to_owned).collect())
    }

    pub fn record() {
        if let Some(f) = stat_fields() {
            // utime and stime are fields 14 and 15 (index 11 and 12 after the command), rss field 24.
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // A gauge: counters here are integers, and CPU seconds need fractions (`rate()` works on it).
            metrics::gauge!("process_cpu_seconds_total").set((ticks(11) + ticks(12)) / TICKS);
            metrics::gauge!("process_resident_memory_bytes").set(ticks(21) * PAGE);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            metrics::gauge!("process_open_fds").set(fds.count() as f64);
        }
    }

    pub fn start_time_seconds() -> Option<f64> {
        let f = stat_fields()?;
        let start_ticks: f64 = f.get(19)?.parse().ok()?;
        let uptime: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let now = crate::clock::since_epoch().as_secs_f64();
        Some(now - uptime + start_ticks / TICKS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<TelemetrySettings, Vec<String>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut r = EnvReader::new(&map);
        let s = TelemetrySettings::from_env(&mut r, "svc");
        if r.errors.is_empty() {
            Ok(s)
        } else {
            Err(r.errors.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn tracing_is_off_without_an_endpoint_and_follows_otel_variables() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.otlp, None);
        assert!(s.metrics_enabled);
        assert_eq!(s.log_format, LogFormat::Text);
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20x,team=rt",
            ),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("LOG_STYLE", "raw"),
        ])
        .unwrap();
        let o = s.otlp.unwrap();
        assert_eq!(o.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(o.headers["authorization"], "Bearer x");
        assert_eq!(o.service_name, "svc");
        assert_eq!(
            o.resource,
            vec![("deployment.environment".into(), "prod".into())]
        );
        assert_eq!(o.ratio, 0.25);
        assert!(!o.json);
        assert_eq!(s.log_format, LogFormat::Json);
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "gw"),
        ])
        .unwrap();
        let o = s.otlp.unwrap();
        assert_eq!(
            (o.endpoint.as_str(), o.json, o.service_name.as_str()),
            ("http://c:4318/custom", true, "gw")
        );
        assert_eq!(
            settings(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ])
            .unwrap()
            .otlp,
            None
        );
    }

    #[test]
    fn bad_values_are_named() {
        let err = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
            ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
            ("LOG_STYLE", "fancy"),
            ("LOG_LEVEL", "loud=="),
            ("METRICS_ENABLED", "maybe"),
        ])
        .unwrap_err()
        .join("\n");
        for var in [
            "OTEL_EXPORTER_OTLP_ENDPOINT:",
            "OTEL_EXPORTER_OTLP_PROTOCOL:",
            "OTEL_TRACES_SAMPLER:",
            "OTEL_TRACES_SAMPLER_ARG:",
            "OTEL_RESOURCE_ATTRIBUTES:",
            "LOG_STYLE:",
            "LOG_LEVEL:",
            "METRICS_ENABLED:",
        ] {
            assert!(err.contains(var), "{var} missing in:\n{err}");
        }
    }

    #[test]
    fn change_ids_are_stable_and_sampling_follows_the_ratio() {
        // Pinned: every process (and version) must derive the same ids for a change.
        let (t, s, sampled) = change_ids(0x16B_3740, 1.0);
        assert_eq!(
            (t, s, sampled),
            (
                152_468_706_843_140_530_181_908_161_932_259_609_977,
                12_794_616_375_448_521_985,
                true
            )
        );
        assert_ne!(t, change_ids(0x16B_3741, 1.0).0);
        assert!(t != 0 && s != 0);
        assert!(!change_ids(0x16B_3740, 0.0).2);
        let kept = (0..10_000u64)
            .filter(|lsn| change_ids(lsn * 56, 0.1).2)
            .count();
        assert!(
            (800..1200).contains(&kept),
            "about 10 % sampled, got {kept}"
        );
    }
}
