//! The real `@directus/sdk` `realtime()` client against the gateway: log in over REST, connect with the
//! handshake, subscribe, receive `init`, unsubscribe.

mod common;
use common::*;
use serde_json::json;
use testkit::cluster::{ADMIN_EMAIL, ADMIN_PASSWORD};
use testkit::services::run_node;

/// One gateway and one worker (events flow).
async fn with_a_worker() -> testkit::cluster::Cluster {
    testkit::cluster::Cluster::start(testkit::cluster::ClusterOptions {
        workers: 1,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A node script of `loadtest/js` driving the real SDK, printing one JSON line per message.
struct SdkScript {
    _child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl SdkScript {
    fn start(script: &str, args: &[&str]) -> SdkScript {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("node")
            .arg(script)
            .args(args)
            .current_dir(testkit::services::node_client_dir().unwrap())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        SdkScript {
            _child: child,
            lines,
        }
    }

    /// The next line the script printed, as JSON.
    async fn next(&mut self) -> serde_json::Value {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("the SDK printed nothing in time")
            .unwrap()
            .expect("the SDK script ended");
        serde_json::from_str(&line).unwrap()
    }
}

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

/// A subscription whose read permission is removed ends with the unsubscribe frame, which the real SDK
/// hands to that subscription's iterator only: the client's other subscription keeps receiving.
#[tokio::test]
async fn the_sdk_keeps_its_other_subscriptions_when_one_is_revoked() {
    let c = with_a_worker().await;
    let sql = c.sql().await.unwrap();
    let u = create_user(&c, "sdk@example.com", "pw", false).await;
    let p = policy_of(&c, &u).await;
    grant_read(&c, &p, "articles", None, "*").await;
    grant_read(&c, &p, "messages", None, "*").await;
    sql.execute(
        "UPDATE directus_users SET token = 'sdk-static' WHERE id = $1::text::uuid",
        &[&u],
    )
    .await
    .unwrap();
    let url = format!("http://{}", c.gateway_addr(0));
    let mut sdk = SdkScript::start("sdk-revoke.mjs", &[&url, "sdk-static"]);
    let mut seen = Vec::new();
    let mut until = async |want: &dyn Fn(&serde_json::Value) -> bool| {
        loop {
            let v = sdk.next().await;
            assert!(
                v.get("threw").is_none(),
                "an iterator threw: {v}; before it: {seen:#?}"
            );
            seen.push(v.clone());
            if want(&v) {
                return v;
            }
        }
    };
    for coll in ["articles", "messages"] {
        until(&|v| v["sub"] == coll && v["event"] == "init").await;
    }
    sql.execute(
        "DELETE FROM directus_permissions WHERE policy = $1::text::uuid AND collection = 'articles'",
        &[&p],
    )
    .await
    .unwrap();
    let ended = until(&|v| v["event"] == "unsubscribe").await;
    assert_eq!(ended["sub"], "articles", "{ended}");
    assert_eq!(ended["error"]["code"], "FORBIDDEN");
    sql.batch_execute("INSERT INTO messages (text) VALUES ('after')")
        .await
        .unwrap();
    let m = until(&|v| v["event"] == "create").await;
    assert_eq!(m["sub"], "messages", "{m}");
}

/// The guide's first relational example, with the real SDK: `fields: ['id', 'title', 'author.email']`
/// brings the author's email in `init` and in each create.
#[tokio::test]
async fn the_sdk_gets_the_related_author_in_init_and_events() {
    let c = with_a_worker().await;
    let sql = c.sql().await.unwrap();
    let writer = create_user(&c, "author@example.com", "pw", false).await;
    let url = format!("http://{}", c.gateway_addr(0));
    let mut sdk = SdkScript::start(
        "sdk-query.mjs",
        &[
            &url,
            testkit::cluster::ADMIN_TOKEN,
            "articles",
            r#"{"fields":["id","title","author.email"],"sort":["id"]}"#,
        ],
    );
    let init = sdk.next().await;
    assert_eq!(init["event"], "init", "{init}");
    assert_eq!(
        init["data"][0],
        json!({"id": 1, "title": "Hello realtime", "author": {"email": ADMIN_EMAIL}})
    );
    let id: i32 = sql
        .query_one(
            "INSERT INTO articles (title, author) VALUES ('by the author', $1::text::uuid) RETURNING id",
            &[&writer],
        )
        .await
        .unwrap()
        .get(0);
    let m = sdk.next().await;
    assert_eq!(m["event"], "create", "{m}");
    assert_eq!(
        m["data"],
        json!([{"id": id, "title": "by the author", "author": {"email": "author@example.com"}}])
    );
}

/// The guide's notifications feed with the real SDK: an app user subscribes to
/// `directus_notifications` with `sender.first_name` and gets its own notifications only, the sender
/// shown where it may read that user (here: itself).
#[tokio::test]
async fn the_sdk_gets_its_own_notifications_with_the_sender() {
    let c = with_a_worker().await;
    let sql = c.sql().await.unwrap();
    let me = create_user(&c, "notified@example.com", "pw", false).await;
    let other = create_user(&c, "someone@example.com", "pw", false).await;
    sql.execute(
        "UPDATE directus_users SET token = 'sdk-notified', first_name = 'Nia' WHERE id = $1::text::uuid",
        &[&me],
    )
    .await
    .unwrap();
    let url = format!("http://{}", c.gateway_addr(0));
    let mut sdk = SdkScript::start(
        "sdk-query.mjs",
        &[
            &url,
            "sdk-notified",
            "directus_notifications",
            r#"{"fields":["id","subject","sender.first_name"]}"#,
        ],
    );
    let init = sdk.next().await;
    assert_eq!(init["event"], "init", "{init}");
    assert_eq!(init["data"], json!([]));
    for (to, subject) in [(&other, "not yours"), (&me, "yours")] {
        sql.execute(
            "INSERT INTO directus_notifications (recipient, sender, subject) VALUES ($1::text::uuid, $2::text::uuid, $3)",
            &[to, &me, &subject],
        )
        .await
        .unwrap();
    }
    let m = sdk.next().await;
    assert_eq!(m["event"], "create", "{m}");
    assert_eq!(m["data"][0]["subject"], "yours", "{m}");
    assert_eq!(m["data"][0]["sender"], json!({"first_name": "Nia"}), "{m}");
}
