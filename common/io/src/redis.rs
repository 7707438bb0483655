//! Connections to Redis in the three deployments operators run: one server (`single`), a primary
//! watched by Sentinel (`sentinel`), and Redis Cluster (`cluster`).
//!
//! The rest of the code sees one [`Conn`] type (it implements redis' `ConnectionLike`, so commands,
//! pipelines and scripts run on it unchanged) and one [`Subscription`] type. What differs per mode is
//! kept here:
//!
//! - **single**: a self-reconnecting multiplexed connection; pub/sub on a dedicated connection.
//! - **sentinel**: like single, but the primary's address is asked from the sentinels, and again
//!   whenever a command fails in a way that suggests a failover (`READONLY`, refused, dropped).
//! - **cluster**: the cluster client (slot routing, `MOVED`/`ASK`, reconnects); sharded pub/sub
//!   (`SPUBLISH`/`SSUBSCRIBE`, RESP3) so a gateway's channel lives on one node, not broadcast to all.
//!   Multi-key commands and pipelines must stay in one hash slot: [`Conn::query_all`] runs commands for
//!   different slots concurrently instead.
//!
//! It holds no protocol logic: key names live in `common::keys`, registration messages in `common::ctl`.

use crate::backoff::Backoff;
use bytes::Bytes;
use common::env::EnvReader;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt, try_join_all};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long a cluster request may take, redirections and retries included.
const CLUSTER_RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a dedicated pub/sub connection is pinged (a half-open connection never ends its stream).
const PUBSUB_PING_EVERY: Duration = Duration::from_secs(5);
/// Messages a subscription buffers for its consumer. Past that the reader stops reading (single,
/// sentinel: Redis buffers, then drops the connection) or drops and reports [`SubEvent::Lost`]
/// (cluster): either way the consumer learns that something was lost.
const SUBSCRIPTION_QUEUE: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Single,
    Sentinel,
    Cluster,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Sentinel => "sentinel",
            Mode::Cluster => "cluster",
        }
    }
}

/// Where Redis is, from `REDIS`, `REDIS_MODE`, `REDIS_USERNAME`, `REDIS_PASSWORD`,
/// `REDIS_SENTINEL_MASTER`, `REDIS_SENTINEL_USERNAME`, `REDIS_SENTINEL_PASSWORD`.
#[derive(Clone)]
pub struct RedisSettings {
    pub mode: Mode,
    /// The server (single), the sentinels (sentinel), seed nodes (cluster).
    pub urls: Vec<String>,
    /// Credentials for the data nodes, overriding any in the URLs.
    pub username: Option<String>,
    pub password: Option<String>,
    pub sentinel_master: String,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // URLs may carry passwords: print hosts only.
        let hosts: Vec<String> = self
            .urls
            .iter()
            .map(|u| {
                u.as_str()
                    .into_connection_info()
                    .map(|c| c.addr().to_string())
                    .unwrap_or_else(|_| "?".into())
            })
            .collect();
        f.debug_struct("RedisSettings")
            .field("mode", &self.mode)
            .field("hosts", &hosts)
            .field("sentinel_master", &self.sentinel_master)
            .finish_non_exhaustive()
    }
}

impl RedisSettings {
    /// Read the settings; problems are recorded in `r`. `why` says why Redis is required.
    pub fn from_env(r: &mut EnvReader, why: &str) -> RedisSettings {
        let mode = match r.string("REDIS_MODE", "single").as_str() {
            "single" => Mode::Single,
            "sentinel" => Mode::Sentinel,
            "cluster" => Mode::Cluster,
            _ => {
                r.err("REDIS_MODE", "must be single, sentinel or cluster");
                Mode::Single
            }
        };
        let urls: Vec<String> = r
            .opt("REDIS")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if urls.is_empty() {
            r.err("REDIS", format!("is required: {why}"));
        }
        for u in &urls {
            if u.as_str().into_connection_info().is_err() {
                r.err(
                    "REDIS",
                    "is not a valid Redis URL (redis://[user:password@]host:port[/db])",
                );
            }
        }
        if mode == Mode::Single && urls.len() > 1 {
            r.err(
                "REDIS",
                "lists several servers: set REDIS_MODE=cluster or REDIS_MODE=sentinel",
            );
        }
        let sentinel_master = r.string("REDIS_SENTINEL_MASTER", "");
        if mode == Mode::Sentinel && sentinel_master.is_empty() {
            r.err(
                "REDIS_SENTINEL_MASTER",
                "is required with REDIS_MODE=sentinel (the name the sentinels monitor)",
            );
        }
        RedisSettings {
            mode,
            urls,
            username: r.opt("REDIS_USERNAME"),
            password: r.opt("REDIS_PASSWORD"),
            sentinel_master,
            sentinel_username: r.opt("REDIS_SENTINEL_USERNAME"),
            sentinel_password: r.opt("REDIS_SENTINEL_PASSWORD"),
        }
    }

