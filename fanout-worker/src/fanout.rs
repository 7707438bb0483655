//! The matching role: follow the change stream, match each change against the owned shards' queries,
//! and publish each gateway its events.
//!
//! One loop per worker:
//! 1. every second, shard membership ([`crate::shards`]): load acquired shards (their registrations, then a
//!    catch-up replay from the shard's checkpoint), checkpoint and release shards handed over, drop lost
//!    ones; every few seconds, remove the registrations of gateways whose liveness key expired;
//! 2. one blocking `XREAD` over the change stream and every owned shard's ctl stream: registrations are
//!    applied at once, and a new (query, gateway) registration gets a replay of the stream from the position
//!    the gateway asked for (gap-free init); then the new changes are matched;
//! 3. frames go out as one message per gateway (`common::delivery`), then the shards' checkpoints advance
//!    (fenced by their leases). Capture never confirms the slot past the slowest checkpoint.
//!
//! Delivery is at-least-once (a new owner resumes from a checkpoint written after publishing; replays
//! overlap live events); gateways drop what they already delivered, by position.

use crate::config::WorkerConfig;
use crate::index::Index;
use crate::matcher::{Frame, match_chunk};
use crate::shards::Membership;
use common::change::{StreamId, TxChunk};
use common::delivery::append_entry;
use common::keys::Keys;
use common::normalize::{NormalizedQuery, QueryId};
use common::shard::shard_of;
use redis::aio::ConnectionManager;
use redis::streams::StreamReadReply;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long one `XREAD` blocks when nothing arrives (bounds how late a membership tick can be).
const BLOCK_MS: u64 = 200;
/// Publish a gateway's message once it grows past this, even mid-batch (bounds memory per gateway).
const MAX_MESSAGE: usize = 1 << 20;
const CTL_MAXLEN: usize = 100_000;

