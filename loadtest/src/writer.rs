//! Writers: each writer connection inserts its own ordered sequence of rows at its share of the target
//! rate, through SQL (default) or Directus's REST API.
//!
//! Ordering is what the correctness check leans on, so it is kept simple: an SQL writer sends its inserts
//! on one connection in sequence order (pipelined: up to `pipeline` in flight, each its own autocommit
//! transaction, which PostgreSQL commits in the order received); a REST writer sends one request at a
//! time. Every write is logged in memory with its target and times (write start, commit acknowledged).
//! The rate is read from a shared value at every write so the harness can ramp it; a writer that falls
//! more than a second behind its schedule skips ahead (and counts it) instead of bursting.

use crate::agent::now_us;
use crate::scenario::{Scenario, write_target};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use rand::{Rng, SeedableRng};
use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::types::Type;

/// How far behind schedule a writer may fall before it skips ahead.
const MAX_BEHIND: Duration = Duration::from_secs(1);
/// Error texts kept per writer.
const MAX_ERRORS: usize = 10;

/// State shared by the harness and its writers.
#[derive(Default)]
pub struct WriterShared {
    /// Target writes/s over all writers (f64 bits).
    rate_bits: AtomicU64,
    stop: AtomicBool,
    /// Writes acknowledged.
    pub committed: AtomicU64,
    pub failed: AtomicU64,
    /// Σ subscriptions each acknowledged write reaches (for the drain: deliveries still to come).
    pub reaches: AtomicU64,
    /// Times a writer skipped ahead because it was more than a second behind.
    pub behind: AtomicU64,
}

impl WriterShared {
    pub fn set_rate(&self, r: f64) {
        self.rate_bits.store(r.to_bits(), Ordering::Relaxed);
    }
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate_bits.load(Ordering::Relaxed))
    }
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// One logged write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WriteRec {
    pub seq: u32,
    pub room: i32,
    pub owner: Option<u32>,
    /// When the write was sent (µs since the epoch; also in the row as `t0`).
    pub t0_us: i64,
    /// When its commit was acknowledged.
    pub ack_us: i64,
}

#[derive(Debug, Default)]
pub struct WriterLog {
    pub writer: u32,
    pub recs: Vec<WriteRec>,
    pub errors: Vec<String>,
}

impl WriterLog {
    fn error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        }
    }
}

/// What every writer needs to know to choose its rows.
#[derive(Debug, Clone)]
pub struct WritePlan {
    pub scenario: Scenario,
    pub run: i64,
    pub collection: String,
    pub connections: usize,
    pub subs_per_conn: usize,
    pub match_fraction: f64,
    pub payload: Arc<str>,
    pub writers: usize,
    pub pipeline: usize,
    pub seed: u64,
}

/// The uuid of per-user user `i` of run `run`.
pub fn user_uuid(run: i64, i: u32) -> String {
    format!("{:08x}-0000-4000-8000-{:012x}", run as u32, i)
}

/// The user index in a per-user uuid (see [`user_uuid`]).
pub fn user_index(uuid: &str) -> Option<u32> {
    u32::from_str_radix(uuid.rsplit('-').next()?, 16).ok()
}

/// DDL of the harness's table.
pub fn table_ddl(collection: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {collection} (
            id bigserial PRIMARY KEY,
            run bigint NOT NULL,
            writer integer NOT NULL,
            seq integer NOT NULL,
            room integer NOT NULL,
            owner uuid,
            t0 bigint NOT NULL,
            payload text
        );
        CREATE INDEX IF NOT EXISTS {collection}_run_room ON {collection} (run, room, id);"
    )
}

/// DDL of `--related`: 100 authors, and an `author` column on the harness's table that points at one
/// of them (chosen by its default, so the writers do not change).
pub fn related_ddl(collection: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {collection}_authors (id integer PRIMARY KEY, email text NOT NULL);
         INSERT INTO {collection}_authors SELECT i, 'author' || i || '@example.com' FROM generate_series(1, 100) i
           ON CONFLICT DO NOTHING;
         ALTER TABLE {collection} ADD COLUMN IF NOT EXISTS author integer
           DEFAULT (1 + floor(random() * 100))::integer REFERENCES {collection}_authors (id);"
    )
}

