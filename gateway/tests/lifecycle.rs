//! Connection lifecycle against a real gateway: heartbeat, token expiry and the re-auth window, the
//! public-role fallback, and protocol-level limits.

mod common;
use common::*;
use serde_json::json;
use std::time::Duration;
use testkit::client::Incoming;
use testkit::cluster::{ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_TOKEN};

#[tokio::test]
async fn heartbeat_pings_and_closes_silent_clients() {
    let c = cluster(&[
        ("WEBSOCKETS_HEARTBEAT_PERIOD", "1"),
        ("WEBSOCKETS_REST_AUTH", "public"),
    ])
    .await;
    let mut silent = open(&c).await;
    let mut lively = open(&c).await;
    // The lively client answers every ping (any valid message counts) and survives several rounds.
    let lively_task = tokio::spawn(async move {
        for _ in 0..3 {
            assert_eq!(
                lively.recv(Duration::from_secs(3)).await.unwrap(),
                json!({"type":"ping"})
            );
            lively.send_json(&json!({"type":"pong"})).await.unwrap();
        }
        lively.send_json(&json!({"type":"ping"})).await.unwrap();
        assert_eq!(
            lively.recv_skip_ping(WAIT).await.unwrap(),
            json!({"type":"pong"})
        );
    });
    // The silent client gets a ping, ignores it, and is closed without a status code one period later.
    assert_eq!(
        silent.recv(Duration::from_secs(3)).await.unwrap(),
        json!({"type":"ping"})
    );
    assert_eq!(
        silent.expect_close(Duration::from_secs(3)).await.unwrap(),
        None
    );
    lively_task.await.unwrap();
}

#[tokio::test]
async fn heartbeat_disabled_sends_no_ping_and_no_pong() {
    let c = cluster(&[
        ("WEBSOCKETS_HEARTBEAT_ENABLED", "false"),
        ("WEBSOCKETS_HEARTBEAT_PERIOD", "1"),
        ("WEBSOCKETS_REST_AUTH", "public"),
    ])
    .await;
    let mut ws = open(&c).await;
    ws.send_json(&json!({"type":"ping"})).await.unwrap();
    match ws.next(Duration::from_millis(2500)).await.unwrap() {
        None => {}
        other => panic!("expected nothing, got {other:?}"),
    }
}

#[tokio::test]
async fn token_expiry_then_auth_timeout_closes() {
    let c = cluster(&[
        ("ACCESS_TOKEN_TTL", "2s"),
        ("WEBSOCKETS_REST_AUTH_TIMEOUT", "1"),
        ("WEBSOCKETS_HEARTBEAT_ENABLED", "false"),
    ])
    .await;
    let (jwt, _) = login(&c, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let mut ws = open(&c).await;
    auth(&mut ws, &jwt).await;
    let r = ws.recv(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        r,
        json!({"type":"auth","status":"error","error":{"code":"TOKEN_EXPIRED","message":"Token expired."}})
    );
    let r = ws.recv(Duration::from_secs(3)).await.unwrap();
    assert_eq!(
        r,
        json!({"type":"auth","status":"error","error":{"code":"AUTH_TIMEOUT","message":"Authentication timed out."}})
    );
    assert_eq!(ws.expect_close(WAIT).await.unwrap(), None);
}

#[tokio::test]
async fn reauth_after_expiry_keeps_the_connection() {
    let c = cluster(&[
        ("ACCESS_TOKEN_TTL", "2s"),
        ("WEBSOCKETS_REST_AUTH_TIMEOUT", "3"),
        ("WEBSOCKETS_HEARTBEAT_ENABLED", "false"),
    ])
    .await;
    let (jwt, _) = login(&c, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let mut ws = open(&c).await;
    auth(&mut ws, &jwt).await;
    assert_eq!(
        ws.recv(Duration::from_secs(5)).await.unwrap()["error"]["code"],
        "TOKEN_EXPIRED"
    );
    // What the SDK does: re-send auth with a fresh token.
    ws.send_json(&json!({"type":"auth","access_token":ADMIN_TOKEN}))
        .await
        .unwrap();
    assert_eq!(
        ws.recv(WAIT).await.unwrap(),
        json!({"type":"auth","status":"ok"})
    );
    ws.expect_silence(Duration::from_secs(4)).await.unwrap();
    let init = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","uid":1}),
    )
    .await;
    assert_eq!(init["event"], "init");
}

#[tokio::test]
async fn after_expiry_the_connection_has_public_rights_only() {
    let c = cluster(&[
        ("ACCESS_TOKEN_TTL", "2s"),
        ("WEBSOCKETS_REST_AUTH", "public"),
        ("WEBSOCKETS_REST_AUTH_TIMEOUT", "1"),
        ("WEBSOCKETS_HEARTBEAT_ENABLED", "false"),
    ])
    .await;
    // The public role may read only published articles' ids.
    grant_read(
        &c,
        PUBLIC_POLICY,
        "articles",
        Some(json!({"status": {"_eq": "published"}})),
        "id",
    )
    .await;
    let (jwt, _) = login(&c, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let mut ws = open(&c).await;
    auth(&mut ws, &jwt).await;
    let init = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","uid":"a","query":{"fields":"id,title"}}),
    )
    .await;
    assert_eq!(
        init["data"].as_array().unwrap().len(),
        3,
        "admin sees every row and field"
    );

    assert_eq!(
        ws.recv(Duration::from_secs(5)).await.unwrap()["error"]["code"],
        "TOKEN_EXPIRED"
    );
    // The subscription is re-checked for the public role, which may not read `title`: it ends with
    // FORBIDDEN in the per-subscription revocation frame (`{"type":"subscription","event":"unsubscribe",
    // "error":…,"uid":"a"}`, which `@directus/sdk` hands to that subscription only) instead of leaking
    // data. The re-auth window then times out (no uid); the two may arrive in either order.
    let mut after: Vec<(String, String, String)> = Vec::new();
    for _ in 0..2 {
        let m = ws.recv(Duration::from_secs(3)).await.unwrap();
        after.push((
            m["type"].as_str().unwrap_or("").to_owned(),
            m["uid"].as_str().unwrap_or("").to_owned(),
            m["error"]["code"].as_str().unwrap_or("").to_owned(),
        ));
    }
    after.sort();
    assert_eq!(
        after,
        [
            ("auth".to_owned(), "".to_owned(), "AUTH_TIMEOUT".to_owned()),
            (
                "subscription".to_owned(),
                "a".to_owned(),
                "FORBIDDEN".to_owned()
            )
        ]
    );
    // Public mode: still open, but now with the public role's rights, never more.
    let r = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","uid":"b","query":{"fields":"id,title"}}),
    )
    .await;
    assert_eq!(
        r["error"]["code"], "FORBIDDEN",
        "title is not readable by the public: {r}"
    );
    let r = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","uid":"c","query":{"sort":"id"}}),
    )
    .await;
    assert_eq!(r["data"], json!([{"id":1},{"id":3}]));
    let r = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"directus_users","uid":"d"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "FORBIDDEN");
}

