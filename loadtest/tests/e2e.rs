//! The realtime path end to end, with real processes: PostgreSQL → capture → Redis → matching workers →
//! gateways → WebSocket clients. Writes are plain SQL.

use serde_json::{Value as Json, json};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use testkit::client::{Incoming, WsClient};
use testkit::cluster::{ADMIN_TOKEN, Cluster, ClusterOptions};
use testkit::wait::{self, admin_client, env};

const WAIT: Duration = Duration::from_secs(20);
/// Long enough for an event to arrive if it were coming (to assert one is *not* sent).
const QUIET: Duration = Duration::from_millis(800);

fn opts(gateways: usize, workers: usize) -> ClusterOptions {
    ClusterOptions {
        gateways,
        workers,
        // Short leases: a killed worker's shards move within ~2 s.
        worker_env: env(&[
            ("REALTIME_SHARD_LEASE", "2s"),
            ("REALTIME_STATUS_INTERVAL", "200ms"),
        ]),
        gateway_env: env(&[("WEBSOCKETS_HEARTBEAT_PERIOD", "300")]),
        ..Default::default()
    }
}

async fn client(c: &Cluster, gateway: usize) -> WsClient {
    admin_client(c.gateway_addr(gateway), WAIT).await
}

async fn subscribe(ws: &mut WsClient, msg: Json) -> Json {
    wait::subscribe(ws, msg, WAIT).await
}

/// The peer's own scenarios (spec §9: subscriptions, unsubscriptions, event filtering), on two gateways
/// and two workers, with SQL writes.
#[tokio::test]
async fn peer_scenarios_on_two_gateways_and_two_workers() {
    let c = Cluster::start(opts(2, 2)).await.unwrap();
    let sql = c.sql().await.unwrap();
    sql.batch_execute("CREATE TABLE tests_items (id serial PRIMARY KEY, name text)")
        .await
        .unwrap();

    // 1. Subscriptions: uids none, 1 and "two", on each gateway; one created item → exactly one message each.
    let mut subs = Vec::new();
    for g in 0..2 {
        for uid in [None, Some(json!(1)), Some(json!("two"))] {
            let mut ws = client(&c, g).await;
            let mut msg = json!({"type":"subscribe","collection":"tests_items","query":{"fields":["id","name"]}});
            if let Some(u) = &uid {
                msg["uid"] = u.clone();
            }
            let init = subscribe(&mut ws, msg).await;
            let uid_str = init["uid"].as_str().unwrap().to_owned();
            if let Some(u) = &uid {
                assert_eq!(
                    uid_str,
                    match u {
                        Json::Number(n) => n.to_string(),
                        Json::String(s) => s.clone(),
                        _ => unreachable!(),
                    }
                );
            }
            subs.push((ws, uid_str));
        }
    }
    sql.batch_execute("INSERT INTO tests_items (name) VALUES ('test')")
        .await
        .unwrap();
    for (ws, uid) in &mut subs {
        let m = ws.recv_skip_ping(WAIT).await.unwrap();
        assert_eq!(
            m,
            json!({"type":"subscription","event":"create","data":[{"id":1,"name":"test"}],"uid":uid})
        );
        ws.expect_silence(QUIET).await.unwrap();
    }

    // 2. Unsubscriptions: init and unsubscribe confirmation, then no event.
    let mut unsubs = Vec::new();
    for g in 0..2 {
        for uid in [json!(1), json!("two")] {
            let mut ws = client(&c, g).await;
            subscribe(
                &mut ws,
                json!({"type":"subscribe","collection":"tests_items","uid":uid}),
            )
            .await;
            ws.send_json(&json!({"type":"unsubscribe","uid":uid}))
                .await
                .unwrap();
            assert_eq!(
                ws.recv_skip_ping(WAIT).await.unwrap(),
                json!({"type":"subscription","event":"unsubscribe","uid":uid})
            );
            unsubs.push(ws);
        }
    }
    sql.batch_execute("INSERT INTO tests_items (name) VALUES ('nobody sees this')")
        .await
        .unwrap();
    for ws in &mut unsubs {
        ws.expect_silence(QUIET).await.unwrap();
    }

    // 3. Event filtering: create → update → delete; unfiltered gets all three in order, filtered ones one each.
    let mut by_event = Vec::new();
    for g in 0..2 {
        for event in [None, Some("create"), Some("update"), Some("delete")] {
            let mut ws = client(&c, g).await;
            let uid = event.unwrap_or("all");
            let mut msg = json!({"type":"subscribe","collection":"tests_items","uid":uid,"query":{"fields":["id","name"]}});
            if let Some(e) = event {
                msg["event"] = json!(e);
            }
            subscribe(&mut ws, msg).await;
            by_event.push((ws, uid));
        }
    }
    sql.batch_execute("INSERT INTO tests_items (name) VALUES ('x'); UPDATE tests_items SET name = 'updated' WHERE id = 3; DELETE FROM tests_items WHERE id = 3;").await.unwrap();
    let create = json!({"type":"subscription","event":"create","data":[{"id":3,"name":"x"}]});
    let update = json!({"type":"subscription","event":"update","data":[{"id":3,"name":"updated"}]});
    let delete = json!({"type":"subscription","event":"delete","data":["3"]});
    for (ws, uid) in &mut by_event {
        let expected: Vec<Json> = match *uid {
            "all" => vec![create.clone(), update.clone(), delete.clone()],
            "create" => vec![create.clone()],
            "update" => vec![update.clone()],
            _ => vec![delete.clone()],
        };
        for mut e in expected {
            e["uid"] = json!(uid);
            assert_eq!(ws.recv_skip_ping(WAIT).await.unwrap(), e);
        }
        ws.expect_silence(QUIET).await.unwrap();
    }
}

