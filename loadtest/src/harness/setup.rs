//! Setting a run up: the system under test, the harness's table and users, what the sampler watches, the
//! client agents, and the timeline sampler.

use super::{AUTO_SOURCE_IPS_ABOVE, Agg, PROGRESS_MS, Progress, Run, user_token_prefix};
use crate::agent::{AgentEvent, AgentHandle, AgentSpec, AuthPlan, Counters, EVENT_QUEUE};
use crate::report::TimePoint;
use crate::sampler::{Role, Sampler, Source};
use crate::scenario::{CommitTime, Config, Scenario};
use crate::writer;
use anyhow::{Context, Result};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use testkit::cluster::{ADMIN_TOKEN, Cluster, ClusterOptions};

/// The system under test: a local cluster, or the URLs and database given.
pub(super) struct System {
    pub cluster: Option<Cluster>,
    pub db_url: Option<String>,
    pub urls: Vec<String>,
}

/// Phase 1: start a local cluster (`--local`) or take the given endpoints.
pub(super) async fn system_under_test(cfg: &Config, progress: &Progress) -> Result<System> {
    let cluster = if cfg.local {
        progress.line(&format!(
            "starting a local cluster: {} gateway(s), {} worker(s)",
            cfg.gateways, cfg.workers
        ));
        Some(start_cluster(cfg).await?)
    } else {
        None
    };
    let db_url = match &cluster {
        Some(c) => Some(c.postgres.url(&c.database)),
        None => cfg.db.clone(),
    };
    let urls: Vec<String> = match &cluster {
        Some(c) => c
            .gateways
            .iter()
            .map(|g| format!("ws://{}/websocket", g.addr))
            .collect(),
        None => cfg.url.clone(),
    };
    Ok(System {
        cluster,
        db_url,
        urls,
    })
}

/// Source addresses for the client connections: the given ones, or enough loopback addresses for a
/// large run against loopback.
pub(super) fn source_ips(
    cfg: &Config,
    urls: &[String],
    progress: &Progress,
) -> Result<Vec<std::net::Ipv4Addr>> {
    let mut source_ips = cfg.source_ip_list()?;
    if source_ips.is_empty() && cfg.connections > AUTO_SOURCE_IPS_ABOVE {
        // One source address has ~28 000 ports per gateway address; past that, connects fail with
        // EADDRNOTAVAIL. On loopback any 127.x address is ours, so spread over enough of them.
        let all_loopback = urls.iter().all(|u| {
            testkit::ws::split_ws_url(u)
                .is_ok_and(|(h, _)| h.starts_with("127.") || h.starts_with("localhost:"))
        });
        if all_loopback {
            let n = cfg.connections.div_ceil(AUTO_SOURCE_IPS_ABOVE) as u8;
            source_ips = (0..n)
                .map(|i| std::net::Ipv4Addr::new(127, 0, 1, 1 + i))
                .collect();
            progress.line(&format!(
                "{} connections to loopback: spreading them over source addresses 127.0.1.1-127.0.1.{n}",
                cfg.connections
            ));
        }
    }
    Ok(source_ips)
}

/// How the clients authenticate: per-user static tokens, or one token for all.
pub(super) fn auth_plan(cfg: &Config, run_id: i64) -> Result<AuthPlan> {
    let ws_token = cfg
        .ws_token
        .clone()
        .or_else(|| cfg.token.clone())
        .or_else(|| cfg.local.then(|| ADMIN_TOKEN.to_owned()));
    Ok(if cfg.scenario == Scenario::PerUser {
        AuthPlan::PerUser {
            prefix: user_token_prefix(run_id),
        }
    } else {
        AuthPlan::Token(ws_token.context("give --ws-token or --token for the WebSocket auth")?)
    })
}

/// The database side of a run.
pub(super) struct Data {
    pub db: Option<tokio_postgres::Client>,
    /// The per-user role and policy created for this run.
    pub users: Option<(String, String)>,
    /// Commit times from `pg_xact_commit_timestamp` (else the writers' acknowledgements).
    pub exact_commit_times: bool,
}

