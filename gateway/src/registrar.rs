//! The gateway's side of Redis: registering queries with the workers, the liveness heartbeat, and the
//! pub/sub channel workers deliver on.
//!
//! - A query's registration lives in its shard's keys (`common::keys`): the definition, the
//!   (query, gateway) pair with the position to replay from, and a ctl stream entry that tells the
//!   shard's owner at once.
//! - The pub/sub connection is dedicated; when it drops, messages published meanwhile are lost, so after
//!   re-subscribing the gateway re-registers every local query with "replay from the last position I
//!   delivered" and the workers re-send what it missed (the hub drops what it already had). The same path
//!   covers a Redis that restarted and lost all registrations.
//! - A heartbeat key with a TTL tells workers this gateway is alive; when it expires they remove its
//!   registrations.

use crate::hub::Hub;
use bytes::Bytes;
use common::keys::Keys;
use common::normalize::QueryId;
use common::shard::shard_of;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;

/// How often the liveness key is refreshed, and how long it lives without refresh.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
const HEARTBEAT_TTL_SECS: u64 = 10;
/// Approximate length kept of each shard's ctl stream (owners read it continuously; a new owner loads
/// the hashes, so old entries are not needed).
const CTL_MAXLEN: usize = 100_000;

pub struct Registrar {
    pub gateway_id: String,
    keys: Keys,
    shards: u32,
    client: redis::Client,
    redis: ConnectionManager,
    register: redis::Script,
    unregister: redis::Script,
}

impl Registrar {
    /// Connect, and check the cluster agrees on the number of shards (recorded by the first process).
    pub async fn connect(url: &str, prefix: &str, shards: u32) -> anyhow::Result<Registrar> {
        let client = redis::Client::open(url)?;
        let mut redis = ConnectionManager::new(client.clone()).await?;
        let keys = Keys::new(prefix);
        let key = format!("{prefix}:shards");
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(shards)
            .arg("NX")
            .query_async(&mut redis)
            .await?;
        let agreed: u32 = redis::cmd("GET").arg(&key).query_async(&mut redis).await?;
        if agreed != shards {
            anyhow::bail!(
                "REALTIME_SHARDS is {shards} here but the cluster uses {agreed} (key {key}); set the same value everywhere"
            );
        }
        Ok(Registrar {
            gateway_id: uuid::Uuid::new_v4().simple().to_string(),
            keys,
            shards,
            client,
            redis,
            register: redis::Script::new(common::scripts::REGISTER),
            unregister: redis::Script::new(common::scripts::UNREGISTER),
        })
    }

    fn shard_keys(&self, id: QueryId) -> [String; 4] {
        let n = shard_of(id, self.shards);
        [
            self.keys.shard_defs(n),
            self.keys.shard_reg(n),
            self.keys.shard_refs(n),
            self.keys.shard_ctl(n),
        ]
    }

    /// Register (or re-register) this gateway for a query; workers replay from `from` (a commit LSN).
    pub async fn register(&self, id: QueryId, def_json: &str, from: u64) -> redis::RedisResult<()> {
        self.register_from(id, def_json, &from.to_string()).await
    }

    /// Register without a replay: events from whenever the owning worker applies it.
    pub async fn register_live(&self, id: QueryId, def_json: &str) -> redis::RedisResult<()> {
        self.register_from(id, def_json, "-").await
    }

    async fn register_from(
        &self,
        id: QueryId,
        def_json: &str,
        from: &str,
    ) -> redis::RedisResult<()> {
        let mut con = self.redis.clone();
        let mut inv = self.register.prepare_invoke();
        for k in self.shard_keys(id) {
            inv.key(k);
        }
        inv.arg(id.to_string())
            .arg(&self.gateway_id)
            .arg(def_json)
            .arg(from)
            .arg(CTL_MAXLEN);
        let _: i64 = inv.invoke_async(&mut con).await?;
        Ok(())
    }

    pub async fn unregister(&self, id: QueryId) -> redis::RedisResult<()> {
        let mut con = self.redis.clone();
        let mut inv = self.unregister.prepare_invoke();
        for k in self.shard_keys(id) {
            inv.key(k);
        }
        inv.arg(id.to_string())
            .arg(&self.gateway_id)
            .arg(CTL_MAXLEN);
        let _: i64 = inv.invoke_async(&mut con).await?;
        Ok(())
    }

    async fn heartbeat(&self) -> redis::RedisResult<()> {
        let mut con = self.redis.clone();
        redis::pipe()
            .cmd("SET")
            .arg(self.keys.gateway_alive(&self.gateway_id))
            .arg(1)
            .arg("EX")
            .arg(HEARTBEAT_TTL_SECS)
            .ignore()
            .cmd("SADD")
            .arg(self.keys.gateways())
            .arg(&self.gateway_id)
            .ignore()
            .query_async(&mut con)
            .await
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
        let channel = self.keys.gateway_channel(&self.gateway_id);
        let mut ready = Some(ready);
        let mut resync: Option<tokio::task::JoinHandle<()>> = None;
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                break;
            }
            let mut pubsub = match self.client.get_async_pubsub().await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "delivery subscription: cannot connect to Redis");
                    tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = shutdown.changed() => break }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            if let Err(e) = pubsub.subscribe(&channel).await {
                tracing::warn!(error = %e, "delivery subscription failed");
                tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = shutdown.changed() => break }
                continue;
            }
            backoff = Duration::from_millis(100);
            match ready.take() {
                Some(r) => {
                    let _ = r.send(());
                }
                None => {
                    // Reconnected: whatever was published meanwhile is gone; ask for it again. Our command
                    // connection may still be reconnecting, so retry until every query is re-registered,
                    // while deliveries keep flowing.
                    let regs = hub.registrations();
                    tracing::info!(
                        queries = regs.len(),
                        "delivery subscription restored; re-registering queries"
                    );
                    metrics::counter!("realtime_gateway_resyncs_total").increment(1);
                    if let Some(prev) = resync.take() {
                        prev.abort();
                    }
                    let me = self.clone();
                    let mut stop = shutdown.clone();
                    resync = Some(tokio::spawn(async move {
                        let mut wait = Duration::from_millis(50);
                        for (id, def, from) in regs {
                            while let Err(e) = me.register(id, &def, from).await {
                                tracing::debug!(error = %e, "re-registration failed; retrying");
                                tokio::select! {
                                    _ = tokio::time::sleep(wait) => {}
                                    _ = stop.changed() => return,
                                }
                                wait = (wait * 2).min(Duration::from_secs(1));
                            }
                        }
                    }));
                }
            }
            let mut messages = pubsub.on_message();
            loop {
                tokio::select! {
                    msg = messages.next() => match msg {
                        Some(m) => {
                            let d = hub.deliver(Bytes::copy_from_slice(m.get_payload_bytes()));
                            metrics::counter!("realtime_deliveries_total").increment(d.frames as u64);
                            metrics::counter!("realtime_duplicate_events_total").increment(d.duplicates as u64);
                        }
                        None => break,
                    },
                    _ = shutdown.changed() => break,
                }
            }
            if !*shutdown.borrow() {
                tracing::warn!("delivery subscription lost; reconnecting");
            }
        }
        hb.abort();
        // Leave promptly: workers drop our registrations when the liveness key is gone.
        let mut con = self.redis.clone();
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(self.keys.gateway_alive(&self.gateway_id))
            .query_async(&mut con)
            .await;
    }
}