    /// Settings for one server at `url` (tests, tools).
    pub fn single(url: &str) -> RedisSettings {
        RedisSettings {
            mode: Mode::Single,
            urls: vec![url.to_owned()],
            username: None,
            password: None,
            sentinel_master: String::new(),
            sentinel_username: None,
            sentinel_password: None,
        }
    }

    /// A data node's address with `REDIS_USERNAME` / `REDIS_PASSWORD` applied.
    fn node_info(&self, url: &str) -> RedisResult<redis::ConnectionInfo> {
        with_credentials(url, &self.username, &self.password)
    }
}

/// `url` with the given credentials replacing those in it (where set).
fn with_credentials(
    url: &str,
    username: &Option<String>,
    password: &Option<String>,
) -> RedisResult<redis::ConnectionInfo> {
    let info = url.into_connection_info()?;
    let mut redis = info.redis_settings().clone();
    if let Some(u) = username {
        redis = redis.set_username(u);
    }
    if let Some(p) = password {
        redis = redis.set_password(p);
    }
    Ok(info.set_redis_settings(redis))
}

/// A Redis deployment to open connections to. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

enum Inner {
    Single(redis::Client),
    Sentinel(Arc<Sentinel>),
    Cluster(Vec<redis::ConnectionInfo>),
}

struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
}

impl Sentinel {
    /// The current primary, as the sentinels see it.
    async fn primary(&self) -> RedisResult<redis::Client> {
        self.client.lock().await.async_get_client().await
    }
}

