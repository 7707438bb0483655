//! Subscriptions against a real gateway and PostgreSQL: init snapshots (fields, filters, sort, limit,
//! offset, meta, item), Directus's JSON for every column type, the error frames, permissions, and limits.

mod common;
use common::*;
use serde_json::{Value as Json, json};
use testkit::client::WsClient;
use testkit::cluster::{ADMIN_TOKEN, Cluster};

async fn admin_ws(c: &Cluster) -> WsClient {
    let mut ws = open(c).await;
    auth(&mut ws, ADMIN_TOKEN).await;
    ws
}

const TYPES_DDL: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE typed (
    id bigserial PRIMARY KEY,
    i2 smallint, i4 integer, i8 bigint, num numeric(10,2), num_free numeric, f4 real, f8 double precision,
    b boolean, t text, vc varchar(20), ch char(5), u uuid, j json, jb jsonb,
    d date, tm time, tmtz timetz, ts timestamp, tstz timestamptz,
    ai int4[], at text[], by bytea, iv interval, m mood
);
INSERT INTO typed (i2, i4, i8, num, num_free, f4, f8, b, t, vc, ch, u, j, jb, d, tm, tmtz, ts, tstz, ai, at, by, iv, m) VALUES
 (1, 2, 9007199254740993, 12.5, 1.10, 0.1, 1e21, true, 'text "q"', 'vc', 'ab', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
  '{"a": [1, 2]}', '{"b": {"c": null}}', '2024-02-29', '13:14:15.5', '01:02:03+02', '2024-01-02 03:04:05.678912',
  '2024-01-02 05:04:05.678912+02', '{1,NULL,3}', '{"x y",z}', '\x01ff', '1 day 02:00:00', 'happy'),
 (NULL, NULL, NULL, NULL, NULL, 'NaN', '-Infinity', false, NULL, NULL, NULL, NULL, 'null', NULL, NULL, NULL, NULL, NULL, NULL, '{}', NULL, NULL, NULL, NULL);
"#;

#[tokio::test]
async fn every_type_is_encoded_like_directus() {
    let c = cluster(&[]).await;
    c.sql()
        .await
        .unwrap()
        .batch_execute(TYPES_DDL)
        .await
        .unwrap();
    let mut ws = admin_ws(&c).await;
    let init = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"typed","uid":"t","query":{"sort":"id"}}),
    )
    .await;
    assert_eq!(init["event"], "init", "{init}");
    assert_eq!(
        init["data"][0],
        json!({
            "id": "1", "i2": 1, "i4": 2, "i8": "9007199254740993", "num": "12.50", "num_free": "1.10", "f4": 0.1, "f8": 1e21,
            "b": true, "t": "text \"q\"", "vc": "vc", "ch": "ab   ", "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "j": {"a": [1, 2]}, "jb": {"b": {"c": null}}, "d": "2024-02-29", "tm": "13:14:15.5", "tmtz": "01:02:03+02",
            "ts": "2024-01-02T03:04:05", "tstz": "2024-01-02T03:04:05.678Z", "ai": [1, null, 3], "at": ["x y", "z"],
            "by": {"type": "Buffer", "data": [1, 255]}, "iv": "1 day 02:00:00", "m": "happy"
        })
    );
    assert_eq!(
        init["data"][1],
        json!({
            "id": "2", "i2": null, "i4": null, "i8": null, "num": null, "num_free": null, "f4": null, "f8": null, "b": false,
            "t": null, "vc": null, "ch": null, "u": null, "j": null, "jb": null, "d": null, "tm": null, "tmtz": null,
            "ts": null, "tstz": null, "ai": [], "at": null, "by": null, "iv": null, "m": null
        })
    );
}

