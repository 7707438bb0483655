use serde_json::json;
use std::time::Duration;
use testkit::cluster::{Cluster, ClusterOptions};
use testkit::wait::admin_client;

#[tokio::test]
async fn sql_write_reaches_a_subscriber() {
    let c = Cluster::start(ClusterOptions {
        gateways: 1,
        workers: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut ws = admin_client(c.gateway_addr(0), Duration::from_secs(10)).await;
    ws.send_json(&json!({"type":"subscribe","collection":"articles","uid":"a","query":{"fields":["id","title"]}})).await.unwrap();
    let init = ws.recv(Duration::from_secs(10)).await.unwrap();
    assert_eq!(init["event"], "init", "{init}");
    let sql = c.sql().await.unwrap();
    sql.batch_execute("INSERT INTO articles (title, status) VALUES ('live', 'published')")
        .await
        .unwrap();
    let ev = ws
        .recv_skip_ping(Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", c.workers[0].log(), c.gateways[0].log()));
    assert_eq!(
        ev,
        json!({"type":"subscription","event":"create","data":[{"id":4,"title":"live"}],"uid":"a"})
    );
    sql.batch_execute("UPDATE articles SET title = 'changed' WHERE id = 4")
        .await
        .unwrap();
    let ev = ws.recv_skip_ping(Duration::from_secs(15)).await.unwrap();
    assert_eq!(
        ev,
        json!({"type":"subscription","event":"update","data":[{"id":4,"title":"changed"}],"uid":"a"})
    );
    sql.batch_execute("DELETE FROM articles WHERE id = 4")
        .await
        .unwrap();
    let ev = ws.recv_skip_ping(Duration::from_secs(15)).await.unwrap();
    assert_eq!(
        ev,
        json!({"type":"subscription","event":"delete","data":["4"],"uid":"a"})
    );
}