impl Redis {
    pub fn new(s: &RedisSettings) -> RedisResult<Redis> {
        let inner = match s.mode {
            Mode::Single => {
                let url = s.urls.first().ok_or_else(|| config_error("no Redis URL"))?;
                Inner::Single(redis::Client::open(s.node_info(url)?)?)
            }
            Mode::Cluster => Inner::Cluster(
                s.urls
                    .iter()
                    .map(|u| s.node_info(u))
                    .collect::<RedisResult<_>>()?,
            ),
            Mode::Sentinel => {
                let sentinels = s
                    .urls
                    .iter()
                    .map(|u| with_credentials(u, &s.sentinel_username, &s.sentinel_password))
                    .collect::<RedisResult<Vec<_>>>()?;
                // The primary's credentials: REDIS_USERNAME/REDIS_PASSWORD, else those of the URLs.
                let first = s
                    .urls
                    .first()
                    .ok_or_else(|| config_error("no sentinel URL"))?;
                let primary = s.node_info(first)?.redis_settings().clone();
                let client = SentinelClient::build(
                    sentinels,
                    s.sentinel_master.clone(),
                    Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(primary)),
                    SentinelServerType::Master,
                )?;
                Inner::Sentinel(Arc::new(Sentinel {
                    client: tokio::sync::Mutex::new(client),
                }))
            }
        };
        Ok(Redis {
            inner: Arc::new(inner),
        })
    }

    pub fn mode(&self) -> Mode {
        match &*self.inner {
            Inner::Single(_) => Mode::Single,
            Inner::Sentinel(_) => Mode::Sentinel,
            Inner::Cluster(_) => Mode::Cluster,
        }
    }

    /// The command that publishes on a channel: sharded pub/sub on a cluster, so a message goes only to
    /// the node serving the channel.
    pub fn publish_command(&self) -> &'static str {
        match self.mode() {
            Mode::Cluster => "SPUBLISH",
            _ => "PUBLISH",
        }
    }

    /// A multiplexed connection that reconnects by itself. Clones share it. Blocking commands
    /// (`XREAD BLOCK`) hold it up for everyone: give them a connection of their own.
    pub async fn connect(&self) -> RedisResult<Conn> {
        match &*self.inner {
            Inner::Single(client) => {
                Ok(Conn::Single(ConnectionManager::new(client.clone()).await?))
            }
            Inner::Cluster(nodes) => {
                let client = ClusterClientBuilder::new(nodes.clone())
                    .response_timeout(CLUSTER_RESPONSE_TIMEOUT)
                    .connection_timeout(CLUSTER_RESPONSE_TIMEOUT)
                    .build()?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            }
            Inner::Sentinel(sentinel) => {
                let primary = sentinel.primary().await?;
                let con = ConnectionManager::new(primary).await?;
                Ok(Conn::Sentinel(SentinelConn {
                    shared: Arc::new(SentinelShared {
                        sentinel: sentinel.clone(),
                        current: parking_lot::RwLock::new((0, con)),
                        resolving: AtomicBool::new(false),
                        generation: AtomicU64::new(0),
                    }),
                }))
            }
        }
    }

    /// Follow `channel` until the returned subscription is dropped, reconnecting as needed.
    pub fn subscribe(&self, channel: String) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
        let me = self.clone();
        let task = tokio::spawn(async move {
            match &*me.inner {
                Inner::Cluster(nodes) => sharded_subscription(nodes.clone(), channel, tx).await,
                _ => me.dedicated_subscription(channel, tx).await,
            }
        });
        Subscription { rx, task }
    }

    /// The primary to open a dedicated connection to.
    async fn primary(&self) -> RedisResult<redis::Client> {
        match &*self.inner {
            Inner::Single(c) => Ok(c.clone()),
            Inner::Sentinel(s) => s.primary().await,
            Inner::Cluster(_) => Err(config_error("no single primary in cluster mode")),
        }
    }

    /// Single and sentinel: a dedicated RESP2 pub/sub connection, pinged so a dead peer is noticed,
    /// re-established (and the primary asked again) whenever it ends.
    async fn dedicated_subscription(&self, channel: String, tx: mpsc::Sender<SubEvent>) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let attempt = async {
                let client = self.primary().await?;
                let mut ps = client.get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                RedisResult::Ok(ps)
            };
            let ps = match attempt.await {
                Ok(ps) => ps,
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "Redis subscription: cannot subscribe");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            backoff.reset();
            if tx.send(SubEvent::Subscribed).await.is_err() {
                return;
            }
            let (mut sink, mut stream) = ps.split();
            let mut ping = tokio::time::interval(PUBSUB_PING_EVERY);
            ping.tick().await;
            loop {
                tokio::select! {
                    m = stream.next() => match m {
                        Some(m) => {
                            let payload = Bytes::copy_from_slice(m.get_payload_bytes());
                            if tx.send(SubEvent::Message(payload)).await.is_err() {
                                return;
                            }
                        }
                        None => break,
                    },
                    _ = ping.tick() => {
                        let alive = tokio::time::timeout(PUBSUB_PING_EVERY, sink.ping::<Value>()).await;
                        if !matches!(alive, Ok(Ok(_))) {
                            break;
                        }
                    }
                }
            }
            tracing::warn!("Redis subscription connection lost; reconnecting");
        }
    }
}

