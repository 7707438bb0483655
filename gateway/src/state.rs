//! Process-wide state shared by every request and connection of a gateway.

use crate::auth::{Accountability, AuthService};
use crate::config::Config;
use crate::db::SchemaCache;
use crate::hub::Hub;
use crate::registrar::Registrar;
use crate::session::SessionConfig;
use deadpool_postgres::Pool;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

/// How long the public role's accountability is cached per client address.
const PUBLIC_TTL: Duration = Duration::from_secs(5);

type PublicCache = HashMap<Option<IpAddr>, (Instant, Arc<Accountability>)>;

pub struct AppState {
    pub config: Config,
    pub pool: Pool,
    pub schema: SchemaCache,
    pub auth: AuthService,
    pub rest_session: SessionConfig,
    /// Local subscriptions and delivery.
    pub hub: Arc<Hub>,
    /// Registration with the workers through Redis.
    pub registrar: Arc<Registrar>,
    /// Source of connection ids.
    pub next_conn: AtomicU64,
    /// Open `/websocket` connections (for `WEBSOCKETS_REST_CONN_LIMIT`).
    pub rest_connections: AtomicUsize,
    /// Set when draining: readiness fails and no new connections are accepted.
    pub draining: AtomicBool,
    /// Flips to `true` when every connection must close (shutdown).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Connection gauges published at scrape time.
    pub gauges: crate::telemetry::ConnGauges,
    /// The Prometheus recorder, when `METRICS_ENABLED`.
    pub metrics: Option<common_io::telemetry::Metrics>,
    public_cache: Mutex<PublicCache>,
}

impl AppState {
    pub fn new(
        config: Config,
        pool: Pool,
        schema: SchemaCache,
        registrar: Arc<Registrar>,
        shutdown: tokio::sync::watch::Receiver<bool>,
        metrics: Option<common_io::telemetry::Metrics>,
    ) -> AppState {
        let epoch = Arc::new(crate::rights::Epoch::default());
        let auth = AuthService::new(pool.clone(), config.auth_settings(), epoch.clone());
        let rest_session = SessionConfig {
            mode: config.ws.rest_auth,
            auth_timeout: config.ws.rest_auth_timeout,
            heartbeat: config
                .ws
                .heartbeat_enabled
                .then_some(config.ws.heartbeat_period),
            max_subscriptions: config.limits.max_subscriptions_per_connection,
            rate_limit: config.rate_limit.clone(),
        };
        AppState {
            config,
            pool,
            schema,
            auth,
            rest_session,
            hub: Arc::new(Hub::new(epoch)),
            registrar,
            next_conn: AtomicU64::new(1),
            rest_connections: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            shutdown,
            metrics,
            gauges: Default::default(),
            public_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The public role for a client address (cached briefly: public policies rarely change).
    pub async fn public_accountability(
        &self,
        ip: Option<IpAddr>,
    ) -> Result<Arc<Accountability>, crate::auth::AuthError> {
        if let Some((at, acct)) = self.public_cache.lock().get(&ip)
            && at.elapsed() < PUBLIC_TTL
        {
            return Ok(acct.clone());
        }
        let acct = Arc::new(self.auth.public(ip).await?);
        let mut cache = self.public_cache.lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(ip, (Instant::now(), acct.clone()));
        Ok(acct)
    }
}
