//! `common::protocol::parse_client_message` (inbound `/websocket` frames) on arbitrary bytes.
//!
//! Checked: no panic; every rejection's error frame is JSON with the rejection's context, code and message
//! and no uid (rejections never echo one); the replies that echo a uid (`pong`, `unsubscribe`, auth ok, error
//! with uid) are JSON that carry the uid back; a subscribe request survives `StoredRequest` (what a live
//! subscription keeps) unchanged apart from its uid.
#![no_main]

use common::protocol::{
    ClientMessage, StoredRequest, Uid, auth_ok_frame, error_frame,
    parse_client_message, pong_frame, unsubscribe_frame,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value as Json;

fn json(frame: &[u8]) -> serde_json::Map<String, Json> {
    match serde_json::from_slice::<Json>(frame) {
        Ok(Json::Object(o)) => o,
        other => panic!(
            "frame {:?} is not a JSON object: {other:?}",
            String::from_utf8_lossy(frame)
        ),
    }
}

fn check_uid_echo(uid: Option<&Uid>) {
    let frames = [
        pong_frame(uid),
        unsubscribe_frame(uid),
        auth_ok_frame(uid, Some("refresh")),
        error_frame(
            "subscribe",
            common::protocol::ErrorCode::InvalidPayload,
            "m",
            uid,
        ),
    ];
    for f in frames {
        let o = json(&f);
        match uid {
            None => assert!(!o.contains_key("uid")),
            Some(Uid::Str(s)) => assert_eq!(o.get("uid").and_then(Json::as_str), Some(s.as_str())),
            Some(Uid::Num(n)) => {
                // Compare the text, not a re-parse: the echoed number must be the one received.
                assert!(o.get("uid").is_some_and(Json::is_number));
                let text = format!("\"uid\":{n}");
                assert!(
                    f.windows(text.len()).any(|w| w == text.as_bytes()),
                    "{} echoes {text}",
                    String::from_utf8_lossy(&f)
                );
            }
        }
    }
    if let Some(u @ Uid::Num(_)) = uid {
        // `String(uid)` is what subscription frames carry.
        assert!(!u.to_js_string().is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    match parse_client_message(data) {
        Err(rejection) => {
            let frame = rejection.frame();
            let o = json(&frame);
            assert_eq!(
                o.get("type").and_then(Json::as_str),
                Some(rejection.context)
            );
            let err = o.get("error").and_then(Json::as_object).expect("error");
            assert_eq!(
                err.get("code").and_then(Json::as_str),
                Some(rejection.code.code())
            );
            assert_eq!(
                err.get("message").and_then(Json::as_str),
                Some(rejection.message.as_str())
            );
            assert!(rejection.uid.is_none() && o.get("uid").is_none(), "rejections carry no uid");
        }
        Ok(ClientMessage::Subscribe(req)) => {
            check_uid_echo(req.uid.as_ref());
            let stored = StoredRequest::new(&req);
            let mut expected = req.clone();
            expected.uid = None;
            assert_eq!(stored.request(), expected, "StoredRequest round-trips");
        }
        Ok(
            ClientMessage::Auth { uid, .. }
            | ClientMessage::Unsubscribe { uid }
            | ClientMessage::Ping { uid }
            | ClientMessage::Items { uid },
        ) => check_uid_echo(uid.as_ref()),
        Ok(ClientMessage::Pong | ClientMessage::Other) => {}
    }
});
