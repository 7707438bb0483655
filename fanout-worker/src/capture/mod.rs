//! The capture role: PostgreSQL's logical replication slot → the Redis change stream.
//!
//! Guarantees:
//! - **Nothing committed is lost.** The slot is confirmed to PostgreSQL only up to a transaction whose
//!   chunks are all in Redis, and no further than the slowest registered consumer has published (so a
//!   Redis that loses its data is refilled from the slot).
//! - **Nothing is doubled.** Entry ids are `<commit LSN>-<chunk>`; after a reconnect PostgreSQL re-sends
//!   from the confirmed position and Redis refuses every id at or below the last one.
//! - **Order.** Transactions arrive in commit order and ids increase with it.
//! - **One capturer.** PostgreSQL lets one session read a slot; every worker runs this loop, the others get
//!   "slot is active" and retry every second, so a standby takes over within about a second after the
//!   capturer's connection drops.
//!
//! Backpressure: nothing is read from PostgreSQL while a batch is being appended (the transport's bounded
//! channel fills, then the walsender waits); PostgreSQL keeps the WAL and the slot lag is the alarm.

pub mod assemble;
pub mod pgoutput;

use crate::config::WorkerConfig;
use assemble::{Assembler, AssemblerConfig, Output};
use common::change::{StreamId, TxChunk, format_lsn};
use common::keys::Keys;
use common::value::Kind;
use common_io::backoff::Backoff;
use common_io::redis::{Conn, Redis};
use futures_util::FutureExt;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_postgres::NoTls;

/// Session settings of the replication connection: values must print exactly as on the gateway's
/// connections (see `common::value`).
const SESSION_OPTIONS: &str =
    "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=postgres -c extra_float_digits=1";

/// Advisory lock serialising publication/slot/identity setup across workers.
const SETUP_LOCK: i64 = 0x7274_6361_7074; // "rtcapt"

/// How stale the consumers' checkpoints may be when confirming (they only ever hold confirmation back,
/// so a stale read confirms less, never more).
const CONSUMERS_REFRESH: Duration = Duration::from_millis(500);

/// How often a standby retries the slot.
const STANDBY_RETRY: Duration = Duration::from_secs(1);

/// Append one batch of entries, idempotently and only into the Redis generation we started with.
/// KEYS: stream, epoch. ARGV: expected epoch, maxlen (0 = none), then id, payload pairs.
/// Returns {appended, skipped}; an id at or below the stream's last is skipped (a re-send).
const APPEND_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[2])
if epoch ~= ARGV[1] then return redis.error_reply('EPOCH_MISMATCH') end
local appended, skipped = 0, 0
for i = 3, #ARGV, 2 do
  local r
  if ARGV[2] == '0' then
    r = redis.pcall('XADD', KEYS[1], ARGV[i], 'd', ARGV[i + 1])
  else
    r = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], ARGV[i], 'd', ARGV[i + 1])
  end
  if type(r) == 'table' and r.err then
    if string.find(r.err, 'equal or smaller') then skipped = skipped + 1 else return r end
  else
    appended = appended + 1
  end
end
return {appended, skipped}
"#;

/// Counters the capture loop keeps (also exported as metrics).
#[derive(Default)]
pub struct CaptureStats {
    pub capturing: AtomicBool,
    /// The last session reached PostgreSQL and Redis (capturing, or standing by behind another worker).
    pub healthy: AtomicBool,
    pub transactions: AtomicU64,
    pub changes: AtomicU64,
    pub bytes: AtomicU64,
    pub entries_appended: AtomicU64,
    pub entries_skipped: AtomicU64,
    /// Last position confirmed to PostgreSQL.
    pub confirmed_lsn: AtomicU64,
    /// Server WAL end from the last keepalive.
    pub wal_end: AtomicU64,
    /// Commit time (µs since epoch) of the last appended transaction.
    pub last_commit_time: AtomicU64,
    pub resets: AtomicU64,
}

use common_io::clock::unix_micros as now_micros;

/// Why a capture session ended.
#[derive(Debug)]
enum Exit {
    Stopped,
    /// Another worker holds the slot.
    Standby,
    /// Redis lost its data (or the epoch changed): start over from the slot.
    Reset,
}

