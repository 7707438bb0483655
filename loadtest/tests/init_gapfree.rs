//! Gap-free `init` under every timing (DESIGN §3.6, issue 11): a change committed before a
//! subscription's snapshot never reaches it; every change committed after reaches it once, in order.
//!
//! Two tests with real processes:
//! - the reported sequence (writes, the query's last subscriber gone, a fresh subscribe to the same
//!   query) repeated on one gateway and one worker;
//! - a randomized run that races thousands of writes against subscribes, unsubscribes, re-subscribes
//!   and reconnects of a few shared queries on two gateways, while capture and matching are paused
//!   (SIGSTOP) and a worker is SIGKILLed, and checks every subscription against a reference computed
//!   from the write log and the subscription's own `init`.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use testkit::client::{Incoming, WsClient};
use testkit::cluster::{Cluster, ClusterOptions};
use testkit::wait::{self, admin_client, env};

const WAIT: Duration = Duration::from_secs(20);
/// Long enough for a replayed event to arrive if one were coming.
const QUIET: Duration = Duration::from_millis(1000);

fn cluster_opts(gateways: usize, workers: usize, synchronous_commit: &str) -> ClusterOptions {
    ClusterOptions {
        gateways,
        workers,
        worker_env: env(&[
            ("REALTIME_SHARD_LEASE", "2s"),
            ("REALTIME_STATUS_INTERVAL", "200ms"),
        ]),
        gateway_env: env(&[("WEBSOCKETS_HEARTBEAT_PERIOD", "300")]),
        // `off`: commits return before their WAL is written (a common setting); the WAL write
        // position then trails the commits a snapshot already sees.
        postgres_settings: vec![("synchronous_commit".into(), synchronous_commit.into())],
        ..Default::default()
    }
}

/// The sequence from the bug report: rows inserted and deleted, the query's previous subscriber gone a
/// moment ago, then a fresh subscribe. Its `init` holds the one remaining row, and nothing may follow:
/// no delete of rows it never had, no create of the row it already shows.
#[tokio::test]
async fn a_query_registered_anew_replays_nothing_its_init_contains() {
    let c = Cluster::start(cluster_opts(1, 1, "off")).await.unwrap();
    let sql = c.sql().await.unwrap();
    let msg = json!({"type":"subscribe","collection":"articles","query":{"fields":["id","title","status"]}});
    let mut prev = admin_client(c.gateway_addr(0), WAIT).await;
    wait::subscribe(&mut prev, msg.clone(), WAIT).await;
    let mut stale = Vec::new();
    for run in 0..12 {
        // Alternate: the previous subscriber leaves before the writes, or right after them.
        let leave_first = run % 2 == 0;
        if leave_first {
            prev.close(1000).await.unwrap();
        }
        for stmt in [
            "INSERT INTO articles (title) VALUES ('a'), ('b')",
            "DELETE FROM articles",
            "INSERT INTO articles (title) VALUES ('c')",
        ] {
            sql.batch_execute(stmt).await.unwrap();
        }
        if !leave_first {
            prev.close(1000).await.unwrap();
        }
        drop(prev);
        if run % 4 < 2 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut ws = admin_client(c.gateway_addr(0), WAIT).await;
        let init = wait::subscribe(&mut ws, msg.clone(), WAIT).await;
        assert_eq!(init["event"], "init");
        assert_eq!(init["data"].as_array().unwrap().len(), 1, "{init}");
        while let Some(m) = ws.next(QUIET).await.unwrap() {
            match m {
                Incoming::Json(v) if v["type"] == "ping" => {}
                other => stale.push(format!("run {run}: {other:?}")),
            }
        }
        prev = ws;
    }
    assert!(
        stale.is_empty(),
        "events after init for changes it already contains: {stale:#?}"
    );
}