#[tokio::test]
async fn failed_reauth_in_public_mode_falls_back_to_public() {
    let c = cluster(&[("WEBSOCKETS_REST_AUTH", "public")]).await;
    let mut ws = open(&c).await;
    auth(&mut ws, ADMIN_TOKEN).await;
    ws.send_json(&json!({"type":"auth","access_token":"wrong"}))
        .await
        .unwrap();
    assert_eq!(ws.recv(WAIT).await.unwrap()["error"]["code"], "AUTH_FAILED");
    let r = subscribe(
        &mut ws,
        json!({"type":"subscribe","collection":"articles","uid":"x"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "FORBIDDEN", "no admin rights left: {r}");
}

#[tokio::test]
async fn malformed_input_gets_errors_and_violations_close() {
    let c = cluster(&[
        ("WEBSOCKETS_REST_AUTH", "public"),
        ("REALTIME_MAX_MESSAGE_BYTES", "2048"),
    ])
    .await;
    let mut ws = open(&c).await;
    ws.send_text("{oops").await.unwrap();
    assert_eq!(
        ws.recv(WAIT).await.unwrap(),
        json!({"type":"server","status":"error","error":{"code":"INVALID_PAYLOAD","message":"Unable to parse the incoming message."}})
    );
    ws.send_text("[1,2]").await.unwrap();
    assert_eq!(
        ws.recv(WAIT).await.unwrap(),
        json!({"type":"server","status":"error","error":{"code":"INVALID_PAYLOAD","message":"Validation error: Invalid input: expected object, received array"}})
    );
    ws.send_text("{}").await.unwrap();
    assert_eq!(
        ws.recv(WAIT).await.unwrap()["error"]["message"],
        "Validation error: Invalid input: expected string, received undefined at \"type\""
    );
    ws.send_json(&json!({"type":"subscribe","collection":5,"uid":"u"}))
        .await
        .unwrap();
    assert_eq!(
        ws.recv(WAIT).await.unwrap(),
        json!({"type":"subscribe","status":"error","error":{"code":"INVALID_PAYLOAD","message":"Validation error: Invalid input: expected string, received number at \"collection\""}}),
        "zod errors carry no uid"
    );
    ws.send_json(&json!({"type":"something-new"}))
        .await
        .unwrap();
    ws.send_json(&json!({"type":"ping"})).await.unwrap();
    assert_eq!(
        ws.recv(WAIT).await.unwrap(),
        json!({"type":"pong"}),
        "unknown types are ignored"
    );

    // Too big: 1009.
    ws.send_text(&format!(
        "{{\"type\":\"ping\",\"x\":\"{}\"}}",
        "a".repeat(4000)
    ))
    .await
    .unwrap();
    assert_eq!(ws.expect_close(WAIT).await.unwrap(), Some(1009));

    // Not UTF-8 in a text frame: 1007. An unmasked frame: 1002.
    let mut ws = open(&c).await;
    ws.send_frame(common_ws::OpCode::Text, &[0xff, 0xfe, 0xfd])
        .await
        .unwrap();
    assert_eq!(ws.expect_close(WAIT).await.unwrap(), Some(1007));
    let mut ws = open(&c).await;
    ws.send_raw(&[0x81, 0x01, b'x']).await.unwrap();
    assert_eq!(ws.expect_close(WAIT).await.unwrap(), Some(1002));

    // A client close is echoed with its code.
    let mut ws = open(&c).await;
    ws.close(4321).await.unwrap();
    assert_eq!(ws.expect_close(WAIT).await.unwrap(), Some(4321));
    assert!(matches!(
        ws.next(WAIT).await.unwrap(),
        Some(Incoming::Closed { eof: true, .. })
    ));
}

use ::common::ws as common_ws;
