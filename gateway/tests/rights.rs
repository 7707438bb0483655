//! Rights that follow changes, with real processes (two gateways, two workers, PostgreSQL, Redis):
//! permission edits, removed permissions, role moves, suspensions and static-token changes made with
//! plain SQL while a subscriber listens. Each step asserts on the first event after the change, and a
//! row the new rights hide is written *before* a visible one, so a leak shows up as the wrong first event.

mod common;
use common::*;
use serde_json::{Value as Json, json};
use testkit::client::WsClient;
use testkit::cluster::{Cluster, ClusterOptions};

async fn two_by_two() -> Cluster {
    Cluster::start(ClusterOptions {
        gateways: 2,
        workers: 2,
        ..ClusterOptions::default()
    })
    .await
    .expect("start cluster")
}

async fn open_on(c: &Cluster, gateway: usize) -> WsClient {
    WsClient::connect(c.gateway_addr(gateway), "/websocket", &[])
        .await
        .unwrap()
        .open()
        .unwrap()
}

/// The next subscription message (init, create, update, delete, unsubscribe) or error.
async fn next(ws: &mut WsClient) -> Json {
    ws.recv_skip_ping(WAIT).await.unwrap()
}

async fn sub(ws: &mut WsClient, collection: &str, uid: &str) -> Json {
    let init = subscribe(
        ws,
        json!({"type":"subscribe","collection":collection,"query":{"fields":["*"],"sort":["id"]},"uid":uid}),
    )
    .await;
    assert_eq!(init["event"], "init", "{init}");
    init
}

async fn insert_article(sql: &tokio_postgres::Client, title: &str, status: &str) -> i32 {
    sql.query_one(
        "INSERT INTO articles (title, status) VALUES ($1, $2) RETURNING id",
        &[&title, &status],
    )
    .await
    .unwrap()
    .get(0)
}

fn created(m: &Json, uid: &str) -> Json {
    assert_eq!(m["type"], "subscription", "{m}");
    assert_eq!(m["uid"], uid, "{m}");
    assert_eq!(m["event"], "create", "{m}");
    m["data"][0].clone()
}