/// Phase 2: the harness's table, the per-user users, and whether exact commit times are available.
pub(super) async fn prepare_data(cfg: &Config, db_url: Option<&str>, run_id: i64) -> Result<Data> {
    let db = match db_url {
        Some(u) => Some(db_connect(u).await?),
        None => None,
    };
    let mut users = None;
    let mut exact_commit_times = false;
    if let Some(db) = &db {
        db.batch_execute(&writer::table_ddl(&cfg.collection))
            .await
            .context("create the harness table")?;
        if cfg.related {
            db.batch_execute(&writer::related_ddl(&cfg.collection))
                .await
                .context("create the harness's related table")?;
        }
        if cfg.scenario == Scenario::PerUser {
            users = Some(create_users(db, cfg, run_id).await?);
        }
        let on: String = db
            .query_one("SELECT current_setting('track_commit_timestamp')", &[])
            .await?
            .get(0);
        exact_commit_times = on == "on" && cfg.commit_time == CommitTime::Auto;
    }
    Ok(Data {
        db,
        users,
        exact_commit_times,
    })
}

/// Phase 3: what the sampler watches: the local cluster's processes, metrics endpoints, the harness itself.
pub(super) fn sources(cfg: &Config, cluster: Option<&Cluster>) -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    if let Some(c) = cluster {
        for g in &c.gateways {
            if let Some(pid) = g.pid() {
                sources.push(Source::pid(&g.name, Role::Gateway, pid, false));
            }
        }
        for w in &c.workers {
            if let Some(pid) = w.pid() {
                sources.push(Source::pid(&w.name, Role::Worker, pid, false));
            }
        }
        if let Some(pid) = c.postgres.pid() {
            sources.push(Source::pid("postgres", Role::Postgres, pid, true));
        }
        if let Some(pid) = c.redis.pid() {
            sources.push(Source::pid("redis", Role::Redis, pid, false));
        }
    }
    for u in &cfg.metrics_url {
        sources.push(Source::metrics(u)?);
    }
    sources.push(Source::pid(
        "harness",
        Role::Client,
        std::process::id(),
        false,
    ));
    Ok(sources)
}

/// The client agents and the state their events feed.
pub(super) struct Agents {
    pub handles: Vec<AgentHandle>,
    pub agg: Arc<Mutex<Agg>>,
    pub procs: usize,
    /// The task moving agent events into `agg`; ends when every agent is gone.
    pub pump: tokio::task::JoinHandle<()>,
}

/// Phase 4: start the agents (in this process for one, else `loadtest agent` children), each with its share of
/// the connections; their processes join `sources`.
pub(super) async fn spawn_agents(
    cfg: &Config,
    urls: &[String],
    source_ips: &[std::net::Ipv4Addr],
    run_id: i64,
    auth: &AuthPlan,
    sources: &mut Vec<Source>,
) -> Result<Agents> {
    let procs = cfg.procs().min(cfg.connections).max(1);
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel::<(usize, AgentEvent)>(EVENT_QUEUE);
    let agg = Arc::new(Mutex::new(Agg {
        counters: vec![Counters::default(); procs],
        ready: vec![false; procs],
        stopped: vec![false; procs],
        results: (0..procs).map(|_| None).collect(),
        ..Default::default()
    }));
    let pump = {
        let agg = agg.clone();
        tokio::spawn(async move {
            while let Some((i, ev)) = ev_rx.recv().await {
                let mut a = agg.lock();
                match ev {
                    AgentEvent::Progress { counters, live } => {
                        a.counters[i] = counters;
                        a.live_step.merge(&live);
                        a.live_sample.merge(&live);
                    }
                    AgentEvent::Ready => a.ready[i] = true,
                    AgentEvent::Stopped { counters } => {
                        a.counters[i] = counters;
                        a.stopped[i] = true;
                    }
                    AgentEvent::Result(r) => a.results[i] = Some(r),
                    AgentEvent::Error { message } => a.errors.push(format!("agent {i}: {message}")),
                }
            }
        })
    };
    let mut agents = Vec::with_capacity(procs);
    let agent_bin = match &cfg.agent_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    for i in 0..procs {
        let spec = AgentSpec {
            index: i,
            urls: urls.to_vec(),
            conn_start: cfg.connections * i / procs,
            conn_end: cfg.connections * (i + 1) / procs,
            subs_per_conn: cfg.subs_per_conn,
            scenario: cfg.scenario,
            run: run_id,
            collection: cfg.collection.clone(),
            query_form: cfg.query_form,
            related: cfg.related,
            auth: auth.clone(),
            ramp_up: cfg.ramp_up / procs as f64,
            max_inflight: cfg.max_inflight,
            source_ips: source_ips.to_vec(),
            churn_rate: cfg.churn_rate / procs as f64,
            hold_ms: (cfg.hold_secs * 1000.0) as u64,
            linger_ms: cfg.linger_ms,
            progress_ms: PROGRESS_MS,
        };
        let h = if procs == 1 {
            AgentHandle::in_process(spec, ev_tx.clone())
        } else {
            AgentHandle::spawn(&agent_bin, spec, ev_tx.clone()).await?
        };
        if let Some(pid) = h.pid {
            sources.push(Source::pid(&format!("agent-{i}"), Role::Client, pid, false));
        }
        agents.push(h);
    }
    drop(ev_tx);
    Ok(Agents {
        handles: agents,
        agg,
        procs,
        pump,
    })
}

