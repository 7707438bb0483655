//! The gateway's side of Redis: registering queries with the workers, the liveness heartbeat, and the
//! channel workers deliver on.
//!
//! - A query's registration lives in its shard's keys (`common::keys`): the definition, and the
//!   (query, gateway) pair with its replay request. A ctl stream entry then tells the shard's owner.
//!   Registering and unregistering one query are serialised (a lock stripe per query) and checked
//!   against the hub under that lock, so an unregister queued when the last subscriber left can never
//!   undo a registration made for a subscriber who arrived since.
//! - The delivery subscription reports each (re)subscription. Messages published while it was down are
//!   lost, so after a re-subscription (or when the subscription fell behind) the gateway puts every
//!   local query in recovery ([`Hub::begin_recovery`]) and re-registers it with "replay from the last
//!   position I delivered"; the same path covers a Redis that restarted and lost all registrations.
//! - A heartbeat key with a TTL tells workers this gateway is alive; when it expires they remove its
//!   registrations.

use crate::hub::Hub;
use common::ctl::{CtlEntry, RegField, Replay, ReplayRequest};
use common::keys::Keys;
use common::normalize::QueryId;
use common::shard::shard_of;
use common_io::redis::{Conn, Lua, Redis, SubEvent};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often the liveness key is refreshed, and how long it lives without refresh.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
const HEARTBEAT_TTL_SECS: u64 = 10;
/// Lock stripes serialising registration changes per query.
const STRIPES: usize = 64;

pub struct Registrar {
    pub gateway_id: String,
    keys: Keys,
    shards: u32,
    redis: Redis,
    con: Conn,
    register: Lua,
    unregister: Lua,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Makes every replay request unique, so a replay's end is matched to the request it answers.
    tokens: AtomicU64,
}

impl Registrar {
    /// Connect, and check the cluster agrees on the number of shards (recorded by the first process).
    pub async fn connect(
        settings: &common_io::redis::RedisSettings,
        prefix: &str,
        shards: u32,
        name: &str,
    ) -> anyhow::Result<Registrar> {
        let redis = Redis::new(settings)?;
        let mut con = redis.connect().await?;
        let keys = Keys::new(prefix);
        let key = keys.shard_count();
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(shards)
            .arg("NX")
            .query_async(&mut con)
            .await?;
        let agreed: u32 = redis::cmd("GET").arg(&key).query_async(&mut con).await?;
        if agreed != shards {
            anyhow::bail!(
                "REALTIME_SHARDS is {shards} here but the cluster uses {agreed} (key {key}); set the same value everywhere"
            );
        }
        Ok(Registrar {
            // Unique per process even when the name repeats (a restarted pod): registrations of the old
            // process must expire with it, not be kept alive by the new one's heartbeat.
            gateway_id: format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            keys,
            shards,
            redis,
            con,
            register: Lua::new(common_io::scripts::REGISTER),
            unregister: Lua::new(common_io::scripts::UNREGISTER),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            tokens: AtomicU64::new(1),
        })
    }

    fn shard_keys(&self, id: QueryId) -> [String; 3] {
        let n = shard_of(id, self.shards);
        [
            self.keys.shard_defs(n),
            self.keys.shard_reg(n),
            self.keys.shard_refs(n),
        ]
    }

    fn stripe(&self, id: QueryId) -> &tokio::sync::Mutex<()> {
        &self.stripes[(id.0 % STRIPES as u128) as usize]
    }