#[derive(Default)]
pub struct FanoutStats {
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
enum Scope {
    /// Catch a newly acquired shard up from its checkpoint (all its queries, all their gateways).
    Shard(u32),
    /// A new registration: one query, one gateway.
    Query {
        id: QueryId,
        gateway: Arc<str>,
        shard: u32,
        field: String,
        from_text: String,
    },
}

#[derive(Debug)]
struct Replay {
    scope: Scope,
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
    cmd: ConnectionManager,
    read: ConnectionManager,
    index: Index,
    members: Membership,
    cursor: StreamId,
    ctl: BTreeMap<u32, String>,
    replays: VecDeque<Replay>,
    out: HashMap<Arc<str>, Vec<u8>>,
    frames: Vec<Frame>,
    epoch: String,
    scripts: Scripts,
}

struct Scripts {
    load: redis::Script,
    checkpoint: redis::Script,
    unregister: redis::Script,
    replayed: redis::Script,
}

async fn session(
    cfg: &WorkerConfig,
    stats: &FanoutStats,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let keys = Keys::new(&cfg.redis_prefix);
    let client = redis::Client::open(cfg.redis_url.as_str())?;
    let mut cmd = ConnectionManager::new(client.clone()).await?;
    let read = ConnectionManager::new(client).await?;
    let shards_key = format!("{}:shards", cfg.redis_prefix);
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
    let last: Vec<(String, HashMap<String, redis::Value>)> = redis::cmd("XREVRANGE")
        .arg(keys.changes())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut cmd)
        .await?;
    let cursor = last
        .first()
        .and_then(|(id, _)| id.parse().ok())
        .unwrap_or_default();
    let mut l = Loop {
        cfg,
        stats,
        members: Membership::new(&cfg.worker_id, cfg.shards, cfg.shard_lease, keys.clone()),
        keys,
        cmd,
        read,
        index: Index::default(),
        cursor,
        ctl: BTreeMap::new(),
        replays: VecDeque::new(),
        out: HashMap::new(),
        frames: Vec::new(),
        epoch,
        scripts: Scripts {
            load: redis::Script::new(common::scripts::LOAD_SHARD),
            checkpoint: redis::Script::new(common::scripts::CHECKPOINT),
            unregister: redis::Script::new(common::scripts::UNREGISTER),
            replayed: redis::Script::new(common::scripts::REPLAYED),
        },
    };
    tracing::info!(cursor = %l.cursor, "matching started");
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
        let changes = self.members.tick(&mut self.cmd).await?;
        for n in changes.lost {
            tracing::warn!(
                shard = n,
                "lost a shard lease (stalled past it?); dropping the shard"
            );
            self.drop_shard(n);
        }
        if !changes.to_release.is_empty() {
            self.flush().await?;
            for n in changes.to_release {
                self.checkpoint(&[n]).await?;
                self.members.release(&mut self.cmd, n).await?;
                self.drop_shard(n);
                tracing::debug!(shard = n, "handed a shard over");
            }
        }
        for n in changes.acquired {
            self.load_shard(n).await?;
        }
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
        self.ctl.remove(&n);
        self.replays.retain(|r| match &r.scope {
            Scope::Shard(s) => *s != n,
            Scope::Query { shard, .. } => *shard != n,
        });
    }

    /// Load a newly acquired shard: its registrations, the ctl position they correspond to, and a
    /// catch-up from its checkpoint.
    async fn load_shard(&mut self, n: u32) -> anyhow::Result<()> {
        let (defs, regs, ctl_id): (Vec<String>, Vec<String>, String) = self
            .scripts
            .load
            .key(self.keys.shard_defs(n))
            .key(self.keys.shard_reg(n))
            .key(self.keys.shard_ctl(n))
            .invoke_async(&mut self.cmd)
            .await?;
        let mut parsed: HashMap<String, Arc<NormalizedQuery>> = HashMap::new();
        for pair in defs.chunks(2) {
            if let [id, json] = pair {
                match serde_json::from_str::<NormalizedQuery>(json) {
                    Ok(q) if q.id().to_string() == *id => {
                        parsed.insert(id.clone(), Arc::new(q));
                    }
                    _ => {
                        tracing::warn!(shard = n, query = %id, "ignoring an unreadable query definition")
                    }
                }
            }
        }
        for pair in regs.chunks(2) {
            let [field, from] = pair else { continue };
            let Some((qid, gw)) = field.split_once('|') else {
                continue;
            };
            let (Some(def), Ok(id)) = (parsed.get(qid), qid.parse::<QueryId>()) else {
                continue;
            };
            self.index.register(id, n, def.clone(), gw);
            self.schedule_query_replay(id, gw, n, field, from);
        }
        self.ctl.insert(n, ctl_id);
        let ckpt: Option<String> = redis::cmd("HGET")
            .arg(self.keys.consumers())
            .arg(Keys::shard_consumer(n))
            .query_async(&mut self.cmd)
            .await?;
        if let Some(from) = ckpt.and_then(|c| c.parse::<StreamId>().ok())
            && from < self.cursor
        {
            self.replays.push_front(Replay {
                scope: Scope::Shard(n),
                from,
                to: self.cursor,
            });
        }
        tracing::debug!(shard = n, queries = parsed.len(), "acquired a shard");
        Ok(())
    }

    fn schedule_query_replay(
        &mut self,
        id: QueryId,
        gw: &str,
        shard: u32,
        field: &str,
        from: &str,
    ) {
        let Ok(lsn) = from.parse::<u64>() else { return };
        let from_id = StreamId { lsn, seq: 0 };
        if from_id > self.cursor {
            return; // live processing covers it
        }
        self.replays.push_back(Replay {
            scope: Scope::Query {
                id,
                gateway: gw.into(),
                shard,
                field: field.to_owned(),
                from_text: from.to_owned(),
            },
            from: from_id,
            to: self.cursor,
        });
    }

    /// Run queued replays: re-read part of the stream for a shard or one (query, gateway).
    async fn run_replays(&mut self) -> anyhow::Result<()> {
        while let Some(r) = self.replays.pop_front() {
            self.stats.replays.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("realtime_replays_total").increment(1);
            let mut start = r.from.to_string();
            loop {
                type Entries = Vec<(String, HashMap<String, redis::Value>)>;
                let page: Entries = redis::cmd("XRANGE")
                    .arg(self.keys.changes())
                    .arg(&start)
                    .arg(r.to.to_string())
                    .arg("COUNT")
                    .arg(256)
                    .query_async(&mut self.cmd)
                    .await?;
                let Some((last_id, _)) = page.last() else {
                    break;
                };
                start = format!("({last_id}");
                let done = page.len() < 256;
                for (_, fields) in &page {
                    let Some(chunk) = fields
                        .get("d")
                        .and_then(bytes)
                        .and_then(|b| TxChunk::decode(b).ok())
                    else {
                        continue;
                    };
                    self.frames.clear();
                    let mut frames = std::mem::take(&mut self.frames);
                    match &r.scope {
                        Scope::Query { id, gateway, .. } => {
                            match_chunk(
                                &mut self.index,
                                &self.cfg.db_schema,
                                &chunk,
                                Some(*id),
                                &mut frames,
                            );
                            for f in &frames {
                                append(&mut self.out, gateway, f, &chunk);
                            }
                        }
                        Scope::Shard(n) => {
                            match_chunk(
                                &mut self.index,
                                &self.cfg.db_schema,
                                &chunk,
                                None,
                                &mut frames,
                            );
                            for f in frames
                                .iter()
                                .filter(|f| self.index.get(f.slot).is_some_and(|e| e.shard == *n))
                            {
                                let entry = self.index.get(f.slot).expect("filtered");
                                for gw in &entry.gateways {
                                    append(&mut self.out, gw, f, &chunk);
                                }
                            }
                        }
                    }
                    self.frames = frames;
                    if self.out.values().any(|m| m.len() > MAX_MESSAGE) {
                        self.flush().await?;
                    }
                }
                if done {
                    break;
                }
            }
            self.flush().await?;
            if let Scope::Query {
                shard,
                field,
                from_text,
                ..
            } = &r.scope
            {
                let _: i64 = self
                    .scripts
                    .replayed
                    .key(self.keys.shard_reg(*shard))
                    .arg(field)
                    .arg(from_text)
                    .invoke_async(&mut self.cmd)
                    .await?;
            }
        }
        Ok(())
    }

    /// One blocking read over the change stream and the owned shards' ctl streams; apply and match.
    async fn read_and_process(&mut self) -> anyhow::Result<()> {
        let mut c = redis::cmd("XREAD");
        c.arg("COUNT")
            .arg(self.cfg.match_batch)
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(self.keys.changes());
        for n in self.ctl.keys() {
            c.arg(self.keys.shard_ctl(*n));
        }
        c.arg(self.cursor.to_string());
        for id in self.ctl.values() {
            c.arg(id);
        }
        let reply: Option<StreamReadReply> = c.query_async(&mut self.read).await?;
        let Some(reply) = reply else { return Ok(()) };
        let changes_key = self.keys.changes();
        // Registrations first: a change read in the same round is then matched against them.
        for k in reply.keys.iter().filter(|k| k.key != changes_key) {
            let Some(n) = self
                .ctl
                .keys()
                .copied()
                .find(|n| self.keys.shard_ctl(*n) == k.key)
            else {
                continue;
            };
            for e in &k.ids {
                self.ctl.insert(n, e.id.clone());
                self.apply_ctl(n, &e.map);
            }
        }
        self.run_replays().await?;
        let Some(changes) = reply.keys.iter().find(|k| k.key == changes_key) else {
            return Ok(());
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
            match_chunk(
                &mut self.index,
                &self.cfg.db_schema,
                &chunk,
                None,
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
            if self.out.values().any(|m| m.len() > MAX_MESSAGE) {
                self.flush().await?;
            }
        }
        if processed > 0 {
            metrics::histogram!("realtime_matching_seconds_per_change")
                .record(started.elapsed().as_secs_f64() / processed as f64);
        }
        self.stats
            .entries
            .fetch_add(changes.ids.len() as u64, Ordering::Relaxed);
        self.stats
            .cursor_lsn
            .store(self.cursor.lsn, Ordering::Relaxed);
        self.flush().await?;
        let owned: Vec<u32> = self.members.owned.iter().copied().collect();
        self.checkpoint(&owned).await
    }

    fn apply_ctl(&mut self, n: u32, map: &HashMap<String, redis::Value>) {
        let get = |k: &str| map.get(k).and_then(text);
        let (Some(op), Some(qid), Some(gw)) = (get("op"), get("q"), get("g")) else {
            return;
        };
        let Ok(id) = qid.parse::<QueryId>() else {
            return;
        };
        match op.as_str() {
            "reg" => {
                let Some(def) = get("d")
                    .and_then(|d| serde_json::from_str::<NormalizedQuery>(&d).ok())
                    .filter(|q| q.id() == id)
                else {
                    tracing::warn!(query = %qid, "ignoring a registration with an unreadable definition");
                    return;
                };
                if shard_of(id, self.cfg.shards) != n {
                    return;
                }
                self.index.register(id, n, Arc::new(def), &gw);
                let from = get("f").unwrap_or_else(|| "-".into());
                let field = format!("{qid}|{gw}");
                self.schedule_query_replay(id, &gw, n, &field, &from);
            }
            "unreg" => {
                self.index.unregister(&id, &gw);
            }
            _ => {}
        }
    }

    /// Publish every pending gateway message.
    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let mut count = 0u64;
        for (gw, msg) in self.out.drain() {
            pipe.cmd("PUBLISH")
                .arg(self.keys.gateway_channel(&gw))
                .arg(msg)
                .ignore();
            count += 1;
        }
        let started = Instant::now();
        let _: () = pipe.query_async(&mut self.cmd).await?;
        metrics::histogram!("realtime_redis_publish_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("realtime_published_messages_total").increment(count);
        self.stats.messages.fetch_add(count, Ordering::Relaxed);
        Ok(())
    }

    /// Advance the checkpoints of `shards` to the cursor, for the shards whose lease we still hold.
    async fn checkpoint(&mut self, shards: &[u32]) -> anyhow::Result<()> {
        if shards.is_empty() {
            return Ok(());
        }
        let mut inv = self.scripts.checkpoint.prepare_invoke();
        inv.key(self.keys.consumers());
        for n in shards {
            inv.key(self.keys.shard_owner(*n));
        }
        inv.arg(&self.members.me).arg(self.cursor.to_string());
        for n in shards {
            inv.arg(Keys::shard_consumer(*n));
        }
        let _: i64 = inv.invoke_async(&mut self.cmd).await?;
        Ok(())
    }

    /// Remove the registrations of gateways whose liveness key expired.
    async fn drop_dead_gateways(&mut self) -> anyhow::Result<()> {
        let gateways = self.index.gateways();
        if gateways.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for gw in &gateways {
            pipe.cmd("EXISTS").arg(self.keys.gateway_alive(gw));
        }
        let alive: Vec<bool> = pipe.query_async(&mut self.cmd).await?;
        for (gw, alive) in gateways.iter().zip(alive) {
            if alive {
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
                let mut inv = self.scripts.unregister.prepare_invoke();
                inv.key(self.keys.shard_defs(n))
                    .key(self.keys.shard_reg(n))
                    .key(self.keys.shard_refs(n))
                    .key(self.keys.shard_ctl(n));
                inv.arg(id.to_string()).arg(&**gw).arg(CTL_MAXLEN);
                let _: i64 = inv.invoke_async(&mut self.cmd).await?;
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

fn append(out: &mut HashMap<Arc<str>, Vec<u8>>, gw: &Arc<str>, f: &Frame, chunk: &TxChunk) {
    let msg = out
        .entry(gw.clone())
        .or_insert_with(common::delivery::start_batch);
    append_entry(msg, f.query, f.pos, chunk.xid, chunk.commit_time, &f.body);
}
