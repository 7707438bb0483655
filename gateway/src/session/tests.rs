//! Every rule of the session state machine, driven with a fake clock: the auth modes and handshake, token
//! expiry and the re-auth window, heartbeats, subscribe/unsubscribe bookkeeping and limits, envelope
//! errors, and the frames each step sends.

use super::*;
use serde_json::{Value as Json, json};

fn cfg(mode: AuthMode) -> SessionConfig {
    SessionConfig {
        mode,
        auth_timeout: Duration::from_secs(10),
        heartbeat: Some(Duration::from_secs(30)),
        max_subscriptions: 3,
        rate_limit: None,
    }
}

fn sent<S>(actions: &[Action<S>]) -> Vec<Json> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(b) => Some(serde_json::from_slice(b).unwrap()),
            Action::Error(e) => Some(serde_json::from_slice(&e.frame()).unwrap()),
            _ => None,
        })
        .collect()
}

fn closes<S>(actions: &[Action<S>]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Close(_)))
}

fn msg(v: Json) -> Vec<u8> {
    v.to_string().into_bytes()
}

type S = Session<u32>;

#[test]
fn handshake_success_then_open() {
    let c = cfg(AuthMode::Handshake);
    let t0 = Instant::now();
    let mut s = S::new(&c, t0, None);
    let a = s.on_message(
        &c,
        t0,
        &msg(json!({"type":"auth","access_token":"tok","uid":7})),
    );
    assert!(matches!(
        &a[..],
        [Action::Authenticate {
            purpose: AuthPurpose::Handshake,
            ..
        }]
    ));
    assert!(s.is_busy());
    let a = s.on_auth(
        &c,
        t0,
        AuthPurpose::Handshake,
        Some(&Uid::Num(7.into())),
        Ok((None, None)),
    );
    assert_eq!(sent(&a), vec![json!({"type":"auth","status":"ok","uid":7})]);
    assert!(s.is_authenticated());
    assert_eq!(
        s.next_deadline(),
        Some(t0 + Duration::from_secs(30)),
        "heartbeat armed after handshake"
    );
}

#[test]
fn handshake_first_message_must_be_auth() {
    let c = cfg(AuthMode::Handshake);
    let t0 = Instant::now();
    for first in [json!({"type":"ping"}), json!({"type":"auth"}), json!([1])] {
        let mut s = S::new(&c, t0, None);
        let a = s.on_message(&c, t0, &msg(first));
        assert_eq!(
            sent(&a),
            vec![
                json!({"type":"auth","status":"error","error":{"code":"AUTH_FAILED","message":"Authentication handshake failed."}})
            ]
        );
        assert!(closes(&a));
    }
    let mut s = S::new(&c, t0, None);
    let a = s.on_message(&c, t0, b"{nope");
    assert!(closes(&a));
}

#[test]
fn handshake_failure_and_timeout() {
    let c = cfg(AuthMode::Handshake);
    let t0 = Instant::now();
    let mut s = S::new(&c, t0, None);
    s.on_message(
        &c,
        t0,
        &msg(json!({"type":"auth","email":"a@b.co","password":"x","uid":"u"})),
    );
    let a = s.on_auth(
        &c,
        t0,
        AuthPurpose::Handshake,
        Some(&Uid::Str("u".into())),
        Err(()),
    );
    assert_eq!(
        sent(&a)[0]["error"]["message"],
        "Authentication handshake failed."
    );
    assert!(
        sent(&a)[0].get("uid").is_none(),
        "handshake failures carry no uid"
    );
    assert!(closes(&a));

    let mut s = S::new(&c, t0, None);
    assert!(s.on_timer(&c, t0 + Duration::from_secs(9)).is_empty());
    let a = s.on_timer(&c, t0 + Duration::from_secs(10));
    assert!(closes(&a));
}

#[test]
fn public_mode_auth_failure_stays_open_and_falls_back() {
    let c = cfg(AuthMode::Public);
    let t0 = Instant::now();
    let mut s = S::new(&c, t0, None);
    s.on_message(
        &c,
        t0,
        &msg(json!({"type":"auth","access_token":"bad","uid":"x"})),
    );
    let a = s.on_auth(
        &c,
        t0,
        AuthPurpose::Message,
        Some(&Uid::Str("x".into())),
        Err(()),
    );
    assert!(a.contains(&Action::FallBackToPublic));
    assert_eq!(
        sent(&a),
        vec![
            json!({"type":"auth","status":"error","error":{"code":"AUTH_FAILED","message":"Authentication failed."},"uid":"x"})
        ]
    );
    assert!(!closes(&a));
    // In other modes the same failure closes.
    let c = cfg(AuthMode::Strict);
    let mut s = S::new(&c, t0, Some(None));
    let a = s.on_auth(&c, t0, AuthPurpose::Message, None, Err(()));
    assert!(closes(&a));
    assert!(!s.is_authenticated());
}

