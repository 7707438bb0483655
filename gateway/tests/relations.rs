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
    let init = subscribe(
        &mut ws,
        sub_msg(json!(["id", "title", "author.email"]), "a"),
    )
    .await;
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
    assert_eq!(
        m["data"],
        json!([{"id":orphan,"title":"anonymous","author":null}])
    );
    // The author's new email reaches the items that show it (Directus sends nothing here).
    sql.execute(
        "UPDATE directus_users SET email = 'renamed@example.com' WHERE id = $1::text::uuid",
        &[&writer],
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut ws).await,
        json!({"type":"subscription","event":"update","data":[{"id":by_writer,"title":"by the writer","author":{"email":"renamed@example.com"}}],"uid":"a"})
    );
    // A change to a column the items do not show sends nothing; the next event is the title's.
    sql.execute(
        "UPDATE directus_users SET last_page = '/somewhere', first_name = 'W' WHERE id = $1::text::uuid",
        &[&writer],
    )
    .await
    .unwrap();
    sql.execute(
        "UPDATE articles SET title = 'retitled' WHERE id = $1",
        &[&(by_writer as i32)],
    )
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
    assert_eq!(
        m["data"][0]["author"]["role"],
        json!({"name": "writer@example.com"}),
        "{m}"
    );
}

#[tokio::test]
async fn related_rows_and_fields_follow_the_subscribers_permissions() {
    let c = start().await;
    let sql = c.sql().await.unwrap();
    let reader = create_user(&c, "reader@example.com", "pw-r", false).await;
    let policy = policy_of(&c, &reader).await;
    // No app access: only the permissions below (app access would add its own user row).
    sql.execute(
        "UPDATE directus_policies SET app_access = false WHERE id = $1::text::uuid",
        &[&policy],
    )
    .await
    .unwrap();
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
    // A change to a user row the reader may not read tells it nothing; a change to its own does.
    sql.execute(
        "UPDATE directus_users SET first_name = 'Boss' WHERE email = $1",
        &[&ADMIN_EMAIL],
    )
    .await
    .unwrap();
    sql.execute(
        "UPDATE directus_users SET first_name = 'Reader' WHERE id = $1::text::uuid",
        &[&reader],
    )
    .await
    .unwrap();
    assert_eq!(
        next(&mut ws).await,
        json!({"type":"subscription","event":"update","data":[{"id": mine, "author": {"first_name": "Reader"}}],"uid":"a"})
    );
}

/// The demo articles' author (the admin).
async fn init_author(sql: &tokio_postgres::Client) -> Option<String> {
    sql.query_one("SELECT author::text FROM articles ORDER BY id LIMIT 1", &[])
        .await
        .unwrap()
        .get(0)
}

/// System collections with Directus's app-access minimal permissions: a user with app access reads its
/// own notifications (and no one else's), its own user row (secrets masked), and its own activity,
/// with related users shown only where it may read them.
#[tokio::test]
async fn app_users_read_their_own_system_rows_with_related_users() {
    let c = start().await;
    let sql = c.sql().await.unwrap();
    let me = create_user(&c, "me@example.com", "pw-me", false).await;
    let other = create_user(&c, "other@example.com", "pw-o", false).await;
    sql.execute(
        "UPDATE directus_users SET first_name = 'Me' WHERE id = $1::text::uuid",
        &[&me],
    )
    .await
    .unwrap();
    let admin: String = sql
        .query_one(
            "SELECT id::text FROM directus_users WHERE email = $1",
            &[&ADMIN_EMAIL],
        )
        .await
        .unwrap()
        .get(0);
    let (token, _) = login(&c, "me@example.com", "pw-me").await;
    let mut ws = open_as(&c, &token).await;

    let init = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"directus_notifications","query":{"fields":["id","subject","sender.first_name"]},"uid":"n"}),
    )
    .await;
    assert_eq!(init["data"], json!([]), "{init}");
    let notify = |to: String, from: String, subject: &'static str| {
        let sql = &sql;
        async move {
            let id: i32 = sql
                .query_one(
                    "INSERT INTO directus_notifications (recipient, sender, subject) VALUES ($1::text::uuid, $2::text::uuid, $3) RETURNING id",
                    &[&to, &from, &subject],
                )
                .await
                .unwrap()
                .get(0);
            id
        }
    };
    notify(other.clone(), admin.clone(), "not for me").await;
    let from_admin = notify(me.clone(), admin.clone(), "from the admin").await;
    let from_me = notify(me.clone(), me.clone(), "note to self").await;
    // The admin's user row is not readable: `null`, as Directus returns it.
    assert_eq!(
        next(&mut ws).await["data"],
        json!([{"id": from_admin, "subject": "from the admin", "sender": null}])
    );
    assert_eq!(
        next(&mut ws).await["data"],
        json!([{"id": from_me, "subject": "note to self", "sender": {"first_name": "Me"}}])
    );

    // Its own user row only, the password masked.
    let users = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"directus_users","query":{"fields":["id","email","password","role.name"]},"uid":"u"}),
    )
    .await;
    assert_eq!(
        users["data"],
        json!([{"id": me, "email": "me@example.com", "password": "**********", "role": {"name": "me@example.com"}}]),
        "{users}"
    );

    // The activity feed of the guide: `user.first_name`, own rows only.
    subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"directus_activity","query":{"fields":["action","collection","user.first_name"]},"uid":"act"}),
    )
    .await;
    for (user, item) in [(&other, "1"), (&me, "2")] {
        sql.execute(
            "INSERT INTO directus_activity (action, \"user\", collection, item) VALUES ('create', $1::text::uuid, 'articles', $2)",
            &[user, &item],
        )
        .await
        .unwrap();
    }
    assert_eq!(
        next(&mut ws).await,
        json!({"type":"subscription","event":"create","data":[{"action":"create","collection":"articles","user":{"first_name":"Me"}}],"uid":"act"})
    );
}

