//! `$NOW` in a subscription's filter means the moment each change is matched (its commit time), not
//! the moment of the subscribe: a subscription open for a week still means "the last 7 days".

mod common;
use common::*;
use serde_json::json;
use testkit::cluster::{Cluster, ClusterOptions};

#[tokio::test]
async fn now_is_the_commit_time_of_each_change() {
    let c = Cluster::start(ClusterOptions {
        gateways: 1,
        workers: 1,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let sql = c.sql().await.unwrap();
    let mut ws = open(&c).await;
    auth(&mut ws, &admin_token(&c).await).await;
    let init = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","query":{"fields":["title"],"filter":{"date_created":{"_gte":"$NOW"}}},"uid":"n"}),
    )
    .await;
    assert_eq!(init["data"], json!([]), "{init}");
    // Stamped with its transaction's start: after the subscribe, before its own commit. A `$NOW` frozen
    // at subscribe time would let it through; at commit time it is already in the past.
    sql.batch_execute(
        "INSERT INTO articles (title, date_created) VALUES ('stamped before its commit', now())",
    )
    .await
    .unwrap();
    sql.batch_execute("INSERT INTO articles (title, date_created) VALUES ('in the future', now() + interval '1 hour')")
        .await
        .unwrap();
    let m = ws.recv_skip_ping(WAIT).await.unwrap();
    assert_eq!(
        m,
        json!({"type":"subscription","event":"create","data":[{"title":"in the future"}],"uid":"n"})
    );
    // A bad adjustment names itself.
    let bad = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","query":{"filter":{"date_created":{"_gte":"$NOW(-7 dayz)"}}},"uid":"b"}),
    )
    .await;
    assert_eq!(
        bad["error"],
        json!({"code":"INVALID_QUERY","message":"Invalid query. Invalid \"$NOW\" adjustment \"-7 dayz\" in \"$NOW(-7 dayz)\"."})
    );
}