#[tokio::test]
async fn permission_edits_role_moves_and_suspension_apply_to_the_next_event() {
    let c = two_by_two().await;
    let sql = c.sql().await.unwrap();
    let u = create_user(&c, "u@example.com", "pw-u", false).await;
    let pu = policy_of(&c, &u).await;
    grant_read(
        &c,
        &pu,
        "articles",
        Some(json!({"status":{"_eq":"published"}})),
        "*",
    )
    .await;
    grant_read(&c, &pu, "messages", None, "*").await;
    // An onlooker on the other gateway whose rights never change: it must get every article.
    let v = create_user(&c, "v@example.com", "pw-v", false).await;
    let pv = policy_of(&c, &v).await;
    grant_read(&c, &pv, "articles", None, "*").await;

    let (tu, _) = login(&c, "u@example.com", "pw-u").await;
    let (tv, _) = login(&c, "v@example.com", "pw-v").await;
    let mut wu = open_on(&c, 0).await;
    auth(&mut wu, &tu).await;
    sub(&mut wu, "articles", "a").await;
    sub(&mut wu, "messages", "m").await;
    let mut wv = open_on(&c, 1).await;
    auth(&mut wv, &tv).await;
    sub(&mut wv, "articles", "v").await;
    let mut written = Vec::new();

    // Before any change.
    let one = insert_article(&sql, "one", "published").await;
    written.push(one);
    assert_eq!(created(&next(&mut wu).await, "a")["title"], "one");

    // 1. The row filter narrows and a field goes, in one transaction: the next visible row comes
    //    without `title`, and a row only the old filter allowed never arrives.
    sql.execute(
        "UPDATE directus_permissions SET permissions = $1::text::json, fields = 'id,status'
         WHERE policy = $2::text::uuid AND collection = 'articles'",
        &[
            &json!({"_and":[{"status":{"_eq":"published"}},{"title":{"_starts_with":"keep"}}]})
                .to_string(),
            &pu,
        ],
    )
    .await
    .unwrap();
    written.push(insert_article(&sql, "drop-1", "published").await);
    let keep = insert_article(&sql, "keep-1", "published").await;
    written.push(keep);
    assert_eq!(
        created(&next(&mut wu).await, "a"),
        json!({"id": keep, "status": "published"}),
        "the first event after the edit follows it"
    );

    // 2. The user moves to a role whose policy reads drafts only (id, title) and no messages: `m` ends
    //    with the unsubscribe frame, `a` follows the new role.
    let r2 = uuid::Uuid::new_v4().to_string();
    let p2 = uuid::Uuid::new_v4().to_string();
    sql.batch_execute(&format!(
        "INSERT INTO directus_roles (id, name) VALUES ('{r2}', 'drafts');
         INSERT INTO directus_policies (id, name, admin_access, app_access) VALUES ('{p2}', 'drafts', false, true);
         INSERT INTO directus_access (id, role, policy) VALUES ('{}', '{r2}', '{p2}');",
        uuid::Uuid::new_v4()
    ))
    .await
    .unwrap();
    grant_read(
        &c,
        &p2,
        "articles",
        Some(json!({"status":{"_eq":"draft"}})),
        "id,title",
    )
    .await;
    sql.execute(
        "UPDATE directus_users SET role = $1::text::uuid WHERE id = $2::text::uuid",
        &[&r2, &u],
    )
    .await
    .unwrap();
    let ended = next(&mut wu).await;
    assert_eq!(
        ended,
        json!({"type":"subscription","event":"unsubscribe","error":{"code":"FORBIDDEN",
            "message":"You don't have permission to access collection \"messages\" or it does not exist. Queried in root."},"uid":"m"})
    );
    written.push(insert_article(&sql, "keep-published", "published").await);
    let draft = insert_article(&sql, "a draft", "draft").await;
    written.push(draft);
    assert_eq!(
        created(&next(&mut wu).await, "a"),
        json!({"id": draft, "title": "a draft"}),
        "the role's policy, not the token's role claim"
    );
    sql.batch_execute("INSERT INTO messages (text) VALUES ('not for u')")
        .await
        .unwrap();

    // 3. The read permission is removed: `a` ends, the connection stays open.
    sql.execute(
        "DELETE FROM directus_permissions WHERE policy = $1::text::uuid",
        &[&p2],
    )
    .await
    .unwrap();
    let ended = next(&mut wu).await;
    assert_eq!(ended["event"], "unsubscribe", "{ended}");
    assert_eq!(ended["uid"], "a");
    assert_eq!(ended["error"]["code"], "FORBIDDEN");
    written.push(insert_article(&sql, "another draft", "draft").await);
    wu.send_json(&json!({"type":"ping"})).await.unwrap();
    assert_eq!(next(&mut wu).await, json!({"type":"pong"}), "still open");

    // 4. A new grant and a new subscription, then the user is suspended: AUTH_FAILED, then closed.
    grant_read(&c, &p2, "articles", None, "id").await;
    sub(&mut wu, "articles", "b").await;
    sql.execute(
        "UPDATE directus_users SET status = 'suspended' WHERE id = $1::text::uuid",
        &[&u],
    )
    .await
    .unwrap();
    written.push(insert_article(&sql, "after suspension", "published").await);
    assert_eq!(
        next(&mut wu).await,
        json!({"type":"auth","status":"error","error":{"code":"AUTH_FAILED","message":"Authentication failed."}})
    );
    wu.expect_close(WAIT).await.unwrap();

    // The onlooker got every article, once, in order.
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let m = next(&mut wv).await;
        seen.push(created(&m, "v")["id"].as_i64().unwrap() as i32);
    }
    assert_eq!(seen, written);
}

