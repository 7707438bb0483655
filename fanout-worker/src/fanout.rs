//! The matching role: follow the change stream, match each change against the owned shards' queries,
//! and publish each gateway its events.
//!
//! One loop per worker:
//! 1. every second, shard membership ([`crate::shards`]): load acquired shards (their registrations, then a
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

use crate::config::WorkerConfig;
use crate::index::Index;
use crate::index::Slot;
use crate::matcher::{Frame, Scope as MatchScope, match_chunk};
use crate::shards::Membership;
use common::change::{StreamId, TxChunk};
use common::ctl::{self, CtlEntry, RegField, ReplayRequest};
use common::delivery::{Position, append_entry, append_replay_done};
use common::keys::Keys;
use common::normalize::{NormalizedQuery, QueryId};
use common::redis::{Conn, Lua, Redis};
use common::shard::shard_of;
use redis::streams::StreamReadReply;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Stream entries read per round trip during replays.
const REPLAY_PAGE: usize = 256;
/// How long one `XREAD` blocks when nothing arrives (bounds how late a membership tick can be).
const BLOCK_MS: u64 = 200;
/// Publish a gateway's message once it grows past this, even mid-batch (bounds memory per gateway).
const MAX_MESSAGE: usize = 1 << 20;
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

#[derive(Debug)]
enum Target {
    /// Catch a newly acquired shard up from its checkpoint (all its queries, all their gateways).
    Shard(u32),
    /// A registration asking for a replay: one query, one gateway. Ends with a replay-done entry
    /// carrying `request`.
    Query {
        id: QueryId,
        gateway: Arc<str>,
        shard: u32,
        request: ReplayRequest,
    },
}

#[derive(Debug)]
struct Replay {
    target: Target,
    from: StreamId,
    to: StreamId,
}