/// Run the capture role on its own thread with a single-threaded runtime: the transport's reader task and
/// the capture loop hand each event over on one thread instead of waking each other across threads (a
/// measured 20-25% of the worker's CPU went to those cross-thread wakeups).
pub fn spawn(
    cfg: Arc<WorkerConfig>,
    stats: Arc<CaptureStats>,
    stop: watch::Receiver<bool>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("capture runtime");
            rt.block_on(run(cfg, stats, stop));
        })
        .expect("spawn the capture thread")
}

/// Run the capture role until `stop` flips, reconnecting with backoff on any error.
pub async fn run(
    cfg: Arc<WorkerConfig>,
    stats: Arc<CaptureStats>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut standby_logged = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let outcome = session(&cfg, &stats, &mut stop).await;
        stats.capturing.store(false, Ordering::Relaxed);
        metrics::gauge!("realtime_capture_active").set(0.0);
        let wait = match outcome {
            Ok(Exit::Stopped) => return,
            Ok(Exit::Standby) => {
                stats.healthy.store(true, Ordering::Relaxed);
                if !standby_logged {
                    tracing::info!(slot = %cfg.capture.slot, "another worker is capturing; standing by");
                    standby_logged = true;
                }
                backoff.reset();
                // Jitter keeps several standbys from retrying in lockstep.
                STANDBY_RETRY + Duration::from_millis(rand::random::<u64>() % 250)
            }
            Ok(Exit::Reset) => {
                stats.resets.fetch_add(1, Ordering::Relaxed);
                Duration::ZERO
            }
            Err(e) => {
                stats.healthy.store(false, Ordering::Relaxed);
                standby_logged = false;
                tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff.peek(), "capture session failed");
                metrics::counter!("realtime_capture_errors_total").increment(1);
                backoff.next_delay()
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
}

fn replication_config(cfg: &WorkerConfig) -> anyhow::Result<ReplicationConfig> {
    let pg: tokio_postgres::Config = cfg.db_url.parse()?;
    let user = pg.get_user().unwrap_or("postgres").to_owned();
    let password = pg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let db = pg.get_dbname().unwrap_or(&user).to_owned();
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let c = &cfg.capture;
    let base = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => ReplicationConfig::new(
            h.clone(),
            user,
            password,
            db,
            c.slot.clone(),
            c.publication.clone(),
        )
        .with_port(port),
        Some(tokio_postgres::config::Host::Unix(path)) => ReplicationConfig::unix(
            path.to_string_lossy().into_owned(),
            port,
            user,
            password,
            db,
            c.slot.clone(),
            c.publication.clone(),
        ),
        None => ReplicationConfig::new(
            "127.0.0.1",
            user,
            password,
            db,
            c.slot.clone(),
            c.publication.clone(),
        )
        .with_port(port),
    };
    Ok(base
        .with_options(SESSION_OPTIONS)
        .with_application_name(format!("realtime-capture:{}", cfg.worker_id))
        .with_status_interval(c.status_interval)
        .with_wakeup_interval(Duration::from_secs(1))
        // Bounded between the socket reader and us: when appends are slow, reading stops.
        .with_buffer_size(4096))
}

pub(crate) async fn connect_pg(cfg: &WorkerConfig) -> anyhow::Result<tokio_postgres::Client> {
    let mut pg: tokio_postgres::Config = cfg.db_url.parse()?;
    pg.options(SESSION_OPTIONS);
    pg.application_name(format!("realtime-worker:{}", cfg.worker_id));
    pg.connect_timeout(Duration::from_secs(10));
    let (client, conn) = pg.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "setup connection ended");
        }
    });
    Ok(client)
}

