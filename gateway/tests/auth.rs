//! Authentication against a real gateway and PostgreSQL: the REST endpoints, every WebSocket auth path,
//! every auth mode (the peer's blackbox `auth.test.ts` scenarios), and token interop with Directus.

mod common;
use common::*;
use serde_json::{Value as Json, json};
use std::time::{Duration, Instant};
use testkit::client::{Upgrade, WsClient, http};
use testkit::cluster::{ADMIN_EMAIL, ADMIN_PASSWORD, ADMIN_TOKEN, Cluster, DEV_SECRET};

/// A token signed the way Directus signs one (`jsonwebtoken` with SECRET, issuer `directus`).
fn directus_style_jwt(secret: &str, user: &str, exp_in: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({"id": user, "role": null, "app_access": true, "admin_access": true, "iat": now, "exp": now + exp_in, "iss": "directus"});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn admin_id(c: &Cluster) -> String {
    c.sql()
        .await
        .unwrap()
        .query_one(
            "SELECT id::text FROM directus_users WHERE email = $1",
            &[&ADMIN_EMAIL],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn rest_login_refresh_logout() {
    let c = cluster(&[("LOGIN_STALL_TIME", "300")]).await;
    let addr = c.gateway_addr(0);
    let r = http(
        addr,
        "POST",
        "/auth/login",
        &[],
        Some(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let body = String::from_utf8(r.body.clone()).unwrap();
    let (e, rt, at) = (
        body.find("\"expires\"").unwrap(),
        body.find("\"refresh_token\"").unwrap(),
        body.find("\"access_token\"").unwrap(),
    );
    assert!(
        e < rt && rt < at,
        "key order expires, refresh_token, access_token: {body}"
    );
    let v = r.json().unwrap();
    assert_eq!(v["data"]["expires"], 900000);
    let refresh = v["data"]["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(refresh.len(), 64);

    // The access token is a Directus token: HS256 with SECRET, iss=directus, the claims Directus checks.
    let access = v["data"]["access_token"].as_str().unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_issuer(&["directus"]);
    let claims = jsonwebtoken::decode::<Json>(
        access,
        &jsonwebtoken::DecodingKey::from_secret(DEV_SECRET.as_bytes()),
        &validation,
    )
    .unwrap()
    .claims;
    assert_eq!(claims["id"], admin_id(&c).await);
    assert!(
        claims.get("role").is_some()
            && claims["admin_access"] == true
            && claims["app_access"] == true
    );
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        900
    );

    // Refresh rotates: the new token works once, the old one never again.
    let r = http(
        addr,
        "POST",
        "/auth/refresh",
        &[],
        Some(&json!({"refresh_token": refresh, "mode": "json"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let rotated = r.json().unwrap()["data"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(rotated, refresh);
    let r = http(
        addr,
        "POST",
        "/auth/refresh",
        &[],
        Some(&json!({"refresh_token": refresh})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json().unwrap(),
        json!({"errors":[{"message":"Invalid user credentials.","extensions":{"code":"INVALID_CREDENTIALS"}}]})
    );

    // Logout ends the session (204 even for unknown tokens).
    let r = http(
        addr,
        "POST",
        "/auth/logout",
        &[],
        Some(&json!({"refresh_token": rotated})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 204);
    let r = http(
        addr,
        "POST",
        "/auth/refresh",
        &[],
        Some(&json!({"refresh_token": rotated})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    let r = http(addr, "POST", "/auth/refresh", &[], Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json().unwrap()["errors"][0]["message"],
        "Invalid payload. The refresh token is required in either the payload or cookie."
    );

    // Cookie mode: the refresh token travels in a cookie.
    let r = http(
        addr,
        "POST",
        "/auth/login",
        &[],
        Some(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "mode": "cookie"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.json().unwrap()["data"].get("refresh_token").is_none());
    let set_cookie = r.header("set-cookie").unwrap().to_owned();
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    assert!(cookie.starts_with("directus_refresh_token="));
    let r = http(
        addr,
        "POST",
        "/auth/refresh",
        &[("Cookie", &cookie)],
        Some(&json!({"mode": "cookie"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn bad_logins_are_stalled_and_refused() {
    let c = cluster(&[("LOGIN_STALL_TIME", "400")]).await;
    let addr = c.gateway_addr(0);
    for (email, password) in [(ADMIN_EMAIL, "wrong"), ("nobody@example.com", "x")] {
        let start = Instant::now();
        let r = http(
            addr,
            "POST",
            "/auth/login",
            &[],
            Some(&json!({"email": email, "password": password})),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 401);
        assert_eq!(
            r.json().unwrap()["errors"][0]["extensions"]["code"],
            "INVALID_CREDENTIALS"
        );
        assert!(
            start.elapsed() >= Duration::from_millis(400),
            "failure answered before LOGIN_STALL_TIME"
        );
    }
    let r = http(
        addr,
        "POST",
        "/auth/login",
        &[],
        Some(&json!({"email": "not-an-email", "password": "x"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json().unwrap()["errors"][0]["extensions"]["code"],
        "INVALID_PAYLOAD"
    );
    // A suspended user cannot log in even with the right password.
    c.sql()
        .await
        .unwrap()
        .execute("UPDATE directus_users SET status = 'suspended'", &[])
        .await
        .unwrap();
    let r = http(
        addr,
        "POST",
        "/auth/login",
        &[],
        Some(&json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn websocket_auth_paths() {
    let c = cluster(&[
        ("WEBSOCKETS_REST_AUTH", "public"),
        ("LOGIN_STALL_TIME", "50"),
    ])
    .await;
    let mut ws = open(&c).await;

    // email/password: ok with a refresh token, uid echoed unchanged.
    ws.send_json(&json!({"type":"auth","email":ADMIN_EMAIL,"password":ADMIN_PASSWORD,"uid":5}))
        .await
        .unwrap();
    let r = ws.recv(WAIT).await.unwrap();
    assert_eq!(
        (r["type"].clone(), r["status"].clone(), r["uid"].clone()),
        (json!("auth"), json!("ok"), json!(5))
    );
    let refresh = r["refresh_token"].as_str().unwrap().to_owned();

    // refresh_token: ok with a rotated refresh token; the old one is spent.
    ws.send_json(&json!({"type":"auth","refresh_token":refresh}))
        .await
        .unwrap();
    let r = ws.recv(WAIT).await.unwrap();
    assert_eq!(r["status"], "ok");
    assert_ne!(r["refresh_token"].as_str().unwrap(), refresh);
    ws.send_json(&json!({"type":"auth","refresh_token":refresh,"uid":"again"}))
        .await
        .unwrap();
    assert_eq!(
        ws.recv(WAIT).await.unwrap(),
        json!({"type":"auth","status":"error","error":{"code":"AUTH_FAILED","message":"Authentication failed."},"uid":"again"})
    );

    // A static token and a token Directus would issue both work; no refresh_token in the reply.
    ws.send_json(&json!({"type":"auth","access_token":ADMIN_TOKEN}))
        .await
        .unwrap();
    assert_eq!(
        ws.recv(WAIT).await.unwrap(),
        json!({"type":"auth","status":"ok"})
    );
    let jwt = directus_style_jwt(DEV_SECRET, &admin_id(&c).await, 600);
    ws.send_json(&json!({"type":"auth","access_token":jwt}))
        .await
        .unwrap();
    assert_eq!(
        ws.recv(WAIT).await.unwrap(),
        json!({"type":"auth","status":"ok"})
    );

    // Wrong secret, expired, garbage, wrong password: AUTH_FAILED, and public mode stays open.
    for bad in [
        json!({"type":"auth","access_token": directus_style_jwt("another-secret", &admin_id(&c).await, 600)}),
        json!({"type":"auth","access_token": directus_style_jwt(DEV_SECRET, &admin_id(&c).await, -10)}),
        json!({"type":"auth","access_token": "nope"}),
        json!({"type":"auth","email": ADMIN_EMAIL, "password": "wrong"}),
    ] {
        ws.send_json(&bad).await.unwrap();
        let r = ws.recv(WAIT).await.unwrap();
        assert_eq!(r["error"]["code"], "AUTH_FAILED", "{bad}");
    }
    ws.send_json(&json!({"type":"ping"})).await.unwrap();
    assert_eq!(ws.recv(WAIT).await.unwrap(), json!({"type":"pong"}));
}

/// One gateway per mode, auth timeouts of 1 s, the REST path moved as in the peer's tests.
async fn mode_cluster() -> (Cluster, [String; 3]) {
    let mut c = cluster(&[
        ("WEBSOCKETS_REST_AUTH_TIMEOUT", "1"),
        ("WEBSOCKETS_REST_PATH", "/wsRest"),
        ("LOGIN_STALL_TIME", "50"),
    ])
    .await;
    let mut addrs = Vec::new();
    for mode in ["public", "handshake", "strict"] {
        let g = c
            .spawn_gateway(&[("WEBSOCKETS_REST_AUTH".into(), mode.into())])
            .await
            .unwrap();
        addrs.push(g.addr.clone());
    }
    (c, addrs.try_into().unwrap())
}

async fn try_open(addr: &str, path: &str) -> Upgrade {
    WsClient::connect(addr, path, &[]).await.unwrap()
}

/// Is the socket still open after `wait` (answering heartbeat pings is not needed within 1 s)?
async fn still_open(ws: &mut WsClient, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next(left).await.unwrap() {
            None => return true,
            Some(testkit::client::Incoming::Closed { .. }) => return false,
            Some(_) => {}
        }
    }
}

#[tokio::test]
async fn auth_modes_match_the_peer_blackbox_suite() {
    let (c, [public, handshake, strict]) = mode_cluster().await;
    let jwt = login(&c, ADMIN_EMAIL, ADMIN_PASSWORD).await.0;
    let timeout_plus = Duration::from_millis(1300);

    // 1. No auth.
    let mut p = try_open(&public, "/wsRest").await.open().unwrap();
    assert!(still_open(&mut p, timeout_plus).await, "public stays open");
    let mut h = try_open(&handshake, "/wsRest").await.open().unwrap();
    let r = h.recv(Duration::from_secs(3)).await.unwrap();
    assert_eq!(
        r,
        json!({"type":"auth","status":"error","error":{"code":"AUTH_FAILED","message":"Authentication handshake failed."}})
    );
    assert_eq!(
        h.expect_close(WAIT).await.unwrap(),
        None,
        "closed without a status code"
    );
    assert_eq!(try_open(&strict, "/wsRest").await.status(), 401);

    // 2-4. email/password, access token, static token as a message.
    for msg in [
        json!({"type":"auth","email":ADMIN_EMAIL,"password":ADMIN_PASSWORD}),
        json!({"type":"auth","access_token":jwt}),
        json!({"type":"auth","access_token":ADMIN_TOKEN}),
    ] {
        for addr in [&public, &handshake] {
            let mut ws = try_open(addr, "/wsRest").await.open().unwrap();
            ws.send_json(&msg).await.unwrap();
            assert_eq!(ws.recv(WAIT).await.unwrap()["status"], "ok");
            assert!(still_open(&mut ws, timeout_plus).await);
        }
        assert_eq!(try_open(&strict, "/wsRest").await.status(), 401);
    }

    // 5-6, 9. A token in the URL opens in every mode; ping gets pong.
    for token in [jwt.as_str(), ADMIN_TOKEN] {
        for addr in [&public, &handshake, &strict] {
            let mut ws = try_open(addr, &format!("/wsRest?access_token={token}"))
                .await
                .open()
                .unwrap();
            ws.send_json(&json!({"type":"ping"})).await.unwrap();
            assert_eq!(
                ws.recv(WAIT).await.unwrap(),
                json!({"type":"pong"}),
                "{addr}"
            );
        }
    }
    // An invalid URL token is refused in every mode, even public.
    for addr in [&public, &handshake, &strict] {
        assert_eq!(
            try_open(addr, "/wsRest?access_token=garbage")
                .await
                .status(),
            401
        );
    }

    // 7. Ping without auth.
    let mut p = try_open(&public, "/wsRest").await.open().unwrap();
    p.send_json(&json!({"type":"ping","uid":"x"}))
        .await
        .unwrap();
    assert_eq!(
        p.recv(WAIT).await.unwrap(),
        json!({"type":"pong","uid":"x"})
    );
    let mut h = try_open(&handshake, "/wsRest").await.open().unwrap();
    h.send_json(&json!({"type":"ping"})).await.unwrap();
    assert_eq!(h.recv(WAIT).await.unwrap()["status"], "error");
    assert_eq!(h.expect_close(WAIT).await.unwrap(), None);

    // 8. Ping after auth.
    for addr in [&public, &handshake] {
        let mut ws = try_open(addr, "/wsRest").await.open().unwrap();
        auth(&mut ws, &jwt).await;
        ws.send_json(&json!({"type":"ping"})).await.unwrap();
        assert_eq!(ws.recv(WAIT).await.unwrap(), json!({"type":"pong"}));
    }

    // The session cookie takes the token path in any mode: a valid one opens, a stale one is refused.
    let cookie = format!("directus_session_token={jwt}");
    let ok = WsClient::connect(&public, "/wsRest", &[("Cookie", &cookie)])
        .await
        .unwrap();
    assert_eq!(ok.status(), 101);
    let stale = WsClient::connect(
        &public,
        "/wsRest",
        &[("Cookie", "directus_session_token=stale")],
    )
    .await
    .unwrap();
    assert_eq!(stale.status(), 401);

    // The original path is not the endpoint any more.
    assert_ne!(try_open(&public, "/websocket").await.status(), 101);
}

#[tokio::test]
async fn handshake_failure_and_strict_reauth_failure_close() {
    let (c, [_, handshake, strict]) = mode_cluster().await;
    let mut h = try_open(&handshake, "/wsRest").await.open().unwrap();
    h.send_json(&json!({"type":"auth","access_token":"bad","uid":"u"}))
        .await
        .unwrap();
    let r = h.recv(WAIT).await.unwrap();
    assert_eq!(r["error"]["message"], "Authentication handshake failed.");
    assert!(r.get("uid").is_none());
    assert_eq!(h.expect_close(WAIT).await.unwrap(), None);

    let jwt = admin_token(&c).await;
    let mut s = try_open(&strict, &format!("/wsRest?access_token={jwt}"))
        .await
        .open()
        .unwrap();
    s.send_json(&json!({"type":"auth","access_token":"bad","uid":9}))
        .await
        .unwrap();
    assert_eq!(s.recv(WAIT).await.unwrap()["uid"], 9);
    assert_eq!(s.expect_close(WAIT).await.unwrap(), None);
}

#[tokio::test]
async fn connection_limit_answers_403() {
    let c = cluster(&[
        ("WEBSOCKETS_REST_CONN_LIMIT", "2"),
        ("WEBSOCKETS_REST_AUTH", "public"),
    ])
    .await;
    let mut a = open(&c).await;
    let _b = open(&c).await;
    assert_eq!(connect(&c, "/websocket").await.status(), 403);
    // Closing one frees a slot.
    a.close(1000).await.unwrap();
    a.expect_close(WAIT).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if connect(&c, "/websocket").await.status() == 101 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
