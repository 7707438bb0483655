//! Outbound frames, byte-for-byte as Directus builds them (key order of `fmtMessage` and
//! `WebSocketError#toJSON`, the uid rules), and the error replies rendered to frames at the socket.

use super::{ErrorCode, EventKind, Uid};
use crate::error::RealtimeError;

// ---------------------------------------------------------------------------------------------------------
// Outbound frames (key order as Directus's fmtMessage / WebSocketError#toJSON)

/// An error on its way to a client of the `/websocket` protocol: the [`RealtimeError`] plus how this
/// protocol frames it (the `type` context, and the request's uid where Directus echoes one). Rendered to
/// bytes only by [`ErrorReply::frame`], at the socket, which also counts it by code.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorReply {
    /// The `type` field of the error frame (`server`, `auth`, `subscribe`, `items`).
    pub context: &'static str,
    pub code: ErrorCode,
    pub message: String,
    pub uid: Option<Uid>,
}

impl ErrorReply {
    pub fn new(context: &'static str, error: RealtimeError, uid: Option<Uid>) -> ErrorReply {
        ErrorReply {
            context,
            code: error.code,
            message: error.message,
            uid,
        }
    }

    pub fn frame(&self) -> Vec<u8> {
        error_frame(self.context, self.code, &self.message, self.uid.as_ref())
    }
}

// Control frames are serde structs: the field order is the key order Directus sends, `uid` is echoed as
// the client sent it (number or string) and omitted when absent. Event and `init` frames are built by hand
// below (the data path: a static head, pre-encoded data, a per-subscriber suffix).

#[derive(serde::Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    context: &'a str,
    status: &'static str,
    error: ErrorBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a Uid>,
}

#[derive(serde::Serialize)]
struct ErrorBody<'a> {
    code: &'static str,
    message: &'a str,
}

#[derive(serde::Serialize)]
struct AuthOk<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a Uid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<&'a str>,
}

#[derive(serde::Serialize)]
struct Pong<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a Uid>,
}

#[derive(serde::Serialize)]
struct Unsubscribed<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a Uid>,
}

impl serde::Serialize for Uid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Uid::Str(v) => s.serialize_str(v),
            Uid::Num(n) => n.serialize(s),
        }
    }
}

fn to_frame(v: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("control frames serialise")
}

/// `{"type":<ctx>,"status":"error","error":{"code":..,"message":..}[,"uid":<raw>]}`
pub fn error_frame(context: &str, code: ErrorCode, message: &str, uid: Option<&Uid>) -> Vec<u8> {
    to_frame(&ErrorFrame {
        context,
        status: "error",
        error: ErrorBody {
            code: code.code(),
            message,
        },
        uid,
    })
}

/// `{"type":"auth","status":"ok"[,"uid":<raw>][,"refresh_token":..]}`
pub fn auth_ok_frame(uid: Option<&Uid>, refresh_token: Option<&str>) -> Vec<u8> {
    to_frame(&AuthOk {
        kind: "auth",
        status: "ok",
        uid,
        refresh_token,
    })
}

pub const PING_FRAME: &[u8] = b"{\"type\":\"ping\"}";

/// `{"type":"pong"[,"uid":<raw>]}`
pub fn pong_frame(uid: Option<&Uid>) -> Vec<u8> {
    to_frame(&Pong { kind: "pong", uid })
}

/// `{"type":"subscription","event":"unsubscribe"[,"uid":<raw>]}`
pub fn unsubscribe_frame(uid: Option<&Uid>) -> Vec<u8> {
    to_frame(&Unsubscribed {
        kind: "subscription",
        event: "unsubscribe",
        uid,
    })
}

#[derive(serde::Serialize)]
struct Revoked<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    event: &'static str,
    error: ErrorBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a Uid>,
}

/// `{"type":"subscription","event":"unsubscribe","error":{"code":…,"message":…}[,"uid":<raw>]}`: the
/// server ended one subscription (its rights no longer allow it). Not a `subscribe` error, which
/// `@directus/sdk` throws into *every* open subscription of the client: this frame carries the uid, so
/// the SDK hands it to that subscription only, as it does the unsubscribe confirmation.
pub fn revoked_frame(uid: Option<&Uid>, error: &RealtimeError) -> Vec<u8> {
    to_frame(&Revoked {
        kind: "subscription",
        event: "unsubscribe",
        error: ErrorBody {
            code: error.code.code(),
            message: &error.message,
        },
        uid,
    })
}

/// Write `,"uid":"<String(uid)>"}` (or just `}`): the per-subscriber end of a subscription message.
pub fn write_subscription_suffix(out: &mut Vec<u8>, uid: Option<&str>) {
    if let Some(uid) = uid {
        out.extend_from_slice(b",\"uid\":");
        crate::value::write_json_string(out, uid);
    }
    out.push(b'}');
}

/// `{"type":"subscription","event":"init"[,"data":..][,"meta":..]` without the closing part; finish with
/// [`write_subscription_suffix`].
pub fn init_frame(data: Option<&[u8]>, meta: Option<&[u8]>, uid: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + data.map_or(0, <[u8]>::len));
    out.extend_from_slice(b"{\"type\":\"subscription\",\"event\":\"init\"");
    if let Some(data) = data {
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data);
    }
    if let Some(meta) = meta {
        out.extend_from_slice(b",\"meta\":");
        out.extend_from_slice(meta);
    }
    write_subscription_suffix(&mut out, uid);
    out
}

/// `{"type":"subscription","event":"<e>","data":`: what comes before an event's shared `data` in this
/// protocol (static per kind, so framing an event copies bytes and encodes nothing).
pub fn event_head(event: EventKind) -> &'static [u8] {
    match event {
        EventKind::Create => b"{\"type\":\"subscription\",\"event\":\"create\",\"data\":",
        EventKind::Update => b"{\"type\":\"subscription\",\"event\":\"update\",\"data\":",
        EventKind::Delete => b"{\"type\":\"subscription\",\"event\":\"delete\",\"data\":",
    }
}

/// [`event_head`] plus `data`: an event message without its per-subscriber end
/// ([`write_subscription_suffix`]).
pub fn event_body(event: EventKind, data: &[u8]) -> Vec<u8> {
    let head = event_head(event);
    let mut out = Vec::with_capacity(head.len() + data.len() + 1);
    out.extend_from_slice(head);
    out.extend_from_slice(data);
    out
}