#[tokio::test]
async fn a_changed_static_token_closes_its_sockets_and_public_mode_falls_back_to_public() {
    let c = Cluster::start(ClusterOptions {
        gateways: 1,
        workers: 1,
        gateway_env: vec![("WEBSOCKETS_REST_AUTH".into(), "public".into())],
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let sql = c.sql().await.unwrap();
    let u = create_user(&c, "s@example.com", "pw-s", false).await;
    let pu = policy_of(&c, &u).await;
    grant_read(&c, &pu, "articles", None, "*").await;
    // The public may read published titles only.
    grant_read(
        &c,
        PUBLIC_POLICY,
        "articles",
        Some(json!({"status":{"_eq":"published"}})),
        "id,title",
    )
    .await;
    sql.execute(
        "UPDATE directus_users SET token = 'static-s' WHERE id = $1::text::uuid",
        &[&u],
    )
    .await
    .unwrap();
    let mut ws = open(&c).await;
    auth(&mut ws, "static-s").await;
    sub(&mut ws, "articles", "a").await;
    let first = insert_article(&sql, "draft before", "draft").await;
    assert_eq!(created(&next(&mut ws).await, "a")["id"], first);

    // The token is replaced: in public mode the socket goes on with the public policy.
    sql.execute(
        "UPDATE directus_users SET token = 'static-s2' WHERE id = $1::text::uuid",
        &[&u],
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut ws).await["error"]["code"],
        "AUTH_FAILED",
        "told its credentials no longer hold"
    );
    insert_article(&sql, "draft after", "draft").await;
    let published = insert_article(&sql, "published after", "published").await;
    assert_eq!(
        created(&next(&mut ws).await, "a"),
        json!({"id": published, "title": "published after"}),
        "the public policy: no drafts, no status field"
    );
}

#[tokio::test]
async fn a_permission_whose_filter_is_invalid_ends_only_the_subscriptions_that_use_it() {
    let c = two_by_two().await;
    let sql = c.sql().await.unwrap();
    let u = create_user(&c, "b@example.com", "pw-b", false).await;
    let pu = policy_of(&c, &u).await;
    grant_read(&c, &pu, "articles", None, "*").await;
    grant_read(&c, &pu, "messages", None, "*").await;
    let (tu, _) = login(&c, "b@example.com", "pw-b").await;
    let mut ws = open_on(&c, 1).await;
    auth(&mut ws, &tu).await;
    sub(&mut ws, "articles", "a").await;
    sub(&mut ws, "messages", "m").await;
    sql.execute(
        "UPDATE directus_permissions SET permissions = '{\"status\":{\"_bogus\":1}}'
         WHERE policy = $1::text::uuid AND collection = 'articles'",
        &[&pu],
    )
    .await
    .unwrap();
    let ended = next(&mut ws).await;
    assert_eq!(ended["event"], "unsubscribe", "{ended}");
    assert_eq!(ended["uid"], "a");
    assert_eq!(ended["error"]["code"], "FORBIDDEN");
    assert!(
        ended["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid filter"),
        "{ended}"
    );
    sql.batch_execute("INSERT INTO messages (text) VALUES ('still here')")
        .await
        .unwrap();
    let m = next(&mut ws).await;
    assert_eq!(created(&m, "m")["text"], "still here");
    // The workers name the broken row, so the administrator knows what to fix.
    let id: i32 = sql
        .query_one(
            "SELECT id FROM directus_permissions WHERE policy = $1::text::uuid AND collection = 'articles'",
            &[&pu],
        )
        .await
        .unwrap()
        .get(0);
    let wanted = format!("permission={id}");
    testkit::wait::eventually(WAIT, "a worker to log the broken permission", || {
        let logs: Vec<String> = c.workers.iter().map(|w| w.log()).collect();
        let wanted = wanted.clone();
        async move {
            logs.iter().any(|l| {
                l.lines().any(|line| {
                    line.contains("broken filter")
                        && line.contains(&wanted)
                        && line.contains("Unknown filter operator")
                })
            })
        }
    })
    .await;
}

#[tokio::test]
async fn a_logout_ends_the_sockets_its_session_authenticated() {
    let c = Cluster::start(ClusterOptions {
        gateways: 2,
        workers: 1,
        ..ClusterOptions::default()
    })
    .await
    .unwrap();
    let sql = c.sql().await.unwrap();
    let u = create_user(&c, "l@example.com", "pw-l", false).await;
    let pu = policy_of(&c, &u).await;
    grant_read(&c, &pu, "articles", None, "*").await;
    // Two sockets log in over the WebSocket (two sessions); a third uses a plain access token
    // whose login made a third session.
    let mut first = open_on(&c, 0).await;
    let mut second = open_on(&c, 1).await;
    let mut refresh = Vec::new();
    for ws in [&mut first, &mut second] {
        ws.send_json(&json!({"type":"auth","email":"l@example.com","password":"pw-l"}))
            .await
            .unwrap();
        let ok = next(ws).await;
        assert_eq!(ok["status"], "ok", "{ok}");
        refresh.push(ok["refresh_token"].as_str().unwrap().to_owned());
    }
    sub(&mut first, "articles", "a").await;
    sub(&mut second, "articles", "b").await;
    // The first session logs out (as `POST /auth/logout` does: its row is deleted).
    sql.execute(
        "DELETE FROM directus_sessions WHERE token = $1",
        &[&refresh[0]],
    )
    .await
    .unwrap();
    let id = insert_article(&sql, "after logout", "published").await;
    assert_eq!(
        next(&mut first).await,
        json!({"type":"auth","status":"error","error":{"code":"AUTH_FAILED","message":"Authentication failed."}})
    );
    first.expect_close(WAIT).await.unwrap();
    // The other session of the same user keeps its socket and its events.
    assert_eq!(created(&next(&mut second).await, "b")["id"], id);
}