/// Clients on different gateways with different filters and fields; updates entering and leaving a
/// filter become `update` and `delete`.
#[tokio::test]
async fn filters_and_fields_per_gateway() {
    let c = Cluster::start(opts(2, 2)).await.unwrap();
    let mut published = client(&c, 0).await;
    let mut drafts = client(&c, 1).await;
    subscribe(&mut published, json!({"type":"subscribe","collection":"articles","uid":"p","query":{"fields":"id,title","filter":{"status":{"_eq":"published"}}}})).await;
    subscribe(&mut drafts, json!({"type":"subscribe","collection":"articles","uid":"d","query":{"fields":["id","status"],"filter":"{\"status\":{\"_eq\":\"draft\"}}"}})).await;
    let sql = c.sql().await.unwrap();
    sql.batch_execute("UPDATE articles SET status = 'published' WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(
        published.recv_skip_ping(WAIT).await.unwrap(),
        json!({"type":"subscription","event":"update","data":[{"id":2,"title":"Draft ideas"}],"uid":"p"})
    );
    assert_eq!(
        drafts.recv_skip_ping(WAIT).await.unwrap(),
        json!({"type":"subscription","event":"delete","data":["2"],"uid":"d"})
    );
    sql.batch_execute("UPDATE articles SET title = 'renamed', status = 'draft' WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(
        published.recv_skip_ping(WAIT).await.unwrap(),
        json!({"type":"subscription","event":"delete","data":["1"],"uid":"p"})
    );
    assert_eq!(
        drafts.recv_skip_ping(WAIT).await.unwrap(),
        json!({"type":"subscription","event":"update","data":[{"id":1,"status":"draft"}],"uid":"d"})
    );
    // A change neither may see reaches neither.
    sql.batch_execute("INSERT INTO articles (title, status) VALUES ('archived', 'archived')")
        .await
        .unwrap();
    published.expect_silence(QUIET).await.unwrap();
    drafts.expect_silence(QUIET).await.unwrap();
}

/// Collect ids from `create` events until `last` arrives.
async fn collect_ids(mut ws: WsClient, last: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    collect_ids_into(&mut ws, last, &mut ids).await;
    ids
}