#[test]
fn malformed_auth_is_a_failed_auth() {
    let c = cfg(AuthMode::Public);
    let t0 = Instant::now();
    let mut s = S::new(&c, t0, None);
    let a = s.on_message(
        &c,
        t0,
        &msg(json!({"type":"auth","email":"not-an-email","password":"x","uid":1})),
    );
    assert_eq!(sent(&a)[0]["error"]["code"], "AUTH_FAILED");
    assert_eq!(sent(&a)[0]["uid"], 1);
}

#[test]
fn auth_success_echoes_uid_and_refresh_token() {
    let c = cfg(AuthMode::Public);
    let t0 = Instant::now();
    let mut s = S::new(&c, t0, None);
    s.on_message(
        &c,
        t0,
        &msg(json!({"type":"auth","refresh_token":"r","uid":"a"})),
    );
    let a = s.on_auth(
        &c,
        t0,
        AuthPurpose::Message,
        Some(&Uid::Str("a".into())),
        Ok((None, Some("new".into()))),
    );
    assert_eq!(
        sent(&a),
        vec![json!({"type":"auth","status":"ok","uid":"a","refresh_token":"new"})]
    );
}

#[test]
fn token_expiry_then_reauth_window() {
    let c = cfg(AuthMode::Handshake);
    let t0 = Instant::now();
    let exp = t0 + Duration::from_secs(5);
    let mut s = S::new(&c, t0, Some(Some(exp)));
    assert_eq!(s.next_deadline(), Some(exp));
    let a = s.on_timer(&c, exp);
    assert!(a.contains(&Action::FallBackToPublic));
    assert_eq!(
        sent(&a),
        vec![
            json!({"type":"auth","status":"error","error":{"code":"TOKEN_EXPIRED","message":"Token expired."}})
        ]
    );
    assert!(!closes(&a));
    // A wrong-type message does not end the wait.
    s.on_message(&c, exp, &msg(json!({"type":"pong"})));
    let a = s.on_timer(&c, exp + Duration::from_secs(10));
    assert_eq!(
        sent(&a),
        vec![
            json!({"type":"auth","status":"error","error":{"code":"AUTH_TIMEOUT","message":"Authentication timed out."}})
        ]
    );
    assert!(closes(&a));
}

#[test]
fn reauth_within_window_keeps_connection() {
    let c = cfg(AuthMode::Strict);
    let t0 = Instant::now();
    let mut s = S::new(&c, t0, Some(Some(t0)));
    s.on_timer(&c, t0);
    let a = s.on_message(&c, t0, &msg(json!({"type":"auth","access_token":"fresh"})));
    assert!(matches!(&a[..], [Action::Authenticate { .. }]));
    let later = t0 + Duration::from_secs(3600);
    s.on_auth(&c, t0, AuthPurpose::Message, None, Ok((Some(later), None)));
    let a = s.on_timer(&c, t0 + Duration::from_secs(11));
    assert!(!closes(&a), "no AUTH_TIMEOUT after a successful re-auth");
    assert!(s.is_authenticated());
}

#[test]
fn public_mode_auth_timeout_does_not_close() {
    let c = cfg(AuthMode::Public);
    let t0 = Instant::now();
    let mut s = S::new(&c, t0, Some(Some(t0)));
    s.on_timer(&c, t0);
    let a = s.on_timer(&c, t0 + Duration::from_secs(10));
    assert_eq!(sent(&a)[0]["error"]["code"], "AUTH_TIMEOUT");
    assert!(!closes(&a));
}

#[test]
fn heartbeat_pings_and_closes_silent_clients() {
    let c = cfg(AuthMode::Public);
    let t0 = Instant::now();
    let p = Duration::from_secs(30);
    let mut s = S::new(&c, t0, None);
    assert_eq!(sent(&s.on_timer(&c, t0 + p)), vec![json!({"type":"ping"})]);
    // Any valid non-auth message counts as alive.
    s.on_message(&c, t0 + p, &msg(json!({"type":"anything"})));
    assert_eq!(
        sent(&s.on_timer(&c, t0 + 2 * p)),
        vec![json!({"type":"ping"})]
    );
    // An unparseable message does not.
    s.on_message(&c, t0 + 2 * p, b"garbage");
    let a = s.on_timer(&c, t0 + 3 * p);
    assert_eq!(a, vec![Action::Close(CloseReason::HeartbeatTimeout)]);
}