#[tokio::test]
async fn filters_fields_sort_limit_offset_meta() {
    let c = cluster(&[]).await;
    let sql = c.sql().await.unwrap();
    sql.batch_execute(
        "INSERT INTO articles (title, status, date_created) VALUES
           ('Old news', 'archived', now() - interval '30 days'),
           ('Fresh %1', 'published', now() - interval '1 hour'),
           ('fresh_2', 'review', now() - interval '2 days')",
    )
    .await
    .unwrap();
    let mut ws = admin_ws(&c).await;
    let q = |query: Json| {
        let msg = json!({"type":"subscribe","collection":"articles","uid": query.to_string(),"query":query});
        async move { msg }
    };
    // Native and string forms give the same result.
    let cases: Vec<(Json, Json)> = vec![
        (
            json!({"fields":["id"],"filter":{"status":{"_eq":"published"}},"sort":["id"]}),
            json!([{"id":1},{"id":3},{"id":5}]),
        ),
        (
            json!({"fields":"id","filter":"{\"status\":{\"_eq\":\"published\"}}","sort":"id"}),
            json!([{"id":1},{"id":3},{"id":5}]),
        ),
        (
            json!({"fields":"id","filter":{"status":{"_neq":"published"}},"sort":"-id"}),
            json!([{"id":6},{"id":4},{"id":2}]),
        ),
        (
            json!({"fields":"id","filter":{"id":{"_gt":2,"_lte":"5"}},"sort":"id"}),
            json!([{"id":3},{"id":4},{"id":5}]),
        ),
        (
            json!({"fields":"id","filter":{"id":{"_in":"1,4"}},"sort":"id"}),
            json!([{"id":1},{"id":4}]),
        ),
        (
            json!({"fields":"id","filter":{"id":{"_nin":[1,2,3,4]}},"sort":"id"}),
            json!([{"id":5},{"id":6}]),
        ),
        (
            json!({"fields":"id","filter":{"author":{"_null":true}},"sort":"id"}),
            json!([{"id":4},{"id":5},{"id":6}]),
        ),
        (
            json!({"fields":"id","filter":{"author":{"_nnull":true}},"sort":"id"}),
            json!([{"id":1},{"id":2},{"id":3}]),
        ),
        (
            json!({"fields":"id","filter":{"title":{"_contains":"esh"}},"sort":"id"}),
            json!([{"id":5},{"id":6}]),
        ),
        // `_` is a LIKE wildcard (Directus does not escape): "h_" also matches "Fresh %1".
        (
            json!({"fields":"id","filter":{"title":{"_contains":"h_"}},"sort":"id"}),
            json!([{"id":5},{"id":6}]),
        ),
        (
            json!({"fields":"id","filter":{"title":{"_icontains":"FRESH"}},"sort":"id"}),
            json!([{"id":5},{"id":6}]),
        ),
        (
            json!({"fields":"id","filter":{"_or":[{"status":{"_eq":"review"}},{"title":{"_starts_with":"Old"}}]},"sort":"id"}),
            json!([{"id":4},{"id":6}]),
        ),
        (
            json!({"fields":"id","filter":{"_and":[{"status":{"_eq":"published"}},{"date_created":{"_gte":"$NOW(-1 day)"}}]},"sort":"id"}),
            json!([{"id":1},{"id":2},{"id":3},{"id":5}])
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v["id"] != 2)
                .cloned()
                .collect(),
        ),
        (
            json!({"fields":"id","filter":{"date_created":{"_lt":"$NOW(-7 days)"}}}),
            json!([{"id":4}]),
        ),
        (
            json!({"fields":"id","filter":{"author":{"_eq":"$CURRENT_USER"}},"sort":"id"}),
            json!([{"id":1},{"id":2},{"id":3}]),
        ),
        (
            json!({"fields":["id","title"],"sort":"-id","limit":2}),
            json!([{"id":6,"title":"fresh_2"},{"id":5,"title":"Fresh %1"}]),
        ),
        (
            json!({"fields":"id","sort":"id","limit":"2","offset":"1"}),
            json!([{"id":2},{"id":3}]),
        ),
        (
            json!({"fields":"id","sort":"id","limit":2,"page":2}),
            json!([{"id":3},{"id":4}]),
        ),
        (
            json!({"fields":"title","search":"FRESH","sort":"id"}),
            json!([{"title":"Fresh %1"},{"title":"fresh_2"}]),
        ),
    ];
    for (query, expected) in cases {
        let init = subscribe(&mut ws, q(query.clone()).await).await;
        assert_eq!(init["data"], expected, "query {query}: {init}");
    }
    // Default sort is the primary key; default fields are all columns in table order.
    let init = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","uid":"all"}),
    )
    .await;
    let first = init["data"][0].as_object().unwrap();
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        ["id", "title", "status", "date_created", "author"]
    );
    assert_eq!(
        init["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    // meta
    let init = subscribe(&mut ws, json!({"type":"subscribe","collection":"articles","uid":"m","query":{"fields":"id","filter":{"status":{"_eq":"published"}},"meta":"*","limit":1}})).await;
    assert_eq!(init["meta"], json!({"total_count":6,"filter_count":3}));
    assert_eq!(init["data"], json!([{"id":1}]));
}

#[tokio::test]
async fn item_event_and_uid_rules() {
    let c = cluster(&[]).await;
    let mut ws = admin_ws(&c).await;
    let init = subscribe(&mut ws, json!({"type":"subscribe","collection":"articles","item":2,"uid":7,"query":{"fields":"id,title"}})).await;
    assert_eq!(
        init,
        json!({"type":"subscription","event":"init","data":{"id":2,"title":"Draft ideas"},"uid":"7"})
    );
    let r = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","item":"999","uid":8}),
    )
    .await;
    assert_eq!(
        r,
        json!({"type":"subscribe","status":"error","error":{"code":"FORBIDDEN","message":"You don't have permission to access this."}})
    );
    let init = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","event":"create","uid":"c"}),
    )
    .await;
    assert_eq!(
        init,
        json!({"type":"subscription","event":"init","uid":"c"})
    );
    // Without uid, the server generates one and includes it.
    let init = subscribe(&mut ws, json!({"type":"subscribe","collection":"messages"})).await;
    assert_eq!(init["uid"].as_str().unwrap().len(), 36);
    // A repeated live uid is ignored: no second init.
    ws.send_json(&json!({"type":"subscribe","collection":"articles","event":"create","uid":"c"}))
        .await
        .unwrap();
    ws.send_json(&json!({"type":"ping","uid":"marker"}))
        .await
        .unwrap();
    assert_eq!(
        ws.recv_skip_ping(WAIT).await.unwrap(),
        json!({"type":"pong","uid":"marker"})
    );
    // Unsubscribe echoes the raw uid; unknown uids are confirmed too; without uid removes all.
    ws.send_json(&json!({"type":"unsubscribe","uid":7}))
        .await
        .unwrap();
    assert_eq!(
        ws.recv_skip_ping(WAIT).await.unwrap(),
        json!({"type":"subscription","event":"unsubscribe","uid":7})
    );
    ws.send_json(&json!({"type":"unsubscribe"})).await.unwrap();
    assert_eq!(
        ws.recv_skip_ping(WAIT).await.unwrap(),
        json!({"type":"subscription","event":"unsubscribe"})
    );
    // After unsubscribing, the uid can be reused.
    let init = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","event":"create","uid":"c"}),
    )
    .await;
    assert_eq!(init["event"], "init");
}

