mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn admin_subscribes_and_gets_init() {
    let c = cluster(&[]).await;
    let token = admin_token(&c).await;
    let mut ws = open(&c).await;
    auth(&mut ws, &token).await;
    let init = subscribe(&mut ws, json!({"type":"subscribe","collection":"articles","uid":1,"query":{"fields":["id","title"],"sort":"id"}})).await;
    assert_eq!(init["type"], "subscription", "{init}");
    assert_eq!(init["event"], "init");
    assert_eq!(init["uid"], "1");
    assert_eq!(
        init["data"],
        json!([{"id":1,"title":"Hello realtime"},{"id":2,"title":"Draft ideas"},{"id":3,"title":"Release notes"}])
    );
}
