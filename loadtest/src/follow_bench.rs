//! Related-row benchmark: one author's update shown in `--items` items. How long from the author
//! row's commit until every subscriber has the `update` carrying all of them?
//!
//! A local cluster (one gateway, one worker, durable commits). `bench_posts` rows point at
//! `bench_authors` (a foreign key); `--items` posts are by author 1, as many again by other authors.
//! `--subscribers` admin connections subscribe to `bench_posts` with `fields: ['id', 'title',
//! 'author.email']` and `event: 'update'` (no `init` data). Then, one at a time, `--changes` updates of
//! author 1's email: every subscriber must receive `update`s (frames of at most 1 000 items) with all
//! `--items` posts, each once and showing the new email, and nothing else. The time is taken when a
//! subscriber has the last of them.

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde_json::{Value as Json, json};
use std::time::{Duration, Instant};
use testkit::client::WsClient;
use testkit::cluster::{ADMIN_TOKEN, Cluster, ClusterOptions};
use tokio::sync::mpsc;

#[derive(Debug, Clone, clap::Args)]
pub struct FollowBenchArgs {
    /// Posts by the author whose email changes.
    #[arg(long, default_value_t = 10_000)]
    pub items: usize,
    #[arg(long, default_value_t = 10)]
    pub subscribers: usize,
    /// Email changes, one at a time.
    #[arg(long, default_value_t = 20)]
    pub changes: usize,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

fn percentiles(h: &Histogram<u64>) -> Json {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({"p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99), "max_ms": h.max() as f64 / 1000.0, "count": h.len()})
}

pub async fn run(args: FollowBenchArgs) -> Result<Json> {
    let cluster = Cluster::start(ClusterOptions {
        gateways: 1,
        workers: 1,
        demo_schema: false,
        gateway_env: vec![("LOG_LEVEL".into(), "warn".into())],
        worker_env: vec![("LOG_LEVEL".into(), "warn".into())],
        ..Default::default()
    })
    .await?;
    let sql = cluster.sql().await?;
    sql.batch_execute(&format!(
        "CREATE TABLE bench_authors (id integer PRIMARY KEY, email text NOT NULL);
         INSERT INTO bench_authors SELECT i, 'author' || i || '@example.com' FROM generate_series(1, 100) i;
         CREATE TABLE bench_posts (id serial PRIMARY KEY, author integer REFERENCES bench_authors (id), title text NOT NULL);
         INSERT INTO bench_posts (author, title) SELECT 1, 'post ' || i FROM generate_series(1, {n}) i;
         INSERT INTO bench_posts (author, title) SELECT 2 + i % 99, 'other ' || i FROM generate_series(1, {n}) i;",
        n = args.items
    ))
    .await?;

    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Json, Instant)>();
    for i in 0..args.subscribers {
        let mut ws = WsClient::connect(cluster.gateway_addr(0), "/websocket", &[])
            .await?
            .open()?;
        ws.send_json(&json!({"type":"auth","access_token": ADMIN_TOKEN}))
            .await?;
        let ok = ws.recv(Duration::from_secs(30)).await?;
        if ok["status"] != "ok" {
            bail!("auth failed: {ok}");
        }
        ws.send_json(
            &json!({"type":"subscribe","collection":"bench_posts","event":"update","uid":"p",
            "query":{"fields":["id","title","author.email"]}}),
        )
        .await?;
        let init = ws.recv(Duration::from_secs(30)).await?;
        if init["event"] != "init" {
            bail!("subscribe failed: {init}");
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Ok(m) = ws.recv_skip_ping(Duration::from_secs(3600)).await {
                if m["type"] == "subscription" {
                    let _ = tx.send((i, m, Instant::now()));
                }
            }
        });
    }
    drop(tx);

    let mut each = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for n in 0..args.changes {
        let email = format!("renamed{n}@example.com");
        sql.execute(
            "UPDATE bench_authors SET email = $1 WHERE id = 1",
            &[&email],
        )
        .await?;
        let committed = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut seen: Vec<std::collections::HashSet<i64>> =
            vec![Default::default(); args.subscribers];
        let mut done = 0;
        while done < args.subscribers {
            let (who, m, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .with_context(|| {
                    format!("change {n}: not every subscriber got its updates in 60 s")
                })?
                .context("listeners ended")?;
            let data = m["data"].as_array().cloned().unwrap_or_default();
            if m["event"] != "update" || data.iter().any(|r| r["author"]["email"] != email.as_str())
            {
                bail!(
                    "change {n}: subscriber {who} got {} not showing {email}",
                    m["event"]
                );
            }
            for r in &data {
                if !seen[who].insert(r["id"].as_i64().unwrap_or(-1)) {
                    bail!("change {n}: subscriber {who} got post {} twice", r["id"]);
                }
            }
            if seen[who].len() > args.items {
                bail!(
                    "change {n}: subscriber {who} got {} posts, not {}",
                    seen[who].len(),
                    args.items
                );
            }
            if seen[who].len() == args.items {
                let took = at.saturating_duration_since(committed);
                each.record(took.as_micros().max(1) as u64)?;
                slowest = slowest.max(took);
                done += 1;
            }
        }
        all.record(slowest.as_micros().max(1) as u64)?;
    }
    if let Ok(Some((who, m, _))) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
    {
        bail!("subscriber {who} got an extra message: {m}");
    }
    let metrics = testkit::client::http(&cluster.workers[0].addr, "GET", "/metrics", &[], None)
        .await
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .unwrap_or_default();
    let reads: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("realtime_related_read"))
        .map(str::to_owned)
        .collect();
    Ok(json!({
        "items_per_update": args.items,
        "subscribers": args.subscribers,
        "changes": args.changes,
        "commit_to_received_each_subscriber": percentiles(&each),
        "commit_to_received_all_subscribers": percentiles(&all),
        "worker_related_read_metrics": reads,
        "postgres": "synchronous_commit = on (the harness default)",
    }))
}