/// Directus's `directus_relations` and the guide's blog schema: comments (one-to-many) and categories
/// (many-to-many through a junction).
const BLOG: &str = r#"
CREATE TABLE directus_relations (
    id serial PRIMARY KEY,
    many_collection varchar(64) NOT NULL,
    many_field varchar(64) NOT NULL,
    one_collection varchar(64),
    one_field varchar(64),
    one_collection_field varchar(64),
    one_allowed_collections text,
    junction_field varchar(64),
    sort_field varchar(64),
    one_deselect_action varchar(255) NOT NULL DEFAULT 'nullify'
);
CREATE TABLE comments (id serial PRIMARY KEY, article integer REFERENCES articles(id), body text);
CREATE TABLE categories (id serial PRIMARY KEY, name text);
CREATE TABLE articles_categories (
    id serial PRIMARY KEY,
    articles_id integer REFERENCES articles(id) ON DELETE CASCADE,
    categories_id integer REFERENCES categories(id) ON DELETE CASCADE
);
INSERT INTO directus_relations (many_collection, many_field, one_collection, one_field, junction_field) VALUES
    ('comments', 'article', 'articles', 'comments', NULL),
    ('articles_categories', 'articles_id', 'articles', 'categories', 'categories_id'),
    ('articles_categories', 'categories_id', 'categories', NULL, 'articles_id');
INSERT INTO comments (article, body) VALUES (1, 'second'), (1, 'first'), (2, 'elsewhere');
INSERT INTO categories (name) VALUES ('news'), ('tech');
INSERT INTO articles_categories (articles_id, categories_id) VALUES (1, 2), (1, 1);
"#;

