//! Capture benchmark: `pgbench` inserts into a table while a fanout-worker captures into the Redis
//! stream; a reader follows the stream and measures rows/s, transactions/s and insert-to-stream latency
//! (`clock_timestamp()` at the INSERT → the entry read back from Redis).

use anyhow::{Context, Result, bail};
use common::change::{Change, TxChunk};
use common::keys::Keys;
use hdrhistogram::Histogram;
use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use testkit::procstat;
use testkit::services::{Postgres, Process, Redis, workspace_bin};

#[derive(Debug, Clone, clap::Args)]
pub struct CaptureBenchArgs {
    /// pgbench client connections.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Rows inserted per transaction.
    #[arg(long, default_value_t = 1)]
    pub rows_per_tx: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// PostgreSQL `fsync` and `synchronous_commit` (on = durable commits, as in production).
    #[arg(long, default_value = "on")]
    pub durable: String,
    /// Bytes of payload per row.
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// `live`: capture while pgbench writes (latency under load). `backlog`: pgbench writes with the worker
    /// stopped, then the worker catches up alone (capture capacity from one slot).
    #[arg(long, default_value = "live")]
    pub mode: String,
    /// Target transactions/s for pgbench (`-R`); 0 = as fast as it can.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

async fn wait_capturing(worker: &Process) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = testkit::client::http(&worker.addr, "GET", "/capture", &[], None).await?;
        if r.json()?["capturing"] == true {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("worker did not start capturing:\n{}", worker.log());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Backlog mode: the worker is stopped while pgbench writes; then it starts and catches up alone. The
/// catch-up rate is what one slot delivers into Redis with the box to itself.
async fn run_backlog(
    args: &CaptureBenchArgs,
    pg: &Postgres,
    redis: &Redis,
    db: &str,
    env: &[(String, String)],
) -> Result<Json> {
    let mut worker = Process::spawn("fanout-worker", &workspace_bin("fanout-worker")?, env).await?;
    wait_capturing(&worker).await?;
    worker.kill();
    let script = pgbench_script(args)?;
    let out = pgbench(pg, db, args, &script).await?;
    let _ = std::fs::remove_file(&script);
    let sql = pg.connect(db).await?;
    let total: i64 = sql
        .query_one("SELECT count(*) FROM bench", &[])
        .await?
        .get(0);
    let started = Instant::now();
    let worker = Process::spawn("fanout-worker", &workspace_bin("fanout-worker")?, env).await?;
    let pid = worker.pid().context("worker pid")?;
    let (cpu_w0, cpu_pg0) = (
        procstat::cpu_seconds(pid).unwrap_or(0.0),
        procstat::tree_cpu_seconds(pg.pid().unwrap_or(0)),
    );
    let deadline = started + Duration::from_secs(600);
    loop {
        let r = testkit::client::http(&worker.addr, "GET", "/capture", &[], None)
            .await?
            .json()?;
        if r["changes"].as_i64().unwrap_or(0) >= total {
            break;
        }
        if Instant::now() > deadline {
            bail!("worker did not catch up within 10 minutes: {r}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let (cpu_w1, cpu_pg1) = (
        procstat::cpu_seconds(pid).unwrap_or(0.0),
        procstat::tree_cpu_seconds(pg.pid().unwrap_or(0)),
    );
    let mut con = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    let entries: u64 = redis::cmd("XLEN")
        .arg(Keys::default().changes())
        .query_async(&mut con)
        .await?;
    let txs = total as f64 / args.rows_per_tx as f64;
    Ok(json!({
        "benchmark": "capture",
        "mode": "backlog",
        "clients": args.clients,
        "rows_per_tx": args.rows_per_tx,
        "durable_commits": args.durable == "on",
        "payload_bytes": args.payload,
        "pgbench_tps_while_worker_stopped": out.0,
        "rows": total,
        "stream_entries": entries,
        "catch_up_seconds": secs,
        "captured_rows_per_second": total as f64 / secs,
        "captured_tx_per_second": txs / secs,
        "cpu_cores_during_catch_up": {"worker": (cpu_w1 - cpu_w0) / secs, "postgres": (cpu_pg1 - cpu_pg0) / secs},
    }))
}

fn pgbench_script(args: &CaptureBenchArgs) -> Result<std::path::PathBuf> {
    let script = std::env::temp_dir().join(format!("rt-capture-bench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        format!(
            "INSERT INTO bench (t0, payload) SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint, repeat('x', {}) FROM generate_series(1, {});\n",
            args.payload, args.rows_per_tx
        ),
    )?;
    Ok(script)
}

/// Run pgbench; returns (tps, seconds).
async fn pgbench(
    pg: &Postgres,
    db: &str,
    args: &CaptureBenchArgs,
    script: &std::path::Path,
) -> Result<(f64, f64)> {
    let started = Instant::now();
    let out = tokio::process::Command::new(pg.tool("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-n",
            "-M",
            "prepared",
        ])
        .args([
            "-c",
            &args.clients.to_string(),
            "-j",
            "2",
            "-T",
            &args.duration.to_string(),
        ])
        .args(if args.rate > 0 {
            vec!["-R".to_owned(), args.rate.to_string()]
        } else {
            vec![]
        })
        .arg("-f")
        .arg(script)
        .arg(db)
        .output()
        .await
        .context("run pgbench")?;
    let secs = started.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps ="))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok((tps, secs))
}

pub async fn run(args: CaptureBenchArgs) -> Result<Json> {
    let durable = args.durable == "on";
    let on_off = if durable { "on" } else { "off" };
    let pg = Postgres::start_with(&[
        ("fsync", on_off),
        ("full_page_writes", on_off),
        ("synchronous_commit", on_off),
        ("shared_buffers", "256MB"),
        ("max_wal_size", "4GB"),
        ("wal_writer_delay", "10ms"),
    ])
    .await?;
    let redis = Redis::start().await?;
    let db = pg.create_database("bench").await?;
    let sql = pg.connect(&db).await?;
    sql.batch_execute(
        "CREATE TABLE bench (id bigserial PRIMARY KEY, t0 bigint NOT NULL, payload text)",
    )
    .await?;

    let env: Vec<(String, String)> = [
        ("HOST", "127.0.0.1".to_owned()),
        ("PORT", "0".to_owned()),
        ("DB_HOST", "127.0.0.1".to_owned()),
        ("DB_PORT", pg.port.to_string()),
        ("DB_DATABASE", db.clone()),
        ("DB_USER", "postgres".to_owned()),
        ("REDIS", redis.url()),
        ("LOG_LEVEL", "warn".to_owned()),
        (
            "TOKIO_WORKER_THREADS",
            std::env::var("BENCH_WORKER_THREADS").unwrap_or_else(|_| "2".into()),
        ),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.clone()))
    .collect();
    if args.mode == "backlog" {
        return run_backlog(&args, &pg, &redis, &db, &env).await;
    }
    let worker = Process::spawn("fanout-worker", &workspace_bin("fanout-worker")?, &env).await?;
    wait_capturing(&worker).await?;

    // Reader: follow the stream, measure latency per row.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let url = redis.url();
        let done = done.clone();
        tokio::spawn(async move {
            let mut con = redis::Client::open(url)?
                .get_multiplexed_async_connection()
                .await?;
            let key = Keys::default().changes();
            let mut last = "0-0".to_owned();
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut rows, mut txs, mut entries) = (0u64, 0u64, 0u64);
            let mut timeline: Vec<(f64, u64)> = Vec::new();
            let start = Instant::now();
            loop {
                type Reply = Option<Vec<(String, Vec<(String, Vec<(String, Vec<u8>)>)>)>>;
                let reply: Reply = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(2000)
                    .arg("BLOCK")
                    .arg(200)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(&last)
                    .query_async(&mut con)
                    .await?;
                let Some(streams) = reply else {
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                };
                let now = now_micros();
                for (_, list) in streams {
                    for (id, fields) in list {
                        last = id;
                        entries += 1;
                        let Some((_, payload)) = fields.iter().find(|(k, _)| k == "d") else {
                            continue;
                        };
                        let chunk = TxChunk::decode(payload)?;
                        if chunk.last {
                            txs += 1;
                        }
                        for ch in &chunk.changes {
                            if let Change::Insert { new, .. } = ch {
                                rows += 1;
                                if let Some(t0) = new
                                    .get(1)
                                    .and_then(|c| c.as_text())
                                    .and_then(|t| t.parse::<i64>().ok())
                                {
                                    hist.saturating_record((now - t0).max(1) as u64);
                                }
                            }
                        }
                    }
                }
                timeline.push((start.elapsed().as_secs_f64(), rows));
                if done.load(Ordering::Relaxed) {
                    break;
                }
            }
            anyhow::Ok((rows, txs, entries, hist, timeline))
        })
    };

    let script = pgbench_script(&args)?;
    let worker_pid = worker.pid().context("worker pid")?;
    let pg_pid = pg.pid().context("postgres pid")?;
    let (cpu_w0, cpu_pg0, m0) = (
        procstat::cpu_seconds(worker_pid).unwrap_or(0.0),
        procstat::tree_cpu_seconds(pg_pid),
        procstat::machine_jiffies(),
    );
    let (tps, load_secs) = pgbench(&pg, &db, &args, &script).await?;
    let (cpu_w1, cpu_pg1, m1) = (
        procstat::cpu_seconds(worker_pid).unwrap_or(0.0),
        procstat::tree_cpu_seconds(pg_pid),
        procstat::machine_jiffies(),
    );
    let _ = std::fs::remove_file(&script);

    // Drain: wait until every committed row is in the stream.
    let total: i64 = sql
        .query_one("SELECT count(*) FROM bench", &[])
        .await?
        .get(0);
    let drain_start = Instant::now();
    let drain_deadline = drain_start + Duration::from_secs(120);
    loop {
        let r = testkit::client::http(&worker.addr, "GET", "/capture", &[], None)
            .await?
            .json()?;
        let changes = r["changes"].as_u64().unwrap_or(0) as i64;
        if changes >= total || Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    done.store(true, Ordering::Relaxed);
    let (rows, txs, entries, hist, timeline) = reader.await??;
    let drain_secs = drain_start.elapsed().as_secs_f64();

    // Throughput during the load window, from the reader's timeline.
    let in_window = timeline
        .iter()
        .filter(|(t, _)| *t <= load_secs)
        .map(|(_, r)| *r)
        .next_back()
        .unwrap_or(0);
    let machine_busy = match (m0, m1) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => 0.0,
    };
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let report = json!({
        "benchmark": "capture",
        "mode": "live",
        "target_tps": args.rate,
        "clients": args.clients,
        "rows_per_tx": args.rows_per_tx,
        "durable_commits": durable,
        "payload_bytes": args.payload,
        "load_seconds": load_secs,
        "pgbench_tps": tps,
        "rows_committed": total,
        "rows_captured": rows,
        "transactions_captured": txs,
        "stream_entries": entries,
        "captured_rows_per_second_during_load": in_window as f64 / load_secs,
        "captured_tx_per_second_during_load": in_window as f64 / args.rows_per_tx as f64 / load_secs,
        "drain_seconds_after_load": drain_secs,
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p999": ms(0.999), "max": hist.max() as f64 / 1000.0},
        "cpu_cores": {
            "worker": (cpu_w1 - cpu_w0) / load_secs,
            "postgres": (cpu_pg1 - cpu_pg0) / load_secs,
            "machine_busy_fraction": machine_busy,
        },
    });
    if rows as i64 != total {
        bail!(
            "captured {rows} rows but {total} were committed:\n{report:#}\n{}",
            worker.log()
        );
    }
    Ok(report)
}