/// Create the publication and the slot if missing, and set `REPLICA IDENTITY FULL` where it is missing.
/// Idempotent; serialised across workers with an advisory lock.
pub async fn setup(pg: &tokio_postgres::Client, cfg: &WorkerConfig) -> anyhow::Result<()> {
    let c = &cfg.capture;
    pg.execute("SELECT pg_advisory_lock($1)", &[&SETUP_LOCK])
        .await?;
    let result = async {
        let exists = pg.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&c.publication]).await?.is_some();
        if !exists {
            let version: i32 = pg.query_one("SELECT current_setting('server_version_num')::int", &[]).await?.get(0);
            let pub_ident = common::sql::ident(&c.publication);
            // PostgreSQL 15+: the schema's tables, including ones created later, and nothing else.
            let sql = if version >= 150_000 {
                format!(
                    "CREATE PUBLICATION {pub_ident} FOR TABLES IN SCHEMA {} WITH (publish_via_partition_root = true)",
                    common::sql::ident(&cfg.db_schema)
                )
            } else {
                format!("CREATE PUBLICATION {pub_ident} FOR ALL TABLES WITH (publish_via_partition_root = true)")
            };
            pg.batch_execute(&sql).await.map_err(|e| {
                anyhow::anyhow!("creating publication {} failed ({e}); the database user needs to own the tables (or be superuser), or create the publication yourself", c.publication)
            })?;
            tracing::info!(publication = %c.publication, schema = %cfg.db_schema, "created publication");
        }
        let slot = pg.query_opt("SELECT plugin FROM pg_replication_slots WHERE slot_name = $1", &[&c.slot]).await?;
        match slot {
            None => {
                pg.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[&c.slot]).await.map_err(|e| {
                    anyhow::anyhow!("creating replication slot {} failed ({e}); check wal_level=logical, max_replication_slots and the REPLICATION attribute", c.slot)
                })?;
                tracing::info!(slot = %c.slot, "created logical replication slot");
            }
            Some(row) => {
                let plugin: Option<String> = row.get(0);
                if plugin.as_deref() != Some("pgoutput") {
                    anyhow::bail!("replication slot {} exists but uses plugin {plugin:?}, not pgoutput", c.slot);
                }
            }
        }
        if c.replica_identity_full {
            ensure_identity_full(pg, cfg).await?;
            install_identity_trigger(pg, cfg).await;
        }
        anyhow::Ok(())
    }
    .await;
    let _ = pg
        .execute("SELECT pg_advisory_unlock($1)", &[&SETUP_LOCK])
        .await;
    result
}

/// `REPLICA IDENTITY FULL` lets updates and deletes carry the whole old row: that is how an update that
/// moves a row out of a filter becomes a `delete`, and how deletes reach only subscribers who could see
/// the row.
async fn ensure_identity_full(
    pg: &tokio_postgres::Client,
    cfg: &WorkerConfig,
) -> anyhow::Result<()> {
    let rows = pg
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f'",
            &[&cfg.db_schema],
        )
        .await?;
    for r in rows {
        let (schema, table, was): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        if cfg.capture.exclude.contains(&table) {
            continue;
        }
        let sql = format!(
            "ALTER TABLE {}.{} REPLICA IDENTITY FULL",
            common::sql::ident(&schema),
            common::sql::ident(&table)
        );
        match pg.batch_execute(&sql).await {
            Ok(()) => {
                tracing::info!(table = %format!("{schema}.{table}"), was = %was, "set REPLICA IDENTITY FULL")
            }
            Err(e) => {
                tracing::warn!(table = %format!("{schema}.{table}"), error = %e, "could not set REPLICA IDENTITY FULL; updates leaving a filter will not become deletes for this table")
            }
        }
    }
    Ok(())
}

/// Name of the event trigger (and its function) that gives new tables `REPLICA IDENTITY FULL`.
const IDENTITY_TRIGGER: &str = "realtime_replica_identity_full";

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The statements that install the event trigger setting `REPLICA IDENTITY FULL` on every table created
/// in the schema (except excluded ones), inside the `CREATE TABLE` itself.
///
/// Why a trigger: setting it when capture first sees a new table's changes leaves a window. The first
/// updates and deletes of a table created a moment ago carry only the key, so the matcher cannot tell
/// whether a subscription could see the old row and sends it a `delete` it should not get (found by
/// the randomized init test: a new table, writes, and subscribes within milliseconds). A trigger that
/// fails must not fail the user's `CREATE TABLE`, hence the exception block.
fn identity_trigger_sql(schema: &str, exclude: &[String]) -> String {
    let excluded = if exclude.is_empty() {
        "ARRAY[]::text[]".to_owned()
    } else {
        let items: Vec<String> = exclude.iter().map(|t| sql_literal(t)).collect();
        format!("ARRAY[{}]::text[]", items.join(", "))
    };
    let schema_ident = common::sql::ident(schema);
    format!(
        r#"CREATE OR REPLACE FUNCTION {schema_ident}.{IDENTITY_TRIGGER}() RETURNS event_trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  obj record;
BEGIN
  FOR obj IN
    SELECT d.objid, d.object_identity FROM pg_event_trigger_ddl_commands() d
    JOIN pg_class c ON c.oid = d.objid
    WHERE d.object_type = 'table' AND d.schema_name = {schema_lit}
      AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f'
      AND c.relname <> ALL ({excluded})
  LOOP
    BEGIN
      EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', obj.object_identity);
    EXCEPTION WHEN OTHERS THEN
      RAISE WARNING 'realtime: could not set REPLICA IDENTITY FULL on %: %', obj.object_identity, SQLERRM;
    END;
  END LOOP;
END
$fn$;
DROP EVENT TRIGGER IF EXISTS {IDENTITY_TRIGGER};
CREATE EVENT TRIGGER {IDENTITY_TRIGGER} ON ddl_command_end
  WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO')
  EXECUTE FUNCTION {schema_ident}.{IDENTITY_TRIGGER}();"#,
        schema_lit = sql_literal(schema),
    )
}