    /// The cluster's number of shards.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// A new replay request for commit LSN `from`.
    pub fn replay_request(&self, from: u64) -> ReplayRequest {
        ReplayRequest {
            from,
            token: self.tokens.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Register this gateway for a query with a replay from commit LSN `from`, if it still has
    /// subscribers here.
    pub async fn register(
        &self,
        hub: &Hub,
        id: QueryId,
        def_json: &str,
        from: u64,
    ) -> redis::RedisResult<()> {
        let replay = Replay::From(self.replay_request(from));
        self.register_request(hub, id, def_json, replay).await
    }

    /// Register this gateway for a query with the replay `request` (made by [`Registrar::replay_request`]),
    /// whose replay-done entry a subscriber is waiting for.
    pub async fn register_replay(
        &self,
        hub: &Hub,
        id: QueryId,
        def_json: &str,
        request: ReplayRequest,
    ) -> redis::RedisResult<()> {
        self.register_request(hub, id, def_json, Replay::From(request))
            .await
    }

    /// A subscriber moved to another query after a rights change (`crate::rights`): unregister the old
    /// query if it lost its last subscriber here, and register the new one with the replay the
    /// subscriber waits for. If that fails its replay would never end: the connection is closed as a
    /// slow consumer (the client reconnects and starts over) rather than left waiting.
    pub fn start_move_work(self: &Arc<Self>, hub: &Arc<Hub>, moved: crate::rights::Moved) {
        let (me, hub) = (self.clone(), hub.clone());
        tokio::spawn(async move {
            let m = moved.m;
            if moved.old_was_last
                && let Err(e) = me.unregister(&hub, m.old).await
            {
                tracing::debug!(error = %e, "unregister failed; the worker drops it when this gateway's registrations expire");
            }
            if let Err(e) = me.register_replay(&hub, m.new, &m.def, m.request).await {
                tracing::warn!(error = %e, "registering after a rights change failed");
                m.outbox.force_overflow();
            }
        });
    }

    /// Register without a replay: events from whenever the owning worker applies it.
    pub async fn register_live(
        &self,
        hub: &Hub,
        id: QueryId,
        def_json: &str,
    ) -> redis::RedisResult<()> {
        self.register_request(hub, id, def_json, Replay::Live).await
    }

    async fn register_request(
        &self,
        hub: &Hub,
        id: QueryId,
        def_json: &str,
        replay: Replay,
    ) -> redis::RedisResult<()> {
        let _serial = self.stripe(id).lock().await;
        if !hub.contains(id) {
            return Ok(()); // every subscriber left meanwhile
        }
        let mut con = self.con.clone();
        let mut inv = self.register.prepare();
        for k in self.shard_keys(id) {
            inv.key(k);
        }
        inv.arg(id.to_string())
            .arg(RegField::new(id, &self.gateway_id).encode())
            .arg(def_json)
            .arg(replay.encode());
        let _: i64 = inv.invoke_async(&mut con).await?;
        let entry = CtlEntry::Register {
            query: id,
            gateway: self.gateway_id.clone(),
            replay,
            definition: def_json.to_owned(),
        };
        let _: String = common_io::scripts::ctl_entry(&self.keys, &entry)
            .query_async(&mut con)
            .await?;
        Ok(())
    }

    /// Unregister a query, unless a subscriber arrived here since its last one left.
    pub async fn unregister(&self, hub: &Hub, id: QueryId) -> redis::RedisResult<()> {
        let _serial = self.stripe(id).lock().await;
        if hub.contains(id) {
            return Ok(());
        }
        let mut con = self.con.clone();
        let mut inv = self.unregister.prepare();
        for k in self.shard_keys(id) {
            inv.key(k);
        }
        inv.arg(id.to_string())
            .arg(RegField::new(id, &self.gateway_id).encode());
        let _: i64 = inv.invoke_async(&mut con).await?;
        let entry = CtlEntry::Unregister {
            query: id,
            gateway: self.gateway_id.clone(),
        };
        let _: String = common_io::scripts::ctl_entry(&self.keys, &entry)
            .query_async(&mut con)
            .await?;
        Ok(())
    }

    /// Whether Redis answers within a second (readiness).
    pub async fn ping(&self) -> bool {
        let mut con = self.con.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut con);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Ok(_))
        )
    }

    async fn heartbeat(&self) -> redis::RedisResult<()> {
        let mut alive = redis::cmd("SET");
        alive
            .arg(self.keys.gateway_alive(&self.gateway_id))
            .arg(1)
            .arg("EX")
            .arg(HEARTBEAT_TTL_SECS);
        let mut member = redis::cmd("SADD");
        member.arg(self.keys.gateways()).arg(&self.gateway_id);
        self.con.query_all(&[alive, member]).await.map(|_| ())
    }

    /// After a possible loss: hold back every local query and re-register it with a replay from what
    /// was delivered, retrying until every registration went through (deliveries keep flowing).
    fn recover(
        self: &Arc<Self>,
        hub: &Arc<Hub>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let regs = hub.begin_recovery(|from| self.replay_request(from));
        tracing::info!(
            queries = regs.len(),
            "re-registering queries to replay what may have been missed"
        );
        metrics::counter!("realtime_gateway_resyncs_total").increment(1);
        let me = self.clone();
        let hub = hub.clone();
        let mut stop = stop;
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(50);
            for (r, request) in regs {
                while let Err(e) = me
                    .register_request(&hub, r.id, &r.def_json, Replay::From(request))
                    .await
                {
                    tracing::debug!(error = %e, "re-registration failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stop.changed() => return,
                    }
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        })
    }

    /// Run the heartbeat and the delivery subscription until `shutdown` flips. `ready` fires once the
    /// first subscription is active (no registration may precede it, or its first events could be lost).
    pub async fn run(
        self: Arc<Self>,
        hub: Arc<Hub>,
        ready: tokio::sync::oneshot::Sender<()>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let hb = {
            let me = self.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = me.heartbeat().await {
                        tracing::warn!(error = %e, "gateway heartbeat failed");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            })
        };
        let mut sub = self
            .redis
            .subscribe(self.keys.gateway_channel(&self.gateway_id));
        let mut ready = Some(ready);
        let mut recovery: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let event = tokio::select! {
                e = sub.recv() => e,
                _ = shutdown.changed() => break,
            };
            match event {
                Some(SubEvent::Message(m)) => {
                    let d = hub.deliver(m);
                    if d.rights > 0 || d.entries > 0 {
                        for moved in hub.rights.take_moved() {
                            self.start_move_work(&hub, moved);
                        }
                    }
                    let hot = crate::telemetry::hot();
                    hot.events_delivered.increment(d.frames as u64);
                    hot.duplicate_events.increment(d.duplicates as u64);
                }
                Some(SubEvent::Subscribed) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                        continue;
                    }
                    if let Some(prev) = recovery.take() {
                        prev.abort();
                    }
                    recovery = Some(self.recover(&hub, shutdown.clone()));
                }
                Some(SubEvent::Lost) => {
                    tracing::warn!("the delivery subscription fell behind and dropped messages");
                    if let Some(prev) = recovery.take() {
                        prev.abort();
                    }
                    recovery = Some(self.recover(&hub, shutdown.clone()));
                }
                None => break,
            }
        }
        hb.abort();
        if let Some(r) = recovery {
            r.abort();
        }
        // Leave promptly: workers drop our registrations when the liveness key is gone.
        let mut con = self.con.clone();
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(self.keys.gateway_alive(&self.gateway_id))
            .query_async(&mut con)
            .await;
    }
}