#[tokio::test]
async fn error_frames() {
    let c = cluster(&[("WEBSOCKETS_REST_AUTH", "public")]).await;
    let mut public = open(&c).await;
    let forbidden = |collection: &str| json!({"type":"subscribe","status":"error","error":{"code":"FORBIDDEN","message":format!("You don't have permission to access collection \"{collection}\" or it does not exist. Queried in root.")}});
    // A collection that does not exist, with or without `event`, even with a bad query (checked first
    // for a non-admin): Directus's FORBIDDEN collection text, a service error without uid.
    for req in [
        json!({"type":"subscribe","collection":"nope","uid":"u1"}),
        json!({"type":"subscribe","collection":"nope","uid":"u1","event":"create"}),
        json!({"type":"subscribe","collection":"nope","uid":"u1","query":{"filter":"{bad"}}),
        json!({"type":"subscribe","collection":"directus_sessions","uid":"u1"}),
    ] {
        assert_eq!(
            subscribe(&mut public, req.clone()).await,
            forbidden(req["collection"].as_str().unwrap()),
            "{req}"
        );
    }
    // No read permission, with or without `event`.
    for req in [
        json!({"type":"subscribe","collection":"articles","uid":"u2"}),
        json!({"type":"subscribe","collection":"articles","uid":"u2","event":"delete"}),
        json!({"type":"subscribe","collection":"articles","uid":"u2","item":1}),
    ] {
        assert_eq!(
            subscribe(&mut public, req.clone()).await,
            forbidden("articles"),
            "{req}"
        );
    }
    // Zod errors: Directus's zod v4 texts, without uid.
    let r = subscribe(
        &mut public,
        json!({"type":"subscribe","collection":"articles","uid":"u3","event":"upsert"}),
    )
    .await;
    assert_eq!(
        r,
        json!({"type":"subscribe","status":"error","error":{"code":"INVALID_PAYLOAD","message":"Validation error: Invalid input: expected \"create\" at \"event\" or Invalid input: expected \"update\" at \"event\" or Invalid input: expected \"delete\" at \"event\""}})
    );
    let r = subscribe(
        &mut public,
        json!({"type":"subscribe","uid":"u4","query":"fields=*"}),
    )
    .await;
    assert_eq!(
        r["error"]["message"],
        "Validation error: Invalid input: expected string, received undefined at \"collection\"; Invalid input: expected record, received string at \"query\""
    );
    assert!(r.get("uid").is_none());
    public
        .send_json(&json!({"type":"items","collection":"articles","action":"upsert","uid":"i"}))
        .await
        .unwrap();
    assert_eq!(
        public.recv_skip_ping(WAIT).await.unwrap(),
        json!({"type":"items","status":"error","error":{"code":"INVALID_PAYLOAD","message":"Validation error: Invalid input: expected \"create\" at \"action\" or Invalid input: expected \"read\" at \"action\" or Invalid input: expected \"update\" at \"action\" or Invalid input: expected \"delete\" at \"action\""}})
    );

    let mut admin = admin_ws(&c).await;
    let r = subscribe(
        &mut admin,
        json!({"type":"subscribe","collection":"nope","uid":"a1"}),
    )
    .await;
    assert_eq!(
        r["error"],
        json!({"code":"FORBIDDEN","message":"You don't have permission to access collection \"nope\" or it does not exist. Queried in root."})
    );
    assert!(r.get("uid").is_none());
    // For an admin the query is checked first, as Directus's service only fails after the sanitiser.
    let r = subscribe(
        &mut admin,
        json!({"type":"subscribe","collection":"nope","uid":"a1","query":{"filter":"{bad"}}),
    )
    .await;
    assert_eq!(r["error"]["code"], "INVALID_QUERY", "{r}");
    let r = subscribe(
        &mut admin,
        json!({"type":"subscribe","collection":"articles","uid":"a2","query":{"fields":"id,nope"}}),
    )
    .await;
    assert_eq!(
        r["error"]["message"],
        "You don't have permission to access field \"nope\" in collection \"articles\" or it does not exist. Queried in root."
    );
    let r = subscribe(
        &mut admin,
        json!({"type":"subscribe","collection":"articles","uid":"a3","query":{"filter":"{bad"}}),
    )
    .await;
    assert_eq!(
        r["error"],
        json!({"code":"INVALID_QUERY","message":"Invalid query. Invalid JSON for filter object."})
    );
    let r = subscribe(&mut admin, json!({"type":"subscribe","collection":"articles","uid":"a4","query":{"filter":{"title":{"_gt":"a"}}}})).await;
    assert_eq!(
        r["error"]["message"],
        "Invalid query. \"string\" field type does not contain the \"_gt\" filter operator."
    );
    let r = subscribe(
        &mut admin,
        json!({"type":"subscribe","collection":"articles","uid":"a5","query":{"limit":"x"}}),
    )
    .await;
    assert_eq!(
        r["error"]["message"],
        "Invalid query. \"limit\" must be a number."
    );
    let r = subscribe(
        &mut admin,
        json!({"type":"subscribe","collection":"directus_extensions","uid":"a6"}),
    )
    .await;
    assert_eq!(
        r,
        json!({"type":"subscribe","status":"error","error":{"code":"INVALID_PAYLOAD","message":"Invalid payload. \"directus_extensions\" is currently not supported.."}})
    );
    let r = subscribe(&mut admin, json!({"type":"subscribe","collection":"articles","uid":"a7","query":{"filter":{"id":{"_eq":"99999999999999999999"}}}})).await;
    assert_eq!(r["error"]["code"], "INVALID_QUERY", "{r}");
    let r = subscribe(
        &mut admin,
        json!({"type":"subscribe","collection":"directus_sessions","uid":"a8"}),
    )
    .await;
    assert_eq!(
        r,
        forbidden("directus_sessions"),
        "refresh tokens are never exposed"
    );
    // Concealed fields come back masked, even for the admin.
    let r = subscribe(&mut admin, json!({"type":"subscribe","collection":"directus_users","uid":"a9","query":{"fields":"email,password,token"}})).await;
    assert_eq!(
        r["data"],
        json!([{"email":"admin@example.com","password":"**********","token":"**********"}])
    );
}

