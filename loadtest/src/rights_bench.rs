//! Rights-change benchmark: how long after a permission edit commits do the subscriptions it touches
//! follow it, with many live subscriptions on the gateway.
//!
//! A local cluster (one gateway, one worker, durable commits). `--policies` roles, each with one policy
//! and one user (static token); the read permission of policy `k` is `grp IN (k)`. `--connections`
//! connections, connection `i` authenticated as user `i % policies`, each with `--subs` subscriptions to
//! `bench_items` (subscription `j` filters `val >= j`, so there are `policies × subs` distinct queries).
//! Then, one at a time, `--changes` edits: policy `k` becomes `grp IN (k, g)` for a fresh group `g`,
//! and right after its commit a row of group `g` is inserted. Only the new rights let that row through,
//! so the moment a touched subscription receives it is the moment the change is in force for it (the
//! time includes the probe row's own commit and delivery, about a millisecond). Every touched
//! subscription must receive it and no other may: anything else fails the run.

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::client::WsClient;
use testkit::cluster::{Cluster, ClusterOptions};
use tokio::sync::mpsc;

#[derive(Debug, Clone, clap::Args)]
pub struct RightsBenchArgs {
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Subscriptions per connection.
    #[arg(long, default_value_t = 1)]
    pub subs: usize,
    #[arg(long, default_value_t = 100)]
    pub policies: usize,
    /// Permission edits, one at a time.
    #[arg(long, default_value_t = 100)]
    pub changes: usize,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// A probe row arrived at (connection, subscription) at this instant.
struct Arrival {
    conn: usize,
    group: i64,
    at: Instant,
}

async fn listen(mut ws: WsClient, conn: usize, tx: mpsc::UnboundedSender<Arrival>) {
    loop {
        let Ok(m) = ws.recv(Duration::from_secs(3600)).await else {
            return;
        };
        if m["type"] == "subscription"
            && m["event"] == "create"
            && let Some(group) = m["data"][0]["grp"].as_i64()
        {
            let _ = tx.send(Arrival {
                conn,
                group,
                at: Instant::now(),
            });
        }
    }
}

fn percentiles(h: &Histogram<u64>) -> Json {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({"p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": h.max() as f64 / 1000.0, "count": h.len()})
}

pub async fn run(args: RightsBenchArgs) -> Result<Json> {
    let p = args.policies.max(1);
    let cluster = Cluster::start(ClusterOptions {
        gateways: 1,
        workers: 1,
        demo_schema: false,
        gateway_env: vec![
            ("WEBSOCKETS_HEARTBEAT_ENABLED".into(), "false".into()),
            ("LOG_LEVEL".into(), "warn".into()),
            (
                "REALTIME_MAX_SUBSCRIPTIONS_PER_CONNECTION".into(),
                (args.subs + 1).to_string(),
            ),
        ],
        worker_env: vec![("LOG_LEVEL".into(), "warn".into())],
        ..Default::default()
    })
    .await?;
    let sql = cluster.sql().await?;
    sql.batch_execute(
        "CREATE TABLE bench_items (id serial PRIMARY KEY, grp integer NOT NULL, val integer NOT NULL)",
    )
    .await?;
    let mut policies = Vec::with_capacity(p);
    for k in 0..p {
        let (role, policy, user) = (
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
        );
        sql.batch_execute(&format!(
            "INSERT INTO directus_roles (id, name) VALUES ('{role}', 'bench {k}');
             INSERT INTO directus_policies (id, name, admin_access, app_access) VALUES ('{policy}', 'bench {k}', false, true);
             INSERT INTO directus_access (id, role, policy) VALUES ('{}', '{role}', '{policy}');
             INSERT INTO directus_users (id, email, role, status, token) VALUES ('{user}', 'bench{k}@example.com', '{role}', 'active', 'rights-bench-{k}');
             INSERT INTO directus_permissions (collection, action, permissions, fields, policy)
               VALUES ('bench_items', 'read', '{{\"grp\":{{\"_in\":[{k}]}}}}', 'id,grp,val', '{policy}');",
            uuid::Uuid::new_v4()
        ))
        .await?;
        policies.push(policy);
    }

    eprintln!(
        "opening {} connections with {} subscriptions each...",
        args.connections, args.subs
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let addr = cluster.gateway_addr(0).to_owned();
    let open_started = Instant::now();
    let opened = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let (addr, tx, opened, subs) = (addr.clone(), tx.clone(), opened.clone(), args.subs);
        tasks.push(tokio::spawn(async move {
            let _slot = opened.acquire().await?;
            let mut ws = WsClient::connect(&addr, "/websocket", &[]).await?.open()?;
            ws.send_json(&json!({"type":"auth","access_token": format!("rights-bench-{}", i % p)}))
                .await?;
            let ok = ws.recv(Duration::from_secs(30)).await?;
            if ok["status"] != "ok" {
                bail!("auth failed: {ok}");
            }
            for j in 0..subs {
                ws.send_json(
                    &json!({"type":"subscribe","collection":"bench_items","uid":format!("s{j}"),
                    "query":{"fields":["*"],"filter":{"val":{"_gte": j}}}}),
                )
                .await?;
                let init = ws.recv(Duration::from_secs(30)).await?;
                if init["event"] != "init" {
                    bail!("subscribe failed: {init}");
                }
            }
            drop(_slot);
            tokio::spawn(listen(ws, i, tx));
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    drop(tx);
    let open_secs = open_started.elapsed().as_secs_f64();
    eprintln!(
        "{} connections open in {open_secs:.1} s; {} changes",
        args.connections, args.changes
    );

    let per_policy = args.connections.div_ceil(p);
    let mut each = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut last = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut first = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for n in 0..args.changes {
        let k = n % p;
        let group = 1_000_000 + n as i64;
        let touched = (0..args.connections).filter(|i| i % p == k).count();
        let want = touched * args.subs;
        let filter = json!({"grp":{"_in":[k as i64, group]}}).to_string();
        sql.execute(
            "UPDATE directus_permissions SET permissions = $1::text::json WHERE policy = $2::text::uuid",
            &[&filter, &policies[k]],
        )
        .await?;
        let committed = Instant::now();
        sql.execute(
            "INSERT INTO bench_items (grp, val) VALUES ($1::int8::int4, 1000000)",
            &[&group],
        )
        .await?;
        let mut got = 0usize;
        let deadline = committed + Duration::from_secs(30);
        let mut slowest = Duration::ZERO;
        let mut fastest = Duration::MAX;
        while got < want {
            let left = deadline.saturating_duration_since(Instant::now());
            let a = tokio::time::timeout(left, rx.recv())
                .await
                .with_context(|| {
                    format!("change {n}: {got} of {want} touched subscriptions followed it in 30 s")
                })?
                .context("listeners ended")?;
            if a.group != group {
                bail!("change {n}: a probe of group {} arrived late", a.group);
            }
            if a.conn % p != k {
                bail!(
                    "change {n}: connection {} (policy {}) got a row only policy {k} allows",
                    a.conn,
                    a.conn % p
                );
            }
            let took = a.at.saturating_duration_since(committed);
            each.record(took.as_micros().max(1) as u64)?;
            slowest = slowest.max(took);
            fastest = fastest.min(took);
            got += 1;
        }
        last.record(slowest.as_micros().max(1) as u64)?;
        first.record(fastest.as_micros().max(1) as u64)?;
    }
    // Nothing else may arrive: every probe went to its policy's subscriptions only.
    if let Ok(Some(a)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        bail!(
            "an extra probe of group {} arrived at connection {}",
            a.group,
            a.conn
        );
    }
    let metrics = testkit::client::http(cluster.gateway_addr(0), "GET", "/metrics", &[], None)
        .await?
        .body;
    let metrics = String::from_utf8_lossy(&metrics);
    let reeval: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("realtime_gateway_rights_reevaluation_seconds"))
        .collect();
    Ok(json!({
        "connections": args.connections,
        "subscriptions": args.connections * args.subs,
        "queries": p * args.subs,
        "policies": p,
        "changes": args.changes,
        "touched_subscriptions_per_change": per_policy * args.subs,
        "open_seconds": open_secs,
        "commit_to_applied_each_subscription": percentiles(&each),
        "commit_to_applied_first_subscription": percentiles(&first),
        "commit_to_applied_all_touched": percentiles(&last),
        "gateway_reevaluation_metric": reeval,
        "postgres": "synchronous_commit = on (the harness default)",
    }))
}