/// Reads `create` events from `ws`, appending their ids, until `last` has arrived.
async fn collect_ids_into(ws: &mut WsClient, last: i64, ids: &mut Vec<i64>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while ids.last() != Some(&last) {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws.next(left).await.unwrap() {
            Some(Incoming::Json(m)) if m["event"] == "create" => {
                ids.extend(
                    m["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r["id"].as_i64().unwrap()),
                );
            }
            Some(Incoming::Json(_)) => {}
            Some(Incoming::Closed { code, .. }) => {
                panic!("closed ({code:?}) after {} ids", ids.len())
            }
            None => panic!("timed out after {} ids (last {:?})", ids.len(), ids.last()),
        }
    }
}

/// 100 subscribers (two queries, both gateways) while 5 000 rows are inserted in 2 500 transactions and
/// `fault` strikes after the first 1 000 have arrived: each subscriber must see each matching row exactly
/// once, in commit order.
async fn exactly_once_under(fault: impl AsyncFnOnce(&mut Cluster)) {
    let mut c = Cluster::start(opts(2, 2)).await.unwrap();
    let mut readers = Vec::new();
    let mut watcher = None;
    for i in 0..100 {
        let mut ws = client(&c, i % 2).await;
        let (query, first) = if i % 4 == 3 {
            (json!({"fields":"id","filter":{"id":{"_gt":2500}}}), 2501)
        } else {
            (json!({"fields":["id"]}), 1)
        };
        subscribe(
            &mut ws,
            json!({"type":"subscribe","collection":"messages","uid":i,"query":query}),
        )
        .await;
        if i == 0 {
            watcher = Some(ws);
        } else {
            readers.push((first, tokio::spawn(collect_ids(ws, 5001))));
        }
    }
    let sql = c.sql().await.unwrap();
    sql.batch_execute("DELETE FROM messages; ALTER SEQUENCE messages_id_seq RESTART WITH 2")
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        for _ in 0..2500 {
            sql.batch_execute("INSERT INTO messages (text) SELECT 'm' FROM generate_series(1, 2)")
                .await
                .unwrap();
        }
    });
    // Wait until the first 1 000 rows have reached a subscriber, then strike.
    let mut watcher = watcher.unwrap();
    loop {
        let m = watcher.recv_skip_ping(WAIT).await.unwrap();
        if m["event"] == "create"
            && m["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"].as_i64().unwrap() >= 1000)
        {
            break;
        }
    }
    fault(&mut c).await;
    writer.await.unwrap();
    for (first, r) in readers {
        let ids = r.await.unwrap();
        let expected: Vec<i64> = (first.max(2)..=5001).collect();
        assert_eq!(ids.len(), expected.len(), "count (first {first})");
        assert_eq!(ids, expected, "every row once, in commit order");
    }
}

#[tokio::test]
async fn sigkill_a_worker_mid_stream() {
    exactly_once_under(async |c: &mut Cluster| c.workers[0].kill()).await;
}

#[tokio::test]
async fn restart_redis_mid_stream() {
    exactly_once_under(async |c: &mut Cluster| c.redis.restart().await.unwrap()).await;
}