#[tokio::test]
async fn permissions_filter_rows_and_fields() {
    let c = cluster(&[("WEBSOCKETS_REST_AUTH", "public")]).await;
    // The public may read published articles (id, title) and, through a second policy row, the status of
    // drafts only.
    grant_read(
        &c,
        PUBLIC_POLICY,
        "articles",
        Some(json!({"status":{"_eq":"published"}})),
        "id,title",
    )
    .await;
    grant_read(
        &c,
        PUBLIC_POLICY,
        "articles",
        Some(json!({"status":{"_eq":"draft"}})),
        "id,status",
    )
    .await;
    let mut ws = open(&c).await;
    let init = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","uid":"p","query":{"sort":"id"}}),
    )
    .await;
    assert_eq!(
        init["data"],
        json!([
            {"id":1,"title":"Hello realtime","status":null},
            {"id":2,"title":null,"status":"draft"},
            {"id":3,"title":"Release notes","status":null}
        ]),
        "fields allowed under a different row filter are null where that filter does not match"
    );
    // The condition's column (status) need not be among the requested fields.
    let init = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","uid":"p2","query":{"fields":["title"],"sort":"id"}}),
    )
    .await;
    assert_eq!(
        init["data"],
        json!([{"title":"Hello realtime"},{"title":null},{"title":"Release notes"}]),
        "visibility decided on a column the query does not show"
    );
    let r = subscribe(&mut ws, json!({"type":"subscribe","collection":"articles","uid":"q","query":{"fields":"date_created"}})).await;
    assert_eq!(
        r,
        json!({"type":"subscribe","status":"error","error":{"code":"FORBIDDEN","message":"You don't have permission to access field \"date_created\" in collection \"articles\" or it does not exist. Queried in root."}})
    );
    let r = subscribe(&mut ws, json!({"type":"subscribe","collection":"articles","uid":"q","query":{"fields":"id","filter":{"author":{"_null":true}},"sort":"-date_created"}})).await;
    assert_eq!(
        r["error"]["message"],
        "You don't have permission to access fields \"date_created\", \"author\" in collection \"articles\" or they do not exist. Queried in root.",
        "sort and filter fields outside every permission are named"
    );

    // A role user: $CURRENT_USER in a permission filter, and a user filter ANDed on top.
    let alice = create_user(&c, "alice@example.com", "alice-pass", false).await;
    let policy = policy_of(&c, &alice).await;
    grant_read(
        &c,
        &policy,
        "articles",
        Some(json!({"author":{"_eq":"$CURRENT_USER"}})),
        "*",
    )
    .await;
    c.sql()
        .await
        .unwrap()
        .execute(
            "UPDATE articles SET author = $1::text::uuid WHERE id IN (2, 3)",
            &[&alice],
        )
        .await
        .unwrap();
    let (token, _) = login(&c, "alice@example.com", "alice-pass").await;
    let mut a = open(&c).await;
    auth(&mut a, &token).await;
    let init = subscribe(&mut a, json!({"type":"subscribe","collection":"articles","uid":"a","query":{"fields":"id","sort":"id"}})).await;
    assert_eq!(init["data"], json!([{"id":2},{"id":3}]));
    let init = subscribe(&mut a, json!({"type":"subscribe","collection":"articles","uid":"b","query":{"fields":"id","filter":{"status":{"_eq":"published"}}}})).await;
    assert_eq!(init["data"], json!([{"id":3}]));
    let r = subscribe(
        &mut a,
        json!({"type":"subscribe","collection":"messages","uid":"c"}),
    )
    .await;
    assert_eq!(
        r["error"]["message"],
        "You don't have permission to access collection \"messages\" or it does not exist. Queried in root.",
        "no permission row for messages"
    );
}