/// The same with the real `@directus/sdk`: a component that unmounts (unsubscribe) and mounts again
/// (subscribe) around writes, on one socket. Each mount sees its `init` and nothing it already holds.
#[tokio::test]
async fn the_sdk_remounting_a_subscription_sees_no_stale_events() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let c = Cluster::start(cluster_opts(1, 1, "off")).await.unwrap();
    let sql = c.sql().await.unwrap();
    let dir = testkit::services::node_client_dir().unwrap();
    let mut child = tokio::process::Command::new("node")
        .arg("sdk-remount.mjs")
        .arg(format!("http://{}", c.gateway_addr(0)))
        .arg(testkit::cluster::ADMIN_TOKEN)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async |wait: Duration| -> Option<Json> {
        let line = tokio::time::timeout(wait, lines.next_line()).await.ok()?;
        Some(serde_json::from_str(&line.unwrap().expect("the SDK script ended")).unwrap())
    };
    let mut stale = Vec::new();
    for mount in 1..=8u64 {
        stdin.write_all(b"sub\n").await.unwrap();
        let mut got_init = false;
        // Until the quiet period after init: only this mount's init may arrive.
        while let Some(m) = next(if got_init { QUIET } else { WAIT }).await {
            // Command acknowledgements, and the previous mount's unsubscribe confirmation (which the
            // SDK hands to that subscription's iterator).
            if m.get("ready").is_some() || m["event"] == "unsubscribe" {
                continue;
            }
            if m["event"] == "init" && m["mount"] == mount && !got_init {
                got_init = true;
                continue;
            }
            stale.push(m);
        }
        assert!(
            got_init,
            "mount {mount}: no init; other messages: {stale:?}"
        );
        stdin.write_all(b"unsub\n").await.unwrap();
        assert_eq!(next(WAIT).await.unwrap(), json!({"ready":"unsub"}));
        for stmt in [
            "INSERT INTO articles (title) VALUES ('a'), ('b')",
            "DELETE FROM articles",
            "INSERT INTO articles (title) VALUES ('c')",
        ] {
            sql.batch_execute(stmt).await.unwrap();
        }
    }
    stdin.write_all(b"quit\n").await.unwrap();
    assert!(
        stale.is_empty(),
        "events a remounted subscription already held: {stale:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The randomized run.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Row {
    grp: i64,
    val: i64,
}

/// One committed transaction: (id, row before, row after) per changed row, in statement order.
type Tx = Vec<(i64, Option<Row>, Option<Row>)>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Create(Row),
    Update(Row),
    Delete,
}

/// The shared queries: (subscribe query, predicate on a row).
/// A subscription query and the predicate it selects rows with.
type Query = (Json, fn(&Row) -> bool);

fn queries() -> Vec<Query> {
    vec![
        (json!({"fields":["id","grp","val"],"limit":-1}), |_| true),
        (
            json!({"fields":["id","grp","val"],"limit":-1,"filter":{"grp":{"_eq":1}}}),
            |r| r.grp == 1,
        ),
        (
            json!({"fields":["id","val","grp"],"limit":-1,"filter":{"grp":{"_in":[1,2]}}}),
            |r| r.grp == 1 || r.grp == 2,
        ),
    ]
}

/// What one subscription saw.
#[derive(Debug)]
struct Record {
    query: usize,
    /// Transactions acknowledged before the subscribe was sent / issued before `init` arrived: the
    /// snapshot lies between.
    lo: usize,
    hi: usize,
    init: BTreeMap<i64, Row>,
    events: Vec<(i64, Ev)>,
    /// Unsubscribed or its connection closed: it saw a prefix of what it should have.
    ended: bool,
    /// Events that arrived after its unsubscribe was confirmed.
    after_end: usize,
}

impl Record {
    /// Whether the row with `id` reached this subscription (in `init` or an event).
    fn saw(&self, id: i64) -> bool {
        self.init.contains_key(&id) || self.events.iter().any(|(i, _)| *i == id)
    }
}

/// Subscription operations (subscribe, unsubscribe, re-subscribe, reconnect) of one run, at least.
const SUB_OPS: usize = 3_000;

/// Progress shared by the writer, the subscribers and the fault injector.
#[derive(Default)]
struct Progress {
    log: parking_lot::Mutex<Vec<Tx>>,
    /// Transactions sent to PostgreSQL (some may not be acknowledged yet).
    issued: AtomicUsize,
    /// Transactions acknowledged.
    committed: AtomicUsize,
    writes_done: AtomicBool,
    sub_ops: AtomicUsize,
    /// Id of the last row written, which every query selects (0 until it is written).
    marker: AtomicI64,
}

fn row_of(v: &Json) -> (i64, Row) {
    let n = |k: &str| {
        v[k].as_i64()
            .or_else(|| v[k].as_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(|| panic!("no {k} in {v}"))
    };
    (
        n("id"),
        Row {
            grp: n("grp"),
            val: n("val"),
        },
    )
}

fn key_of(v: &Json) -> i64 {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("bad key {v}"))
}