/// Install the trigger of [`identity_trigger_sql`]. Event triggers need a superuser; without one, new
/// tables still get `REPLICA IDENTITY FULL` when capture first sees them (with the window described
/// there), and the reason is logged once per start.
async fn install_identity_trigger(pg: &tokio_postgres::Client, cfg: &WorkerConfig) {
    // One simple-query string runs as one transaction: a refusal leaves nothing half-installed.
    let sql = identity_trigger_sql(&cfg.db_schema, &cfg.capture.exclude);
    match pg.batch_execute(&sql).await {
        Ok(()) => tracing::debug!(trigger = IDENTITY_TRIGGER, "event trigger installed"),
        Err(e) => tracing::warn!(
            error = %e,
            "could not install the event trigger that gives new tables REPLICA IDENTITY FULL at creation (needs a superuser); new tables get it when capture first sees them, and until then an update or delete of theirs may send a delete to subscriptions that never saw the row"
        ),
    }
}

/// A table without `REPLICA IDENTITY FULL` just appeared in the stream (created after capture started):
/// set it in the background, on a separate connection with a lock timeout, so a table another session
/// holds locked delays only this, never capture.
fn spawn_identity_fix(cfg: &WorkerConfig, schema: &str, table: &str) {
    let cfg = cfg.clone();
    let (schema, table) = (schema.to_owned(), table.to_owned());
    tokio::spawn(async move {
        let name = format!("{schema}.{table}");
        let sql = format!(
            "SET lock_timeout = '2s'; ALTER TABLE {}.{} REPLICA IDENTITY FULL",
            common::sql::ident(&schema),
            common::sql::ident(&table)
        );
        match connect_pg(&cfg).await {
            Ok(pg) => match pg.batch_execute(&sql).await {
                Ok(()) => tracing::info!(table = %name, "set REPLICA IDENTITY FULL on a new table"),
                Err(e) => {
                    tracing::warn!(table = %name, error = %e, "could not set REPLICA IDENTITY FULL; will retry")
                }
            },
            Err(e) => tracing::warn!(error = %e, "could not connect to set REPLICA IDENTITY FULL"),
        }
    });
}

/// Create the Redis epoch if missing and return it.
async fn ensure_epoch(redis: &mut Conn, keys: &Keys) -> anyhow::Result<String> {
    let fresh = format!("{:016x}", rand::random::<u64>());
    let _: Option<String> = redis::cmd("SET")
        .arg(keys.epoch())
        .arg(&fresh)
        .arg("NX")
        .query_async(redis)
        .await?;
    let epoch: Option<String> = redis::cmd("GET")
        .arg(keys.epoch())
        .query_async(redis)
        .await?;
    epoch.ok_or_else(|| anyhow::anyhow!("epoch vanished right after it was set"))
}

/// Resolve type OIDs to kinds from the catalog (domains to their base type).
async fn resolve_types(
    pg: &tokio_postgres::Client,
    oids: &[u32],
) -> anyhow::Result<HashMap<u32, Kind>> {
    let ids: Vec<i64> = oids.iter().map(|o| *o as i64).collect();
    let rows = pg
        .query(
            "SELECT t.oid::int8, (CASE WHEN t.typtype = 'd' THEN bt.typname ELSE t.typname END)::text,
                    (CASE WHEN t.typtype = 'd' THEN bt.typtype ELSE t.typtype END)::text
             FROM pg_type t LEFT JOIN pg_type bt ON bt.oid = t.typbasetype WHERE t.oid = ANY($1::int8[]::oid[])",
            &[&ids],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0) as u32,
                Kind::from_catalog(r.get::<_, &str>(1), r.get::<_, &str>(2)),
            )
        })
        .collect())
}