#[test]
fn ping_pong_only_with_heartbeat() {
    let c = cfg(AuthMode::Public);
    let t0 = Instant::now();
    let mut s = S::new(&c, t0, None);
    assert_eq!(
        sent(&s.on_message(&c, t0, &msg(json!({"type":"ping","uid":"p"})))),
        vec![json!({"type":"pong","uid":"p"})]
    );
    let mut off = cfg(AuthMode::Public);
    off.heartbeat = None;
    let mut s = S::new(&off, t0, None);
    assert!(
        s.on_message(&off, t0, &msg(json!({"type":"ping"})))
            .is_empty()
    );
    assert_eq!(s.next_deadline(), None);
}

#[test]
fn subscribe_uids_duplicates_and_limits() {
    let c = cfg(AuthMode::Public);
    let t0 = Instant::now();
    let mut s = S::new(&c, t0, None);
    let a = s.on_message(
        &c,
        t0,
        &msg(json!({"type":"subscribe","collection":"a","uid":1})),
    );
    let Action::Subscribe { uid, .. } = &a[0] else {
        panic!("{a:?}")
    };
    assert_eq!(uid, "1");
    s.on_subscribed("1".into(), Ok((10, b"{}".to_vec())));
    // Same uid as a number or string: ignored.
    assert!(
        s.on_message(
            &c,
            t0,
            &msg(json!({"type":"subscribe","collection":"a","uid":"1"}))
        )
        .is_empty()
    );
    // Without uid: one is generated.
    let a = s.on_message(&c, t0, &msg(json!({"type":"subscribe","collection":"a"})));
    let Action::Subscribe { uid, .. } = &a[0] else {
        panic!()
    };
    assert_eq!(uid.len(), 36);
    let generated = uid.clone();
    s.on_subscribed(generated, Ok((11, b"{}".to_vec())));
    s.on_message(
        &c,
        t0,
        &msg(json!({"type":"subscribe","collection":"a","uid":3})),
    );
    s.on_subscribed("3".into(), Ok((12, b"{}".to_vec())));
    let a = s.on_message(
        &c,
        t0,
        &msg(json!({"type":"subscribe","collection":"a","uid":4})),
    );
    assert_eq!(sent(&a)[0]["error"]["code"], "LIMIT_EXCEEDED");
    assert_eq!(sent(&a)[0]["uid"], 4);
    // A failed subscribe is not registered.
    let mut s2 = S::new(&c, t0, None);
    s2.on_message(
        &c,
        t0,
        &msg(json!({"type":"subscribe","collection":"nope","uid":"x"})),
    );
    let a = s2.on_subscribed(
        "x".into(),
        Err(RealtimeError::new(ErrorCode::Forbidden, "no")),
    );
    assert!(s2.subscriptions().is_empty());
    // Refused as a service error: `subscribe` context, no uid.
    assert_eq!(
        sent(&a),
        [json!({"type":"subscribe","status":"error","error":{"code":"FORBIDDEN","message":"no"}})]
    );
}

#[test]
fn unsubscribe_one_all_and_unknown() {
    let c = cfg(AuthMode::Public);
    let t0 = Instant::now();
    let mut s = S::new(&c, t0, None);
    for (i, uid) in ["a", "b"].iter().enumerate() {
        s.on_message(
            &c,
            t0,
            &msg(json!({"type":"subscribe","collection":"c","uid":uid})),
        );
        s.on_subscribed(uid.to_string(), Ok((i as u32, Vec::new())));
    }
    let a = s.on_message(&c, t0, &msg(json!({"type":"unsubscribe","uid":"a"})));
    assert_eq!(a[0], Action::Unsubscribed(vec![0]));
    assert_eq!(
        sent(&a),
        vec![json!({"type":"subscription","event":"unsubscribe","uid":"a"})]
    );
    let a = s.on_message(&c, t0, &msg(json!({"type":"unsubscribe","uid":"zzz"})));
    assert_eq!(
        sent(&a),
        vec![json!({"type":"subscription","event":"unsubscribe","uid":"zzz"})],
        "always confirmed"
    );
    let a = s.on_message(&c, t0, &msg(json!({"type":"unsubscribe"})));
    assert_eq!(a[0], Action::Unsubscribed(vec![1]));
    assert_eq!(
        sent(&a),
        vec![json!({"type":"subscription","event":"unsubscribe"})]
    );
}

