//! The Directus realtime wire protocol on the `/websocket` endpoint (spec §1–§3).
//!
//! Inbound: [`parse_client_message`] applies the envelope rules (any JSON parses; the value must be an object
//! with a string `type` and an optional string/number `uid`) and the per-type shape checks, reporting
//! failures with the texts Directus's zod v4 + zod-validation-error produce ([`zod_message`]). Every error
//! text the endpoint sends is defined in this module (the `MSG_*`/`REASON_*` constants and `msg_*`
//! functions). Outbound: the `*_frame` functions build frames byte-for-byte as Directus does (same key order, same uid rules), and
//! [`EventFrame`] splits an event into a shared body and a per-subscriber uid suffix, so fan-out never
//! re-encodes JSON.
//!
//! This module holds what both directions share: the client's [`Uid`] and the [`EventKind`]s. The rest is
//! in `codes` (error codes, every error and reason text, close codes), `inbound` (client message parsing
//! and validation), `zod` (the zod v4 issue model, the schema checks, and zod-validation-error's text) and
//! `frames` (outbound frame builders).

use serde_json::Value as Json;

mod codes;
mod frames;
mod inbound;
mod zod;

pub use codes::{
    ErrorCode, MSG_AUTH_FAILED, MSG_AUTH_TIMEOUT, MSG_DATABASE_UNAVAILABLE, MSG_FORBIDDEN,
    MSG_HANDSHAKE_FAILED, MSG_INVALID_COLLECTION, MSG_REDIS_UNAVAILABLE, MSG_SNAPSHOT_TIMEOUT,
    MSG_TOKEN_EXPIRED, MSG_UNPARSEABLE, REASON_EXTENSIONS_UNSUPPORTED, REASON_ITEMS_UNSUPPORTED,
    close, msg_broken_permission, msg_forbidden_collection, msg_forbidden_fields,
    msg_invalid_payload, msg_requests_exceeded, msg_too_many_subscriptions,
    reason_item_subscription,
};
pub use frames::{
    ErrorReply, PING_FRAME, auth_ok_frame, error_frame, event_body, event_head, init_frame,
    pong_frame, revoked_frame, unsubscribe_frame, write_subscription_suffix,
};
pub use inbound::{
    ClientMessage, Credentials, Rejection, StoredRequest, SubscribeRequest, is_valid_email,
    parse_client_message,
};
pub use zod::{IssueKind, PathKey, ZodIssue, zod_message};

/// A subscription/message uid as the client sent it: a string or a JSON number.
#[derive(Debug, Clone, PartialEq)]
pub enum Uid {
    Str(String),
    Num(serde_json::Number),
}

impl Uid {
    fn from_json(v: &Json) -> Option<Uid> {
        match v {
            Json::String(s) => Some(Uid::Str(s.clone())),
            Json::Number(n) => Some(Uid::Num(n.clone())),
            _ => None,
        }
    }

    /// JavaScript's `String(uid)`: what subscription messages carry and what uniqueness is keyed on.
    pub fn to_js_string(&self) -> String {
        match self {
            Uid::Str(s) => s.clone(),
            Uid::Num(n) => {
                if let Some(i) = n.as_i64() {
                    i.to_string()
                } else if let Some(u) = n.as_u64() {
                    u.to_string()
                } else {
                    let mut out = Vec::new();
                    crate::value::write_js_f64(&mut out, n.as_f64().unwrap_or(0.0));
                    String::from_utf8(out).expect("ascii")
                }
            }
        }
    }
}

/// The event kinds are protocol-neutral (`crate::event`); re-exported here, where every frame builder uses them.
pub use crate::event::EventKind;

#[cfg(test)]
mod tests;
