//! Client messages: the envelope and per-type shape checks of Directus's zod schemas
//! (`api/src/websocket/messages.ts`), the parsed [`ClientMessage`], the stored form of a subscribe
//! request, and the rejection to send back.

use super::frames::ErrorReply;
use super::zod::{
    ZodIssue, at, union_of, z_array, z_literal, z_object, z_optional, z_record, z_string,
    z_string_or_number, z_union,
};
use super::{ErrorCode, EventKind, MSG_UNPARSEABLE, Uid, zod_message};
use serde_json::{Map, Value as Json};

/// Credentials in an `auth` message.
#[derive(Debug, Clone, PartialEq)]
pub enum Credentials {
    Login { email: String, password: String },
    AccessToken(String),
    RefreshToken(String),
}

impl std::fmt::Display for Credentials {
    /// Never prints secrets: used in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Login { .. } => f.write_str("email/password"),
            Credentials::AccessToken(_) => f.write_str("access_token"),
            Credentials::RefreshToken(_) => f.write_str("refresh_token"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeRequest {
    pub collection: String,
    pub event: Option<EventKind>,
    /// `String(item)`.
    pub item: Option<String>,
    pub query: Option<Map<String, Json>>,
    pub uid: Option<Uid>,
}

/// A [`SubscribeRequest`] kept for the life of a subscription (to normalise it again when the
/// connection's identity changes), in one allocation instead of a JSON tree: live subscriptions are
/// the gateway's per-connection memory.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRequest {
    collection: Box<str>,
    event: Option<EventKind>,
    item: Option<Box<str>>,
    /// The `query` object as compact JSON.
    query: Option<Box<str>>,
}

impl StoredRequest {
    pub fn new(req: &SubscribeRequest) -> StoredRequest {
        StoredRequest {
            collection: req.collection.as_str().into(),
            event: req.event,
            item: req.item.as_deref().map(Into::into),
            query: req
                .query
                .as_ref()
                .map(|q| Json::Object(q.clone()).to_string().into_boxed_str()),
        }
    }

    /// The request again (without its uid, which the subscription keeps itself).
    pub fn request(&self) -> SubscribeRequest {
        SubscribeRequest {
            collection: self.collection.to_string(),
            event: self.event,
            item: self.item.as_deref().map(str::to_owned),
            query: self
                .query
                .as_deref()
                .and_then(|q| match serde_json::from_str(q) {
                    Ok(Json::Object(m)) => Some(m),
                    _ => None,
                }),
            uid: None,
        }
    }
}

/// A client message after envelope and shape validation.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// `credentials` is `Err` when the `auth` message had no usable credentials (Directus ignores such a
    /// message silently; we answer AUTH_FAILED so the client learns why).
    Auth {
        credentials: Result<Credentials, String>,
        uid: Option<Uid>,
    },
    Subscribe(SubscribeRequest),
    Unsubscribe {
        uid: Option<Uid>,
    },
    Ping {
        uid: Option<Uid>,
    },
    Pong,
    /// CRUD over the socket; not served by this cluster (writes go to Directus or the database).
    Items {
        uid: Option<Uid>,
    },
    /// Any other type: silently ignored, but it still counts as a sign of life for the heartbeat.
    Other,
}

/// A rejected inbound message: what to send back. Rejections are JSON and zod errors, which never carry a
/// uid (spec §1.1), so their `uid` is `None`.
pub type Rejection = ErrorReply;

fn zod_rejection(context: &'static str, issues: &[ZodIssue]) -> Rejection {
    Rejection {
        context,
        code: ErrorCode::InvalidPayload,
        message: zod_message(issues),
        uid: None,
    }
}

/// Parse one text frame. `Err` carries the error frame to send; the connection stays open either way.
///
/// The checks are Directus's zod schemas (`api/src/websocket/messages.ts`, 11.17.4): the envelope
/// `WebSocketMessage` (`{type: string, uid?: string | number}`, passthrough) with context `server`, then
/// `WebSocketSubscribeMessage` with context `subscribe` and `WebSocketItemsMessage` with context `items`.
pub fn parse_client_message(text: &[u8]) -> Result<ClientMessage, Rejection> {
    let value: Json = serde_json::from_slice(text).map_err(|_| Rejection {
        context: "server",
        code: ErrorCode::InvalidPayload,
        message: MSG_UNPARSEABLE.into(),
        uid: None,
    })?;
    let obj = z_object(Some(&value)).map_err(|issues| zod_rejection("server", &issues))?;
    let mut issues = at("type", z_string(obj.get("type")));
    issues.extend(at("uid", z_optional(obj.get("uid"), z_string_or_number)));
    if !issues.is_empty() {
        return Err(zod_rejection("server", &issues));
    }
    let ty = obj.get("type").and_then(Json::as_str).expect("checked");
    let uid = obj.get("uid").and_then(Uid::from_json);
    Ok(match ty {
        "auth" => ClientMessage::Auth {
            credentials: parse_credentials(obj),
            uid,
        },
        "subscribe" => ClientMessage::Subscribe(parse_subscribe(obj, uid)?),
        "unsubscribe" => ClientMessage::Unsubscribe { uid },
        "ping" => ClientMessage::Ping { uid },
        "pong" => ClientMessage::Pong,
        "items" => {
            check_items(obj)?;
            ClientMessage::Items { uid }
        }
        _ => ClientMessage::Other,
    })
}