/// Cluster: sharded pub/sub over RESP3. The cluster client re-subscribes after reconnects and slot
/// moves; each (re)subscription is reported as [`SubEvent::Subscribed`].
async fn sharded_subscription(
    nodes: Vec<redis::ConnectionInfo>,
    channel: String,
    tx: mpsc::Sender<SubEvent>,
) {
    let lost = Arc::new(AtomicBool::new(false));
    let push_tx = tx.clone();
    let push_lost = lost.clone();
    let push = move |info: redis::PushInfo| -> Result<(), ()> {
        let event = match info.kind {
            redis::PushKind::SMessage => match info.data.get(1) {
                Some(Value::BulkString(b)) => SubEvent::Message(Bytes::copy_from_slice(b)),
                _ => return Ok(()),
            },
            redis::PushKind::SSubscribe => SubEvent::Subscribed,
            _ => return Ok(()),
        };
        if push_lost.load(Ordering::Relaxed) {
            if push_tx.try_send(SubEvent::Lost).is_err() {
                return Ok(());
            }
            push_lost.store(false, Ordering::Relaxed);
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = push_tx.try_send(event) {
            push_lost.store(true, Ordering::Relaxed);
        }
        Ok(())
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut con = loop {
        let attempt = async {
            let client = ClusterClientBuilder::new(nodes.clone())
                .use_protocol(redis::ProtocolVersion::RESP3)
                .response_timeout(CLUSTER_RESPONSE_TIMEOUT)
                .connection_timeout(CLUSTER_RESPONSE_TIMEOUT)
                .push_sender(push.clone())
                .build()?;
            let mut con = client.get_async_connection().await?;
            con.ssubscribe(&channel).await?;
            RedisResult::Ok(con)
        };
        match attempt.await {
            Ok(con) => break con,
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "Redis subscription: cannot subscribe");
                tokio::time::sleep(wait).await;
            }
        }
    };
    // The connection lives as long as the subscription. A command routed to the channel's slot now and
    // then makes the client notice a failed node and move the subscription with the slot.
    let mut ping = tokio::time::interval(PUBSUB_PING_EVERY);
    loop {
        ping.tick().await;
        if tx.is_closed() {
            return;
        }
        let _: RedisResult<Value> = redis::cmd("EXISTS")
            .arg(&channel)
            .query_async(&mut con)
            .await;
    }
}

fn config_error(msg: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::InvalidClientConfig, msg))
}

/// What a subscription reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubEvent {
    /// The channel is (again) subscribed. Anything published while it was not is lost.
    Subscribed,
    Message(Bytes),
    /// Messages were dropped because the consumer fell behind.
    Lost,
}

/// A followed channel; the background task stops when this is dropped.
pub struct Subscription {
    rx: mpsc::Receiver<SubEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscription {
    pub async fn recv(&mut self) -> Option<SubEvent> {
        self.rx.recv().await
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A command connection to any of the deployments. Clones share the underlying connection(s).
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Sentinel(SentinelConn),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Run commands that may touch different hash slots: one pipeline on a single primary, concurrent
    /// requests on a cluster (whose pipelines must stay in one slot). Replies are in command order.
    pub async fn query_all(&self, cmds: &[Cmd]) -> RedisResult<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Conn::Cluster(c) => {
                try_join_all(cmds.iter().map(|cmd| {
                    let mut c = c.clone();
                    async move { cmd.query_async::<Value>(&mut c).await }
                }))
                .await
            }
            _ => {
                let mut pipe = redis::pipe();
                for c in cmds {
                    pipe.add_command(c.clone());
                }
                pipe.query_async(&mut self.clone()).await
            }
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A connection to the primary the sentinels name, replaced when a failure suggests it moved.
#[derive(Clone)]
pub struct SentinelConn {
    shared: Arc<SentinelShared>,
}

struct SentinelShared {
    sentinel: Arc<Sentinel>,
    current: parking_lot::RwLock<(u64, ConnectionManager)>,
    resolving: AtomicBool,
    generation: AtomicU64,
}

/// Errors after which the primary may have moved (failover): ask the sentinels again.
fn suggests_failover(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
        || e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
}

impl SentinelShared {
    /// Ask the sentinels for the primary and swap the connection, once per failed generation.
    fn rediscover(self: &Arc<Self>, failed: u64) {
        if self.resolving.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let result = async {
                let client = me.sentinel.primary().await?;
                ConnectionManager::new(client).await
            }
            .await;
            match result {
                Ok(con) => {
                    let mut cur = me.current.write();
                    if cur.0 == failed {
                        let next = me.generation.fetch_add(1, Ordering::AcqRel) + 1;
                        *cur = (next, con);
                        tracing::info!("Redis primary rediscovered through the sentinels");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "asking the sentinels for the primary failed"),
            }
            me.resolving.store(false, Ordering::Release);
        });
    }

    fn run<'a, T: Send + 'a>(
        self: &'a Arc<Self>,
        f: impl FnOnce(ConnectionManager) -> BoxFuture<'a, RedisResult<T>> + Send + 'a,
    ) -> BoxFuture<'a, RedisResult<T>> {
        let (generation, con) = self.current.read().clone();
        async move {
            let r = f(con).await;
            if let Err(e) = &r
                && suggests_failover(e)
            {
                self.rediscover(generation);
            }
            r
        }
        .boxed()
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.shared
            .run(move |mut con| async move { con.req_packed_command(cmd).await }.boxed())
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.shared.run(move |mut con| {
            async move { con.req_packed_commands(pipeline, offset, count).await }.boxed()
        })
    }

    fn get_db(&self) -> i64 {
        self.shared.current.read().1.get_db()
    }
}

/// A Lua script that can run once per shard in one round trip ([`Lua::eval_each`]).
pub struct Lua {
    code: &'static str,
    script: redis::Script,
}

impl Lua {
    pub fn new(code: &'static str) -> Lua {
        Lua {
            code,
            script: redis::Script::new(code),
        }
    }