/// The timeline sampler: a point per `--sample-secs` with rates, live latency and process resources.
pub(super) struct Timeline {
    points: Arc<Mutex<Vec<TimePoint>>>,
    sampling: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Timeline {
    pub fn start(r: &Run<'_>, sampler: Arc<tokio::sync::Mutex<Sampler>>) -> Timeline {
        let (cfg, t_start) = (r.cfg, r.t_start);
        let timeline = Arc::new(Mutex::new(Vec::<TimePoint>::new()));
        let sampling = Arc::new(AtomicBool::new(true));
        let sampler_task = {
            let (sampler, agg, wsh, phase_name, timeline, sampling, progress) = (
                sampler.clone(),
                r.agg.clone(),
                r.wsh.clone(),
                r.phase_name.clone(),
                timeline.clone(),
                sampling.clone(),
                r.progress.clone(),
            );
            let every = Duration::from_secs_f64(cfg.sample_secs);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut last: Option<(Instant, u64, u64)> = None;
                while sampling.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let procs = sampler.lock().await.sample().await;
                    let now = Instant::now();
                    let (c, live) = {
                        let mut a = agg.lock();
                        let live = a.live_sample.clone();
                        a.live_sample.clear();
                        (a.total(), live)
                    };
                    let writes = wsh.committed.load(Ordering::Relaxed);
                    let (wps, dps) = match last {
                        Some((t, w0, d0)) => {
                            let dt = now.duration_since(t).as_secs_f64().max(1e-6);
                            (
                                (writes.saturating_sub(w0)) as f64 / dt,
                                (c.delivered.saturating_sub(d0)) as f64 / dt,
                            )
                        }
                        None => (0.0, 0.0),
                    };
                    last = Some((now, writes, c.delivered));
                    let phase = *phase_name.lock();
                    let p = TimePoint {
                        t: now.duration_since(t_start).as_secs_f64(),
                        phase: phase.to_owned(),
                        target_rate: if phase == "write" { wsh.rate() } else { 0.0 },
                        writes,
                        delivered: c.delivered,
                        writes_per_second: wps,
                        delivered_per_second: dps,
                        open_connections: c.open,
                        live_p50_ms: live.quantile(0.5).map(|v| v as f64 / 1000.0),
                        live_p99_ms: live.quantile(0.99).map(|v| v as f64 / 1000.0),
                        procs,
                    };
                    if phase != "connect" {
                        progress.bar.set_message(format!(
                            "{:.0} writes/s, {:.0} delivered/s, live p99 {}, {} open",
                            wps,
                            dps,
                            p.live_p99_ms.map_or("–".into(), |v| format!("{v:.1} ms")),
                            c.open
                        ));
                    }
                    timeline.lock().push(p);
                }
            })
        };
        Timeline {
            points: timeline,
            sampling,
            task: sampler_task,
        }
    }

    /// Stop sampling; the points taken.
    pub async fn stop(self) -> Vec<TimePoint> {
        self.sampling.store(false, Ordering::Relaxed);
        let _ = self.task.await;
        std::mem::take(&mut *self.points.lock())
    }
}

