//! Many-to-one relational fields (`author.email`, `author.*`, `author.role.name`) with real processes:
//! the related item in `init` and in every create and update, with the subscriber's permissions in
//! the related collection (fields it may not read are refused with Directus's text, rows it may not
//! read show as `null`), and the connection unaffected by a refused subscription.

mod common;
use common::*;
use serde_json::{Value as Json, json};
use testkit::client::WsClient;
use testkit::cluster::{ADMIN_EMAIL, Cluster, ClusterOptions};

async fn start() -> Cluster {
    Cluster::start(ClusterOptions {
        gateways: 1,
        workers: 1,
        ..ClusterOptions::default()
    })
    .await
    .expect("start cluster")
}

async fn next(ws: &mut WsClient) -> Json {
    ws.recv_skip_ping(WAIT).await.unwrap()
}

async fn open_as(c: &Cluster, token: &str) -> WsClient {
    let mut ws = open(c).await;
    auth(&mut ws, token).await;
    ws
}

fn sub_msg(fields: Json, uid: &str) -> Json {
    json!({"type":"subscribe","collection":"articles","query":{"fields":fields,"sort":["id"]},"uid":uid})
}

async fn insert(sql: &tokio_postgres::Client, title: &str, author: Option<&str>) -> i64 {
    let id: i32 = sql
        .query_one(
            "INSERT INTO articles (title, status, author) VALUES ($1, 'published', $2::text::uuid) RETURNING id",
            &[&title, &author],
        )
        .await
        .unwrap()
        .get(0);
    id as i64
}

#[tokio::test]
async fn the_related_item_is_in_init_and_in_every_create_and_update() {
    let c = start().await;
    let sql = c.sql().await.unwrap();
    let writer = create_user(&c, "writer@example.com", "pw-w", false).await;
    let mut ws = open_as(&c, &admin_token(&c).await).await;

    // init: the demo articles are by the admin.
    let init = subscribe(&mut ws, sub_msg(json!(["id", "title", "author.email"]), "a")).await;
    assert_eq!(init["event"], "init", "{init}");
    let rows = init["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for r in rows {
        assert_eq!(
            r.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["id", "title", "author"],
            "Directus's key order: {r}"
        );
        assert_eq!(r["author"], json!({"email": ADMIN_EMAIL}), "{r}");
    }

    // A create by another author, one without an author, an update: each with the item as it is.
    let by_writer = insert(&sql, "by the writer", Some(&writer)).await;
    let m = next(&mut ws).await;
    assert_eq!(
        m,
        json!({"type":"subscription","event":"create","data":[{"id":by_writer,"title":"by the writer","author":{"email":"writer@example.com"}}],"uid":"a"})
    );
    let orphan = insert(&sql, "anonymous", None).await;
    let m = next(&mut ws).await;
    assert_eq!(m["data"], json!([{"id":orphan,"title":"anonymous","author":null}]));
    sql.execute(
        "UPDATE directus_users SET email = 'renamed@example.com' WHERE id = $1::text::uuid",
        &[&writer],
    )
    .await
    .unwrap();
    sql.execute("UPDATE articles SET title = 'retitled' WHERE id = $1", &[&(by_writer as i32)])
        .await
        .unwrap();
    let m = next(&mut ws).await;
    assert_eq!(m["event"], "update", "{m}");
    assert_eq!(
        m["data"],
        json!([{"id":by_writer,"title":"retitled","author":{"email":"renamed@example.com"}}]),
        "the related item as it is when the change is read"
    );

    // `*` with `author.*` and a nested relation: the relation keeps the column's place.
    let mut ws2 = open_as(&c, &admin_token(&c).await).await;
    let init = subscribe(
        &mut ws2,
        sub_msg(json!(["*", "author.id", "author.role.name"]), "b"),
    )
    .await;
    let first = &init["data"][0];
    assert_eq!(
        first.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["id", "title", "status", "date_created", "author"],
        "{first}"
    );
    assert!(first["author"]["id"].is_string(), "{first}");
    assert!(first["author"]["role"]["name"].is_string(), "{first}");
    insert(&sql, "nested", Some(&writer)).await;
    let m = next(&mut ws2).await;
    assert_eq!(m["data"][0]["author"]["role"], json!({"name": "writer@example.com"}), "{m}");
}

#[tokio::test]
async fn related_rows_and_fields_follow_the_subscribers_permissions() {
    let c = start().await;
    let sql = c.sql().await.unwrap();
    let reader = create_user(&c, "reader@example.com", "pw-r", false).await;
    let policy = policy_of(&c, &reader).await;
    grant_read(&c, &policy, "articles", None, "*").await;
    // The reader sees only its own user row, and only its id and first name.
    grant_read(
        &c,
        &policy,
        "directus_users",
        Some(json!({"id": {"_eq": "$CURRENT_USER"}})),
        "id,first_name",
    )
    .await;
    sql.execute(
        "UPDATE directus_users SET first_name = 'Rea' WHERE id = $1::text::uuid",
        &[&reader],
    )
    .await
    .unwrap();
    let (token, _) = login(&c, "reader@example.com", "pw-r").await;
    let mut ws = open_as(&c, &token).await;

    // A field outside the permission: Directus's FORBIDDEN text, naming the path.
    let refused = subscribe(&mut ws, sub_msg(json!(["id", "author.email"]), "x")).await;
    assert_eq!(
        refused["error"],
        json!({"code":"FORBIDDEN","message":"You don't have permission to access field \"email\" in collection \"directus_users\" or it does not exist. Queried in \"author\"."}),
        "{refused}"
    );

    // Readable fields: the admin's articles show `null` (that user row is hidden), the reader's own
    // show the object.
    let init = subscribe(&mut ws, sub_msg(json!(["id", "author.first_name"]), "a")).await;
    assert_eq!(init["event"], "init", "{init}");
    for r in init["data"].as_array().unwrap() {
        assert_eq!(r["author"], Json::Null, "{r}");
    }
    let mine = insert(&sql, "mine", Some(&reader)).await;
    let theirs = insert(&sql, "theirs", init_author(&sql).await.as_deref()).await;
    assert_eq!(
        next(&mut ws).await["data"],
        json!([{"id": mine, "author": {"first_name": "Rea"}}])
    );
    assert_eq!(
        next(&mut ws).await["data"],
        json!([{"id": theirs, "author": null}])
    );
}

/// The demo articles' author (the admin).
async fn init_author(sql: &tokio_postgres::Client) -> Option<String> {
    sql.query_one("SELECT author::text FROM articles ORDER BY id LIMIT 1", &[])
        .await
        .unwrap()
        .get(0)
}