#[tokio::test]
async fn per_connection_limits() {
    let c = cluster(&[
        ("REALTIME_MAX_SUBSCRIPTIONS_PER_CONNECTION", "2"),
        ("REALTIME_INIT_MAX_ROWS", "2"),
    ])
    .await;
    let mut ws = admin_ws(&c).await;
    for uid in ["a", "b"] {
        let r = subscribe(
            &mut ws,
            json!({"type":"subscribe","collection":"articles","event":"create","uid":uid}),
        )
        .await;
        assert_eq!(r["event"], "init");
    }
    let r = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","event":"create","uid":"c"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "LIMIT_EXCEEDED");
    assert_eq!(r["uid"], "c");
    ws.send_json(&json!({"type":"unsubscribe","uid":"a"}))
        .await
        .unwrap();
    ws.recv_skip_ping(WAIT).await.unwrap();
    let r = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","uid":"d","query":{"limit":-1}}),
    )
    .await;
    assert_eq!(r["error"]["code"], "INVALID_QUERY");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeds 2 items"),
        "{r}"
    );
    let r = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","uid":"e","query":{"limit":2}}),
    )
    .await;
    assert_eq!(r["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn tables_created_after_start_are_found() {
    let c = cluster(&[]).await;
    let mut ws = admin_ws(&c).await;
    c.sql()
        .await
        .unwrap()
        .batch_execute(
            "CREATE TABLE late (id int PRIMARY KEY, v text); INSERT INTO late VALUES (1, 'x');",
        )
        .await
        .unwrap();
    let init = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"late","uid":1}),
    )
    .await;
    assert_eq!(init["data"], json!([{"id":1,"v":"x"}]));
}
