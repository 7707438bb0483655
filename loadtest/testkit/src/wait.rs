//! Small helpers the end-to-end tests share: environment pairs, polling with a deadline (tests never
//! sleep to wait for readiness), and an authenticated client.

use crate::client::WsClient;
use crate::cluster::ADMIN_TOKEN;
use serde_json::{Value as Json, json};
use std::time::{Duration, Instant};

/// `[("K", "v")]` as the owned pairs [`crate::cluster::ClusterOptions`] takes.
pub fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Poll `f` every 20 ms until it holds; panic naming `what` after `wait`.
pub async fn eventually<F, Fut>(wait: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + wait;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `/websocket` connection to `addr`, authenticated with the local cluster's admin token.
pub async fn admin_client(addr: &str, wait: Duration) -> WsClient {
    let mut ws = WsClient::connect(addr, "/websocket", &[])
        .await
        .unwrap()
        .open()
        .unwrap();
    ws.send_json(&json!({"type":"auth","access_token":ADMIN_TOKEN}))
        .await
        .unwrap();
    let reply = ws.recv(wait).await.unwrap();
    assert_eq!(reply["status"], "ok", "{reply}");
    ws
}

/// Send a subscribe and return its first answer (pings skipped), which must be a `subscription`.
pub async fn subscribe(ws: &mut WsClient, msg: Json, wait: Duration) -> Json {
    ws.send_json(&msg).await.unwrap();
    let r = ws.recv_skip_ping(wait).await.unwrap();
    assert_eq!(r["type"], "subscription", "{r}");
    r
}
