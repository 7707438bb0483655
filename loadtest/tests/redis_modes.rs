//! The realtime path on the Redis deployments operators run besides a single server: a Redis Cluster
//! (sharded pub/sub, keys spread over nodes) and a Sentinel-managed primary that fails over mid-stream.

use serde_json::json;
use std::time::{Duration, Instant};
use testkit::client::WsClient;
use testkit::cluster::{Cluster, ClusterOptions};
use testkit::services::{Redis, free_port};
use testkit::wait::{self, admin_client, env, eventually};

const WAIT: Duration = Duration::from_secs(30);

async fn con(r: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(r.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn subscriber(addr: &str) -> WsClient {
    let mut ws = admin_client(addr, WAIT).await;
    let init = wait::subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"messages","query":{"fields":["text"],"limit":1}}),
        WAIT,
    )
    .await;
    assert_eq!(init["event"], "init");
    ws
}

/// Receive create events until `n` arrived; returns their texts in order.
async fn texts(ws: &mut WsClient, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    while out.len() < n {
        let ev = ws.recv_skip_ping(WAIT).await.unwrap();
        assert_eq!(ev["event"], "create", "{ev}");
        out.push(ev["data"][0]["text"].as_str().unwrap().to_owned());
    }
    out
}

/// Two gateways and two workers on a three-node Redis Cluster: registrations, leases, checkpoints and
/// gateway channels spread over the nodes, and every subscriber gets every change once, in order.
#[tokio::test]
async fn events_flow_through_a_redis_cluster() {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        // The bus port is set explicitly: the default (port + 10 000) overflows for high free ports.
        let bus = free_port().to_string();
        nodes.push(
            Redis::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes-{port}.conf",
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                "2000",
            ])
            .await
            .unwrap(),
        );
    }
    let mut cons = Vec::new();
    for n in &nodes {
        cons.push(con(n).await);
    }
    let per = 16384 / 3;
    for (i, c) in cons.iter_mut().enumerate() {
        let (a, b) = (i * per, if i == 2 { 16383 } else { (i + 1) * per - 1 });
        let _: () = redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(a)
            .arg(b)
            .query_async(c)
            .await
            .unwrap();
    }
    for n in &nodes[1..] {
        let info: String = redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut con(n).await)
            .await
            .unwrap();
        assert!(!info.is_empty());
        let bus: String = redis::cmd("CONFIG")
            .arg("GET")
            .arg("cluster-port")
            .query_async::<Vec<String>>(&mut con(n).await)
            .await
            .unwrap()
            .pop()
            .unwrap();
        let _: () = redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(n.port)
            .arg(bus)
            .query_async(&mut cons[0])
            .await
            .unwrap();
    }
    for c in &cons {
        let mut c = c.clone();
        eventually(WAIT, "the cluster to form", || {
            let mut c = c.clone();
            async move {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut c)
                    .await
                    .unwrap_or_default();
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            }
        })
        .await;
        let _: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    }
    let urls = nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",");
    let redis_env = [("REDIS", urls.as_str()), ("REDIS_MODE", "cluster")];
    let c = Cluster::start(ClusterOptions {
        gateways: 2,
        workers: 2,
        gateway_env: env(&redis_env),
        worker_env: env(&[
            ("REDIS", urls.as_str()),
            ("REDIS_MODE", "cluster"),
            ("REALTIME_SHARD_LEASE", "2s"),
        ]),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut a = subscriber(c.gateway_addr(0)).await;
    let mut b = subscriber(c.gateway_addr(1)).await;
    let sql = c.sql().await.unwrap();
    let want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    for t in &want {
        sql.execute("INSERT INTO messages (text) VALUES ($1)", &[t])
            .await
            .unwrap();
    }
    assert_eq!(texts(&mut a, 50).await, want);
    assert_eq!(texts(&mut b, 50).await, want);
    // The cluster's keys are spread: every node holds some.
    for (i, c) in cons.iter_mut().enumerate() {
        let size: i64 = redis::cmd("DBSIZE").query_async(c).await.unwrap();
        assert!(size > 0, "node {i} holds no keys");
    }
}

/// A Sentinel-managed primary with one replica fails over while changes stream: capture, workers and
/// gateways follow the new primary and the subscriber misses nothing and sees nothing twice.
#[tokio::test]
async fn sentinel_failover_keeps_events_flowing() {
    let primary = Redis::start().await.unwrap();
    let primary_port = primary.port.to_string();
    let replica = Redis::start_with(&["--replicaof", "127.0.0.1", &primary_port])
        .await
        .unwrap();
    let rc = con(&replica).await;
    eventually(WAIT, "the replica to sync", || {
        let mut rc = rc.clone();
        async move {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query_async(&mut rc)
                .await
                .unwrap_or_default();
            info.contains("master_link_status:up")
        }
    })
    .await;
    let sentinel = Redis::start_sentinel(&format!(
        "sentinel monitor mymaster 127.0.0.1 {primary_port} 1\n\
         sentinel down-after-milliseconds mymaster 1000\n\
         sentinel failover-timeout mymaster 10000\n"
    ))
    .await
    .unwrap();
    let mut sc = con(&sentinel).await;
    eventually(WAIT, "the sentinel to see the replica", || {
        let mut sc = sc.clone();
        async move {
            let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                .arg("REPLICAS")
                .arg("mymaster")
                .query_async(&mut sc)
                .await
                .unwrap_or_default();
            !replicas.is_empty()
        }
    })
    .await;
    let sentinel_url = sentinel.url();
    let redis_env = [
        ("REDIS", sentinel_url.as_str()),
        ("REDIS_MODE", "sentinel"),
        ("REDIS_SENTINEL_MASTER", "mymaster"),
    ];
    let c = Cluster::start(ClusterOptions {
        gateways: 1,
        workers: 1,
        gateway_env: env(&redis_env),
        worker_env: env(&redis_env),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut ws = subscriber(c.gateway_addr(0)).await;
    let sql = c.sql().await.unwrap();
    let insert = |t: String| {
        let sql = &sql;
        async move {
            sql.execute("INSERT INTO messages (text) VALUES ($1)", &[&t])
                .await
                .unwrap();
        }
    };
    for i in 0..20 {
        insert(format!("m{i}")).await;
    }
    assert_eq!(texts(&mut ws, 20).await.last().unwrap(), "m19");

    let _: () = redis::cmd("SENTINEL")
        .arg("FAILOVER")
        .arg("mymaster")
        .query_async(&mut sc)
        .await
        .unwrap();
    let replica_port = replica.port.to_string();
    // Writes continue during the failover.
    let mut i = 20;
    let deadline = Instant::now() + WAIT;
    loop {
        insert(format!("m{i}")).await;
        i += 1;
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg("mymaster")
            .query_async(&mut sc)
            .await
            .unwrap();
        if addr.get(1) == Some(&replica_port) {
            break;
        }
        assert!(Instant::now() < deadline, "the failover did not happen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..20 {
        insert(format!("m{i}")).await;
        i += 1;
    }
    let got = texts(&mut ws, i - 20).await;
    let want: Vec<String> = (20..i).map(|n| format!("m{n}")).collect();
    assert_eq!(
        got, want,
        "every change once, in order, across the failover"
    );
    // A fresh connection: the sentinel disconnects clients of instances it reconfigures.
    let role: Vec<redis::Value> = redis::cmd("ROLE")
        .query_async(&mut con(&replica).await)
        .await
        .unwrap();
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec())),
        "the replica was promoted"
    );
}
