//! The matching role: follow the change stream, match each change against the owned shards' queries,
//! and publish each gateway its events.
//!
//! One loop per worker:
//! 1. every second, shard membership ([`super::shards`]): load acquired shards (their registrations, then a
//!    catch-up replay from the shard's checkpoint), checkpoint and release shards handed over, drop lost
//!    ones; every few seconds, remove the registrations of gateways whose liveness key expired;
//! 2. one blocking `XREAD` over the change stream and the ctl stream (both in the `{changes}` hash slot):
//!    registrations for owned shards are applied at once, and a (query, gateway) registration that asks
//!    for a replay gets the stream re-read from the position the gateway asked for, closed by a
//!    replay-done entry (gap-free init, and recovery after a gateway lost messages); then the new changes
//!    are matched;
//! 3. frames go out as one message per gateway (`common::delivery`), then, at most every
//!    [`CHECKPOINT_EVERY`], the shards' checkpoints advance (fenced by their leases). Capture never
//!    confirms the slot past the slowest checkpoint.
//!
//! Delivery is at-least-once (a new owner resumes from a checkpoint written after publishing; replays
//! overlap live events); gateways drop what they already delivered, by position.

use super::coordinator::{Coordinator, CtlOutcome, Messages};
use super::shards::Membership;
use crate::config::WorkerConfig;
use common::change::{StreamId, TxChunk};
use common::ctl::{self, CtlEntry, RegField};
use common::keys::Keys;
use common_io::backoff::Backoff;
use common_io::redis::{Conn, Lua, Redis};
use redis::streams::StreamReadReply;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Stream entries read per round trip during replays.
const REPLAY_PAGE: usize = 256;
/// How long one `XREAD` blocks when nothing arrives (bounds how late a membership tick can be).
const BLOCK_MS: u64 = 200;
/// How long one round of related-item reads may take before it is tried again.
const RELATED_TIMEOUT: Duration = Duration::from_secs(10);
/// How often owned shards' checkpoints are written while changes flow. Later only means a longer
/// catch-up replay after a failover (gateways drop what they already have).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

#[derive(Default)]
pub struct FanoutStats {
    /// A matching session is running: Redis answered and the stream position is known (readiness).
    pub running: AtomicBool,
    pub shards: AtomicUsize,
    pub queries: AtomicUsize,
    pub entries: AtomicU64,
    pub frames: AtomicU64,
    pub messages: AtomicU64,
    pub replays: AtomicU64,
    /// Commit LSN of the last change stream entry processed.
    pub cursor_lsn: AtomicU64,
}

/// Run the matching role until `stop` flips; a failed session starts over (its shards catch up from their
/// checkpoints, so nothing is skipped).
pub async fn run(cfg: Arc<WorkerConfig>, stats: Arc<FanoutStats>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        if *stop.borrow() {
            return;
        }
        match session(&cfg, &stats, &mut stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff.peek(), "matching session failed");
                metrics::counter!("realtime_fanout_errors_total").increment(1);
            }
        }
        stats.running.store(false, Ordering::Relaxed);
        stats.shards.store(0, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = stop.changed() => {}
        }
    }
}

struct Loop<'a> {
    cfg: &'a WorkerConfig,
    stats: &'a FanoutStats,
    keys: Keys,
    redis: Redis,
    cmd: Conn,
    /// For the blocking `XREAD` only.
    read: Conn,
    /// The rules; this loop only reads, writes and keeps time.
    core: Coordinator,
    members: Membership,
    last_checkpoint: Instant,
    epoch: String,
    scripts: Scripts,
    /// For the related items of relational queries; connected on first use.
    db: Option<tokio_postgres::Client>,
    /// When the leases are renewed next. Also checked between the entries of a batch: a batch whose
    /// related reads take long must not outlast the shard leases.
    next_tick: Instant,
}

struct Scripts {
    load: Lua,
    checkpoint: Lua,
    unregister: Lua,
    replayed: Lua,
}