/// The confirmable position given what is appended and what consumers have published.
///
/// `appended` is the end LSN of the last transaction fully in the stream (or the idle WAL end),
/// `last_id` the last stream id appended, `consumers` each consumer's last published stream id. A consumer
/// at or past `last_id` is caught up; one behind holds the position at its commit LSN (that transaction is
/// then re-sent after a reconnect and skipped as a duplicate).
pub fn confirmable(appended: u64, last_id: Option<StreamId>, consumers: &[StreamId]) -> u64 {
    let mut pos = appended;
    for c in consumers {
        if last_id.is_some_and(|last| *c >= last) {
            continue;
        }
        pos = pos.min(c.lsn);
    }
    pos
}

struct Batch {
    chunks: Vec<TxChunk>,
    /// Spans of traced transactions in the batch: open from decoding until the append succeeded.
    traced: Vec<tracing::Span>,
    bytes: usize,
    /// End LSN of the last complete transaction in the batch.
    complete_end: Option<u64>,
}

async fn session(
    cfg: &WorkerConfig,
    stats: &CaptureStats,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Exit> {
    let keys = Keys::new(&cfg.redis_prefix);
    let pg = connect_pg(cfg).await?;
    setup(&pg, cfg).await?;
    let mut redis = Redis::new(&cfg.redis)?.connect().await?;
    let epoch = ensure_epoch(&mut redis, &keys).await?;

    let mut client = ReplicationClient::connect(replication_config(cfg)?).await?;
    if let Err(e) = client.wait_started().await {
        let text = e.to_string();
        if text.contains("is active for PID") || text.contains("55006") {
            return Ok(Exit::Standby);
        }
        return Err(anyhow::anyhow!("start replication: {text}"));
    }
    stats.capturing.store(true, Ordering::Relaxed);
    stats.healthy.store(true, Ordering::Relaxed);
    metrics::gauge!("realtime_capture_active").set(1.0);
    let _: Result<(), _> = redis::cmd("SET")
        .arg(keys.capture_owner())
        .arg(&cfg.worker_id)
        .arg("EX")
        .arg(30)
        .query_async(&mut redis)
        .await;
    tracing::info!(slot = %cfg.capture.slot, publication = %cfg.capture.publication, "capturing changes");

    let mut asm = Assembler::new(AssemblerConfig {
        chunk_rows: cfg.capture.chunk_rows,
        chunk_bytes: cfg.capture.chunk_bytes,
        exclude: cfg.capture.exclude.iter().cloned().collect(),
        ..AssemblerConfig::default()
    });
    let script = redis::Script::new(APPEND_SCRIPT);
    let mut appended_end: u64 = 0;
    let mut last_id: Option<StreamId> = None;
    // (when, last id then): for trimming by age.
    let mut history: VecDeque<(Instant, StreamId)> = VecDeque::new();
    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_identity_check = Instant::now();
    let mut consumers = read_consumers(&mut redis, &keys).await?;
    let mut consumers_read = Instant::now();

    loop {
        let mut batch = Batch {
            chunks: Vec::new(),
            traced: Vec::new(),
            bytes: 0,
            complete_end: None,
        };
        let first = tokio::select! {
            ev = client.recv() => ev?,
            _ = stop.changed() => {
                let _ = client.shutdown().await;
                return Ok(Exit::Stopped);
            }
            _ = housekeeping.tick() => {
                consumers = read_consumers(&mut redis, &keys).await?;
                consumers_read = Instant::now();
                let pos = confirmable(appended_end, last_id, &consumers);
                confirm(&client, stats, pos);
                if let Some(id) = last_id {
                    history.push_back((Instant::now(), id));
                }
                trim_by_age(&mut redis, &keys, &mut history, cfg.capture.stream_max_age, &consumers).await;
                let _: Result<(), _> = redis::cmd("SET").arg(keys.capture_owner()).arg(&cfg.worker_id).arg("EX").arg(30).query_async(&mut redis).await;
                if cfg.capture.replica_identity_full && last_identity_check.elapsed() >= Duration::from_secs(10) {
                    last_identity_check = Instant::now();
                    if let Err(e) = ensure_identity_full(&pg, cfg).await {
                        tracing::warn!(error = %e, "replica identity check failed");
                    }
                }
                continue;
            }
        };
        let Some(first) = first else {
            return Ok(Exit::Stopped);
        };
        handle_event(
            first,
            cfg,
            &mut asm,
            &pg,
            &mut batch,
            stats,
            &mut appended_end,
        )
        .await?;
        // Take whatever else is already waiting, so a busy stream appends in batches and an idle one
        // appends each transaction at once.
        while batch.chunks.len() < cfg.capture.batch_max && batch.bytes < 8 << 20 {
            match client.recv().now_or_never() {
                Some(Ok(Some(ev))) => {
                    handle_event(ev, cfg, &mut asm, &pg, &mut batch, stats, &mut appended_end)
                        .await?
                }
                Some(Ok(None)) => break,
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }
        if batch.chunks.is_empty() {
            if let Some(end) = batch.complete_end {
                appended_end = appended_end.max(end);
            }
            continue;
        }
        let started = Instant::now();
        let mut invocation = script.prepare_invoke();
        invocation
            .key(keys.changes())
            .key(keys.epoch())
            .arg(&epoch)
            .arg(cfg.capture.stream_maxlen);
        for c in &batch.chunks {
            invocation.arg(c.stream_id().to_string()).arg(c.encode());
        }
        let result: Result<(u64, u64), redis::RedisError> =
            invocation.invoke_async(&mut redis).await;
        match result {
            Ok((appended, skipped)) => {
                stats
                    .entries_appended
                    .fetch_add(appended, Ordering::Relaxed);
                stats.entries_skipped.fetch_add(skipped, Ordering::Relaxed);
                metrics::counter!("realtime_capture_entries_total", "result" => "appended")
                    .increment(appended);
                metrics::counter!("realtime_capture_entries_total", "result" => "duplicate")
                    .increment(skipped);
                metrics::histogram!("realtime_capture_append_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Err(e) if e.to_string().contains("EPOCH_MISMATCH") => {
                tracing::warn!(
                    "Redis lost the change stream (restart without persistence?); re-reading from the replication slot"
                );
                let _ = client.shutdown().await;
                return Ok(Exit::Reset);
            }
            Err(e) => return Err(e.into()),
        }
        let last = batch.chunks.last().expect("non-empty");
        last_id = Some(last.stream_id());
        stats
            .last_commit_time
            .store(last.commit_time as u64, Ordering::Relaxed);
        metrics::gauge!("realtime_replication_lag_seconds")
            .set((now_micros() - last.commit_time).max(0) as f64 / 1e6);
        if let Some(end) = batch.complete_end {
            appended_end = appended_end.max(end);
        }
        if consumers_read.elapsed() >= CONSUMERS_REFRESH {
            consumers = read_consumers(&mut redis, &keys).await?;
            consumers_read = Instant::now();
        }
        confirm(
            &client,
            stats,
            confirmable(appended_end, last_id, &consumers),
        );
    }
}

async fn handle_event(
    ev: ReplicationEvent,
    cfg: &WorkerConfig,
    asm: &mut Assembler,
    pg: &tokio_postgres::Client,
    batch: &mut Batch,
    stats: &CaptureStats,
    appended_end: &mut u64,
) -> anyhow::Result<()> {
    let msg = match ev {
        ReplicationEvent::Begin {
            final_lsn,
            xid,
            commit_time_micros,
        } => pgoutput::Message::Begin {
            final_lsn: final_lsn.0,
            xid,
            commit_time: commit_time_micros.saturating_add(pgoutput::PG_EPOCH_OFFSET_MICROS),
        },
        ReplicationEvent::Commit {
            lsn,
            end_lsn,
            commit_time_micros,
        } => pgoutput::Message::Commit {
            flags: 0,
            commit_lsn: lsn.0,
            end_lsn: end_lsn.0,
            commit_time: commit_time_micros.saturating_add(pgoutput::PG_EPOCH_OFFSET_MICROS),
        },
        ReplicationEvent::XLogData { data, .. } => {
            stats.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            let msg = pgoutput::decode(&data)?;
            if let pgoutput::Message::Relation(r) = &msg {
                let missing = asm.unresolved_types(r);
                if !missing.is_empty() {
                    for (oid, kind) in resolve_types(pg, &missing).await? {
                        asm.set_type_kind(oid, kind);
                    }
                }
                if cfg.capture.replica_identity_full
                    && r.replica_identity != 'f'
                    && !cfg.capture.exclude.contains(&r.name)
                {
                    spawn_identity_fix(cfg, &r.namespace, &r.name);
                }
            }
            msg
        }
        ReplicationEvent::KeepAlive { wal_end, .. } => {
            stats.wal_end.store(wal_end.0, Ordering::Relaxed);
            metrics::gauge!("realtime_replication_lag_bytes").set(
                wal_end
                    .0
                    .saturating_sub(stats.confirmed_lsn.load(Ordering::Relaxed))
                    as f64,
            );
            // Idle: everything committed before wal_end has reached us, so it may be confirmed (otherwise
            // WAL from unrelated activity would pile up behind the slot).
            if !asm.in_transaction() && batch.chunks.is_empty() {
                *appended_end = (*appended_end).max(wal_end.0);
            }
            return Ok(());
        }
        ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => return Ok(()),
    };
    match asm.push(msg)? {
        None => {}
        Some(Output::Empty { end_lsn }) => batch.complete_end = Some(end_lsn),
        Some(Output::Chunk(chunk)) => {
            stats
                .changes
                .fetch_add(chunk.changes.len() as u64, Ordering::Relaxed);
            metrics::counter!("realtime_capture_changes_total")
                .increment(chunk.changes.len() as u64);
            if chunk.last {
                stats.transactions.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("realtime_capture_transactions_total").increment(1);
                batch.complete_end = Some(chunk.end_lsn);
            }
            batch.bytes += chunk.changes.iter().map(|c| c.weight()).sum::<usize>();
            if common_io::telemetry::change_traced(chunk.lsn) {
                let span = tracing::info_span!(
                    target: common_io::telemetry::OTEL_TARGET,
                    "change.capture",
                    lsn = chunk.lsn,
                    xid = chunk.xid,
                    chunk = chunk.seq,
                    changes = chunk.changes.len(),
                );
                common_io::telemetry::join_change_trace(&span, chunk.lsn);
                batch.traced.push(span);
            }
            batch.chunks.push(chunk);
        }
    }
    Ok(())
}

/// Every shard's checkpoint (shards never checkpointed hold nothing back).
async fn read_consumers(redis: &mut Conn, keys: &Keys) -> anyhow::Result<Vec<StreamId>> {
    let shards: Option<u32> = redis::cmd("GET")
        .arg(keys.shard_count())
        .query_async(redis)
        .await?;
    let Some(shards) = shards else {
        return Ok(Vec::new());
    };
    let gets: Vec<redis::Cmd> = (0..shards)
        .map(|n| {
            let mut c = redis::cmd("GET");
            c.arg(keys.shard_checkpoint(n));
            c
        })
        .collect();
    let values = redis.query_all(&gets).await?;
    Ok(values
        .iter()
        .filter_map(|v| match v {
            redis::Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        })
        .collect())
}

fn confirm(client: &ReplicationClient, stats: &CaptureStats, pos: u64) {
    if pos > stats.confirmed_lsn.load(Ordering::Relaxed) {
        client.update_applied_lsn(Lsn(pos));
        stats.confirmed_lsn.store(pos, Ordering::Relaxed);
        tracing::trace!(lsn = %format_lsn(pos), "confirmed");
    }
}

/// Drop entries older than `max_age`, but never ones a consumer still needs.
async fn trim_by_age(
    redis: &mut Conn,
    keys: &Keys,
    history: &mut VecDeque<(Instant, StreamId)>,
    max_age: Duration,
    consumers: &[StreamId],
) {
    let mut cut = None;
    while history
        .front()
        .is_some_and(|(at, _)| at.elapsed() > max_age)
    {
        cut = history.pop_front().map(|(_, id)| id);
    }
    let Some(mut cut) = cut else { return };
    if let Some(slowest) = consumers.iter().min() {
        cut = cut.min(*slowest);
    }
    let _: Result<u64, _> = redis::cmd("XTRIM")
        .arg(keys.changes())
        .arg("MINID")
        .arg("~")
        .arg(cut.to_string())
        .query_async(redis)
        .await;
}

#[cfg(test)]
mod tests;