async fn start_cluster(cfg: &Config) -> Result<Cluster> {
    let mut gateway_env = vec![("LOG_LEVEL".to_owned(), "warn".to_owned())];
    gateway_env.extend(Config::env_pairs(&cfg.gateway_env));
    let mut worker_env = vec![("LOG_LEVEL".to_owned(), "warn".to_owned())];
    worker_env.extend(Config::env_pairs(&cfg.worker_env));
    Cluster::start(ClusterOptions {
        gateways: cfg.gateways.max(1),
        workers: cfg.workers,
        gateway_env,
        worker_env,
        demo_schema: false,
        first_gateway_port: 0,
        // Exact commit times for latency: pg_xact_commit_timestamp(xmin) needs this at server start.
        postgres_settings: vec![("track_commit_timestamp".into(), "on".into())],
    })
    .await
}

async fn db_connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connect to the database")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Per-user: a role, a policy with a `$CURRENT_USER` row filter on the harness's table, and `n` users
/// with static tokens `lt<run>-<i>`, all in Directus's system tables.
async fn create_users(
    db: &tokio_postgres::Client,
    cfg: &Config,
    run: i64,
) -> Result<(String, String)> {
    let role = uuid::Uuid::new_v4().to_string();
    let policy = uuid::Uuid::new_v4().to_string();
    let name = format!("loadtest {run}");
    db.execute(
        "INSERT INTO directus_roles (id, name) VALUES ($1::text::uuid, $2)",
        &[&role, &name],
    )
    .await
    .context("create the per-user role (are the Directus system tables there?)")?;
    db.execute(
        "INSERT INTO directus_policies (id, name, admin_access, app_access) VALUES ($1::text::uuid, $2, false, false)",
        &[&policy, &name],
    )
    .await?;
    db.execute(
        "INSERT INTO directus_access (id, role, policy) VALUES ($1::text::uuid, $2::text::uuid, $3::text::uuid)",
        &[&uuid::Uuid::new_v4().to_string(), &role, &policy],
    )
    .await?;
    db.execute(
        "INSERT INTO directus_permissions (collection, action, permissions, fields, policy) VALUES ($1, 'read', $2::text::json, '*', $3::text::uuid)",
        &[&cfg.collection, &r#"{"owner":{"_eq":"$CURRENT_USER"}}"#, &policy],
    )
    .await?;
    // The uuid of user i is writer::user_uuid(run, i): the run in the first group, i in the last.
    db.execute(
        "INSERT INTO directus_users (id, email, role, status, token)
         SELECT (lpad(to_hex($1::bigint), 8, '0') || '-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
                'lt' || $1::bigint || '-' || i || '@loadtest.invalid', $2::text::uuid, 'active', $3 || i
         FROM generate_series(0, $4::int - 1) AS i",
        &[&(run & 0xffff_ffff), &role, &user_token_prefix(run), &(cfg.connections as i32)],
    )
    .await
    .context("create the per-user users")?;
    Ok((role, policy))
}

pub(super) async fn cleanup(
    db: &tokio_postgres::Client,
    cfg: &Config,
    run: i64,
    users: &Option<(String, String)>,
) -> Result<()> {
    db.execute(
        &format!("DELETE FROM {} WHERE run = $1", cfg.collection),
        &[&run],
    )
    .await?;
    if let Some((role, policy)) = users {
        db.execute(
            "DELETE FROM directus_users WHERE role = $1::text::uuid",
            &[role],
        )
        .await?;
        db.execute(
            "DELETE FROM directus_policies WHERE id = $1::text::uuid",
            &[policy],
        )
        .await?;
        db.execute(
            "DELETE FROM directus_roles WHERE id = $1::text::uuid",
            &[role],
        )
        .await?;
    }
    Ok(())
}