/// Run the matching role until `stop` flips; a failed session starts over (its shards catch up from their
/// checkpoints, so nothing is skipped).
pub async fn run(cfg: Arc<WorkerConfig>, stats: Arc<FanoutStats>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        match session(&cfg, &stats, &mut stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff, "matching session failed");
                metrics::counter!("realtime_fanout_errors_total").increment(1);
            }
        }
        stats.running.store(false, Ordering::Relaxed);
        stats.shards.store(0, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
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
    index: Index,
    members: Membership,
    cursor: StreamId,
    /// Position in the ctl stream.
    ctl: StreamId,
    /// Per owned shard, the ctl position its registrations were loaded at: older entries are in the load.
    loaded_at: BTreeMap<u32, StreamId>,
    replays: VecDeque<Replay>,
    last_checkpoint: Instant,
    out: Outgoing,
    frames: Vec<Frame>,
    epoch: String,
    scripts: Scripts,
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
        index: Index::default(),
        cursor,
        ctl,
        loaded_at: BTreeMap::new(),
        replays: VecDeque::new(),
        last_checkpoint: Instant::now(),
        out: Outgoing::default(),
        frames: Vec::new(),
        epoch,
        scripts: Scripts {
            load: Lua::new(common::scripts::LOAD_SHARD),
            checkpoint: Lua::new(common::scripts::CHECKPOINT),
            unregister: Lua::new(common::scripts::UNREGISTER),
            replayed: Lua::new(common::scripts::REPLAYED),
        },
    };
    tracing::info!(cursor = %l.cursor, "matching started");
    stats.running.store(true, Ordering::Relaxed);
    let mut next_tick = Instant::now();
    let mut next_cleanup = Instant::now() + Duration::from_secs(5);
    loop {
        if *stop.borrow() {
            l.leave().await;
            return Ok(());
        }
        if Instant::now() >= next_tick {
            l.tick().await?;
            next_tick = Instant::now() + Duration::from_secs(1);
        }
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
    async fn tick(&mut self) -> anyhow::Result<()> {
        let e: Option<String> = redis::cmd("GET")
            .arg(self.keys.epoch())
            .query_async(&mut self.cmd)
            .await?;
        if e.as_deref() != Some(self.epoch.as_str()) {
            anyhow::bail!("Redis lost its data (the change stream epoch changed); starting over");
        }
        if trimmed_past(&mut self.cmd, &self.keys.ctl(), self.ctl).await? {
            // We fell so far behind that registrations we never read were trimmed: reload every shard.
            tracing::warn!("the ctl stream was trimmed past our position; reloading owned shards");
            metrics::counter!("realtime_ctl_reloads_total").increment(1);
            self.ctl = last_id(&mut self.cmd, &self.keys.ctl()).await?;
            let owned: Vec<u32> = self.members.owned.iter().copied().collect();
            for n in owned {
                self.drop_shard(n);
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
            self.drop_shard(n);
        }
        if !changes.to_release.is_empty() {
            self.flush().await?;
            self.checkpoint(&changes.to_release).await?;
            for n in changes.to_release {
                metrics::counter!("realtime_shard_moves_total", "kind" => "released").increment(1);
                self.members.release(&mut self.cmd, n).await?;
                self.drop_shard(n);
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
            .set(end.lsn.saturating_sub(self.cursor.lsn) as f64);
        self.stats
            .shards
            .store(self.members.owned.len(), Ordering::Relaxed);
        self.stats
            .queries
            .store(self.index.len(), Ordering::Relaxed);
        metrics::gauge!("realtime_shards_owned").set(self.members.owned.len() as f64);
        metrics::gauge!("realtime_registered_queries").set(self.index.len() as f64);
        Ok(())
    }

    fn drop_shard(&mut self, n: u32) {
        self.index.remove_shard(n);
        self.loaded_at.remove(&n);
        self.replays.retain(|r| match &r.target {
            Target::Shard(s) => *s != n,
            Target::Query { shard, .. } => *shard != n,
        });
    }

    /// Load a newly acquired shard: the ctl position first, then its registrations (so ctl entries we
    /// have not read yet can only repeat what is loaded), then a catch-up from its checkpoint.
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
        let mut parsed: HashMap<QueryId, Arc<NormalizedQuery>> = HashMap::new();
        for pair in defs.chunks(2) {
            if let [id, json] = pair {
                match serde_json::from_str::<NormalizedQuery>(json) {
                    Ok(q) if q.id().to_string() == *id => {
                        parsed.insert(q.id(), Arc::new(q));
                    }
                    _ => {
                        tracing::warn!(shard = n, query = %id, "ignoring an unreadable query definition")
                    }
                }
            }
        }
        for pair in regs.chunks(2) {
            let [field, replay] = pair else { continue };
            let (Some(reg), Some(replay)) = (
                RegField::decode(field),
                ctl::Replay::decode(replay.as_bytes()),
            ) else {
                tracing::warn!(shard = n, field = %field, "ignoring an unreadable registration");
                continue;
            };
            let Some(def) = parsed.get(&reg.query) else {
                continue;
            };
            self.index.register(reg.query, n, def.clone(), &reg.gateway);
            self.schedule_query_replay(reg.query, &reg.gateway, n, replay);
        }
        self.loaded_at.insert(n, at);
        let ckpt: Option<String> = redis::cmd("GET")
            .arg(self.keys.shard_checkpoint(n))
            .query_async(&mut self.cmd)
            .await?;
        if let Some(from) = ckpt.and_then(|c| c.parse::<StreamId>().ok())
            && from < self.cursor
        {
            self.replays.push_front(Replay {
                target: Target::Shard(n),
                from,
                to: self.cursor,
            });
        }
        tracing::debug!(shard = n, queries = parsed.len(), "acquired a shard");
        Ok(())
    }

    /// Queue the replay a registration asks for, if any. A replay starting after the cursor re-reads
    /// nothing but still sends its replay-done entry, which the gateway is waiting for.
    fn schedule_query_replay(&mut self, id: QueryId, gw: &str, shard: u32, replay: ctl::Replay) {
        let ctl::Replay::From(request) = replay else {
            return;
        };
        self.replays.push_back(Replay {
            target: Target::Query {
                id,
                gateway: gw.into(),
                shard,
                request,
            },
            from: StreamId {
                lsn: request.from,
                seq: 0,
            },
            to: self.cursor,
        });
    }

    /// Run every queued replay in **one** pass over the stream: each chunk in the union of their ranges
    /// is read and decoded once and matched against the queries of the replays whose range contains
    /// it. (One pass per replay made a burst of registrations quadratic: ten thousand per-user
    /// subscriptions each re-read the same lookback window.) Query replays then get their replay-done
    /// entries, after everything before them was published.
    async fn run_replays(&mut self) -> anyhow::Result<()> {
        if self.replays.is_empty() {
            return Ok(());
        }
        let batch: Vec<Replay> = self.replays.drain(..).collect();
        self.stats
            .replays
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        metrics::counter!("realtime_replays_total").increment(batch.len() as u64);
        let from = batch.iter().map(|r| r.from).min().expect("non-empty");
        let to = batch.iter().map(|r| r.to).max().expect("non-empty");
        if from <= to
            && from > StreamId::default()
            && trimmed_past(&mut self.cmd, &self.keys.changes(), from).await?
        {
            tracing::error!(%from, replays = batch.len(), "a replay starts before the oldest change still in the stream: events are missing (raise REALTIME_STREAM_MAX_AGE / REALTIME_STREAM_MAXLEN)");
            metrics::counter!("realtime_stream_gaps_total").increment(1);
        }
        // Who wants which chunk: shards (all their queries and gateways), and (query, gateway) pairs.
        let mut shard_ranges: HashMap<u32, (StreamId, StreamId)> = HashMap::new();
        let mut query_ranges: HashMap<Slot, Vec<(StreamId, StreamId, Arc<str>)>> = HashMap::new();
        for r in &batch {
            match &r.target {
                Target::Shard(n) => {
                    let e = shard_ranges.entry(*n).or_insert((r.from, r.to));
                    *e = (e.0.min(r.from), e.1.max(r.to));
                }
                Target::Query { id, gateway, .. } => {
                    if let Some(slot) = self.index.slot_of(id) {
                        query_ranges
                            .entry(slot)
                            .or_default()
                            .push((r.from, r.to, gateway.clone()));
                    }
                }
            }
        }
        // The shard of every query a shard replay covers (the index is borrowed mutably while matching).
        let shard_of_slot: HashMap<Slot, u32> = if shard_ranges.is_empty() {
            HashMap::new()
        } else {
            self.index
                .entries_with_slots()
                .filter(|(_, e)| shard_ranges.contains_key(&e.shard))
                .map(|(slot, e)| (slot, e.shard))
                .collect()
        };
        let query_span = query_ranges.values().flatten().fold(
            (
                StreamId {
                    lsn: u64::MAX,
                    seq: u64::MAX,
                },
                StreamId::default(),
            ),
            |(lo, hi), (f, t, _)| (lo.min(*f), hi.max(*t)),
        );
        let mut start = from.to_string();
        let mut more = from <= to && !(shard_ranges.is_empty() && query_ranges.is_empty());
        while more {
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
            more = page.len() == REPLAY_PAGE;
            for (id, fields) in &page {
                let Ok(at) = id.parse::<StreamId>() else {
                    continue;
                };
                let within = |(f, t): (StreamId, StreamId)| f <= at && at <= t;
                let shards: Vec<u32> = shard_ranges
                    .iter()
                    .filter(|(_, r)| within(**r))
                    .map(|(n, _)| *n)
                    .collect();
                // Over-approximate (the union's bounds) to skip chunks cheaply; `wanted` is exact.
                let any_query = within(query_span);
                if shards.is_empty() && !any_query {
                    continue;
                }
                let Some(chunk) = fields
                    .get("d")
                    .and_then(bytes)
                    .and_then(|b| TxChunk::decode(b).ok())
                else {
                    continue;
                };
                let mut frames = std::mem::take(&mut self.frames);
                frames.clear();
                let wanted = |slot: Slot| {
                    shard_of_slot.get(&slot).is_some_and(|n| shards.contains(n))
                        || query_ranges
                            .get(&slot)
                            .is_some_and(|rs| rs.iter().any(|(f, t, _)| within((*f, *t))))
                };
                match_chunk(
                    &mut self.index,
                    &self.cfg.db_schema,
                    &chunk,
                    MatchScope::Where(&wanted),
                    &mut frames,
                );
                for f in &frames {
                    let Some(entry) = self.index.get(f.slot) else {
                        continue;
                    };
                    if shards.contains(&entry.shard) {
                        for gw in &entry.gateways {
                            append(&mut self.out, gw, f, &chunk);
                        }
                    } else if let Some(rs) = query_ranges.get(&f.slot) {
                        for (_, _, gw) in rs.iter().filter(|(f, t, _)| within((*f, *t))) {
                            append(&mut self.out, gw, f, &chunk);
                        }
                    }
                }
                self.frames = frames;
                if self.out.msgs.values().any(|m| m.len() > MAX_MESSAGE) {
                    self.flush().await?;
                }
            }
        }
        // Close the query replays, after what they replayed.
        let mut done: Vec<(Vec<String>, Vec<String>)> = Vec::new();
        for r in &batch {
            if let Target::Query {
                id,
                gateway,
                shard,
                request,
            } = &r.target
            {
                let msg = self
                    .out
                    .msgs
                    .entry(gateway.clone())
                    .or_insert_with(common::delivery::start_batch);
                let upto = Position {
                    lsn: r.to.lsn,
                    seq: r.to.seq as u32,
                    idx: u16::MAX,
                };
                let request = request.encode();
                append_replay_done(msg, *id, upto, request.as_bytes());
                done.push((
                    vec![self.keys.shard_reg(*shard)],
                    vec![
                        RegField::new(*id, gateway).encode(),
                        request,
                        ctl::Replay::served().to_owned(),
                    ],
                ));
            }
        }
        self.flush().await?;
        if !done.is_empty() {
            self.scripts
                .replayed
                .eval_each(&mut self.cmd, &done)
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
            .arg(self.cursor.to_string())
            .arg(self.ctl.to_string())
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
                let Ok(id) = e.id.parse::<StreamId>() else {
                    continue;
                };
                self.ctl = id;
                self.apply_ctl(id, &e.map);
            }
        }
        self.run_replays().await?;
        let Some(changes) = reply.keys.iter().find(|k| k.key == changes_key) else {
            return self.checkpoint_due().await;
        };
        let started = Instant::now();
        let mut processed = 0u64;
        for e in &changes.ids {
            let id: StreamId = e.id.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let Some(chunk) = e
                .map
                .get("d")
                .and_then(bytes)
                .and_then(|b| TxChunk::decode(b).ok())
            else {
                tracing::warn!(id = %e.id, "skipping an unreadable stream entry");
                self.cursor = id;
                continue;
            };
            let mut frames = std::mem::take(&mut self.frames);
            frames.clear();
            let _span = common::telemetry::change_traced(chunk.lsn).then(|| {
                let span = tracing::info_span!(
                    target: common::telemetry::OTEL_TARGET,
                    "change.match",
                    lsn = chunk.lsn,
                    chunk = chunk.seq,
                    changes = chunk.changes.len(),
                    worker = %self.cfg.worker_id,
                );
                common::telemetry::join_change_trace(&span, chunk.lsn);
                span
            });
            match_chunk(
                &mut self.index,
                &self.cfg.db_schema,
                &chunk,
                MatchScope::All,
                &mut frames,
            );
            for f in &frames {
                let entry = self.index.get(f.slot).expect("matched slot is live");
                for gw in &entry.gateways {
                    append(&mut self.out, gw, f, &chunk);
                }
            }
            self.stats
                .frames
                .fetch_add(frames.len() as u64, Ordering::Relaxed);
            self.frames = frames;
            self.cursor = id;
            processed += chunk.changes.len() as u64;
            if self.out.msgs.values().any(|m| m.len() > MAX_MESSAGE) {
                self.flush().await?;
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
            .store(self.cursor.lsn, Ordering::Relaxed);
        self.flush().await?;
        self.checkpoint_due().await
    }

    /// Checkpoint every owned shard if the last checkpoint is old enough.
    async fn checkpoint_due(&mut self) -> anyhow::Result<()> {
        if self.last_checkpoint.elapsed() < CHECKPOINT_EVERY {
            return Ok(());
        }
        let owned: Vec<u32> = self.members.owned.iter().copied().collect();
        self.checkpoint(&owned).await
    }

    /// Apply a ctl entry if it concerns an owned shard and is newer than that shard's load.
    fn apply_ctl(&mut self, at: StreamId, map: &HashMap<String, redis::Value>) {
        let entry = match CtlEntry::decode(|k| map.get(k).and_then(bytes)) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(id = %at, error = %e, "ignoring an unreadable ctl entry");
                return;
            }
        };
        let n = shard_of(entry.query(), self.cfg.shards);
        if self.loaded_at.get(&n).is_none_or(|loaded| at <= *loaded) {
            return; // not ours, or already part of what we loaded
        }
        match entry {
            CtlEntry::Register {
                query,
                gateway,
                replay,
                definition,
            } => {
                let Some(def) = serde_json::from_str::<NormalizedQuery>(&definition)
                    .ok()
                    .filter(|q| q.id() == query)
                else {
                    tracing::warn!(query = %query, "ignoring a registration with an unreadable definition");
                    return;
                };
                self.index.register(query, n, Arc::new(def), &gateway);
                self.schedule_query_replay(query, &gateway, n, replay);
            }
            CtlEntry::Unregister { query, gateway } => {
                self.index.unregister(&query, &gateway);
            }
        }
    }

    /// Publish every pending gateway message.
    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.out.msgs.is_empty() {
            return Ok(());
        }
        let frames = std::mem::take(&mut self.out.frames);
        let publish = self.redis.publish_command();
        let cmds: Vec<redis::Cmd> = self
            .out
            .msgs
            .drain()
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
        let pos = self.cursor.to_string();
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
        let gateways = self.index.gateways();
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
            let queries: Vec<(QueryId, u32)> = self
                .index
                .entries()
                .filter(|e| e.gateways.iter().any(|g| g == gw))
                .map(|e| (e.id, e.shard))
                .collect();
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
                let _: String = common::scripts::ctl_entry(&self.keys, &entry)
                    .query_async(&mut self.cmd)
                    .await?;
            }
            self.index.drop_gateway(gw);
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

/// Messages waiting to be published, one per gateway.
#[derive(Default)]
struct Outgoing {
    msgs: HashMap<Arc<str>, Vec<u8>>,
    /// Event entries in `msgs` (for the published-frames counter).
    frames: u64,
}

fn append(out: &mut Outgoing, gw: &Arc<str>, f: &Frame, chunk: &TxChunk) {
    out.frames += 1;
    let msg = out
        .msgs
        .entry(gw.clone())
        .or_insert_with(common::delivery::start_batch);
    append_entry(msg, f.query, f.pos, chunk.xid, chunk.commit_time, &f.body);
}
