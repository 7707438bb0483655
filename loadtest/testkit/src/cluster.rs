//! A local cluster: PostgreSQL, Redis, gateways and fanout-workers as real processes on loopback.
//!
//! [`Cluster::start`] is what `loadtest up` runs (with the demo schema) and what end-to-end tests use.

use crate::services::{Postgres, Process, Redis, workspace_bin};
use anyhow::Result;

/// The JWT secret local clusters and tests share.
pub const DEV_SECRET: &str = "local-development-secret-change-me";
pub const ADMIN_EMAIL: &str = "admin@example.com";
pub const ADMIN_PASSWORD: &str = "admin-password";
pub const ADMIN_TOKEN: &str = "admin-static-token";

/// The demo schema: `articles` (author → directus_users) and `messages`, with a few rows. One file for
/// `deploy/local/up`, the tests and the compose demo.
pub const DEMO_SCHEMA: &str = include_str!("../../../deploy/compose/demo-schema.sql");

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub gateways: usize,
    pub workers: usize,
    /// Extra environment for every gateway (overrides the defaults).
    pub gateway_env: Vec<(String, String)>,
    pub worker_env: Vec<(String, String)>,
    /// Create the demo schema after the first gateway has bootstrapped the system tables.
    pub demo_schema: bool,
    /// Fixed port for the first gateway (0 = any free port).
    pub first_gateway_port: u16,
    /// Extra PostgreSQL server settings (`name`, `value`), e.g. `track_commit_timestamp=on`.
    pub postgres_settings: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    fn default() -> ClusterOptions {
        ClusterOptions {
            gateways: 1,
            workers: 0,
            gateway_env: Vec::new(),
            worker_env: Vec::new(),
            demo_schema: true,
            first_gateway_port: 0,
            postgres_settings: Vec::new(),
        }
    }
}

/// Fields drop in order: our processes stop before the services they use.
pub struct Cluster {
    pub gateways: Vec<Process>,
    pub workers: Vec<Process>,
    pub redis: Redis,
    pub postgres: Postgres,
    pub database: String,
    opts: ClusterOptions,
}

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn overlay(mut base: Vec<(String, String)>, extra: &[(String, String)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        base.retain(|(bk, _)| bk != k);
        base.push((k.clone(), v.clone()));
    }
    base
}

impl Cluster {
    pub async fn start(opts: ClusterOptions) -> Result<Cluster> {
        let settings: Vec<(&str, &str)> = opts
            .postgres_settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let postgres = Postgres::start_with(&settings).await?;
        let redis = Redis::start().await?;
        let database = postgres.create_database("realtime").await?;
        let mut cluster = Cluster {
            postgres,
            redis,
            database,
            gateways: Vec::new(),
            workers: Vec::new(),
            opts,
        };
        for i in 0..cluster.opts.gateways {
            let port = if i == 0 {
                cluster.opts.first_gateway_port
            } else {
                0
            };
            cluster
                .spawn_gateway(&[("PORT".into(), port.to_string())])
                .await?;
            if i == 0 && cluster.opts.demo_schema {
                cluster.sql().await?.batch_execute(DEMO_SCHEMA).await?;
            }
        }
        for _ in 0..cluster.opts.workers {
            cluster.spawn_worker(&[]).await?;
        }
        if cluster.opts.workers > 0 {
            cluster.wait_ready().await?;
        }
        Ok(cluster)
    }

    /// Wait until a worker holds the replication slot and every shard has an owner: from then on every
    /// committed change reaches subscribers.
    pub async fn wait_ready(&self) -> Result<()> {
        let shards: u64 = self
            .opts
            .worker_env
            .iter()
            .chain(&self.opts.gateway_env)
            .find(|(k, _)| k == "REALTIME_SHARDS")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(common::shard::DEFAULT_SHARDS as u64);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (mut capturing, mut owned) = (false, 0u64);
            for w in &self.workers {
                let Ok(c) = crate::client::http(&w.addr, "GET", "/capture", &[], None).await else {
                    continue;
                };
                capturing |= c.json().map(|j| j["capturing"] == true).unwrap_or(false);
                let Ok(f) = crate::client::http(&w.addr, "GET", "/fanout", &[], None).await else {
                    continue;
                };
                owned += f
                    .json()
                    .ok()
                    .and_then(|j| j["shards"].as_u64())
                    .unwrap_or(0);
            }
            if capturing && owned == shards {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!(
                    "cluster not ready: capturing={capturing}, shards owned {owned}/{shards}"
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// The environment a gateway of this cluster runs with.
    pub fn gateway_env(&self) -> Vec<(String, String)> {
        let base = env(&[
            ("HOST", "127.0.0.1".into()),
            ("PORT", "0".into()),
            ("SECRET", DEV_SECRET.into()),
            ("DB_CLIENT", "pg".into()),
            ("DB_HOST", "127.0.0.1".into()),
            ("DB_PORT", self.postgres.port.to_string()),
            ("DB_DATABASE", self.database.clone()),
            ("DB_USER", "postgres".into()),
            ("REDIS", self.redis.url()),
            ("ADMIN_EMAIL", ADMIN_EMAIL.into()),
            ("ADMIN_PASSWORD", ADMIN_PASSWORD.into()),
            ("ADMIN_TOKEN", ADMIN_TOKEN.into()),
            ("WEBSOCKETS_ENABLED", "true".into()),
            ("LOG_LEVEL", "info".into()),
        ]);
        overlay(base, &self.opts.gateway_env)
    }

    pub fn worker_env(&self) -> Vec<(String, String)> {
        let base = env(&[
            ("HOST", "127.0.0.1".into()),
            ("PORT", "0".into()),
            ("DB_CLIENT", "pg".into()),
            ("DB_HOST", "127.0.0.1".into()),
            ("DB_PORT", self.postgres.port.to_string()),
            ("DB_DATABASE", self.database.clone()),
            ("DB_USER", "postgres".into()),
            ("REDIS", self.redis.url()),
            ("LOG_LEVEL", "info".into()),
        ]);
        overlay(base, &self.opts.worker_env)
    }

    /// Start one more gateway; `extra` overrides the cluster's gateway environment.
    pub async fn spawn_gateway(&mut self, extra: &[(String, String)]) -> Result<&Process> {
        let env = overlay(self.gateway_env(), extra);
        let name = format!("gateway-{}", self.gateways.len());
        let p = Process::spawn(&name, &workspace_bin("gateway")?, &env).await?;
        self.gateways.push(p);
        Ok(self.gateways.last().expect("pushed"))
    }

    pub async fn spawn_worker(&mut self, extra: &[(String, String)]) -> Result<&Process> {
        let env = overlay(self.worker_env(), extra);
        let name = format!("worker-{}", self.workers.len());
        let p = Process::spawn(&name, &workspace_bin("fanout-worker")?, &env).await?;
        self.workers.push(p);
        Ok(self.workers.last().expect("pushed"))
    }

    /// A SQL connection to the cluster's database.
    pub async fn sql(&self) -> Result<tokio_postgres::Client> {
        self.postgres.connect(&self.database).await
    }

    pub fn gateway_addr(&self, i: usize) -> &str {
        &self.gateways[i].addr
    }
}
