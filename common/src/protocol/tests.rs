//! Rejection texts (zod v4 via zod-validation-error), uid echo rules, message shapes and Directus's
//! texts, byte-for-byte.

use super::*;
use serde_json::Value as Json;

fn s(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap()
}

fn reject(text: &str) -> Rejection {
    parse_client_message(text.as_bytes()).unwrap_err()
}

/// Every rejection the parser produces, with its exact Directus 11.17.4 (zod v4) text.
#[test]
fn rejection_texts() {
    const UNION_UID_BOOL: &str = "Invalid input: expected string, received boolean at \"uid\" or Invalid input: expected number, received boolean at \"uid\"";
    const EVENT: &str = "Invalid input: expected \"create\" at \"event\" or Invalid input: expected \"update\" at \"event\" or Invalid input: expected \"delete\" at \"event\"";
    const ACTION: &str = "Invalid input: expected \"create\" at \"action\" or Invalid input: expected \"read\" at \"action\" or Invalid input: expected \"update\" at \"action\" or Invalid input: expected \"delete\" at \"action\"";
    const NO_COLLECTION: &str =
        "Invalid input: expected string, received undefined at \"collection\"";
    let v = |s: &str| format!("Validation error: {s}");
    let ids1 = "Invalid input: expected string, received boolean at \"ids[1]\" or Invalid input: expected number, received boolean at \"ids[1]\"";
    let cases: Vec<(&str, &str, String)> = vec![
        ("{not json", "server", MSG_UNPARSEABLE.to_owned()),
        ("", "server", MSG_UNPARSEABLE.to_owned()),
        // The envelope: an object with `type: string` and `uid?: string | number`.
        (
            "[]",
            "server",
            v("Invalid input: expected object, received array"),
        ),
        (
            r#""x""#,
            "server",
            v("Invalid input: expected object, received string"),
        ),
        (
            "123",
            "server",
            v("Invalid input: expected object, received number"),
        ),
        (
            "null",
            "server",
            v("Invalid input: expected object, received null"),
        ),
        (
            "true",
            "server",
            v("Invalid input: expected object, received boolean"),
        ),
        (
            "{}",
            "server",
            v("Invalid input: expected string, received undefined at \"type\""),
        ),
        (
            r#"{"type":1}"#,
            "server",
            v("Invalid input: expected string, received number at \"type\""),
        ),
        (
            r#"{"type":null}"#,
            "server",
            v("Invalid input: expected string, received null at \"type\""),
        ),
        (
            r#"{"type":{}}"#,
            "server",
            v("Invalid input: expected string, received object at \"type\""),
        ),
        (r#"{"type":"ping","uid":true}"#, "server", v(UNION_UID_BOOL)),
        (
            r#"{"type":"subscribe","uid":null,"collection":"a"}"#,
            "server",
            v(
                "Invalid input: expected string, received null at \"uid\" or Invalid input: expected number, received null at \"uid\"",
            ),
        ),
        // Several issues are joined with "; ".
        (
            r#"{"uid":[]}"#,
            "server",
            v(
                "Invalid input: expected string, received undefined at \"type\"; Invalid input: expected string, received array at \"uid\" or Invalid input: expected number, received array at \"uid\"",
            ),
        ),
        // subscribe
        (r#"{"type":"subscribe"}"#, "subscribe", v(NO_COLLECTION)),
        (
            r#"{"type":"subscribe","uid":"u","collection":5}"#,
            "subscribe",
            v("Invalid input: expected string, received number at \"collection\""),
        ),
        (
            r#"{"type":"subscribe","collection":"a","event":"upsert"}"#,
            "subscribe",
            v(EVENT),
        ),
        (
            r#"{"type":"subscribe","collection":"a","event":1}"#,
            "subscribe",
            v(EVENT),
        ),
        (
            r#"{"type":"subscribe","collection":"a","event":null}"#,
            "subscribe",
            v(EVENT),
        ),
        (
            r#"{"type":"subscribe","collection":"a","item":true}"#,
            "subscribe",
            v(
                "Invalid input: expected string, received boolean at \"item\" or Invalid input: expected number, received boolean at \"item\"",
            ),
        ),
        (
            r#"{"type":"subscribe","collection":"a","item":[1]}"#,
            "subscribe",
            v(
                "Invalid input: expected string, received array at \"item\" or Invalid input: expected number, received array at \"item\"",
            ),
        ),
        (
            r#"{"type":"subscribe","collection":"a","query":"fields=*"}"#,
            "subscribe",
            v("Invalid input: expected record, received string at \"query\""),
        ),
        (
            r#"{"type":"subscribe","collection":"a","query":[]}"#,
            "subscribe",
            v("Invalid input: expected record, received array at \"query\""),
        ),
        (
            r#"{"type":"subscribe","collection":"a","query":null}"#,
            "subscribe",
            v("Invalid input: expected record, received null at \"query\""),
        ),
        (
            r#"{"type":"subscribe","event":"x","item":{},"query":1}"#,
            "subscribe",
            v(&format!(
                "{NO_COLLECTION}; {EVENT}; Invalid input: expected string, received object at \"item\" or Invalid input: expected number, received object at \"item\"; Invalid input: expected record, received number at \"query\""
            )),
        ),
        // items: a union of one schema per action; each option's issues joined with "; ",
        // the options (de-duplicated) with " or ".
        (
            r#"{"type":"items","collection":"a","action":"upsert","uid":1}"#,
            "items",
            v(ACTION),
        ),
        (r#"{"type":"items","collection":"a"}"#, "items", v(ACTION)),
        (
            r#"{"type":"items","action":"read"}"#,
            "items",
            v(&format!(
                "{NO_COLLECTION}; Invalid input: expected \"create\" at \"action\" or {NO_COLLECTION} or {NO_COLLECTION}; Invalid input: expected \"update\" at \"action\" or {NO_COLLECTION}; Invalid input: expected \"delete\" at \"action\""
            )),
        ),
        (
            r#"{"type":"items","collection":"a","action":"read","ids":[1,true]}"#,
            "items",
            v(&format!(
                "Invalid input: expected \"create\" at \"action\" or {ids1} or Invalid input: expected \"update\" at \"action\"; {ids1} or Invalid input: expected \"delete\" at \"action\"; {ids1}"
            )),
        ),
        (
            r#"{"type":"items","collection":"a","action":"delete","ids":"1"}"#,
            "items",
            v(
                "Invalid input: expected \"create\" at \"action\" or Invalid input: expected \"read\" at \"action\"; Invalid input: expected array, received string at \"ids\" or Invalid input: expected \"update\" at \"action\"; Invalid input: expected array, received string at \"ids\" or Invalid input: expected array, received string at \"ids\"",
            ),
        ),
        (
            r#"{"type":"items","collection":"a","action":"update","data":{},"id":null}"#,
            "items",
            v(
                "Invalid input: expected \"create\" at \"action\" or Invalid input: expected \"read\" at \"action\"; Invalid input: expected string, received null at \"id\" or Invalid input: expected number, received null at \"id\" or Invalid input: expected string, received null at \"id\" or Invalid input: expected number, received null at \"id\" or Invalid input: expected \"delete\" at \"action\"; Invalid input: expected string, received null at \"id\" or Invalid input: expected number, received null at \"id\"",
            ),
        ),
    ];
    for (frame, context, message) in cases {
        let r = reject(frame);
        assert_eq!(
            (r.context, r.code, r.message.as_str()),
            (context, ErrorCode::InvalidPayload, message.as_str()),
            "{frame}"
        );
        // JSON and zod errors never carry a uid, whatever the message had.
        let sent: Json = serde_json::from_slice(&r.frame()).unwrap();
        assert_eq!(
            sent,
            serde_json::json!({"type": context, "status": "error", "error": {"code": "INVALID_PAYLOAD", "message": message}}),
            "{frame}"
        );
    }
}

/// §1.1: service errors (FORBIDDEN, INVALID_QUERY, ...) and zod errors carry no uid; the errors Directus
/// builds itself (INVALID_COLLECTION, auth, delete without target) echo it unchanged; none is ever null.
#[test]
fn error_uid_presence() {
    let num = Uid::Num(7.into());
    let cases: Vec<(Vec<u8>, Option<Json>)> = vec![
        (reject(r#"{"type":"subscribe","uid":7}"#).frame(), None),
        (
            reject(r#"{"type":"items","collection":"a","uid":7}"#).frame(),
            None,
        ),
        (reject(r#"{"type":"ping","uid":{}}"#).frame(), None),
        (
            error_frame(
                "subscribe",
                ErrorCode::Forbidden,
                &msg_forbidden_collection("a", ""),
                None,
            ),
            None,
        ),
        (
            error_frame(
                "items",
                ErrorCode::InvalidCollection,
                MSG_INVALID_COLLECTION,
                Some(&num),
            ),
            Some(Json::from(7)),
        ),
        (
            error_frame(
                "auth",
                ErrorCode::AuthFailed,
                MSG_AUTH_FAILED,
                Some(&Uid::Str("7".into())),
            ),
            Some(Json::from("7")),
        ),
    ];
    for (frame, uid) in cases {
        let v: Json = serde_json::from_slice(&frame).unwrap();
        assert_eq!(v.get("uid").cloned(), uid, "{v}");
    }
}

#[test]
fn zod_paths() {
    let issue = |path: Vec<PathKey>| ZodIssue {
        path,
        kind: IssueKind::InvalidType {
            expected: "string",
            received: "undefined",
        },
    };
    let text = |path: Vec<PathKey>| zod_message(&[issue(path)]);
    let k = |s: &str| PathKey::from(s);
    let i = PathKey::Index;
    let base = "Validation error: Invalid input: expected string, received undefined";
    assert_eq!(text(vec![]), base);
    assert_eq!(text(vec![k("type")]), format!("{base} at \"type\""));
    assert_eq!(text(vec![i(0)]), format!("{base} at index 0"));
    assert_eq!(text(vec![k("")]), format!("{base} at \"\"\"\""));
    assert_eq!(
        text(vec![k("query"), k("filter")]),
        format!("{base} at \"query.filter\"")
    );
    assert_eq!(
        text(vec![k("ids"), i(2), k("x")]),
        format!("{base} at \"ids[2].x\"")
    );
    assert_eq!(text(vec![i(1), i(2)]), format!("{base} at \"[1][2]\""));
    assert_eq!(
        text(vec![k("a\"b"), k("c")]),
        format!("{base} at \"[\"a\\\"b\"].c\"")
    );
    assert_eq!(
        text(vec![k("x"), k("12-3")]),
        format!("{base} at \"x[\"12-3\"]\"")
    );
    // The identifier test is unanchored: one letter is enough.
    assert_eq!(
        text(vec![k("a-b"), k("c d")]),
        format!("{base} at \"a-b.c d\"")
    );
    // Several literal values; an empty union falls back to its own message.
    let values = ZodIssue {
        path: vec![k("v")],
        kind: IssueKind::InvalidValue {
            values: vec!["a", "b"],
        },
    };
    let empty = ZodIssue {
        path: vec![k("u")],
        kind: IssueKind::InvalidUnion { errors: vec![] },
    };
    assert_eq!(
        zod_message(&[values, empty]),
        "Validation error: Invalid option: expected one of \"a\"|\"b\" at \"v\"; Invalid input at \"u\""
    );
    assert_eq!(zod_message(&[]), "Validation error");
    // A union: the union's path goes before each option's own; identical option texts appear once.
    let union = ZodIssue {
        path: vec![k("a")],
        kind: IssueKind::InvalidUnion {
            errors: vec![
                vec![issue(vec![k("b")]), issue(vec![])],
                vec![issue(vec![])],
                vec![issue(vec![])],
            ],
        },
    };
    assert_eq!(
        zod_message(&[union]),
        format!(
            "{base} at \"a.b\"; Invalid input: expected string, received undefined at \"a\" or Invalid input: expected string, received undefined at \"a\""
        )
    );
}

#[test]
fn message_types() {
    let p = |t: &str| parse_client_message(t.as_bytes()).unwrap();
    assert_eq!(
        p(r#"{"type":"ping","uid":1}"#),
        ClientMessage::Ping {
            uid: Some(Uid::Num(1.into()))
        }
    );
    assert_eq!(p(r#"{"type":"pong"}"#), ClientMessage::Pong);
    assert_eq!(p(r#"{"type":"whatever","x":1}"#), ClientMessage::Other);
    assert_eq!(
        p(r#"{"type":"unsubscribe"}"#),
        ClientMessage::Unsubscribe { uid: None }
    );
    assert_eq!(
        p(r#"{"type":"auth","email":"a@b.co","password":"p"}"#),
        ClientMessage::Auth {
            credentials: Ok(Credentials::Login {
                email: "a@b.co".into(),
                password: "p".into()
            }),
            uid: None
        }
    );
    assert_eq!(
        p(r#"{"type":"auth","access_token":"t","uid":"x"}"#),
        ClientMessage::Auth {
            credentials: Ok(Credentials::AccessToken("t".into())),
            uid: Some(Uid::Str("x".into()))
        }
    );
    assert!(matches!(
        p(r#"{"type":"auth","email":"nope","password":"p"}"#),
        ClientMessage::Auth {
            credentials: Err(_),
            ..
        }
    ));
    assert!(matches!(
        p(r#"{"type":"auth"}"#),
        ClientMessage::Auth {
            credentials: Err(_),
            ..
        }
    ));
}

#[test]
fn subscribe_and_items_shapes() {
    let p = |t: &str| parse_client_message(t.as_bytes());
    let ok = p(r#"{"type":"subscribe","collection":"a","event":"update","item":5,"uid":"u","query":{"fields":"*"},"extra":1}"#)
        .unwrap();
    let ClientMessage::Subscribe(req) = ok else {
        panic!()
    };
    assert_eq!(req.collection, "a");
    assert_eq!(req.item.as_deref(), Some("5"));
    assert_eq!(req.event, Some(EventKind::Update));
    assert_eq!(req.uid, Some(Uid::Str("u".into())));
    assert_eq!(
        req.query,
        Some(
            serde_json::json!({"fields":"*"})
                .as_object()
                .unwrap()
                .clone()
        )
    );
    let ClientMessage::Subscribe(req) =
        p(r#"{"type":"subscribe","collection":"a","item":"x","query":{}}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!((req.event, req.item.as_deref()), (None, Some("x")));
    // Well-formed items messages of every action pass (`data` accepts anything, missing included).
    for frame in [
        r#"{"type":"items","collection":"a","action":"create","data":[{"t":1}],"uid":3}"#,
        r#"{"type":"items","collection":"a","action":"create"}"#,
        r#"{"type":"items","collection":"a","action":"read","ids":[1,"2"],"query":"anything"}"#,
        r#"{"type":"items","collection":"a","action":"update","data":5,"id":"k"}"#,
        r#"{"type":"items","collection":"a","action":"delete","id":0}"#,
    ] {
        assert!(
            matches!(p(frame), Ok(ClientMessage::Items { .. })),
            "{frame}"
        );
    }
    assert_eq!(
        p(r#"{"type":"items","collection":"a","action":"read","uid":3}"#).unwrap(),
        ClientMessage::Items {
            uid: Some(Uid::Num(3.into()))
        }
    );
}

#[test]
fn directus_texts() {
    assert_eq!(
        msg_forbidden_collection("articles", ""),
        "You don't have permission to access collection \"articles\" or it does not exist. Queried in root."
    );
    assert_eq!(
        msg_forbidden_fields("articles", &["author".into()], ""),
        "You don't have permission to access field \"author\" in collection \"articles\" or it does not exist. Queried in root."
    );
    assert_eq!(
        msg_forbidden_fields("articles", &["a".into(), "b".into()], "author"),
        "You don't have permission to access fields \"a\", \"b\" in collection \"articles\" or they do not exist. Queried in \"author\"."
    );
    // InvalidPayloadError reasons end with a period of their own: two periods (wave 2 §0 C6).
    assert_eq!(
        msg_invalid_payload(REASON_EXTENSIONS_UNSUPPORTED),
        "Invalid payload. \"directus_extensions\" is currently not supported.."
    );
    assert_eq!(
        msg_invalid_payload(&reason_item_subscription("directus_fields")),
        "Invalid payload. Cannot subscribe to a specific item in the directus_fields collection.."
    );
    assert_eq!(
        msg_invalid_payload(REASON_ITEMS_UNSUPPORTED),
        "Invalid payload. The \"items\" message type is not supported by this realtime server; write through the Directus REST API or the database."
    );
    assert_eq!(
        msg_requests_exceeded(750),
        "Too many messages, retry after 750ms."
    );
}

#[test]
fn stored_requests_round_trip() {
    let ClientMessage::Subscribe(req) = parse_client_message(
        br#"{"type":"subscribe","collection":"a","event":"update","item":7,"uid":"u","query":{"fields":["id","t"],"filter":{"t":{"_eq":"x"}},"limit":"10"}}"#,
    )
    .unwrap() else {
        panic!("not a subscribe")
    };
    let back = StoredRequest::new(&req).request();
    assert_eq!(
        back,
        SubscribeRequest {
            uid: None,
            ..req.clone()
        }
    );
    let bare = SubscribeRequest {
        query: None,
        item: None,
        event: None,
        ..req
    };
    assert_eq!(
        StoredRequest::new(&bare).request(),
        SubscribeRequest { uid: None, ..bare }
    );
}

#[test]
fn error_replies_render_their_context_code_text_and_uid() {
    for code in ErrorCode::ALL {
        let reply = ErrorReply::new(
            "subscribe",
            crate::error::RealtimeError::new(code, "m"),
            Some(Uid::Str("a".into())),
        );
        assert_eq!(
            reply.frame(),
            error_frame("subscribe", code, "m", Some(&Uid::Str("a".into())))
        );
    }
    let bare = ErrorReply::new(
        "auth",
        crate::error::RealtimeError::new(ErrorCode::AuthFailed, MSG_AUTH_FAILED),
        None,
    );
    assert_eq!(
        s(bare.frame()),
        r#"{"type":"auth","status":"error","error":{"code":"AUTH_FAILED","message":"Authentication failed."}}"#
    );
}

#[test]
fn uid_echo_rules() {
    let num = Uid::Num(1.into());
    assert_eq!(num.to_js_string(), "1");
    assert_eq!(
        Uid::Num(serde_json::Number::from_f64(1.5).unwrap()).to_js_string(),
        "1.5"
    );
    assert_eq!(
        s(auth_ok_frame(Some(&num), Some("r"))),
        r#"{"type":"auth","status":"ok","uid":1,"refresh_token":"r"}"#
    );
    assert_eq!(
        s(auth_ok_frame(None, None)),
        r#"{"type":"auth","status":"ok"}"#
    );
    assert_eq!(s(pong_frame(Some(&num))), r#"{"type":"pong","uid":1}"#);
    assert_eq!(
        s(unsubscribe_frame(Some(&num))),
        r#"{"type":"subscription","event":"unsubscribe","uid":1}"#
    );
    let forbidden = crate::error::RealtimeError::new(
        ErrorCode::Forbidden,
        msg_forbidden_collection("articles", ""),
    );
    assert_eq!(
        s(revoked_frame(Some(&Uid::Str("a\"b".into())), &forbidden)),
        r#"{"type":"subscription","event":"unsubscribe","error":{"code":"FORBIDDEN","message":"You don't have permission to access collection \"articles\" or it does not exist. Queried in root."},"uid":"a\"b"}"#
    );
    assert_eq!(
        s(init_frame(Some(b"[]"), None, Some("1"))),
        r#"{"type":"subscription","event":"init","data":[],"uid":"1"}"#
    );
    assert_eq!(
        s(init_frame(None, None, None)),
        r#"{"type":"subscription","event":"init"}"#
    );
    let mut ev = event_body(EventKind::Delete, br#"["5"]"#);
    write_subscription_suffix(&mut ev, Some("two"));
    assert_eq!(
        s(ev),
        r#"{"type":"subscription","event":"delete","data":["5"],"uid":"two"}"#
    );
    assert_eq!(
        s(error_frame(
            "auth",
            ErrorCode::AuthFailed,
            MSG_AUTH_FAILED,
            Some(&Uid::Str("a".into()))
        )),
        r#"{"type":"auth","status":"error","error":{"code":"AUTH_FAILED","message":"Authentication failed."},"uid":"a"}"#
    );
}

#[test]
fn emails() {
    assert!(is_valid_email("admin@example.com"));
    assert!(is_valid_email("a.b+c@sub.example.org"));
    for bad in [
        "", "a", "a@", "@b.co", "a@b", "a b@c.de", "a@b..de", "a@@b.de", "a@b.c",
    ] {
        assert!(!is_valid_email(bad), "{bad}");
    }
}

/// Control frames are written by serde_json, data by `value::write_json_string`: both must escape strings
/// the way Directus's `JSON.stringify` does, so they must agree with each other on every string.
#[test]
fn serde_and_the_data_path_escape_strings_alike() {
    let mut all: String = (0u32..0x80).filter_map(char::from_u32).collect();
    all.push_str("\u{7f}\u{80}\u{a0}\u{2028}\u{2029}\u{feff}\u{fffd}\u{ffff}😀𝄞\\\"/");
    let check = |text: &str| {
        let mut ours = Vec::new();
        crate::value::write_json_string(&mut ours, text);
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            serde_json::to_string(text).unwrap(),
            "{text:?}"
        );
    };
    check(&all);
    for c in all.chars() {
        check(&c.to_string());
    }
}

proptest::proptest! {
    #[test]
    fn escaping_agrees_on_random_strings(text in "\\PC*") {
        let mut ours = Vec::new();
        crate::value::write_json_string(&mut ours, &text);
        proptest::prop_assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&text).unwrap());
    }
}
