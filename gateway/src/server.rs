//! Assembling a gateway: database, bootstrap, schema, the listener, and the accept loop.

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
    shutdown_tx: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    /// Connect to PostgreSQL, bootstrap the system tables in standalone mode, load the schema and bind.
    pub async fn build(config: Config) -> anyhow::Result<Gateway> {
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
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("bind {}:{}", config.host, config.port))?;
        let registrar = Arc::new(
            crate::registrar::Registrar::connect(
                &config.redis,
                &config.redis_prefix,
                config.shards,
            )
            .await
            .context("connect to Redis")?,
        );
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let cache = db::SchemaCache::new(schema);
        let state = Arc::new(AppState::new(
            config,
            pool,
            cache,
            registrar.clone(),
            shutdown_rx.clone(),
        ));
        // Deliveries must be subscribed before any query is registered.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(
            registrar
                .clone()
                .run(state.hub.clone(), ready_tx, shutdown_rx),
        );
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .context("subscribe to the delivery channel in Redis")?
            .context("delivery subscription task ended")?;
        tracing::info!(gateway = %registrar.gateway_id, "delivery channel subscribed");
        Ok(Gateway {
            state,
            listener,
            shutdown_tx,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `stop` resolves, then close every connection with 1012 and wait up to `grace` for them.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>, grace: Duration) {
        let Gateway {
            state,
            listener,
            shutdown_tx,
        } = self;
        tokio::pin!(stop);
        loop {
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
                _ = &mut stop => break,
            }
        }
        drop(listener);
        state.draining.store(true, Ordering::Relaxed);
        let _ = shutdown_tx.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        while state.rest_connections.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