/// What every writer starts with: its log, its random stream (seeded per writer, so runs repeat) and
/// its pacer.
fn writer_state(plan: &WritePlan, index: u32) -> (WriterLog, rand::rngs::StdRng, Pacer) {
    let log = WriterLog {
        writer: index,
        ..Default::default()
    };
    let rng = rand::rngs::StdRng::seed_from_u64(
        plan.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let pacer = Pacer {
        next: Instant::now(),
    };
    (log, rng, pacer)
}

/// Paces writes: when is the next one due at the current rate?
struct Pacer {
    next: Instant,
}

impl Pacer {
    /// `None`: the rate is 0, check again shortly.
    fn due(&mut self, sh: &WriterShared, writers: usize) -> Option<Instant> {
        let rate = sh.rate() / writers as f64;
        if rate <= 0.0 {
            self.next = Instant::now() + Duration::from_millis(20);
            return None;
        }
        let now = Instant::now();
        if self.next + MAX_BEHIND < now {
            sh.behind.fetch_add(1, Ordering::Relaxed);
            self.next = now;
        }
        Some(self.next)
    }

    fn advance(&mut self, sh: &WriterShared, writers: usize) {
        let rate = (sh.rate() / writers as f64).max(1e-3);
        self.next += Duration::from_secs_f64(1.0 / rate);
    }
}

fn choose(plan: &WritePlan, rng: &mut rand::rngs::StdRng) -> crate::scenario::Target {
    write_target(
        plan.scenario,
        plan.connections,
        plan.subs_per_conn,
        plan.match_fraction,
        rng.random::<f64>(),
        rng.random::<u64>(),
    )
}

/// An SQL writer on its own connection until [`WriterShared::stop`].
pub async fn sql_writer(
    index: u32,
    db_url: String,
    plan: WritePlan,
    sh: Arc<WriterShared>,
) -> Result<WriterLog> {
    let (client, conn) = tokio_postgres::connect(&db_url, tokio_postgres::NoTls)
        .await
        .context("writer: connect to the database")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let stmt = client
        .prepare_typed(
            &format!(
                "INSERT INTO {} (run, writer, seq, room, owner, t0, payload) VALUES ($1, $2, $3, $4, $5::text::uuid, $6, $7)",
                plan.collection
            ),
            &[Type::INT8, Type::INT4, Type::INT4, Type::INT4, Type::TEXT, Type::INT8, Type::TEXT],
        )
        .await?;
    let (mut log, mut rng, mut pacer) = writer_state(&plan, index);
    let mut inflight = FuturesOrdered::new();
    let mut seq: u32 = 0;
    let (client, stmt, payload) = (&client, &stmt, &*plan.payload);
    let record = |log: &mut WriterLog,
                  done: (WriteRec, u64, Result<u64, tokio_postgres::Error>)| {
        let (mut rec, reaches, r) = done;
        match r {
            Ok(_) => {
                rec.ack_us = now_us();
                log.recs.push(rec);
                sh.committed.fetch_add(1, Ordering::Relaxed);
                sh.reaches.fetch_add(reaches, Ordering::Relaxed);
            }
            Err(e) => {
                sh.failed.fetch_add(1, Ordering::Relaxed);
                log.error(format!("{e}"));
            }
        }
    };
    while !sh.stopped() {
        if inflight.len() >= plan.pipeline {
            if let Some(done) = inflight.next().await {
                record(&mut log, done);
            }
            continue;
        }
        let Some(at) = pacer.due(&sh, plan.writers) else {
            tokio::select! {
                Some(done) = inflight.next(), if !inflight.is_empty() => record(&mut log, done),
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            continue;
        };
        if at > Instant::now() {
            tokio::select! {
                Some(done) = inflight.next(), if !inflight.is_empty() => record(&mut log, done),
                _ = tokio::time::sleep_until(at) => {}
            }
            continue;
        }
        let t = choose(&plan, &mut rng);
        let rec = WriteRec {
            seq,
            room: t.room,
            owner: t.owner,
            t0_us: now_us(),
            ack_us: 0,
        };
        let owner = t.owner.map(|o| user_uuid(plan.run, o));
        let run = plan.run;
        let mut fut = Box::pin(async move {
            let r = client
                .execute(
                    stmt,
                    &[
                        &run,
                        &(index as i32),
                        &(seq as i32),
                        &t.room,
                        &owner,
                        &rec.t0_us,
                        &payload,
                    ],
                )
                .await;
            (rec, t.reaches, r)
        });
        // Poll once now: that sends the query, so queries leave (and commit) in sequence order whatever
        // order the pipeline's futures are polled in later.
        match futures_util::poll!(fut.as_mut()) {
            std::task::Poll::Ready(done) => record(&mut log, done),
            std::task::Poll::Pending => inflight.push_back(fut),
        }
        seq += 1;
        pacer.advance(&sh, plan.writers);
    }
    while let Some(done) = inflight.next().await {
        record(&mut log, done);
    }
    Ok(log)
}

/// Directus REST base: where to connect and what to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestTarget {
    /// `host:port` to connect to.
    pub addr: String,
    /// Path prefix before `/items` (empty, or e.g. `/directus`).
    pub base_path: String,
}

impl RestTarget {
    pub fn parse(url: &str) -> Result<RestTarget> {
        let u = url::Url::parse(url).with_context(|| format!("bad REST URL {url:?}"))?;
        if u.scheme() != "http" {
            bail!("{url}: only http:// is supported by the REST writer");
        }
        let host = u.host_str().context("REST URL without host")?;
        let port = u.port_or_known_default().unwrap_or(80);
        Ok(RestTarget {
            addr: format!("{host}:{port}"),
            base_path: u.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// A Directus items request.
#[derive(Debug, Clone, PartialEq)]
pub enum RestOp {
    /// `POST /items/{collection}` with the item.
    Create(Json),
    /// `PATCH /items/{collection}/{key}` with the changed fields.
    Update { key: String, body: Json },
    /// `DELETE /items/{collection}/{key}`.
    Delete { key: String },
}

/// Percent-encode one path segment (RFC 3986 unreserved characters pass).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Build the HTTP request for `op` (pure; the REST writer sends it).
pub fn build_request(
    target: &RestTarget,
    token: &str,
    collection: &str,
    op: &RestOp,
) -> Request<Full<Bytes>> {
    let base = format!("{}/items/{}", target.base_path, segment(collection));
    let (method, path, body) = match op {
        RestOp::Create(item) => (Method::POST, base, Some(item)),
        RestOp::Update { key, body } => (
            Method::PATCH,
            format!("{base}/{}", segment(key)),
            Some(body),
        ),
        RestOp::Delete { key } => (Method::DELETE, format!("{base}/{}", segment(key)), None),
    };
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, &target.addr)
        .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(hyper::header::ACCEPT, "application/json");
    let bytes = match body {
        Some(b) => {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    req.body(Full::new(bytes)).expect("valid request parts")
}

/// A keep-alive HTTP/1.1 connection to Directus.
pub struct RestClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    target: RestTarget,
    token: String,
}

impl RestClient {
    pub async fn connect(target: RestTarget, token: String) -> Result<RestClient> {
        let stream = tokio::net::TcpStream::connect(&target.addr)
            .await
            .with_context(|| format!("connect {}", target.addr))?;
        stream.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(RestClient {
            sender,
            target,
            token,
        })
    }

    /// Send `op`; the response body (JSON) on 2xx.
    pub async fn send(&mut self, collection: &str, op: &RestOp) -> Result<Bytes> {
        let req = build_request(&self.target, &self.token, collection, op);
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        Ok(body)
    }
}

/// A REST writer: one request at a time on one keep-alive connection, until stopped.
pub async fn rest_writer(
    index: u32,
    target: RestTarget,
    token: String,
    plan: WritePlan,
    sh: Arc<WriterShared>,
) -> Result<WriterLog> {
    let mut client = RestClient::connect(target, token).await?;
    let (mut log, mut rng, mut pacer) = writer_state(&plan, index);
    let mut seq: u32 = 0;
    while !sh.stopped() {
        let Some(at) = pacer.due(&sh, plan.writers) else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        tokio::time::sleep_until(at).await;
        let t = choose(&plan, &mut rng);
        let t0 = now_us();
        let item = json!({
            "run": plan.run,
            "writer": index,
            "seq": seq,
            "room": t.room,
            "owner": t.owner.map(|o| user_uuid(plan.run, o)),
            "t0": t0,
            "payload": &*plan.payload,
        });
        match client.send(&plan.collection, &RestOp::Create(item)).await {
            Ok(_) => {
                log.recs.push(WriteRec {
                    seq,
                    room: t.room,
                    owner: t.owner,
                    t0_us: t0,
                    ack_us: now_us(),
                });
                sh.committed.fetch_add(1, Ordering::Relaxed);
                sh.reaches.fetch_add(t.reaches, Ordering::Relaxed);
            }
            Err(e) => {
                sh.failed.fetch_add(1, Ordering::Relaxed);
                log.error(format!("{e:#}"));
                // A failed request may have broken the connection: start a new one.
                if client.sender.is_closed() {
                    client =
                        RestClient::connect(client.target.clone(), client.token.clone()).await?;
                }
            }
        }
        seq += 1;
        pacer.advance(&sh, plan.writers);
    }
    Ok(log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_requests_are_directus_items_calls() {
        let t = RestTarget::parse("http://directus.local:8055/").unwrap();
        assert_eq!(t.addr, "directus.local:8055");
        let r = build_request(
            &t,
            "T0K",
            "loadtest_events",
            &RestOp::Create(json!({"seq": 1})),
        );
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.uri(), "/items/loadtest_events");
        assert_eq!(r.headers()["authorization"], "Bearer T0K");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(r.headers()["host"], "directus.local:8055");
        let body = futures_util::FutureExt::now_or_never(r.into_body().collect())
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], br#"{"seq":1}"#);

        let t = RestTarget::parse("http://h/api").unwrap();
        assert_eq!(t.addr, "h:80");
        let r = build_request(
            &t,
            "x",
            "c",
            &RestOp::Update {
                key: "a b/1".into(),
                body: json!({"room": 2}),
            },
        );
        assert_eq!(r.method(), Method::PATCH);
        assert_eq!(r.uri(), "/api/items/c/a%20b%2F1");
        let r = build_request(&t, "x", "c", &RestOp::Delete { key: "7".into() });
        assert_eq!(r.method(), Method::DELETE);
        assert_eq!(r.uri(), "/api/items/c/7");
        assert!(r.headers().get("content-type").is_none());
        assert!(RestTarget::parse("https://h").is_err());
    }

    #[test]
    fn user_uuids_round_trip() {
        let u = user_uuid(0x1234_5678, 77);
        assert_eq!(u, "12345678-0000-4000-8000-00000000004d");
        assert_eq!(user_index(&u), Some(77));
    }

    #[test]
    fn pacer_skips_ahead_when_far_behind() {
        let sh = WriterShared::default();
        sh.set_rate(100.0);
        let mut p = Pacer {
            next: Instant::now() - Duration::from_secs(5),
        };
        let due = p.due(&sh, 2).unwrap();
        assert!(due + Duration::from_millis(100) > Instant::now());
        assert_eq!(sh.behind.load(Ordering::Relaxed), 1);
        p.advance(&sh, 2);
        assert!(p.next - due >= Duration::from_millis(19));
        sh.set_rate(0.0);
        assert!(p.due(&sh, 2).is_none());
    }
}