async fn session(
    cfg: &WorkerConfig,
    stats: &FanoutStats,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let keys = Keys::new(&cfg.redis_prefix);
    let redis = Redis::new(&cfg.redis)?;
    let mut cmd = redis.connect().await?;
    let read = redis.connect().await?;
    let shards_key = keys.shard_count();
    let _: Option<String> = redis::cmd("SET")
        .arg(&shards_key)
        .arg(cfg.shards)
        .arg("NX")
        .query_async(&mut cmd)
        .await?;
    let agreed: u32 = redis::cmd("GET")
        .arg(&shards_key)
        .query_async(&mut cmd)
        .await?;
    if agreed != cfg.shards {
        anyhow::bail!(
            "REALTIME_SHARDS is {} here but the cluster uses {agreed}",
            cfg.shards
        );
    }
    // The epoch appears with the change stream (capture creates it).
    let epoch = loop {
        let e: Option<String> = redis::cmd("GET")
            .arg(keys.epoch())
            .query_async(&mut cmd)
            .await?;
        if let Some(e) = e {
            break e;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => return Ok(()),
        }
    };
    let cursor = last_id(&mut cmd, &keys.changes()).await?;
    let ctl = last_id(&mut cmd, &keys.ctl()).await?;
    let mut l = Loop {
        cfg,
        stats,
        members: Membership::new(&cfg.worker_id, cfg.shards, cfg.shard_lease, keys.clone()),
        keys,
        redis,
        cmd,
        read,
        core: Coordinator::new(&cfg.db_schema, cfg.shards, cursor, ctl),
        last_checkpoint: Instant::now(),
        epoch,
        db: None,
        next_tick: Instant::now(),
        scripts: Scripts {
            load: Lua::new(common_io::scripts::LOAD_SHARD),
            checkpoint: Lua::new(common_io::scripts::CHECKPOINT),
            unregister: Lua::new(common_io::scripts::UNREGISTER),
            replayed: Lua::new(common_io::scripts::REPLAYED),
        },
    };
    tracing::info!(cursor = %l.core.cursor(), "matching started");
    stats.running.store(true, Ordering::Relaxed);
    let mut next_cleanup = Instant::now() + Duration::from_secs(5);
    loop {
        if *stop.borrow() {
            l.leave().await;
            return Ok(());
        }
        l.tick_if_due().await?;
        if Instant::now() >= next_cleanup {
            l.drop_dead_gateways().await?;
            next_cleanup = Instant::now() + Duration::from_secs(5);
        }
        l.run_replays().await?;
        l.read_and_process().await?;
    }
}

/// The last id of a stream (`0-0` when empty or missing).
async fn last_id(con: &mut Conn, key: &str) -> anyhow::Result<StreamId> {
    let last: Vec<(String, HashMap<String, redis::Value>)> = redis::cmd("XREVRANGE")
        .arg(key)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(con)
        .await?;
    Ok(last
        .first()
        .and_then(|(id, _)| id.parse().ok())
        .unwrap_or_default())
}

/// Whether entries after `after` were deleted from a stream (trimmed before we read them). Uses
/// `XINFO STREAM`'s `max-deleted-entry-id` (Redis 7); `false` when the server does not report it.
pub async fn trimmed_past(con: &mut Conn, key: &str, after: StreamId) -> anyhow::Result<bool> {
    let info: redis::Value = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(con)
        .await
    {
        Ok(v) => v,
        // No such key: nothing was trimmed.
        Err(e) if e.to_string().contains("no such key") => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let pairs: Vec<(&redis::Value, &redis::Value)> = match &info {
        redis::Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        redis::Value::Array(a) => a
            .chunks(2)
            .filter_map(|c| Some((c.first()?, c.get(1)?)))
            .collect(),
        _ => Vec::new(),
    };
    let deleted = pairs
        .into_iter()
        .find(|(k, _)| text(k).as_deref() == Some("max-deleted-entry-id"))
        .and_then(|(_, v)| text(v))
        .and_then(|t| t.parse::<StreamId>().ok());
    Ok(deleted.is_some_and(|d| d > after))
}

fn bytes(v: &redis::Value) -> Option<&[u8]> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        _ => None,
    }
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

