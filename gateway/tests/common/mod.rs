//! Helpers shared by the gateway's integration tests: a real PostgreSQL, Redis and gateway process.
#![allow(dead_code)]

use serde_json::{Value as Json, json};
use std::time::Duration;
use testkit::client::{Upgrade, WsClient, http};
use testkit::cluster::{ADMIN_EMAIL, ADMIN_PASSWORD, Cluster, ClusterOptions};

pub const WAIT: Duration = Duration::from_secs(10);

/// A cluster with one gateway and the demo schema; `env` overrides gateway settings.
pub async fn cluster(env: &[(&str, &str)]) -> Cluster {
    let opts = ClusterOptions {
        gateway_env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..ClusterOptions::default()
    };
    Cluster::start(opts).await.expect("start cluster")
}

pub async fn connect(c: &Cluster, path: &str) -> Upgrade {
    WsClient::connect(c.gateway_addr(0), path, &[])
        .await
        .expect("tcp connect")
}

pub async fn open(c: &Cluster) -> WsClient {
    connect(c, "/websocket").await.open().expect("upgrade")
}

/// Log in over REST; returns (access_token, refresh_token).
pub async fn login(c: &Cluster, email: &str, password: &str) -> (String, String) {
    let r = http(
        c.gateway_addr(0),
        "POST",
        "/auth/login",
        &[],
        Some(&json!({"email": email, "password": password})),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status,
        200,
        "login failed: {}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json().unwrap();
    (
        v["data"]["access_token"].as_str().unwrap().into(),
        v["data"]["refresh_token"].as_str().unwrap().into(),
    )
}

pub async fn admin_token(c: &Cluster) -> String {
    login(c, ADMIN_EMAIL, ADMIN_PASSWORD).await.0
}

/// Send `auth` with an access token and expect `ok`.
pub async fn auth(ws: &mut WsClient, token: &str) {
    ws.send_json(&json!({"type": "auth", "access_token": token}))
        .await
        .unwrap();
    let r = ws.recv_skip_ping(WAIT).await.unwrap();
    assert_eq!(r, json!({"type": "auth", "status": "ok"}));
}

/// Subscribe and return the first reply.
pub async fn subscribe(ws: &mut WsClient, msg: Json) -> Json {
    ws.send_json(&msg).await.unwrap();
    ws.recv_skip_ping(WAIT).await.unwrap()
}

/// Create a user with a role that has one policy; returns the user's id.
pub async fn create_user(c: &Cluster, email: &str, password: &str, admin: bool) -> String {
    let sql = c.sql().await.unwrap();
    let role = uuid::Uuid::new_v4().to_string();
    let policy = uuid::Uuid::new_v4().to_string();
    let user = uuid::Uuid::new_v4().to_string();
    let hash = gateway::auth::hash_password(password.into()).await.unwrap();
    sql.execute(
        "INSERT INTO directus_roles (id, name) VALUES ($1::text::uuid, $2)",
        &[&role, &email],
    )
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO directus_policies (id, name, admin_access, app_access) VALUES ($1::text::uuid, $2, $3, true)",
        &[&policy, &email, &admin],
    )
    .await
    .unwrap();
    sql.execute("INSERT INTO directus_access (id, role, policy) VALUES ($1::text::uuid, $2::text::uuid, $3::text::uuid)", &[&uuid::Uuid::new_v4().to_string(), &role, &policy]).await.unwrap();
    sql.execute(
        "INSERT INTO directus_users (id, email, password, role, status) VALUES ($1::text::uuid, $2, $3, $4::text::uuid, 'active')",
        &[&user, &email, &hash, &role],
    )
    .await
    .unwrap();
    user
}

/// The policy attached to a user's role.
pub async fn policy_of(c: &Cluster, user: &str) -> String {
    let sql = c.sql().await.unwrap();
    sql.query_one(
        "SELECT a.policy::text FROM directus_users u JOIN directus_access a ON a.role = u.role WHERE u.id = $1::text::uuid",
        &[&user],
    )
    .await
    .unwrap()
    .get(0)
}

/// Grant `read` on `collection` to a policy.
pub async fn grant_read(
    c: &Cluster,
    policy: &str,
    collection: &str,
    filter: Option<Json>,
    fields: &str,
) {
    let sql = c.sql().await.unwrap();
    let filter = filter.map(|f| f.to_string());
    sql.execute(
        "INSERT INTO directus_permissions (collection, action, permissions, fields, policy) VALUES ($1, 'read', $2::text::json, $3, $4::text::uuid)",
        &[&collection, &filter, &fields, &policy],
    )
    .await
    .unwrap();
}

pub const PUBLIC_POLICY: &str = "abf8a154-5b1c-4a46-ac9c-7300570f4f17";
