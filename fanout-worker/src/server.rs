//! Assembling a worker: its roles (capture, matching) and its HTTP endpoints.

use crate::capture::{self, CaptureStats};
use crate::config::WorkerConfig;
use crate::matching::{self, FanoutStats};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

pub struct Worker {
    pub config: Arc<WorkerConfig>,
    pub capture: Arc<CaptureStats>,
    pub fanout: Arc<FanoutStats>,
    metrics: Option<common_io::telemetry::Metrics>,
    listener: TcpListener,
}

struct Stats {
    config: Arc<WorkerConfig>,
    capture: Arc<CaptureStats>,
    fanout: Arc<FanoutStats>,
    metrics: Option<common_io::telemetry::Metrics>,
    stopping: AtomicBool,
}

impl Worker {
    pub async fn build(
        config: WorkerConfig,
        metrics: Option<common_io::telemetry::Metrics>,
    ) -> anyhow::Result<Worker> {
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        Ok(Worker {
            config: Arc::new(config),
            capture: Arc::new(CaptureStats::default()),
            fanout: Arc::new(FanoutStats::default()),
            metrics,
            listener,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Run every role until `stop` resolves, then stop them: shard leases and the replication slot are
    /// released at once so other workers take over.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let capture =
            self.config.capture.enabled.then(|| {
                capture::spawn(self.config.clone(), self.capture.clone(), stop_rx.clone())
            });
        let matching = self.config.matching_enabled.then(|| {
            tokio::spawn(matching::run(
                self.config.clone(),
                self.fanout.clone(),
                stop_rx.clone(),
            ))
        });
        let stats = Arc::new(Stats {
            config: self.config.clone(),
            capture: self.capture.clone(),
            fanout: self.fanout.clone(),
            metrics: self.metrics.clone(),
            stopping: AtomicBool::new(false),
        });
        let http_stats = stats.clone();
        let listener = self.listener;
        let http = tokio::spawn(async move {
            let stats = http_stats;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let stats = stats.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let stats = stats.clone();
                        async move { Ok::<_, std::convert::Infallible>(route(&req, &stats)) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        stop.await;
        // Readiness off, then release shards and the slot so the other workers take over at once.
        stats.stopping.store(true, Ordering::Relaxed);
        tracing::info!("stopping: releasing shard leases and the replication slot");
        let _ = stop_tx.send(true);
        let roles = async {
            if let Some(t) = matching {
                let _ = t.await;
            }
            if let Some(t) = capture {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
        };
        if tokio::time::timeout(self.config.shutdown_timeout, roles)
            .await
            .is_err()
        {
            tracing::warn!("shutdown timeout: stopping without a clean release");
        }
        http.abort();
    }
}

/// `/healthz`: the process runs. `/readyz`: not stopping, and each enabled role works: capture holds the
/// slot or stands by (PostgreSQL answers), matching has its stream position (Redis answers).
/// `/metrics`: Prometheus text. `/capture`, `/fanout`: JSON status for tools and tests.
fn route(req: &Request<hyper::body::Incoming>, stats: &Stats) -> Response<Full<Bytes>> {
    let c = &stats.capture;
    let f = &stats.fanout;
    let (status, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok".to_owned()),
        "/readyz" => {
            let problem = if stats.stopping.load(Ordering::Relaxed) {
                Some("stopping")
            } else if stats.config.capture.enabled && !c.healthy.load(Ordering::Relaxed) {
                Some("capture is not connected to PostgreSQL and Redis")
            } else if stats.config.matching_enabled && !f.running.load(Ordering::Relaxed) {
                Some("matching has no stream position (Redis)")
            } else {
                None
            };
            match problem {
                Some(p) => (StatusCode::SERVICE_UNAVAILABLE, p.to_owned()),
                None => (StatusCode::OK, "ready".to_owned()),
            }
        }
        "/metrics" => match &stats.metrics {
            Some(m) => {
                // Counted in the capture loop's atomics (per WAL message), published here.
                metrics::counter!("realtime_capture_bytes_total")
                    .absolute(c.bytes.load(Ordering::Relaxed));
                let mut r = Response::new(Full::new(Bytes::from(m.render())));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                return r;
            }
            None => (
                StatusCode::NOT_FOUND,
                "metrics are disabled (METRICS_ENABLED=false)".to_owned(),
            ),
        },
        "/capture" => (
            StatusCode::OK,
            serde_json::json!({
                "capturing": c.capturing.load(Ordering::Relaxed),
                "transactions": c.transactions.load(Ordering::Relaxed),
                "changes": c.changes.load(Ordering::Relaxed),
                "appended": c.entries_appended.load(Ordering::Relaxed),
                "duplicates": c.entries_skipped.load(Ordering::Relaxed),
                "confirmed_lsn": common::change::format_lsn(c.confirmed_lsn.load(Ordering::Relaxed)),
                "resets": c.resets.load(Ordering::Relaxed),
            })
            .to_string(),
        ),
        "/fanout" => (
            StatusCode::OK,
            serde_json::json!({
                "shards": f.shards.load(Ordering::Relaxed),
                "queries": f.queries.load(Ordering::Relaxed),
                "entries": f.entries.load(Ordering::Relaxed),
                "frames": f.frames.load(Ordering::Relaxed),
                "messages": f.messages.load(Ordering::Relaxed),
                "replays": f.replays.load(Ordering::Relaxed),
                "cursor_lsn": f.cursor_lsn.load(Ordering::Relaxed),
            })
            .to_string(),
        ),
        _ => (StatusCode::NOT_FOUND, "not found".to_owned()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
