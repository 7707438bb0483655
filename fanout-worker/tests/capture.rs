//! Change capture against real PostgreSQL (logical replication), real Redis and real worker processes.

mod common;
use crate::common::*;
use ::common::change::{Cell, Change, OldRow, StreamId, TxChunk};
use ::common::keys::Keys;
use ::common::value::Kind;
use std::collections::HashSet;
use std::time::Duration;

const SCHEMA: &str = r#"
CREATE TABLE items (id int PRIMARY KEY, title text, price numeric(10,2), at timestamptz, body text);
CREATE TABLE seq (n bigint PRIMARY KEY);
CREATE TABLE directus_sessions (token varchar(64) PRIMARY KEY);
"#;

const WAIT: Duration = Duration::from_secs(30);

fn t(s: &str) -> Cell {
    Cell::Text(s.into())
}

/// Every committed change exactly, in commit order, with old and new rows and types; rollbacks leave no
/// trace; excluded tables never reach Redis.
#[tokio::test]
async fn captures_exactly_the_committed_changes() {
    let mut env = Env::start(SCHEMA).await;
    env.spawn_worker(&[]).await;
    let sql = env.sql().await;
    // T1: a single insert.
    sql.batch_execute("INSERT INTO items VALUES (1, 'one', 9.5, '2024-01-02 03:04:05+00', NULL)")
        .await
        .unwrap();
    // T2: several statements in one transaction.
    sql.batch_execute(
        "BEGIN; INSERT INTO items VALUES (2, 'two', 1, NULL, NULL); UPDATE items SET title = 'ONE' WHERE id = 1;
         DELETE FROM items WHERE id = 2; INSERT INTO directus_sessions VALUES ('secret'); COMMIT;",
    )
    .await
    .unwrap();
    // A rollback: nothing may appear.
    sql.batch_execute("BEGIN; INSERT INTO items VALUES (99, 'ghost', 0, NULL, NULL); ROLLBACK;")
        .await
        .unwrap();
    // T3: an update that changes the primary key.
    sql.batch_execute("UPDATE items SET id = 10 WHERE id = 1")
        .await
        .unwrap();
    // T4: truncate.
    sql.batch_execute("TRUNCATE items").await.unwrap();

    let stream = env.wait_stream(WAIT, |s| s.len() >= 4).await;
    assert_ordered(&stream);
    assert_eq!(
        stream.len(),
        4,
        "one entry per committed transaction: {stream:#?}"
    );
    assert!(
        stream
            .iter()
            .all(|(_, c)| c.last && c.seq == 0 && c.end_lsn > c.lsn)
    );

    let (_, t1) = &stream[0];
    let items = t1.relations.iter().find(|r| r.table == "items").unwrap();
    assert_eq!(items.identity, 'f', "the worker set REPLICA IDENTITY FULL");
    let kinds: Vec<Kind> = items.columns.iter().map(|c| c.kind.clone()).collect();
    assert_eq!(
        kinds,
        [
            Kind::Int4,
            Kind::Text,
            Kind::Numeric,
            Kind::TimestampTz,
            Kind::Text
        ]
    );
    assert_eq!(
        t1.changes,
        vec![Change::Insert {
            rel: items.id,
            new: vec![
                t("1"),
                t("one"),
                t("9.50"),
                t("2024-01-02 03:04:05+00"),
                Cell::Null
            ]
        }]
    );

    let (_, t2) = &stream[1];
    assert!(
        t2.relations.iter().all(|r| r.table != "directus_sessions"),
        "sessions are never captured"
    );
    let rel = items.id;
    assert_eq!(
        t2.changes,
        vec![
            Change::Insert {
                rel,
                new: vec![t("2"), t("two"), t("1.00"), Cell::Null, Cell::Null]
            },
            Change::Update {
                rel,
                old: Some(OldRow {
                    key_only: false,
                    cells: vec![
                        t("1"),
                        t("one"),
                        t("9.50"),
                        t("2024-01-02 03:04:05+00"),
                        Cell::Null
                    ]
                }),
                new: vec![
                    t("1"),
                    t("ONE"),
                    t("9.50"),
                    t("2024-01-02 03:04:05+00"),
                    Cell::Null
                ],
            },
            Change::Delete {
                rel,
                old: OldRow {
                    key_only: false,
                    cells: vec![t("2"), t("two"), t("1.00"), Cell::Null, Cell::Null]
                }
            },
        ]
    );
    let (_, t3) = &stream[2];
    let Change::Update {
        old: Some(old),
        new,
        ..
    } = &t3.changes[0]
    else {
        panic!("{:?}", t3.changes)
    };
    assert_eq!(
        (old.cells[0].clone(), new[0].clone()),
        (t("1"), t("10")),
        "primary key change carries both keys"
    );
    let (_, t4) = &stream[3];
    assert_eq!(t4.changes, vec![Change::Truncate { rels: vec![rel] }]);
    assert!(
        inserted(&stream, "items", "title")
            .iter()
            .all(|v| v != "ghost")
    );
}

