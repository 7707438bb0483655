//! The real `@directus/sdk` `realtime()` client against the gateway: log in over REST, connect with the
//! handshake, subscribe, receive `init`, unsubscribe.

mod common;
use common::*;
use serde_json::json;
use testkit::cluster::{ADMIN_EMAIL, ADMIN_PASSWORD};
use testkit::services::run_node;

#[tokio::test]
async fn directus_sdk_subscribes_and_gets_init() {
    let c = cluster(&[]).await;
    let url = format!("http://{}", c.gateway_addr(0));
    let (ok, lines, output) = run_node("sdk-smoke.mjs", &[&url, ADMIN_EMAIL, ADMIN_PASSWORD])
        .await
        .unwrap();
    assert!(ok, "SDK run failed:\n{output}");
    let init = lines
        .iter()
        .find(|l| l["event"] == "init")
        .unwrap_or_else(|| panic!("no init:\n{output}"));
    assert_eq!(init["type"], "subscription");
    assert_eq!(init["uid"], "1", "the SDK numbers its subscriptions");
    assert_eq!(
        init["data"],
        json!([{"id":1,"title":"Hello realtime","status":"published"},{"id":3,"title":"Release notes","status":"published"}])
    );
}
