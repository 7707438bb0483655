//! Assembling a gateway: database, bootstrap, schema, the listeners, the accept loop, and the staged
//! shutdown.
//!
//! Shutdown (on SIGTERM) runs in stages so a rolling update loses no client and causes no reconnect storm:
//! 1. **drain delay** (`REALTIME_DRAIN_DELAY`): `/readyz` fails so load balancers stop sending new
//!    clients, but the gateway still serves and accepts (endpoint removal takes a while to propagate);
//! 2. **spread** (`REALTIME_DRAIN_SPREAD`): the listener closes and every connection is closed with 1012
//!    ("service restart": reconnect) at a random moment within the window, while the rest keep
//!    receiving events;
//! 3. **hard stop** (`REALTIME_SHUTDOWN_TIMEOUT`, counted from the signal): whatever is left is dropped.

use crate::config::Config;
use crate::db;
use crate::state::AppState;
use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;

/// A bound, initialised gateway, ready to [`Gateway::run`].
pub struct Gateway {
    pub state: Arc<AppState>,
    pub listener: TcpListener,
    admin: Option<TcpListener>,
    /// Tells connections to close (stage 2).
    shutdown_tx: tokio::sync::watch::Sender<bool>,
    /// Stops the Redis side last, so connections still open keep receiving events.
    registrar_stop: tokio::sync::watch::Sender<bool>,
    registrar_task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Connect to PostgreSQL, bootstrap the system tables in standalone mode, load the schema and bind.
    pub async fn build(
        config: Config,
        metrics: Option<common_io::telemetry::Metrics>,
    ) -> anyhow::Result<Gateway> {
        let pool = db::pool(&config.db_url, config.db_pool_size, "realtime-gateway")?;
        let boot = db::bootstrap(
            &pool,
            &config.db_schema,
            config.admin_email.as_deref(),
            config.admin_password.as_deref(),
            config.admin_token.as_deref(),
        )
        .await
        .context("connect to PostgreSQL and check the Directus system tables")?;
        match &boot {
            db::Bootstrap::Existing => {
                tracing::info!("Directus system tables found; using them unchanged")
            }
            db::Bootstrap::Created {
                admin_email,
                generated_password,
            } => {
                tracing::info!(%admin_email, "standalone mode: created the Directus system tables and an administrator");
                if let Some(p) = generated_password {
                    tracing::warn!(%admin_email, password = %p, "ADMIN_PASSWORD was not set; generated one");
                }
            }
        }
        let schema = db::load_schema(&pool, &config.db_schema)
            .await
            .context("load the schema")?;
        tracing::info!(collections = schema.len(), schema = %config.db_schema, "schema loaded");
        let listener = bind_listener(&config.host, config.port)
            .await
            .with_context(|| format!("bind {}:{}", config.host, config.port))?;
        let admin = match config.admin_port {
            Some(port) => Some(
                TcpListener::bind((config.host.as_str(), port))
                    .await
                    .with_context(|| {
                        format!("bind {}:{port} (REALTIME_ADMIN_PORT)", config.host)
                    })?,
            ),
            None => None,
        };
        let registrar = Arc::new(
            crate::registrar::Registrar::connect(
                &config.redis,
                &config.redis_prefix,
                config.shards,
                &config.gateway_name,
            )
            .await
            .context("connect to Redis")?,
        );
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let (registrar_stop, registrar_rx) = tokio::sync::watch::channel(false);
        let cache = db::SchemaCache::new(schema);
        let state = Arc::new(AppState::new(
            config,
            pool,
            cache,
            registrar.clone(),
            shutdown_rx,
            metrics,
        ));
        // Deliveries must be subscribed before any query is registered.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let registrar_task = tokio::spawn(registrar.clone().run(
            state.hub.clone(),
            ready_tx,
            registrar_rx,
        ));
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .context("subscribe to the delivery channel in Redis")?
            .context("delivery subscription task ended")?;
        tracing::info!(gateway = %registrar.gateway_id, "delivery channel subscribed");
        Ok(Gateway {
            state,
            listener,
            admin,
            shutdown_tx,
            registrar_stop,
            registrar_task,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin listener's address, when `REALTIME_ADMIN_PORT` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve until `stop` resolves, then shut down in stages (see the module docs).
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let Gateway {
            state,
            listener,
            admin,
            shutdown_tx,
            registrar_stop,
            registrar_task,
        } = self;
        let admin_task = admin.map(|l| tokio::spawn(serve_admin(state.clone(), l)));
        tokio::pin!(stop);
        let mut accept_until: Option<tokio::time::Instant> = None;
        let mut hard_stop = None;
        loop {
            let until = accept_until;
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let state = state.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| crate::http::handle(state.clone(), peer, req));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
                _ = &mut stop, if accept_until.is_none() => {
                    let drain = &state.config.drain;
                    tracing::info!(
                        connections = state.rest_connections.load(Ordering::Relaxed),
                        delay = ?drain.delay,
                        spread = ?drain.spread,
                        "draining: readiness is off; still serving"
                    );
                    state.draining.store(true, Ordering::Relaxed);
                    metrics::gauge!("realtime_gateway_draining").set(1.0);
                    let now = tokio::time::Instant::now();
                    accept_until = Some(now + drain.delay);
                    hard_stop = Some(now + drain.timeout);
                }
                _ = sleep_until(until) => break,
            }
        }
        drop(listener);
        tracing::info!(
            connections = state.rest_connections.load(Ordering::Relaxed),
            "stopped accepting; closing connections with 1012"
        );
        let _ = shutdown_tx.send(true);
        let hard_stop = hard_stop.expect("set when draining began");
        while state.rest_connections.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < hard_stop
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = state.rest_connections.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(
                connections = left,
                "shutdown timeout: dropping the remaining connections"
            );
        }
        // Last: the liveness key goes, so workers drop this gateway's registrations at once.
        let _ = registrar_stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), registrar_task).await;
        if let Some(t) = admin_task {
            t.abort();
        }
    }
}

/// Pending connections the kernel may queue before `accept`. Thousands of clients reconnecting at once
/// (a restarted gateway, a drain elsewhere) overflow a small backlog, and every dropped SYN costs its
/// client a 1 s retransmit; the kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind_listener(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(addr) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to bind")))
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz` only, open until the process exits.
async fn serve_admin(state: Arc<AppState>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| crate::http::handle_admin(state.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
