//! Assembling a worker: its roles (capture now; matching and delivery next) and its HTTP endpoints.

use crate::capture::{self, CaptureStats};
use crate::config::WorkerConfig;
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
    listener: TcpListener,
}

impl Worker {
    pub async fn build(config: WorkerConfig) -> anyhow::Result<Worker> {
        let listener = TcpListener::bind((config.host.as_str(), config.port)).await?;
        Ok(Worker {
            config: Arc::new(config),
            capture: Arc::new(CaptureStats::default()),
            listener,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Run every role until `stop` resolves, then stop them (releasing the replication slot at once so a
    /// standby takes over).
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let capture =
            self.config.capture.enabled.then(|| {
                capture::spawn(self.config.clone(), self.capture.clone(), stop_rx.clone())
            });
        let stats = self.capture.clone();
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
        if let Some(t) = capture {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        http.abort();
    }
}

fn route(req: &Request<hyper::body::Incoming>, stats: &CaptureStats) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok".to_owned()),
        "/readyz" => (StatusCode::OK, "ready".to_owned()),
        "/capture" => (
            StatusCode::OK,
            serde_json::json!({
                "capturing": stats.capturing.load(Ordering::Relaxed),
                "transactions": stats.transactions.load(Ordering::Relaxed),
                "changes": stats.changes.load(Ordering::Relaxed),
                "appended": stats.entries_appended.load(Ordering::Relaxed),
                "duplicates": stats.entries_skipped.load(Ordering::Relaxed),
                "confirmed_lsn": common::change::format_lsn(stats.confirmed_lsn.load(Ordering::Relaxed)),
                "resets": stats.resets.load(Ordering::Relaxed),
            })
            .to_string(),
        ),
        _ => (StatusCode::NOT_FOUND, "not found".to_owned()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