/// A client that stops reading is closed at its byte budget; the others keep receiving everything.
#[tokio::test]
async fn stalled_client_is_closed_and_others_unaffected() {
    let mut o = opts(1, 1);
    o.gateway_env
        .push(("REALTIME_SEND_BUFFER_BYTES".into(), "1048576".into()));
    let c = Cluster::start(o).await.unwrap();
    let mut stalled = client(&c, 0).await;
    let mut healthy = client(&c, 0).await;
    let q = json!({"fields":["id","text"]});
    subscribe(
        &mut stalled,
        json!({"type":"subscribe","collection":"messages","uid":"s","query":q}),
    )
    .await;
    subscribe(
        &mut healthy,
        json!({"type":"subscribe","collection":"messages","uid":"h","query":q}),
    )
    .await;
    let sql = c.sql().await.unwrap();
    // 1500 rows of 20 KB (30 MB): far more than the stalled socket's 1 MiB budget plus what the
    // kernel buffers on loopback. The healthy client reads each batch of 20 before the next is
    // written, so it is never more than ~400 KB behind: a reader that keeps up is never cut off.
    sql.batch_execute("DELETE FROM messages; ALTER SEQUENCE messages_id_seq RESTART WITH 2")
        .await
        .unwrap();
    let mut ids = Vec::new();
    for batch in 0..75 {
        for _ in 0..20 {
            sql.batch_execute("INSERT INTO messages (text) VALUES (repeat('x', 20000))")
                .await
                .unwrap();
        }
        collect_ids_into(&mut healthy, 1 + 20 * (batch + 1), &mut ids).await;
    }
    assert_eq!(ids, (2..=1501).collect::<Vec<_>>());
    // The stalled client now reads: it gets part of the stream and then the connection ends.
    let deadline = Instant::now() + WAIT;
    let mut got = 0;
    let closed = loop {
        match stalled
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
            .unwrap()
        {
            Some(Incoming::Json(_)) => got += 1,
            Some(Incoming::Closed { code, .. }) => break code,
            None => panic!("stalled client still open after {got} frames"),
        }
    };
    assert!(
        got < 1500,
        "the stalled client was cut off (got {got} of 1500)"
    );
    assert!(
        closed.is_none() || closed == Some(4008),
        "closed with {closed:?}"
    );
    assert!(c.gateways[0].log().contains("closing a slow consumer"));
}

/// The real @directus/sdk: subscribes through a load balancer, receives create/update/delete for SQL
/// writes; its gateway is killed; it reconnects to another gateway and keeps receiving.
#[tokio::test]
async fn directus_sdk_receives_events_and_survives_its_gateway() {
    let mut c = Cluster::start(opts(2, 1)).await.unwrap();
    let proxy = testkit::proxy::Proxy::start(vec![
        c.gateway_addr(0).to_owned(),
        c.gateway_addr(1).to_owned(),
    ])
    .await
    .unwrap();
    let dir = testkit::services::node_client_dir().unwrap();
    let mut child = tokio::process::Command::new("node")
        .arg("sdk-events.mjs")
        .arg(format!("http://{}", proxy.addr))
        .arg(ADMIN_TOKEN)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Json {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("sdk output timed out")
            .unwrap()
            .expect("sdk ended");
        serde_json::from_str(&line).unwrap()
    };
    let init = next().await;
    assert_eq!(init["event"], "init", "{init}");
    let sql = c.sql().await.unwrap();
    sql.batch_execute("INSERT INTO articles (title, status) VALUES ('sdk', 'published')")
        .await
        .unwrap();
    assert_eq!(
        next().await,
        json!({"type":"subscription","event":"create","data":[{"id":4,"title":"sdk"}],"uid":"1"})
    );
    sql.batch_execute("UPDATE articles SET title = 'sdk2' WHERE id = 4")
        .await
        .unwrap();
    assert_eq!(next().await["event"], "update");
    sql.batch_execute("DELETE FROM articles WHERE id = 4")
        .await
        .unwrap();
    assert_eq!(
        next().await,
        json!({"type":"subscription","event":"delete","data":["4"],"uid":"1"})
    );

    // Kill the gateway the SDK is on (the first backend); the proxy now only reaches the other one.
    c.gateways[0].kill();
    proxy.set_backends(vec![c.gateway_addr(1).to_owned()]);
    // The SDK reconnects and re-subscribes: a fresh init.
    let re = next().await;
    assert_eq!(re["event"], "init", "{re}");
    sql.batch_execute("INSERT INTO articles (title, status) VALUES ('after', 'published')")
        .await
        .unwrap();
    let ev = next().await;
    assert_eq!(ev["event"], "create");
    assert_eq!(ev["data"][0]["title"], "after");
    let _ = child.kill().await;
    let _: HashMap<(), ()> = HashMap::new();
}
