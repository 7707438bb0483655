//! Assembling a worker: its roles (capture, matching) and its HTTP endpoints.

use crate::capture::{self, CaptureStats};
use crate::config::WorkerConfig;
use crate::fanout::{self, FanoutStats};
use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::TcpListener;

pub struct Worker {
    pub config: Arc<WorkerConfig>,
    pub capture: Arc<CaptureStats>,
    pub fanout: Arc<FanoutStats>,
    listener: TcpListener,
}

struct Stats {
    capture: Arc<CaptureStats>,
    fanout: Arc<FanoutStats>,
}

impl Worker {
    pub async fn build(config: WorkerConfig) -> anyhow::Result<Worker> {
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        Ok(Worker {
            config: Arc::new(config),
            capture: Arc::new(CaptureStats::default()),
            fanout: Arc::new(FanoutStats::default()),
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
            tokio::spawn(fanout::run(
                self.config.clone(),
                self.fanout.clone(),
                stop_rx.clone(),
            ))
        });
        let stats = Arc::new(Stats {
            capture: self.capture.clone(),
            fanout: self.fanout.clone(),
        });
        let listener = self.listener;
        let http = tokio::spawn(async move {
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
        let _ = stop_tx.send(true);
        if let Some(t) = matching {
            let _ = t.await;
        }
        if let Some(t) = capture {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        http.abort();
    }
}

fn route(req: &Request<hyper::body::Incoming>, stats: &Stats) -> Response<Full<Bytes>> {
    let c = &stats.capture;
    let f = &stats.fanout;
    let (status, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok".to_owned()),
        "/readyz" => (StatusCode::OK, "ready".to_owned()),
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