/// The single writer: random inserts, updates, deletes, multi-row deletes and two-statement
/// transactions, one at a time (so the log order is the commit order). Every statement writes a new,
/// larger `val`, so events of one subscription carry strictly increasing values.
async fn writer(sql: tokio_postgres::Client, p: Arc<Progress>, writes: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rows: BTreeMap<i64, Row> = BTreeMap::new();
    let mut val = 0i64;
    let pick = |rng: &mut StdRng, rows: &BTreeMap<i64, Row>| -> Option<(i64, Row)> {
        let n = rows.len();
        (n > 0).then(|| {
            let (k, r) = rows.iter().nth(rng.random_range(0..n)).unwrap();
            (*k, *r)
        })
    };
    for i in 0..writes {
        let roll: u32 = rng.random_range(0..100);
        let crowded = rows.len() > 120;
        p.issued.fetch_add(1, Ordering::SeqCst);
        let mut tx: Tx = Vec::new();
        val += 1;
        let grp = rng.random_range(0..4i64);
        if (roll < 45 && !crowded) || rows.is_empty() {
            let r = sql
                .query_one(
                    "INSERT INTO prop (grp, val) VALUES ($1, $2) RETURNING id",
                    &[&grp, &val],
                )
                .await
                .unwrap();
            let row = Row { grp, val };
            tx.push((r.get(0), None, Some(row)));
        } else if roll < 75 {
            let (id, old) = pick(&mut rng, &rows).unwrap();
            sql.execute(
                "UPDATE prop SET grp = $1, val = $2 WHERE id = $3",
                &[&grp, &val, &id],
            )
            .await
            .unwrap();
            tx.push((id, Some(old), Some(Row { grp, val })));
        } else if roll < 92 {
            let (id, old) = pick(&mut rng, &rows).unwrap();
            sql.execute("DELETE FROM prop WHERE id = $1", &[&id])
                .await
                .unwrap();
            tx.push((id, Some(old), None));
        } else if roll < 96 {
            // One statement, several rows: one delete frame listing them.
            let gone = sql
                .query("DELETE FROM prop WHERE grp = $1 RETURNING id", &[&grp])
                .await
                .unwrap();
            for r in gone {
                let id: i64 = r.get(0);
                tx.push((id, Some(rows[&id]), None));
            }
        } else {
            // Two statements in one transaction: an insert and an update of an existing row.
            let (id, old) = pick(&mut rng, &rows).unwrap();
            sql.batch_execute("BEGIN").await.unwrap();
            let r = sql
                .query_one(
                    "INSERT INTO prop (grp, val) VALUES ($1, $2) RETURNING id",
                    &[&grp, &val],
                )
                .await
                .unwrap();
            tx.push((r.get(0), None, Some(Row { grp, val })));
            val += 1;
            let g2 = rng.random_range(0..4i64);
            sql.execute(
                "UPDATE prop SET grp = $1, val = $2 WHERE id = $3",
                &[&g2, &val, &id],
            )
            .await
            .unwrap();
            tx.push((id, Some(old), Some(Row { grp: g2, val })));
            sql.batch_execute("COMMIT").await.unwrap();
        }
        for (id, _, new) in &tx {
            match new {
                Some(r) => rows.insert(*id, *r),
                None => rows.remove(id),
            };
        }
        p.log.lock().push(tx);
        p.committed.fetch_add(1, Ordering::SeqCst);
        if i % 8 == 7 {
            // Give the subscribers room to interleave with the writes.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    p.writes_done.store(true, Ordering::SeqCst);
}

/// One subscriber connection: subscribes, unsubscribes, re-subscribes and reconnects at random until
/// the writes are done, then waits until each live subscription has seen the marker row.
struct Subscriber {
    ws: WsClient,
    gateways: Vec<String>,
    records: Vec<Record>,
    /// uid → index in `records`, for live subscriptions of the current socket.
    live: HashMap<String, usize>,
    /// uid → index, for subscriptions whose unsubscribe was confirmed (late events are counted).
    gone: HashMap<String, usize>,
    next_uid: u64,
    name: String,
}

impl Subscriber {
    async fn connect(gateways: &[String], g: usize) -> WsClient {
        admin_client(&gateways[g % gateways.len()], WAIT).await
    }

    /// Read what arrives for `wait`, filing events under their subscriptions; returns the first message
    /// that `want` accepts (its wait ends there).
    async fn pump(&mut self, wait: Duration, mut want: impl FnMut(&Json) -> bool) -> Option<Json> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = match self.ws.next(left).await.unwrap() {
                None => return None,
                Some(Incoming::Json(v)) => v,
                Some(other) => panic!("{}: connection ended: {other:?}", self.name),
            };
            if m["type"] == "subscription" && m["event"] != "init" && m["event"] != "unsubscribe" {
                let uid = m["uid"].as_str().expect("events carry the uid").to_owned();
                let ev = |kind: &str, item: &Json| match kind {
                    "create" => {
                        let (id, r) = row_of(item);
                        (id, Ev::Create(r))
                    }
                    "update" => {
                        let (id, r) = row_of(item);
                        (id, Ev::Update(r))
                    }
                    "delete" => (key_of(item), Ev::Delete),
                    other => panic!("unexpected event {other}"),
                };
                let kind = m["event"].as_str().unwrap();
                let items: Vec<(i64, Ev)> = m["data"]
                    .as_array()
                    .expect("data is an array")
                    .iter()
                    .map(|i| ev(kind, i))
                    .collect();
                if let Some(&i) = self.live.get(&uid) {
                    self.records[i].events.extend(items);
                } else if let Some(&i) = self.gone.get(&uid) {
                    self.records[i].after_end += items.len();
                } else {
                    panic!("{}: event for an unknown uid: {m}", self.name);
                }
                continue;
            }
            if m["type"] == "ping" {
                continue;
            }
            if want(&m) {
                return Some(m);
            }
            panic!("{}: unexpected message {m}", self.name);
        }
    }

    async fn subscribe(&mut self, q: usize, p: &Progress) {
        self.next_uid += 1;
        let uid = format!("{}-{}", self.name, self.next_uid);
        let lo = p.committed.load(Ordering::SeqCst);
        let msg = json!({"type":"subscribe","collection":"prop","uid":uid,"query":queries()[q].0});
        self.ws.send_json(&msg).await.unwrap();
        let init = self
            .pump(WAIT, |m| m["uid"] == uid.as_str())
            .await
            .unwrap_or_else(|| panic!("{}: no init for {uid}", self.name));
        let hi = p.issued.load(Ordering::SeqCst);
        assert_eq!(init["event"], "init", "{init}");
        let rows = init["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(row_of)
            .collect();
        self.records.push(Record {
            query: q,
            lo,
            hi,
            init: rows,
            events: Vec::new(),
            ended: false,
            after_end: 0,
        });
        self.live.insert(uid, self.records.len() - 1);
    }

    async fn unsubscribe(&mut self, uid: String) {
        self.ws
            .send_json(&json!({"type":"unsubscribe","uid":uid}))
            .await
            .unwrap();
        let u = uid.clone();
        self.pump(WAIT, |m| {
            m["event"] == "unsubscribe" && m["uid"] == u.as_str()
        })
        .await
        .unwrap_or_else(|| panic!("{}: no unsubscribe confirmation", self.name));
        let i = self.live.remove(&uid).unwrap();
        self.records[i].ended = true;
        self.gone.insert(uid, i);
    }

    async fn run(&mut self, p: &Progress, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let nq = queries().len();
        let mut g = rng.random_range(0..self.gateways.len());
        // Until the writes are done and, together, enough subscription operations were made.
        while !p.writes_done.load(Ordering::SeqCst) || p.sub_ops.load(Ordering::SeqCst) < SUB_OPS {
            let roll = rng.random_range(0..100);
            let uids: Vec<String> = self.live.keys().cloned().collect();
            if roll < 40 || uids.is_empty() {
                self.subscribe(rng.random_range(0..nq), p).await;
            } else if roll < 65 {
                let uid = uids[rng.random_range(0..uids.len())].clone();
                self.unsubscribe(uid).await;
            } else if roll < 90 {
                // Re-subscribe: the same query right after leaving it (a component that remounts).
                let uid = uids[rng.random_range(0..uids.len())].clone();
                let q = self.records[self.live[&uid]].query;
                self.unsubscribe(uid).await;
                self.subscribe(q, p).await;
            } else {
                // Reconnect, possibly to the other gateway (a page reload).
                self.ws.close(1000).await.unwrap();
                for (_, i) in self.live.drain() {
                    self.records[i].ended = true;
                }
                self.gone.clear();
                g += 1;
                self.ws = Self::connect(&self.gateways, g).await;
            }
            p.sub_ops.fetch_add(1, Ordering::SeqCst);
            let pause = Duration::from_millis(rng.random_range(0..30));
            self.pump(pause, |_| false).await;
        }
    }
}

/// Rows of `state` a query selects.
fn visible(state: &BTreeMap<i64, Row>, pred: fn(&Row) -> bool) -> BTreeMap<i64, Row> {
    state
        .iter()
        .filter(|(_, r)| pred(r))
        .map(|(k, r)| (*k, *r))
        .collect()
}

/// The events a subscription of `pred` must get for `txs`, per row, in order.
fn expected(txs: &[Tx], pred: fn(&Row) -> bool) -> BTreeMap<i64, Vec<Ev>> {
    let mut out: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
    for tx in txs {
        for (id, old, new) in tx {
            let was = old.as_ref().is_some_and(pred);
            let is = new.as_ref().is_some_and(pred);
            let ev = match (old, new) {
                (None, Some(r)) if is => Ev::Create(*r),
                (Some(_), Some(r)) if is => Ev::Update(*r),
                (Some(_), _) if was => Ev::Delete,
                _ => continue,
            };
            out.entry(*id).or_default().push(ev);
        }
    }
    out
}

/// Check one subscription: some state between its subscribe and its `init` equals the `init`, and
/// from that state on it got exactly the events it should have (a prefix, if it ended early).
fn check(r: &Record, log: &[Tx], states: &[BTreeMap<i64, Row>]) -> Result<(), String> {
    let pred = queries()[r.query].1;
    if r.after_end > 0 {
        return Err(format!(
            "{} events after the unsubscribe was confirmed",
            r.after_end
        ));
    }
    let mut observed: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
    let mut last_val = 0;
    for (id, ev) in &r.events {
        if let Ev::Create(row) | Ev::Update(row) = ev {
            if row.val <= last_val {
                return Err(format!("out of order: val {} after {last_val}", row.val));
            }
            last_val = row.val;
        }
        observed.entry(*id).or_default().push(ev.clone());
    }
    let candidates: Vec<usize> = (r.lo..=r.hi.min(log.len()))
        .filter(|k| visible(&states[*k], pred) == r.init)
        .collect();
    if candidates.is_empty() {
        return Err(format!(
            "init ({} rows) matches no state between transactions {} and {}",
            r.init.len(),
            r.lo,
            r.hi
        ));
    }
    let mut why = String::new();
    for k in candidates {
        let want = expected(&log[k..], pred);
        let ok = if r.ended {
            observed
                .iter()
                .all(|(id, evs)| want.get(id).is_some_and(|w| w.starts_with(evs)))
        } else {
            observed == want
        };
        if ok {
            return Ok(());
        }
        let diff: Vec<String> = want
            .keys()
            .chain(observed.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|id| want.get(id) != observed.get(id))
            .take(4)
            .map(|id| {
                format!(
                    "row {id}: want {:?}, got {:?}",
                    want.get(id),
                    observed.get(id)
                )
            })
            .collect();
        why = format!("from state {k}: {}", diff.join("; "));
    }
    Err(why)
}

#[tokio::test]
async fn random_subscribes_and_writes_see_each_change_after_init_exactly_once() {
    race("off").await;
}

/// The same with durable commits (each commit waits for its WAL).
#[tokio::test]
async fn random_subscribes_and_durable_writes_see_each_change_after_init_exactly_once() {
    race("on").await;
}

async fn race(synchronous_commit: &str) {
    let seed: u64 = std::env::var("RT_PROP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (RT_PROP_SEED={seed} to repeat)");
    let mut c = Cluster::start(cluster_opts(2, 2, synchronous_commit))
        .await
        .unwrap();
    let sql = c.sql().await.unwrap();
    sql.batch_execute(
        "CREATE TABLE prop (id bigserial PRIMARY KEY, grp bigint NOT NULL, val bigint NOT NULL)",
    )
    .await
    .unwrap();
    let gateways: Vec<String> = (0..2).map(|g| c.gateway_addr(g).to_owned()).collect();
    // A first subscription makes the table known everywhere before the race starts.
    let mut warm = admin_client(&gateways[0], WAIT).await;
    wait::subscribe(
        &mut warm,
        json!({"type":"subscribe","collection":"prop","query":{"fields":["id"]}}),
        WAIT,
    )
    .await;
    drop(warm);

    const WRITES: usize = 7_000;
    const CONNECTIONS: usize = 10;
    let p = Arc::new(Progress::default());
    let w = tokio::spawn(writer(c.sql().await.unwrap(), p.clone(), WRITES, seed));
    let mut runners = Vec::new();
    for n in 0..CONNECTIONS {
        let s = Subscriber {
            ws: Subscriber::connect(&gateways, n).await,
            gateways: gateways.clone(),
            records: Vec::new(),
            live: HashMap::new(),
            gone: HashMap::new(),
            next_uid: 0,
            name: format!("c{n}"),
        };
        runners.push(tokio::spawn(
            s.run_and_finish(p.clone(), seed.wrapping_add(n as u64 + 1)),
        ));
    }

    // Faults, at points of the write stream: pause each worker (capture or matching falls behind
    // while subscribes take snapshots ahead of it), then SIGKILL one and start another.
    let at = |f: f64| (WRITES as f64 * f) as usize;
    let wait_for = |n: usize| {
        let p = p.clone();
        async move {
            wait::eventually(Duration::from_secs(120), "writer progress", || {
                let done = p.committed.load(Ordering::SeqCst) >= n;
                async move { done }
            })
            .await
        }
    };
    let faults = std::env::var("RT_PROP_FAULTS").map_or(true, |v| v != "0");
    for (i, point) in [(0usize, 0.2), (1, 0.4)] {
        if !faults {
            break;
        }
        wait_for(at(point)).await;
        c.workers[i].signal(libc::SIGSTOP);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.workers[i].signal(libc::SIGCONT);
    }
    if faults {
        wait_for(at(0.6)).await;
        c.workers[0].kill();
        c.spawn_worker(&[]).await.unwrap();
    }
    w.await.unwrap();

    // The marker: a row every query selects, written last. Every live subscription must get it.
    p.issued.fetch_add(1, Ordering::SeqCst);
    let marker: i64 = sql
        .query_one(
            "INSERT INTO prop (grp, val) VALUES (1, 1000000000) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    p.log.lock().push(vec![(
        marker,
        None,
        Some(Row {
            grp: 1,
            val: 1_000_000_000,
        }),
    )]);
    p.committed.fetch_add(1, Ordering::SeqCst);
    p.marker.store(marker, Ordering::SeqCst);
    let mut records = Vec::new();
    for r in runners {
        records.extend(r.await.unwrap());
    }

    let log = p.log.lock().clone();
    let mut states = vec![BTreeMap::new()];
    for tx in &log {
        let mut s = states.last().unwrap().clone();
        for (id, _, new) in tx {
            match new {
                Some(r) => s.insert(*id, *r),
                None => s.remove(id),
            };
        }
        states.push(s);
    }
    let ops = log.len() + p.sub_ops.load(Ordering::SeqCst);
    let mut failures = Vec::new();
    for r in &records {
        if let Err(e) = check(r, &log, &states) {
            failures.push(format!(
                "query {} (lo {} hi {}, ended {}): {e}",
                r.query, r.lo, r.hi, r.ended
            ));
            if r.after_end == 0 {
                eprintln!(
                    "FAILED {r:?}\nlog: {:?}",
                    &log[r.lo.saturating_sub(3)..(r.hi + 3).min(log.len())]
                );
            }
        }
    }
    let delivered: usize = records.iter().map(|r| r.events.len()).sum();
    eprintln!(
        "{ops} operations ({} transactions), {} subscriptions, {delivered} events delivered, {} failures",
        log.len(),
        records.len(),
        failures.len()
    );
    assert!(ops >= 10_000, "only {ops} operations");
    assert!(records.len() >= 500, "only {} subscriptions", records.len());
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {} subscriptions wrong:\n{}",
        failures.len(),
        records.len(),
        failures[..failures.len().min(20)].join("\n")
    );
}

impl Subscriber {
    /// Run, then wait until every live subscription got the marker row (or fail on a deadline).
    async fn run_and_finish(mut self, p: Arc<Progress>, seed: u64) -> Vec<Record> {
        self.run(&p, seed).await;
        let (name, mut s) = (self.name.clone(), self);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let marker = Some(p.marker.load(Ordering::SeqCst)).filter(|m| *m > 0);
            let waiting = match marker {
                None => true,
                Some(m) => s.live.values().any(|&i| !s.records[i].saw(m)),
            };
            if !waiting {
                break;
            }
            if Instant::now() >= deadline {
                for &i in s.live.values() {
                    let r = &s.records[i];
                    if !marker.is_some_and(|m| r.saw(m)) {
                        eprintln!(
                            "MISSING {name}: query {} lo {} hi {} init {} rows, {} events, last {:?}",
                            r.query,
                            r.lo,
                            r.hi,
                            r.init.len(),
                            r.events.len(),
                            r.events.last()
                        );
                    }
                }
                panic!("{name}: live subscriptions never got the last write (missing events)");
            }
            s.pump(Duration::from_millis(50), |_| false).await;
        }
        s.records
    }
}