/// Concurrent writers: the stream holds every committed transaction once, in commit order.
#[tokio::test]
async fn concurrent_writers_in_commit_order() {
    let mut env = Env::start(SCHEMA).await;
    env.spawn_worker(&[]).await;
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let sql = env.sql().await;
        writers.push(tokio::spawn(async move {
            for i in 0..250i64 {
                sql.execute("INSERT INTO seq VALUES ($1)", &[&(w * 1000 + i)])
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let stream = env
        .wait_stream(WAIT, |s| inserted(s, "seq", "n").len() >= 1000)
        .await;
    assert_ordered(&stream);
    let values = inserted(&stream, "seq", "n");
    assert_eq!(values.len(), 1000);
    assert_eq!(
        values.iter().collect::<HashSet<_>>().len(),
        1000,
        "no duplicates"
    );
    // Per writer, commit order is its insertion order.
    for w in 0..4i64 {
        let mine: Vec<i64> = values
            .iter()
            .map(|v| v.parse::<i64>().unwrap())
            .filter(|v| v / 1000 == w)
            .collect();
        assert!(
            mine.windows(2).all(|p| p[0] < p[1]),
            "writer {w} out of order"
        );
    }
}

/// A transaction bigger than a chunk becomes several entries with ids `<lsn>-0..n`; unchanged TOASTed
/// values are filled from the old row; a column added mid-stream shows up.
#[tokio::test]
async fn large_transactions_toast_and_schema_changes() {
    let mut env = Env::start(SCHEMA).await;
    env.spawn_worker(&[("REALTIME_CHUNK_ROWS", "1000")]).await;
    let sql = env.sql().await;
    sql.batch_execute("INSERT INTO seq SELECT g FROM generate_series(1, 3500) g")
        .await
        .unwrap();
    let big = "x".repeat(100_000);
    sql.execute("INSERT INTO items VALUES (1, 'a', 1, NULL, $1)", &[&big])
        .await
        .unwrap();
    sql.batch_execute("UPDATE items SET title = 'b' WHERE id = 1")
        .await
        .unwrap();
    sql.batch_execute("ALTER TABLE items ADD COLUMN extra int; INSERT INTO items (id, title, extra) VALUES (2, 'c', 7)").await.unwrap();

    let stream = env
        .wait_stream(WAIT, |s| {
            inserted(s, "items", "title").len() >= 2
                && s.iter().any(|(_, c)| {
                    c.changes
                        .iter()
                        .any(|ch| matches!(ch, Change::Update { .. }))
                })
        })
        .await;
    assert_ordered(&stream);
    let big_tx: Vec<&TxChunk> = stream
        .iter()
        .map(|(_, c)| c)
        .filter(|c| c.relations.iter().any(|r| r.table == "seq"))
        .collect();
    assert_eq!(
        big_tx
            .iter()
            .map(|c| (c.seq, c.changes.len(), c.last))
            .collect::<Vec<_>>(),
        [
            (0, 1000, false),
            (1, 1000, false),
            (2, 1000, false),
            (3, 500, true)
        ]
    );
    assert!(big_tx.iter().all(|c| c.lsn == big_tx[0].lsn));

    let update = stream
        .iter()
        .flat_map(|(_, c)| &c.changes)
        .find_map(|ch| match ch {
            Change::Update { new, .. } => Some(new),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        update[4],
        t(&big),
        "the unchanged TOASTed body is filled from the old row"
    );
    let last = &stream.last().unwrap().1;
    let items = last.relations.iter().find(|r| r.table == "items").unwrap();
    assert_eq!(items.columns.last().unwrap().name, "extra");
    assert!(matches!(&last.changes[0], Change::Insert { new, .. } if new.last() == Some(&t("7"))));
}

async fn writer(sql: tokio_postgres::Client, from: i64, to: i64) -> Vec<i64> {
    let mut acked = Vec::new();
    for n in from..to {
        if sql
            .execute("INSERT INTO seq VALUES ($1)", &[&n])
            .await
            .is_ok()
        {
            acked.push(n);
        }
    }
    acked
}

fn assert_exactly(stream: &[(StreamId, TxChunk)], expected: impl Iterator<Item = i64>) {
    assert_ordered(stream);
    let got: Vec<i64> = inserted(stream, "seq", "n")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    let expected: Vec<i64> = expected.collect();
    assert_eq!(got.len(), expected.len(), "count");
    assert_eq!(
        got, expected,
        "every transaction exactly once, in commit order"
    );
}

/// SIGKILL the capturing worker while a writer commits 10 000 transactions; start it again: every
/// transaction is in the stream exactly once, in order.
#[tokio::test]
async fn sigkill_during_ten_thousand_transactions() {
    let mut env = Env::start(SCHEMA).await;
    env.spawn_worker(&[]).await;
    let w = tokio::spawn(writer(env.sql().await, 0, 10_000));
    env.wait_stream(WAIT, |s| inserted(s, "seq", "n").len() >= 2000)
        .await;
    env.workers[0].kill();
    env.spawn_worker(&[]).await;
    let acked = w.await.unwrap();
    assert_eq!(acked.len(), 10_000);
    let stream = env
        .wait_stream(Duration::from_secs(60), |s| {
            inserted(s, "seq", "n").len() >= 10_000
        })
        .await;
    assert_exactly(&stream, 0..10_000);
}

/// Two workers: one captures, the other stands by; kill the capturer and the standby takes over within
/// seconds, losing and doubling nothing.
#[tokio::test]
async fn standby_takes_over() {
    let mut env = Env::start(SCHEMA).await;
    env.spawn_worker(&[]).await;
    env.spawn_worker(&[]).await;
    let w = tokio::spawn(writer(env.sql().await, 0, 4000));
    env.wait_stream(WAIT, |s| inserted(s, "seq", "n").len() >= 500)
        .await;
    let a = env.capture_status(0).await["capturing"].as_bool().unwrap();
    let b = env.capture_status(1).await["capturing"].as_bool().unwrap();
    assert!(a ^ b, "exactly one worker captures (a={a}, b={b})");
    let (leader, standby) = if a { (0, 1) } else { (1, 0) };
    env.workers[leader].kill();
    let took_over = std::time::Instant::now();
    let deadline = took_over + Duration::from_secs(10);
    while !env.capture_status(standby).await["capturing"]
        .as_bool()
        .unwrap()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "standby did not take over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("takeover after {:?}", took_over.elapsed());
    w.await.unwrap();
    let stream = env
        .wait_stream(Duration::from_secs(60), |s| {
            inserted(s, "seq", "n").len() >= 4000
        })
        .await;
    assert_exactly(&stream, 0..4000);
}

/// Restart PostgreSQL mid-stream: capture resumes from the slot; every committed transaction once.
#[tokio::test]
async fn postgres_restart_mid_stream() {
    let mut env = Env::start(SCHEMA).await;
    env.spawn_worker(&[]).await;
    let first = writer(env.sql().await, 0, 1500).await;
    env.wait_stream(WAIT, |s| inserted(s, "seq", "n").len() >= 500)
        .await;
    env.pg.restart().await.unwrap();
    let second = writer(env.sql().await, 1500, 3000).await;
    assert_eq!(first.len() + second.len(), 3000);
    let stream = env
        .wait_stream(Duration::from_secs(60), |s| {
            inserted(s, "seq", "n").len() >= 3000
        })
        .await;
    assert_exactly(&stream, 0..3000);
}

/// Restart Redis (no persistence: the stream is lost) mid-stream. Capture notices, re-reads from the slot,
/// and because it confirms no further than registered consumers have published, the new stream again
/// holds everything those consumers had not yet published — in order, without duplicates, with no manual
/// step.
#[tokio::test]
async fn redis_restart_mid_stream() {
    let mut env = Env::start(SCHEMA).await;
    // One shard consumer registered before any change, which then publishes up to the 100th
    // transaction. Matching is off so this test plays the shard's owner itself.
    let mut con = env.redis().await;
    let keys = Keys::default();
    let set = |k: String, v: String| redis::cmd("SET").arg(k).arg(v).to_owned();
    let _: () = redis::pipe()
        .add_command(set(keys.shard_count(), "1".into()))
        .add_command(set(keys.shard_checkpoint(0), "0-0".into()))
        .query_async(&mut con)
        .await
        .unwrap();
    env.spawn_worker(&[("REALTIME_MATCHING_ENABLED", "false")])
        .await;
    writer(env.sql().await, 0, 300).await;
    let before = env
        .wait_stream(WAIT, |s| inserted(s, "seq", "n").len() >= 300)
        .await;
    let checkpoint = before
        .iter()
        .find(|(_, c)| inserted(&[(c.stream_id(), c.clone())], "seq", "n") == ["100"])
        .unwrap()
        .0;
    let _: () = set(keys.shard_checkpoint(0), checkpoint.to_string())
        .query_async(&mut con)
        .await
        .unwrap();
    writer(env.sql().await, 300, 600).await;
    env.wait_stream(WAIT, |s| inserted(s, "seq", "n").len() >= 600)
        .await;
    // Wait until capture has confirmed the slot up to the checkpoint (it was held at 0-0 before), so
    // it has read the checkpoint; it must not confirm past it.
    let sql = env.sql().await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let confirmed: i64 = sql
            .query_one(
                "SELECT (confirmed_flush_lsn - '0/0')::int8 FROM pg_replication_slots WHERE slot_name = 'realtime'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if confirmed as u64 >= checkpoint.lsn {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot never confirmed up to the checkpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    env.redis.restart().await.unwrap();
    writer(env.sql().await, 600, 900).await;
    // Everything from the consumer's checkpoint on is back, once, in order.
    let stream = env
        .wait_stream(WAIT, |s| {
            inserted(s, "seq", "n").last().map(String::as_str) == Some("899")
        })
        .await;
    assert_ordered(&stream);
    let got: Vec<i64> = inserted(&stream, "seq", "n")
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    assert!(
        got[0] <= 100,
        "replay starts at or before the consumer's checkpoint (starts at {})",
        got[0]
    );
    let from = got[0];
    assert_eq!(got, (from..900).collect::<Vec<_>>());
    // Recovery needed no manual step: the same worker is capturing into the new stream.
    assert_eq!(env.capture_status(0).await["capturing"], true);
}

/// A table created after capture started is captured, and gets `REPLICA IDENTITY FULL` so its updates
/// carry old rows, without a restart.
#[tokio::test]
async fn new_tables_are_picked_up() {
    let mut env = Env::start(SCHEMA).await;
    env.spawn_worker(&[]).await;
    let sql = env.sql().await;
    sql.batch_execute(
        "CREATE TABLE late (id int PRIMARY KEY, v text); INSERT INTO late VALUES (1, 'a')",
    )
    .await
    .unwrap();
    env.wait_stream(WAIT, |s| !inserted(s, "late", "v").is_empty())
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ident: String = sql
            .query_one(
                "SELECT relreplident::text FROM pg_class WHERE relname = 'late'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if ident == "f" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "identity never became FULL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sql.batch_execute("UPDATE late SET v = 'b'").await.unwrap();
    let stream = env
        .wait_stream(WAIT, |s| {
            s.iter().any(|(_, c)| {
                c.changes
                    .iter()
                    .any(|ch| matches!(ch, Change::Update { .. }))
            })
        })
        .await;
    let update = stream
        .iter()
        .flat_map(|(_, c)| &c.changes)
        .find_map(|ch| match ch {
            Change::Update { old, .. } => Some(old.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        update,
        Some(OldRow {
            key_only: false,
            cells: vec![t("1"), t("a")]
        })
    );
}

/// A table created while capture runs has `REPLICA IDENTITY FULL` from its `CREATE TABLE` on (an event
/// trigger the worker installs), so even its very first update and delete carry the whole old row. Set
/// only when capture first saw the table, the first changes carried the key alone, and subscriptions
/// got deletes of rows they never saw.
#[tokio::test]
async fn tables_created_later_are_full_from_their_first_change() {
    let mut env = Env::start(SCHEMA).await;
    env.spawn_worker(&[]).await;
    let status_wait = std::time::Instant::now() + WAIT;
    while env.capture_status(0).await["capturing"] != true {
        assert!(
            std::time::Instant::now() < status_wait,
            "capture never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sql = env.sql().await;
    sql.batch_execute(
        "CREATE TABLE fresh (id int PRIMARY KEY, v text); \
         INSERT INTO fresh VALUES (1, 'a'), (2, 'b'); UPDATE fresh SET v = 'c' WHERE id = 1; \
         DELETE FROM fresh WHERE id = 2; CREATE TABLE directus_sessions_copy AS SELECT 1 AS x",
    )
    .await
    .unwrap();
    let ident = |t: &'static str| {
        let sql = &sql;
        async move {
            let r = sql
                .query_one(
                    "SELECT relreplident::text FROM pg_class WHERE relname = $1",
                    &[&t],
                )
                .await
                .unwrap();
            r.get::<_, String>(0)
        }
    };
    assert_eq!(ident("fresh").await, "f");
    assert_eq!(
        ident("directus_sessions_copy").await,
        "f",
        "CREATE TABLE AS too"
    );
    let stream = env
        .wait_stream(WAIT, |s| {
            s.iter().any(|(_, c)| {
                c.changes
                    .iter()
                    .any(|ch| matches!(ch, Change::Delete { .. }))
            })
        })
        .await;
    let olds: Vec<OldRow> = stream
        .iter()
        .flat_map(|(_, c)| &c.changes)
        .filter_map(|ch| match ch {
            Change::Update { old, .. } => old.clone(),
            Change::Delete { old, .. } => Some(old.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        olds,
        vec![
            OldRow {
                key_only: false,
                cells: vec![t("1"), t("a")]
            },
            OldRow {
                key_only: false,
                cells: vec![t("2"), t("b")]
            },
        ]
    );
    // An excluded table is left as it was: its changes never leave the worker anyway.
    sql.batch_execute("CREATE TABLE directus_migrations (version text PRIMARY KEY)")
        .await
        .unwrap();
    assert_eq!(ident("directus_migrations").await, "d");
}
