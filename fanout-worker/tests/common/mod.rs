//! Helpers for the worker's integration tests: private PostgreSQL and Redis, worker processes, and
//! reading the change stream back.
#![allow(dead_code)]

use common::change::{Change, StreamId, TxChunk};
use common::keys::Keys;
use std::time::{Duration, Instant};
use testkit::services::{Postgres, Process, Redis, workspace_bin};

/// A stream entry as XRANGE returns it: (id, [(field, value)]).
type RawEntry = (String, Vec<(String, Vec<u8>)>);

pub struct Env {
    pub workers: Vec<Process>,
    pub redis: Redis,
    pub pg: Postgres,
    pub db: String,
}

impl Env {
    /// PostgreSQL with `schema_sql` applied, Redis, and no worker yet.
    pub async fn start(schema_sql: &str) -> Env {
        let pg = Postgres::start().await.unwrap();
        let redis = Redis::start().await.unwrap();
        let db = pg.create_database("capture").await.unwrap();
        pg.connect(&db)
            .await
            .unwrap()
            .batch_execute(schema_sql)
            .await
            .unwrap();
        Env {
            workers: Vec::new(),
            redis,
            pg,
            db,
        }
    }

    pub fn worker_env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("HOST", "127.0.0.1".to_owned()),
            ("PORT", "0".to_owned()),
            ("DB_HOST", "127.0.0.1".to_owned()),
            ("DB_PORT", self.pg.port.to_string()),
            ("DB_DATABASE", self.db.clone()),
            ("DB_USER", "postgres".to_owned()),
            ("REDIS", self.redis.url()),
            ("REALTIME_STATUS_INTERVAL", "100ms".to_owned()),
            ("LOG_LEVEL", "info,fanout_worker=debug".to_owned()),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        env
    }

    pub async fn spawn_worker(&mut self, extra: &[(&str, &str)]) -> usize {
        let name = format!("worker-{}", self.workers.len());
        let mut env = self.worker_env(extra);
        env.push(("REALTIME_WORKER_ID".into(), name.clone()));
        let p = Process::spawn(&name, &workspace_bin("fanout-worker").unwrap(), &env)
            .await
            .unwrap();
        self.workers.push(p);
        // Changes committed before the slot exists are not captured (a slot starts where it is created):
        // wait until some worker holds it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut any = false;
            for i in 0..self.workers.len() {
                if self.workers[i].is_running() && self.capture_status(i).await["capturing"] == true
                {
                    any = true;
                }
            }
            if any {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no worker started capturing:\n{}",
                self.workers.last().unwrap().log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.workers.len() - 1
    }

    pub async fn sql(&self) -> tokio_postgres::Client {
        self.pg.connect(&self.db).await.unwrap()
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Every entry of the change stream, in order.
    pub async fn stream(&self) -> Vec<(StreamId, TxChunk)> {
        let mut con = self.redis().await;
        let entries: Vec<RawEntry> = redis::cmd("XRANGE")
            .arg(Keys::default().changes())
            .arg("-")
            .arg("+")
            .query_async(&mut con)
            .await
            .unwrap_or_default();
        entries
            .into_iter()
            .map(|(id, fields)| {
                let payload = &fields.iter().find(|(k, _)| k == "d").expect("field d").1;
                (id.parse().unwrap(), TxChunk::decode(payload).unwrap())
            })
            .collect()
    }

    /// Poll the stream until `done` holds (or fail after `wait`).
    pub async fn wait_stream(
        &self,
        wait: Duration,
        done: impl Fn(&[(StreamId, TxChunk)]) -> bool,
    ) -> Vec<(StreamId, TxChunk)> {
        let deadline = Instant::now() + wait;
        loop {
            let s = self.stream().await;
            if done(&s) {
                return s;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .workers
                    .iter()
                    .map(|w| format!("--- {} ---\n{}", w.name, w.log()))
                    .collect();
                panic!(
                    "stream not complete after {wait:?} ({} entries)\n{}",
                    s.len(),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /capture` of a worker.
    pub async fn capture_status(&self, i: usize) -> serde_json::Value {
        let r = testkit::client::http(&self.workers[i].addr, "GET", "/capture", &[], None)
            .await
            .unwrap();
        r.json().unwrap()
    }
}

/// Values of column `col` (by name) of every insert in the stream, in stream order.
pub fn inserted(stream: &[(StreamId, TxChunk)], table: &str, col: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (_, chunk) in stream {
        for ch in &chunk.changes {
            if let Change::Insert { rel, new } = ch {
                let r = chunk.relation(*rel).unwrap();
                if r.table == table {
                    let i = r.column_index(col).unwrap();
                    out.push(new[i].as_text().unwrap_or("NULL").to_owned());
                }
            }
        }
    }
    out
}

/// Assert ids strictly increase (commit order, no duplicates).
pub fn assert_ordered(stream: &[(StreamId, TxChunk)]) {
    for w in stream.windows(2) {
        assert!(
            w[0].0 < w[1].0,
            "stream ids out of order: {} then {}",
            w[0].0,
            w[1].0
        );
    }
    for (id, c) in stream {
        assert_eq!(*id, c.stream_id(), "entry id matches its chunk");
    }
}