    /// One invocation (`EVALSHA`, loading the script on `NOSCRIPT`).
    pub fn prepare(&self) -> redis::ScriptInvocation<'_> {
        self.script.prepare_invoke()
    }

    /// Run the script once per (keys, args), possibly on different slots; replies in order.
    pub async fn eval_each(
        &self,
        con: &mut Conn,
        calls: &[(Vec<String>, Vec<String>)],
    ) -> RedisResult<Vec<Value>> {
        let cmds: Vec<Cmd> = calls
            .iter()
            .map(|(keys, args)| {
                let mut c = redis::cmd("EVALSHA");
                c.arg(self.script.get_hash())
                    .arg(keys.len())
                    .arg(keys)
                    .arg(args);
                c
            })
            .collect();
        match con.query_all(&cmds).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                // On a cluster, SCRIPT LOAD goes to every primary.
                let _: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(self.code)
                    .query_async(con)
                    .await?;
                con.query_all(&cmds).await
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<RedisSettings, Vec<String>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut r = EnvReader::new(&map);
        let s = RedisSettings::from_env(&mut r, "needed");
        if r.errors.is_empty() {
            Ok(s)
        } else {
            Err(r.errors.iter().map(ToString::to_string).collect())
        }
    }

    #[test]
    fn modes_and_their_requirements() {
        let s = settings(&[("REDIS", "redis://h:6379/2")]).unwrap();
        assert_eq!((s.mode, s.urls.len()), (Mode::Single, 1));
        let s = settings(&[
            ("REDIS", "redis://a:7000, redis://b:7001"),
            ("REDIS_MODE", "cluster"),
        ])
        .unwrap();
        assert_eq!((s.mode, s.urls.len()), (Mode::Cluster, 2));
        let s = settings(&[
            ("REDIS", "redis://s1:26379,redis://s2:26379"),
            ("REDIS_MODE", "sentinel"),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
            ("REDIS_PASSWORD", "pw"),
        ])
        .unwrap();
        assert_eq!(s.mode, Mode::Sentinel);
        assert_eq!(s.password.as_deref(), Some("pw"));
        assert!(!format!("{s:?}").contains("pw"), "no secrets in Debug");

        let err = |vars: &[(&str, &str)]| settings(vars).unwrap_err().join("; ");
        assert!(err(&[]).contains("REDIS: is required"));
        assert!(err(&[("REDIS", "http://x")]).contains("not a valid Redis URL"));
        assert!(err(&[("REDIS", "redis://a,redis://b")]).contains("REDIS_MODE=cluster"));
        assert!(err(&[("REDIS", "redis://a"), ("REDIS_MODE", "x")]).contains("REDIS_MODE"));
        assert!(
            err(&[("REDIS", "redis://a"), ("REDIS_MODE", "sentinel")])
                .contains("REDIS_SENTINEL_MASTER")
        );
    }

    #[test]
    fn credentials_override_the_url() {
        let mut s = RedisSettings::single("redis://u:old@h:1/3");
        s.password = Some("new".into());
        let info = s.node_info("redis://u:old@h:1/3").unwrap();
        assert_eq!(info.redis_settings().password(), Some("new"));
        assert_eq!(info.redis_settings().username(), Some("u"));
        assert_eq!(info.redis_settings().db(), 3);
    }
}