fn parse_credentials(obj: &Map<String, Json>) -> Result<Credentials, String> {
    // Same precedence as Directus's authenticateConnection: an access_token wins over a refresh token,
    // which wins over email/password.
    if let Some(v) = obj.get("access_token") {
        return match v {
            Json::String(t) => Ok(Credentials::AccessToken(t.clone())),
            _ => Err("\"access_token\" must be a string".into()),
        };
    }
    if let Some(v) = obj.get("refresh_token") {
        return match v {
            Json::String(t) => Ok(Credentials::RefreshToken(t.clone())),
            _ => Err("\"refresh_token\" must be a string".into()),
        };
    }
    match (obj.get("email"), obj.get("password")) {
        (Some(Json::String(email)), Some(Json::String(password))) => {
            if is_valid_email(email) {
                Ok(Credentials::Login {
                    email: email.clone(),
                    password: password.clone(),
                })
            } else {
                Err("\"email\" must be a valid email".into())
            }
        }
        (Some(_), Some(_)) => Err("\"email\" and \"password\" must be strings".into()),
        _ => {
            Err("expected \"email\" and \"password\", \"access_token\" or \"refresh_token\"".into())
        }
    }
}

/// A pragmatic version of zod's email check: one `@`, a non-empty local part without spaces, a dotted
/// domain of letters, digits and hyphens.
pub fn is_valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    if local.is_empty() || local.len() > 64 || domain.contains('@') || s.len() > 254 {
        return false;
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return false;
    }
    if !local
        .chars()
        .all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c))
    {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(char::is_alphabetic))
}

/// The subscribe branch of `WebSocketSubscribeMessage`: `collection: string`, `event?: "create" | "update" |
/// "delete"` (a union of literals), `item?: string | number`, `query?: record<string, any>`. `type` and
/// `uid` were checked by the envelope.
fn parse_subscribe(
    obj: &Map<String, Json>,
    uid: Option<Uid>,
) -> Result<SubscribeRequest, Rejection> {
    let mut issues = at("collection", z_string(obj.get("collection")));
    issues.extend(at(
        "event",
        z_optional(obj.get("event"), |v| {
            z_union(
                v,
                &[
                    &|v| z_literal(v, "create"),
                    &|v| z_literal(v, "update"),
                    &|v| z_literal(v, "delete"),
                ],
            )
        }),
    ));
    issues.extend(at("item", z_optional(obj.get("item"), z_string_or_number)));
    issues.extend(at("query", z_optional(obj.get("query"), z_record)));
    if !issues.is_empty() {
        return Err(zod_rejection("subscribe", &issues));
    }
    let event = match obj.get("event").and_then(Json::as_str) {
        Some("create") => Some(EventKind::Create),
        Some("update") => Some(EventKind::Update),
        Some("delete") => Some(EventKind::Delete),
        _ => None,
    };
    Ok(SubscribeRequest {
        collection: obj
            .get("collection")
            .and_then(Json::as_str)
            .expect("checked")
            .to_owned(),
        event,
        item: obj
            .get("item")
            .and_then(Uid::from_json)
            .map(|u| u.to_js_string()),
        query: obj.get("query").and_then(Json::as_object).cloned(),
        uid,
    })
}

/// `WebSocketItemsMessage`: a plain (not discriminated) union of one object schema per action. Each has
/// `uid?: string | number`, `type: "items"`, `collection: string`, `action: <literal>`, then `data`
/// (`z.custom()`, accepts anything, missing included) for create/update, `ids?: (string | number)[]` and
/// `id?: string | number` for read/update/delete, and `query` (`z.custom()`). `uid` and `type` cannot fail
/// here (the envelope checked the one, the dispatch on `type` the other).
fn check_items(obj: &Map<String, Json>) -> Result<(), Rejection> {
    let option = |action: &'static str| -> Vec<ZodIssue> {
        let mut issues = at("collection", z_string(obj.get("collection")));
        issues.extend(at("action", z_literal(obj.get("action"), action)));
        if action != "create" {
            issues.extend(at(
                "ids",
                z_optional(obj.get("ids"), |v| z_array(v, z_string_or_number)),
            ));
            issues.extend(at("id", z_optional(obj.get("id"), z_string_or_number)));
        }
        issues
    };
    let issues = union_of(["create", "read", "update", "delete"].map(option));
    if issues.is_empty() {
        Ok(())
    } else {
        Err(zod_rejection("items", &issues))
    }
}