impl Loop<'_> {
    /// Renew leases (and follow shard moves) if a second has passed; whether it did.
    async fn tick_if_due(&mut self) -> anyhow::Result<bool> {
        if Instant::now() < self.next_tick {
            return Ok(false);
        }
        self.tick().await?;
        self.next_tick = Instant::now() + Duration::from_secs(1);
        Ok(true)
    }

    async fn tick(&mut self) -> anyhow::Result<()> {
        let e: Option<String> = redis::cmd("GET")
            .arg(self.keys.epoch())
            .query_async(&mut self.cmd)
            .await?;
        if e.as_deref() != Some(self.epoch.as_str()) {
            anyhow::bail!("Redis lost its data (the change stream epoch changed); starting over");
        }
        if trimmed_past(&mut self.cmd, &self.keys.ctl(), self.core.ctl_position()).await? {
            // We fell so far behind that registrations we never read were trimmed: reload every shard.
            tracing::warn!("the ctl stream was trimmed past our position; reloading owned shards");
            metrics::counter!("realtime_ctl_reloads_total").increment(1);
            let at = last_id(&mut self.cmd, &self.keys.ctl()).await?;
            self.core.skip_ctl_to(at);
            let owned: Vec<u32> = self.members.owned.iter().copied().collect();
            for n in owned {
                self.core.drop_shard(n);
                self.load_shard(n).await?;
            }
        }
        let changes = self.members.tick(&mut self.cmd).await?;
        for n in changes.lost {
            metrics::counter!("realtime_shard_moves_total", "kind" => "lost").increment(1);
            tracing::warn!(
                shard = n,
                "lost a shard lease (stalled past it?); dropping the shard"
            );
            self.core.drop_shard(n);
        }
        if !changes.to_release.is_empty() {
            self.flush().await?;
            self.checkpoint(&changes.to_release).await?;
            for n in changes.to_release {
                metrics::counter!("realtime_shard_moves_total", "kind" => "released").increment(1);
                self.members.release(&mut self.cmd, n).await?;
                self.core.drop_shard(n);
                tracing::debug!(shard = n, "handed a shard over");
            }
        }
        for n in changes.acquired {
            metrics::counter!("realtime_shard_moves_total", "kind" => "acquired").increment(1);
            self.load_shard(n).await?;
        }
        // How far matching is behind the stream's end, in WAL bytes.
        let end = last_id(&mut self.cmd, &self.keys.changes()).await?;
        metrics::gauge!("realtime_stream_backlog_bytes")
            .set(end.lsn.saturating_sub(self.core.cursor().lsn) as f64);
        let queries = self.core.query_count();
        self.stats
            .shards
            .store(self.members.owned.len(), Ordering::Relaxed);
        self.stats.queries.store(queries, Ordering::Relaxed);
        metrics::gauge!("realtime_shards_owned").set(self.members.owned.len() as f64);
        metrics::gauge!("realtime_registered_queries").set(queries as f64);
        Ok(())
    }

    /// Load a newly acquired shard: the ctl position first, then its registrations (so ctl entries we
    /// have not read yet can only repeat what is loaded), then its checkpoint for the catch-up.
    async fn load_shard(&mut self, n: u32) -> anyhow::Result<()> {
        let at = last_id(&mut self.cmd, &self.keys.ctl()).await?;
        let (defs, regs): (Vec<String>, Vec<String>) = self
            .scripts
            .load
            .prepare()
            .key(self.keys.shard_defs(n))
            .key(self.keys.shard_reg(n))
            .invoke_async(&mut self.cmd)
            .await?;
        let ckpt: Option<String> = redis::cmd("GET")
            .arg(self.keys.shard_checkpoint(n))
            .query_async(&mut self.cmd)
            .await?;
        let pairs = |flat: Vec<String>| -> Vec<(String, String)> {
            let mut it = flat.into_iter();
            std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
        };
        let (defs, regs) = (pairs(defs), pairs(regs));
        let checkpoint = ckpt.and_then(|c| c.parse::<StreamId>().ok());
        let unreadable = self.core.load_shard(n, at, &defs, &regs, checkpoint);
        if unreadable > 0 {
            tracing::warn!(
                shard = n,
                unreadable,
                "ignoring unreadable query definitions or registrations"
            );
        }
        tracing::debug!(shard = n, queries = defs.len(), "acquired a shard");
        Ok(())
    }

    /// Serve every queued replay in **one** pass over the stream (see [`Coordinator::start_replays`]),
    /// then publish, and mark the served registrations.
    async fn run_replays(&mut self) -> anyhow::Result<()> {
        let Some(pass) = self.core.start_replays() else {
            return Ok(());
        };
        self.stats
            .replays
            .fetch_add(pass.len() as u64, Ordering::Relaxed);
        metrics::counter!("realtime_replays_total").increment(pass.len() as u64);
        if let Some((from, to)) = pass.range() {
            if from > StreamId::default()
                && trimmed_past(&mut self.cmd, &self.keys.changes(), from).await?
            {
                tracing::error!(%from, replays = pass.len(), "a replay starts before the oldest change still in the stream: events are missing (raise REALTIME_STREAM_MAX_AGE / REALTIME_STREAM_MAXLEN)");
                metrics::counter!("realtime_stream_gaps_total").increment(1);
            }
            let mut start = from.to_string();
            loop {
                type Entries = Vec<(String, HashMap<String, redis::Value>)>;
                let page: Entries = redis::cmd("XRANGE")
                    .arg(self.keys.changes())
                    .arg(&start)
                    .arg(to.to_string())
                    .arg("COUNT")
                    .arg(REPLAY_PAGE)
                    .query_async(&mut self.cmd)
                    .await?;
                let Some((last_id, _)) = page.last() else {
                    break;
                };
                start = format!("({last_id}");
                let more = page.len() == REPLAY_PAGE;
                for (id, fields) in &page {
                    let Ok(at) = id.parse::<StreamId>() else {
                        continue;
                    };
                    if !pass.wants(at) {
                        continue;
                    }
                    if let Some(chunk) = decode_entry(fields) {
                        self.core.replay_chunk(&pass, at, &chunk);
                        self.read_related().await?;
                    }
                    if self.core.over_budget() {
                        self.flush().await?;
                    }
                }
                if !more {
                    break;
                }
            }
        }
        let served = self.core.finish_replays(pass);
        self.flush().await?;
        if !served.is_empty() {
            let marks: Vec<(Vec<String>, Vec<String>)> = served
                .into_iter()
                .map(|s| {
                    (
                        vec![self.keys.shard_reg(s.shard)],
                        vec![
                            s.field.encode(),
                            s.request.encode(),
                            ctl::Replay::served().to_owned(),
                        ],
                    )
                })
                .collect();
            self.scripts
                .replayed
                .eval_each(&mut self.cmd, &marks)
                .await?;
        }
        Ok(())
    }

    /// One blocking read over the change stream and the ctl stream; apply and match.
    async fn read_and_process(&mut self) -> anyhow::Result<()> {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(self.cfg.match_batch)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(self.keys.changes())
            .arg(self.keys.ctl())
            .arg(self.core.cursor().to_string())
            .arg(self.core.ctl_position().to_string())
            .query_async(&mut self.read)
            .await?;
        let Some(reply) = reply else {
            return self.checkpoint_due().await;
        };
        let changes_key = self.keys.changes();
        let ctl_key = self.keys.ctl();
        // Registrations first: a change read in the same round is then matched against them.
        if let Some(ctl) = reply.keys.iter().find(|k| k.key == ctl_key) {
            for e in &ctl.ids {
                let Ok(at) = e.id.parse::<StreamId>() else {
                    continue;
                };
                let entry = CtlEntry::decode(|k| e.map.get(k).and_then(bytes));
                if self.core.apply_ctl(at, entry) == CtlOutcome::Invalid {
                    tracing::warn!(id = %at, "ignoring an unreadable ctl entry");
                }
            }
        }
        self.run_replays().await?;
        let Some(changes) = reply.keys.iter().find(|k| k.key == changes_key) else {
            return self.checkpoint_due().await;
        };
        let started = Instant::now();
        let mut processed = 0u64;
        for e in &changes.ids {
            let at: StreamId = e.id.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let chunk = decode_entry(&e.map);
            if chunk.is_none() {
                tracing::warn!(id = %e.id, "skipping an unreadable stream entry");
            }
            let _span = chunk
                .as_ref()
                .filter(|c| common_io::telemetry::change_traced(c.lsn))
                .map(|c| {
                    let span = tracing::info_span!(
                        target: common_io::telemetry::OTEL_TARGET,
                        "change.match",
                        lsn = c.lsn,
                        chunk = c.seq,
                        changes = c.changes.len(),
                        worker = %self.cfg.worker_id,
                    );
                    common_io::telemetry::join_change_trace(&span, c.lsn);
                    span
                });
            processed += self.core.match_live(at, chunk.as_ref()) as u64;
            self.read_related().await?;
            if self.core.over_budget() {
                self.flush().await?;
            }
            // Everything up to this entry is queued (nothing is held): a due tick may flush,
            // checkpoint at the cursor and move shards here. A shard acquired now is caught up to
            // the cursor before the next entry is matched, as between batches.
            if self.tick_if_due().await? {
                self.run_replays().await?;
            }
        }
        if processed > 0 {
            metrics::histogram!("realtime_matching_duration_seconds")
                .record(started.elapsed().as_secs_f64() / processed as f64);
        }
        self.stats
            .entries
            .fetch_add(changes.ids.len() as u64, Ordering::Relaxed);
        self.stats
            .cursor_lsn
            .store(self.core.cursor().lsn, Ordering::Relaxed);
        self.flush().await?;
        self.checkpoint_due().await
    }

    /// Read the related items the chunk just matched needs (one statement per relational query and
    /// relation, then one per level of nesting), and let its frames go. A read that fails is tried
    /// again; the loop waits meanwhile, so nothing after the chunk overtakes it.
    async fn read_related(&mut self) -> anyhow::Result<()> {
        if !self.core.holding() {
            return Ok(());
        }
        let started = Instant::now();
        let mut statements = 0u64;
        // First the items whose related rows changed (they become frames), then every related item.
        let follows = self.core.follow_reads();
        if !follows.is_empty() {
            statements += follows.len() as u64;
            let sqls: Vec<common::sql::Sql> = follows.iter().map(|f| f.sql.clone()).collect();
            let results = self.run_with_retries(&sqls).await?;
            for (read, rows) in follows.iter().zip(&results) {
                self.core.related_rows_followed(read, rows);
            }
        }
        loop {
            let reads = self.core.related_reads();
            if reads.is_empty() {
                break;
            }
            statements += reads.len() as u64;
            let sqls: Vec<common::sql::Sql> = reads.iter().map(|r| r.sql.clone()).collect();
            let results = self.run_with_retries(&sqls).await?;
            for (read, rows) in reads.iter().zip(&results) {
                self.core.related_rows(read, rows);
            }
        }
        self.core.release_held();
        metrics::counter!("realtime_related_reads_total").increment(statements);
        metrics::histogram!("realtime_related_read_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// [`Loop::run_reads`], tried again (five times, with backoff) on a failure.
    async fn run_with_retries(
        &mut self,
        sqls: &[common::sql::Sql],
    ) -> anyhow::Result<Vec<Vec<Vec<Option<String>>>>> {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut attempt = 0;
        loop {
            match self.run_reads(sqls).await {
                Ok(rows) => return Ok(rows),
                Err(e) if attempt < 5 => {
                    attempt += 1;
                    self.db = None;
                    tracing::warn!(
                        error = format!("{e:#}"),
                        attempt,
                        "reading related items failed; retrying"
                    );
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => return Err(e.context("reading related items")),
            }
        }
    }

    async fn run_reads(
        &mut self,
        reads: &[common::sql::Sql],
    ) -> anyhow::Result<Vec<Vec<Vec<Option<String>>>>> {
        if self.db.as_ref().is_none_or(|c| c.is_closed()) {
            self.db = Some(crate::capture::connect_pg(self.cfg).await?);
        }
        let db = self.db.as_ref().expect("connected");
        // Pipelined on the one connection.
        let queries = reads.iter().map(|r| {
            let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = r
                .params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            async move { db.query(&r.text, &params).await }
        });
        let results =
            tokio::time::timeout(RELATED_TIMEOUT, futures_util::future::try_join_all(queries))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("related reads took longer than {RELATED_TIMEOUT:?}")
                })??;
        Ok(results
            .into_iter()
            .map(|rows| {
                rows.iter()
                    .map(|row| {
                        (0..row.len())
                            .map(|i| row.get::<_, Option<String>>(i))
                            .collect()
                    })
                    .collect()
            })
            .collect())
    }

    /// Checkpoint every owned shard if the last checkpoint is old enough.
    async fn checkpoint_due(&mut self) -> anyhow::Result<()> {
        if self.last_checkpoint.elapsed() < CHECKPOINT_EVERY {
            return Ok(());
        }
        let owned: Vec<u32> = self.members.owned.iter().copied().collect();
        self.checkpoint(&owned).await
    }

    /// Publish every pending gateway message.
    async fn flush(&mut self) -> anyhow::Result<()> {
        let Messages { msgs, frames } = self.core.take_messages();
        if msgs.is_empty() {
            return Ok(());
        }
        let publish = self.redis.publish_command();
        let cmds: Vec<redis::Cmd> = msgs
            .into_iter()
            .map(|(gw, msg)| {
                let mut c = redis::cmd(publish);
                c.arg(self.keys.gateway_channel(&gw)).arg(msg);
                c
            })
            .collect();
        let started = Instant::now();
        if let Err(e) = self.cmd.query_all(&cmds).await {
            metrics::counter!("realtime_redis_publish_errors_total").increment(1);
            return Err(e.into());
        }
        metrics::histogram!("realtime_redis_publish_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("realtime_published_messages_total").increment(cmds.len() as u64);
        metrics::counter!("realtime_published_frames_total").increment(frames);
        self.stats.frames.fetch_add(frames, Ordering::Relaxed);
        self.stats
            .messages
            .fetch_add(cmds.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Advance the checkpoints of `shards` to the cursor, for the shards whose lease we still hold.
    async fn checkpoint(&mut self, shards: &[u32]) -> anyhow::Result<()> {
        self.last_checkpoint = Instant::now();
        if shards.is_empty() {
            return Ok(());
        }
        let pos = self.core.cursor().to_string();
        let calls: Vec<(Vec<String>, Vec<String>)> = shards
            .iter()
            .map(|n| {
                (
                    vec![self.keys.shard_owner(*n), self.keys.shard_checkpoint(*n)],
                    vec![self.members.me.clone(), pos.clone()],
                )
            })
            .collect();
        self.scripts
            .checkpoint
            .eval_each(&mut self.cmd, &calls)
            .await?;
        Ok(())
    }

    /// Remove the registrations of gateways whose liveness key expired.
    async fn drop_dead_gateways(&mut self) -> anyhow::Result<()> {
        let gateways = self.core.gateways();
        if gateways.is_empty() {
            return Ok(());
        }
        let exists: Vec<redis::Cmd> = gateways
            .iter()
            .map(|gw| {
                let mut c = redis::cmd("EXISTS");
                c.arg(self.keys.gateway_alive(gw));
                c
            })
            .collect();
        let alive = self.cmd.query_all(&exists).await?;
        for (gw, alive) in gateways.iter().zip(alive) {
            if alive != redis::Value::Int(0) {
                continue;
            }
            let queries = self.core.drop_gateway(gw);
            tracing::info!(gateway = %gw, queries = queries.len(), "removing the registrations of a gateway that stopped heartbeating");
            for (id, n) in queries {
                let _: i64 = self
                    .scripts
                    .unregister
                    .prepare()
                    .key(self.keys.shard_defs(n))
                    .key(self.keys.shard_reg(n))
                    .key(self.keys.shard_refs(n))
                    .arg(id.to_string())
                    .arg(RegField::new(id, gw).encode())
                    .invoke_async(&mut self.cmd)
                    .await?;
                let entry = CtlEntry::Unregister {
                    query: id,
                    gateway: gw.to_string(),
                };
                let _: String = common_io::scripts::ctl_entry(&self.keys, &entry)
                    .query_async(&mut self.cmd)
                    .await?;
            }
            let _: () = redis::cmd("SREM")
                .arg(self.keys.gateways())
                .arg(&**gw)
                .query_async(&mut self.cmd)
                .await?;
        }
        Ok(())
    }

    /// Stop: publish what is pending, checkpoint, and release every shard so others take over at once.
    async fn leave(&mut self) {
        if self.flush().await.is_ok() {
            let owned: Vec<u32> = self.members.owned.iter().copied().collect();
            let _ = self.checkpoint(&owned).await;
        }
        self.members.leave(&mut self.cmd).await;
    }
}

/// The chunk a change stream entry carries (`None` if unreadable).
fn decode_entry(fields: &HashMap<String, redis::Value>) -> Option<TxChunk> {
    fields
        .get("d")
        .and_then(bytes)
        .and_then(|b| TxChunk::decode(b).ok())
}