#[test]
fn envelope_errors_keep_the_connection() {
    let c = cfg(AuthMode::Public);
    let t0 = Instant::now();
    let mut s = S::new(&c, t0, None);
    let a = s.on_message(&c, t0, b"not json");
    assert_eq!(
        sent(&a)[0]["error"]["message"],
        "Unable to parse the incoming message."
    );
    assert!(!closes(&a));
    // Zod errors: Directus's zod v4 text, never a uid.
    let a = s.on_message(&c, t0, &msg(json!({"type":"subscribe","uid":"s"})));
    assert_eq!(
        sent(&a),
        vec![
            json!({"type":"subscribe","status":"error","error":{"code":"INVALID_PAYLOAD","message":"Validation error: Invalid input: expected string, received undefined at \"collection\""}})
        ]
    );
    let a = s.on_message(
        &c,
        t0,
        &msg(json!({"type":"items","collection":"a","action":"upsert","uid":2})),
    );
    assert_eq!(
        sent(&a),
        vec![
            json!({"type":"items","status":"error","error":{"code":"INVALID_PAYLOAD","message":"Validation error: Invalid input: expected \"create\" at \"action\" or Invalid input: expected \"read\" at \"action\" or Invalid input: expected \"update\" at \"action\" or Invalid input: expected \"delete\" at \"action\""}})
        ]
    );
    let a = s.on_message(&c, t0, &msg(json!([])));
    assert_eq!(
        sent(&a),
        vec![
            json!({"type":"server","status":"error","error":{"code":"INVALID_PAYLOAD","message":"Validation error: Invalid input: expected object, received array"}})
        ]
    );
    // A well-formed `items` message is refused as not served here, with its uid.
    let a = s.on_message(
        &c,
        t0,
        &msg(json!({"type":"items","collection":"a","action":"read","uid":2})),
    );
    assert_eq!(sent(&a)[0]["type"], "items");
    assert_eq!(sent(&a)[0]["error"]["code"], "INVALID_PAYLOAD");
    assert_eq!(sent(&a)[0]["uid"], 2);
    assert!(!closes(&a));
    assert!(
        s.on_message(&c, t0, &msg(json!({"type":"unknown-type"})))
            .is_empty()
    );
}

#[test]
fn rate_limit() {
    let mut c = cfg(AuthMode::Public);
    c.rate_limit = Some(RateLimit {
        points: 2,
        duration: Duration::from_secs(1),
    });
    let t0 = Instant::now();
    let mut s = S::new(&c, t0, None);
    assert!(s.on_message(&c, t0, &msg(json!({"type":"x"}))).is_empty());
    assert!(s.on_message(&c, t0, &msg(json!({"type":"x"}))).is_empty());
    let a = s.on_message(
        &c,
        t0 + Duration::from_millis(250),
        &msg(json!({"type":"x"})),
    );
    assert_eq!(
        sent(&a),
        vec![
            json!({"type":"server","status":"error","error":{"code":"REQUESTS_EXCEEDED","message":"Too many messages, retry after 750ms."}})
        ]
    );
    assert!(
        s.on_message(&c, t0 + Duration::from_secs(1), &msg(json!({"type":"x"})))
            .is_empty()
    );
}

#[test]
fn revoked_credentials_fail_like_auth_and_close_unless_public() {
    let t0 = Instant::now();
    for (mode, closed) in [
        (AuthMode::Handshake, true),
        (AuthMode::Strict, true),
        (AuthMode::Public, false),
    ] {
        let c = cfg(mode);
        let mut s = S::new(&c, t0, Some(Some(t0 + Duration::from_secs(60))));
        assert!(s.is_authenticated());
        let a = s.on_revoked(&c);
        assert_eq!(
            sent(&a),
            vec![
                json!({"type":"auth","status":"error","error":{"code":"AUTH_FAILED","message":"Authentication failed."}})
            ]
        );
        assert_eq!(closes(&a), closed, "{mode:?}");
        assert!(!s.is_authenticated());
        // The token's expiry no longer applies: no TOKEN_EXPIRED later.
        let later = s.on_timer(&c, t0 + Duration::from_secs(61));
        assert!(
            sent(&later)
                .iter()
                .all(|f| f["error"]["code"] != "TOKEN_EXPIRED"),
            "{mode:?}"
        );
    }
}