#[tokio::test]
async fn one_to_many_and_many_to_many_fields_show_arrays_in_init_and_events() {
    let c = start().await;
    let sql = c.sql().await.unwrap();
    sql.batch_execute(BLOG).await.unwrap();
    let mut ws = open_as(&c, &admin_token(&c).await).await;
    let init = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","query":{
            "fields":["id","title","comments.body","categories.categories_id.name"],
            "filter":{"id":{"_lte":2}},"sort":["id"]},"uid":"a"}),
    )
    .await;
    assert_eq!(
        init["data"],
        json!([
            {"id":1,"title":"Hello realtime",
             "comments":[{"body":"second"},{"body":"first"}],
             "categories":[{"categories_id":{"name":"tech"}},{"categories_id":{"name":"news"}}]},
            {"id":2,"title":"Draft ideas","comments":[{"body":"elsewhere"}],"categories":[]}
        ]),
        "items in key order per parent; an item without any shows []"
    );

    // `*` shows the aliases as their items' keys, after the columns.
    let mut ws2 = open_as(&c, &admin_token(&c).await).await;
    let star = subscribe(
        &mut ws2,
        json!({"type":"subscribe","collection":"articles","query":{"fields":["*"],"filter":{"id":{"_eq":1}}},"uid":"s"}),
    )
    .await;
    let row = &star["data"][0];
    assert_eq!(
        row.as_object().unwrap().keys().collect::<Vec<_>>(),
        [
            "id",
            "title",
            "status",
            "date_created",
            "author",
            "categories",
            "comments"
        ],
        "{row}"
    );
    assert_eq!(row["comments"], json!([1, 2]));
    assert_eq!(row["categories"], json!([1, 2]));

    // Events carry the arrays as they are when the change is read.
    sql.batch_execute("INSERT INTO comments (article, body) VALUES (1, 'third'); UPDATE articles SET title = 'Hello again' WHERE id = 1;")
        .await
        .unwrap();
    let m = next(&mut ws).await;
    assert_eq!(m["event"], "update", "{m}");
    assert_eq!(
        m["data"],
        json!([{"id":1,"title":"Hello again",
                "comments":[{"body":"second"},{"body":"first"},{"body":"third"}],
                "categories":[{"categories_id":{"name":"tech"}},{"categories_id":{"name":"news"}}]}])
    );
    let m = next(&mut ws2).await;
    assert_eq!(m["data"][0]["comments"], json!([1, 2, 4]), "{m}");
    // A new comment alone: its article gets an update with the new list (one-to-many followed); so
    // does a new junction row (one level down). A renamed category (two levels down) is not followed.
    sql.batch_execute("INSERT INTO comments (article, body) VALUES (2, 'on the draft')")
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        json!({"type":"subscription","event":"update","data":[{"id":2,"title":"Draft ideas","comments":[{"body":"elsewhere"},{"body":"on the draft"}],"categories":[]}],"uid":"a"})
    );
    sql.batch_execute("INSERT INTO articles_categories (articles_id, categories_id) VALUES (2, 1)")
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await["data"],
        json!([{"id":2,"title":"Draft ideas","comments":[{"body":"elsewhere"},{"body":"on the draft"}],"categories":[{"categories_id":{"name":"news"}}]}])
    );

    // `deep`: per-relation filter, sort and limit of the nested items.
    let mut ws3 = open_as(&c, &admin_token(&c).await).await;
    let init = subscribe(
        &mut ws3,
        json!({"type":"subscribe","collection":"articles","query":{
            "fields":["id","comments.body"],"filter":{"id":{"_eq":1}},
            "deep":{"comments":{"_filter":{"body":{"_neq":"first"}},"_sort":["-id"],"_limit":1}}},"uid":"d"}),
    )
    .await;
    assert_eq!(
        init["data"],
        json!([{"id":1,"comments":[{"body":"third"}]}]),
        "{init}"
    );
    // `deep` on a field that is not a relation, and an unknown field in a deep filter: clear errors,
    // and the connection goes on.
    let bad = subscribe(
        &mut ws3,
        json!({"type":"subscribe","collection":"articles","query":{"fields":["id"],"deep":{"title":{"_limit":1}}},"uid":"x"}),
    )
    .await;
    assert_eq!(bad["error"]["code"], "INVALID_QUERY", "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"title\", which is not a relational field"),
        "{bad}"
    );
    let bad = subscribe(
        &mut ws3,
        json!({"type":"subscribe","collection":"articles","query":{"fields":["comments.body"],"deep":{"comments":{"_filter":{"nope":{"_eq":1}}}}},"uid":"y"}),
    )
    .await;
    assert_eq!(
        bad["error"],
        json!({"code":"FORBIDDEN","message":"You don't have permission to access field \"nope\" in collection \"comments\" or it does not exist. Queried in \"comments\"."})
    );
    sql.batch_execute("INSERT INTO comments (article, body) VALUES (1, 'fourth'); UPDATE articles SET status = 'draft' WHERE id = 1;")
        .await
        .unwrap();
    let m = next(&mut ws3).await;
    assert_eq!(
        m["data"],
        json!([{"id":1,"comments":[{"body":"fourth"}]}]),
        "{m}"
    );
}

/// A column and a relation added while the cluster runs are usable at once, without a restart.
#[tokio::test]
async fn new_fields_and_relations_are_picked_up_while_running() {
    let c = start().await;
    let sql = c.sql().await.unwrap();
    let mut ws = open_as(&c, &admin_token(&c).await).await;
    // The schema as the gateway first read it has neither.
    let first = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","query":{"fields":["id"],"filter":{"id":{"_eq":-1}}},"uid":"warm"}),
    )
    .await;
    assert_eq!(first["event"], "init", "{first}");
    sql.batch_execute(
        "CREATE TABLE editors (id serial PRIMARY KEY, name text);
         INSERT INTO editors (name) VALUES ('Ed');
         ALTER TABLE articles ADD COLUMN subtitle text, ADD COLUMN editor integer REFERENCES editors (id);
         UPDATE articles SET subtitle = 'sub', editor = 1 WHERE id = 1;",
    )
    .await
    .unwrap();
    // Polled: a miss reloads the schema at most once a second (the guard against clients that keep
    // naming fields that do not exist), so the first try may come too soon after the last load.
    let deadline = std::time::Instant::now() + WAIT;
    let init = loop {
        let m = subscribe(
            &mut ws,
            json!({"type":"subscribe","collection":"articles","query":{"fields":["id","subtitle","editor.name"],"filter":{"id":{"_eq":1}}},"uid":"new"}),
        )
        .await;
        if m["event"] == "init" {
            break m;
        }
        assert_eq!(m["error"]["code"], "FORBIDDEN", "{m}");
        assert!(
            std::time::Instant::now() < deadline,
            "the new column and relation were never picked up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        init["data"],
        json!([{"id":1,"subtitle":"sub","editor":{"name":"Ed"}}])
    );
}
