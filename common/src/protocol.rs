//! The Directus realtime wire protocol on the `/websocket` endpoint (spec §1–§3).
//!
//! Inbound: [`parse_client_message`] applies the envelope rules (any JSON parses; the value must be an object
//! with a string `type` and an optional string/number `uid`) and the per-type shape checks, reporting
//! failures with the texts Directus's zod v4 + zod-validation-error produce ([`zod_message`]). Every error
//! text the endpoint sends is defined in this module (the `MSG_*`/`REASON_*` constants and `msg_*`
//! functions). Outbound: the `*_frame` functions build frames byte-for-byte as Directus does (same key order, same uid rules), and
//! [`EventFrame`] splits an event into a shared body and a per-subscriber uid suffix, so fan-out never
//! re-encodes JSON.

use serde_json::{Map, Value as Json};

/// Error codes sent to clients (spec §3). `code()` is the wire string and the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidPayload,
    InvalidCollection,
    AuthFailed,
    TokenExpired,
    AuthTimeout,
    RequestsExceeded,
    Forbidden,
    InvalidQuery,
    ServiceUnavailable,
    /// Our own: a per-connection limit (subscriptions, message size) was reached.
    LimitExceeded,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::InvalidPayload,
        ErrorCode::InvalidCollection,
        ErrorCode::AuthFailed,
        ErrorCode::TokenExpired,
        ErrorCode::AuthTimeout,
        ErrorCode::RequestsExceeded,
        ErrorCode::Forbidden,
        ErrorCode::InvalidQuery,
        ErrorCode::ServiceUnavailable,
        ErrorCode::LimitExceeded,
    ];

    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::InvalidPayload => "INVALID_PAYLOAD",
            ErrorCode::InvalidCollection => "INVALID_COLLECTION",
            ErrorCode::AuthFailed => "AUTH_FAILED",
            ErrorCode::TokenExpired => "TOKEN_EXPIRED",
            ErrorCode::AuthTimeout => "AUTH_TIMEOUT",
            ErrorCode::RequestsExceeded => "REQUESTS_EXCEEDED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::InvalidQuery => "INVALID_QUERY",
            ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Error texts: every message the `/websocket` endpoint sends is built here, nowhere else. Directus's texts are
// copied exactly as Directus 11.17.4 sends them (spec §3.1, wave 2 §0 C6/C10); the others are our own.

pub const MSG_UNPARSEABLE: &str = "Unable to parse the incoming message.";
pub const MSG_AUTH_FAILED: &str = "Authentication failed.";
pub const MSG_HANDSHAKE_FAILED: &str = "Authentication handshake failed.";
pub const MSG_TOKEN_EXPIRED: &str = "Token expired.";
pub const MSG_AUTH_TIMEOUT: &str = "Authentication timed out.";
/// Directus's `items` handler for a system or unknown collection (sic: "does not exists").
pub const MSG_INVALID_COLLECTION: &str =
    "The provided collection does not exists or is not accessible.";
/// Directus's `ForbiddenError` without a reason: only where Directus sends it bare (`readOne` found nothing).
pub const MSG_FORBIDDEN: &str = "You don't have permission to access this.";
/// Our own: the database or Redis did not answer, or the snapshot took too long.
pub const MSG_DATABASE_UNAVAILABLE: &str =
    "Service unavailable: the database did not answer. Retry shortly.";
pub const MSG_REDIS_UNAVAILABLE: &str = "Service unavailable: Redis did not answer. Retry shortly.";
pub const MSG_SNAPSHOT_TIMEOUT: &str = "Service unavailable: the snapshot query timed out.";

/// Where a forbidden collection or field was queried: `root`, or the relational path in quotes.
fn queried_in(path: &str) -> String {
    if path.is_empty() {
        "root".to_owned()
    } else {
        format!("\"{path}\"")
    }
}

/// Directus's `createCollectionForbiddenError`: no read permission on the collection, or it does not exist.
pub fn msg_forbidden_collection(collection: &str, path: &str) -> String {
    format!(
        "You don't have permission to access collection \"{collection}\" or it does not exist. Queried in {}.",
        queried_in(path)
    )
}

/// Directus's `createFieldsForbiddenError`: requested, filtered or sorted fields outside the permission or
/// the schema (singular and plural forms).
pub fn msg_forbidden_fields(collection: &str, fields: &[String], path: &str) -> String {
    let list = fields
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect::<Vec<_>>()
        .join(", ");
    if fields.len() == 1 {
        format!(
            "You don't have permission to access field {list} in collection \"{collection}\" or it does not exist. Queried in {}.",
            queried_in(path)
        )
    } else {
        format!(
            "You don't have permission to access fields {list} in collection \"{collection}\" or they do not exist. Queried in {}.",
            queried_in(path)
        )
    }
}

/// Directus's `InvalidPayloadError`: `Invalid payload. <reason>.`. Directus's reasons end with a period of
/// their own, so its texts end with two (wave 2 §0 C6); the `REASON_*` texts keep that.
pub fn msg_invalid_payload(reason: &str) -> String {
    format!("Invalid payload. {reason}.")
}

pub const REASON_EXTENSIONS_UNSUPPORTED: &str =
    "\"directus_extensions\" is currently not supported.";

/// `item` subscriptions on `directus_fields` / `directus_relations`.
pub fn reason_item_subscription(collection: &str) -> String {
    format!("Cannot subscribe to a specific item in the {collection} collection.")
}

/// Our own (DESIGN: writes go to Directus or the database); no trailing period, so one period in the text.
pub const REASON_ITEMS_UNSUPPORTED: &str = "The \"items\" message type is not supported by this realtime server; write through the Directus REST API or the database";

/// Directus's rate limiter text.
pub fn msg_requests_exceeded(retry_ms: u128) -> String {
    format!("Too many messages, retry after {retry_ms}ms.")
}

/// Our own: `REALTIME_MAX_SUBSCRIPTIONS_PER_CONNECTION` reached.
pub fn msg_too_many_subscriptions(max: usize) -> String {
    format!("Too many subscriptions on this connection (at most {max}).")
}

/// WebSocket close codes this server uses. Directus closes the REST socket without a status code (the peer
/// sees 1005) for every protocol-level close; we keep that and use explicit codes only for conditions
/// Directus does not have.
pub mod close {
    /// Protocol closes Directus makes with `close()` and no code: auth failure in handshake/strict mode,
    /// AUTH_TIMEOUT, heartbeat timeout. Sent as a close frame without a payload.
    pub const NO_STATUS: Option<u16> = None;
    /// Normal closure: echoed when the client closes.
    pub const NORMAL: u16 = 1000;
    /// The frame violated RFC 6455 (bad opcode, unmasked client frame, fragmented control frame, ...).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A message above `REALTIME_MAX_MESSAGE_BYTES`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server is draining (shutdown or redeploy): reconnect, preferably to another node.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The client did not read fast enough and its send queue passed `REALTIME_SEND_BUFFER_BYTES`:
    /// reconnect (and resubscribe).
    pub const SLOW_CONSUMER: u16 = 4008;
}

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

    /// Append the uid unchanged (number stays number), as `auth`, `pong` and unsubscribe replies echo it.
    pub fn write_raw(&self, out: &mut Vec<u8>) {
        match self {
            Uid::Str(s) => crate::value::write_json_string(out, s),
            Uid::Num(n) => out.extend_from_slice(n.to_string().as_bytes()),
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum EventKind {
    Create,
    Update,
    Delete,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Create => "create",
            EventKind::Update => "update",
            EventKind::Delete => "delete",
        }
    }

    pub fn bit(self) -> u8 {
        match self {
            EventKind::Create => 1,
            EventKind::Update => 2,
            EventKind::Delete => 4,
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
/// uid (spec §1.1), so the frame has none.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The `type` field of the error frame.
    pub context: &'static str,
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    fn zod(context: &'static str, issues: &[ZodIssue]) -> Rejection {
        Rejection {
            context,
            code: ErrorCode::InvalidPayload,
            message: zod_message(issues),
        }
    }

    pub fn frame(&self) -> Vec<u8> {
        error_frame(self.context, self.code, &self.message, None)
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
    })?;
    let obj = z_object(Some(&value)).map_err(|issues| Rejection::zod("server", &issues))?;
    let mut issues = at("type", z_string(obj.get("type")));
    issues.extend(at("uid", z_optional(obj.get("uid"), z_string_or_number)));
    if !issues.is_empty() {
        return Err(Rejection::zod("server", &issues));
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
        return Err(Rejection::zod("subscribe", &issues));
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
        Err(Rejection::zod("items", &issues))
    }
}

// ---------------------------------------------------------------------------------------------------------
// Zod v4 issues and their text as zod-validation-error renders them.
//
// Directus 11.17.4 validates with zod 4.1.12 and sends `fromZodError(error).message` (zod-validation-error
// 4.0.2, default options). The rules, read from those two libraries' sources:
// - zod (`packages/zod/src/v4/locales/en.ts`, `core/schemas.ts`):
//   - `invalid_type`: `Invalid input: expected <expected>, received <type>`. `<expected>` is the schema kind
//     (`string`, `number`, `object`, `array`, and `record` for `z.record`). `<type>` is `typeof` refined:
//     `array`, `null`, `undefined` (a missing key), `number`, `boolean`, `string`, `object`.
//   - `invalid_value` (a literal): `Invalid input: expected "<value>"`; with several values
//     `Invalid option: expected one of "a"|"b"`.
//   - `invalid_union`: when every option fails and they all abort (type and value issues always do), one
//     issue carrying each option's issues; its own text is `Invalid input`.
//   - An object reports every failing key, in the schema's key order; an array every failing element.
//     Issue paths are prefixed with the key or index as they bubble up; the issues inside a union stay
//     relative to the union.
// - zod-validation-error (`lib/v4/MessageBuilder.ts`, `lib/utils/joinPath.ts`):
//   - `Validation error: ` + the issues joined with `; `.
//   - An issue: its message with the first letter upper-cased, then ` at index <n>` for a one-element
//     numeric path, or ` at "<path>"` for any other non-empty path.
//   - A union: each option's issues rendered with the union's path prepended, joined with `; `; the
//     options' texts de-duplicated and joined with ` or `.
//   - `<path>`: one key as it is (`""` when empty); longer paths join keys with `.`, indices as `[n]`,
//     keys containing `"` as `["..."]` (quotes escaped) and keys without any identifier character as
//     `["..."]`.

/// A key in an issue path.
#[derive(Debug, Clone, PartialEq)]
pub enum PathKey {
    Key(String),
    Index(usize),
}

impl From<&str> for PathKey {
    fn from(k: &str) -> PathKey {
        PathKey::Key(k.to_owned())
    }
}

impl From<usize> for PathKey {
    fn from(i: usize) -> PathKey {
        PathKey::Index(i)
    }
}

/// One zod issue; `path` is relative to the schema that raised it (the root, or the enclosing union).
#[derive(Debug, Clone, PartialEq)]
pub struct ZodIssue {
    pub path: Vec<PathKey>,
    pub kind: IssueKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum IssueKind {
    /// `invalid_type`: the schema kind expected and the type received.
    InvalidType {
        expected: &'static str,
        received: &'static str,
    },
    /// `invalid_value`: the string literals allowed.
    InvalidValue { values: Vec<&'static str> },
    /// `invalid_union`: each option's issues.
    InvalidUnion { errors: Vec<Vec<ZodIssue>> },
}

impl IssueKind {
    /// zod's English message for the issue.
    fn message(&self) -> String {
        match self {
            IssueKind::InvalidType { expected, received } => {
                format!("Invalid input: expected {expected}, received {received}")
            }
            IssueKind::InvalidValue { values } if values.len() == 1 => {
                format!("Invalid input: expected \"{}\"", values[0])
            }
            IssueKind::InvalidValue { values } => format!(
                "Invalid option: expected one of {}",
                values
                    .iter()
                    .map(|v| format!("\"{v}\""))
                    .collect::<Vec<_>>()
                    .join("|")
            ),
            IssueKind::InvalidUnion { .. } => "Invalid input".to_owned(),
        }
    }
}

/// zod-validation-error's message for a failed parse (at most 99 issues, as its default).
pub fn zod_message(issues: &[ZodIssue]) -> String {
    let body = issues
        .iter()
        .take(99)
        .map(|i| render_issue(i, &[]))
        .collect::<Vec<_>>()
        .join("; ");
    if body.is_empty() {
        "Validation error".to_owned()
    } else {
        format!("Validation error: {body}")
    }
}

fn render_issue(issue: &ZodIssue, prefix: &[PathKey]) -> String {
    let path: Vec<PathKey> = prefix.iter().chain(&issue.path).cloned().collect();
    if let IssueKind::InvalidUnion { errors } = &issue.kind
        && !errors.is_empty()
    {
        let mut texts: Vec<String> = Vec::with_capacity(errors.len());
        for option in errors {
            let text = option
                .iter()
                .map(|i| render_issue(i, &path))
                .collect::<Vec<_>>()
                .join("; ");
            if !texts.contains(&text) {
                texts.push(text);
            }
        }
        return texts.join(" or ");
    }
    let mut out = upper_first(&issue.kind.message());
    match path.as_slice() {
        [] => {}
        [PathKey::Index(i)] => out.push_str(&format!(" at index {i}")),
        _ => out.push_str(&format!(" at \"{}\"", join_path(&path))),
    }
    out
}

fn upper_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// zod-validation-error's `joinPath`.
fn join_path(path: &[PathKey]) -> String {
    if let [one] = path {
        return match one {
            PathKey::Key(k) if k.is_empty() => "\"\"".to_owned(),
            PathKey::Key(k) => k.clone(),
            PathKey::Index(i) => i.to_string(),
        };
    }
    let mut out = String::new();
    for key in path {
        match key {
            PathKey::Index(i) => out.push_str(&format!("[{i}]")),
            PathKey::Key(k) if k.contains('"') => {
                out.push_str(&format!("[\"{}\"]", k.replace('"', "\\\"")))
            }
            // Its identifier test is an unanchored regex: one identifier-start character anywhere
            // passes. `ID_Start` is approximated by Unicode `Alphabetic`.
            PathKey::Key(k) if !k.chars().any(|c| c == '$' || c == '_' || c.is_alphabetic()) => {
                out.push_str(&format!("[\"{k}\"]"))
            }
            PathKey::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
        }
    }
    out
}

/// zod's `parsedType`, for JSON values (`None` is a missing key, `undefined` in JavaScript).
fn received(v: Option<&Json>) -> &'static str {
    match v {
        None => "undefined",
        Some(Json::Null) => "null",
        Some(Json::Bool(_)) => "boolean",
        Some(Json::Number(_)) => "number",
        Some(Json::String(_)) => "string",
        Some(Json::Array(_)) => "array",
        Some(Json::Object(_)) => "object",
    }
}

fn invalid_type(expected: &'static str, v: Option<&Json>) -> Vec<ZodIssue> {
    vec![ZodIssue {
        path: Vec::new(),
        kind: IssueKind::InvalidType {
            expected,
            received: received(v),
        },
    }]
}

/// Prefix issues with the key they were found under (what a zod object or array does).
fn at(key: impl Into<PathKey>, mut issues: Vec<ZodIssue>) -> Vec<ZodIssue> {
    let key = key.into();
    for i in &mut issues {
        i.path.insert(0, key.clone());
    }
    issues
}

/// `z.object(...)`: the value must be a (non-array, non-null) object.
fn z_object(v: Option<&Json>) -> Result<&Map<String, Json>, Vec<ZodIssue>> {
    match v {
        Some(Json::Object(o)) => Ok(o),
        _ => Err(invalid_type("object", v)),
    }
}

fn z_string(v: Option<&Json>) -> Vec<ZodIssue> {
    match v {
        Some(Json::String(_)) => Vec::new(),
        _ => invalid_type("string", v),
    }
}

fn z_number(v: Option<&Json>) -> Vec<ZodIssue> {
    match v {
        Some(Json::Number(_)) => Vec::new(),
        _ => invalid_type("number", v),
    }
}

/// `z.record(z.string(), z.any())`: a plain object; every key is a string and any value passes.
fn z_record(v: Option<&Json>) -> Vec<ZodIssue> {
    match v {
        Some(Json::Object(_)) => Vec::new(),
        _ => invalid_type("record", v),
    }
}

fn z_literal(v: Option<&Json>, literal: &'static str) -> Vec<ZodIssue> {
    match v {
        Some(Json::String(s)) if s == literal => Vec::new(),
        _ => vec![ZodIssue {
            path: Vec::new(),
            kind: IssueKind::InvalidValue {
                values: vec![literal],
            },
        }],
    }
}

/// `.optional()`: a missing key passes (JSON has no `undefined` otherwise).
fn z_optional(v: Option<&Json>, inner: impl Fn(Option<&Json>) -> Vec<ZodIssue>) -> Vec<ZodIssue> {
    match v {
        None => Vec::new(),
        Some(_) => inner(v),
    }
}

fn z_array(v: Option<&Json>, element: impl Fn(Option<&Json>) -> Vec<ZodIssue>) -> Vec<ZodIssue> {
    match v {
        Some(Json::Array(items)) => items
            .iter()
            .enumerate()
            .flat_map(|(i, item)| at(i, element(Some(item))))
            .collect(),
        _ => invalid_type("array", v),
    }
}

/// `z.union([...])`: passes if one option passes; otherwise one `invalid_union` issue with every option's
/// issues.
/// A schema: the issues a value (`None` = a missing key) raises.
type Schema<'a> = &'a dyn Fn(Option<&Json>) -> Vec<ZodIssue>;

fn z_union(v: Option<&Json>, options: &[Schema]) -> Vec<ZodIssue> {
    union_of(options.iter().map(|option| option(v)))
}

/// The outcome of a union from its options' issues. Every issue built here aborts (zod sets `continue`
/// only on refinement checks), so zod's fallback to a single non-aborted option never applies.
fn union_of(results: impl IntoIterator<Item = Vec<ZodIssue>>) -> Vec<ZodIssue> {
    let mut errors = Vec::new();
    for issues in results {
        if issues.is_empty() {
            return Vec::new();
        }
        errors.push(issues);
    }
    vec![ZodIssue {
        path: Vec::new(),
        kind: IssueKind::InvalidUnion { errors },
    }]
}

/// `z.union([z.string(), z.number()])`, Directus's `zodStringOrNumber`.
fn z_string_or_number(v: Option<&Json>) -> Vec<ZodIssue> {
    z_union(v, &[&z_string, &z_number])
}

// ---------------------------------------------------------------------------------------------------------
// Outbound frames (key order as Directus's fmtMessage / WebSocketError#toJSON)

/// The code of a frame built by [`error_frame`], `None` for any other frame (for counting errors sent
/// without threading the code through every path that sends one).
pub fn error_code_of(frame: &[u8]) -> Option<ErrorCode> {
    const HEAD: &[u8] = b"{\"type\":\"";
    const MID: &[u8] = b",\"status\":\"error\",\"error\":{\"code\":\"";
    let rest = frame.strip_prefix(HEAD)?;
    // Contexts are plain words (`server`, `auth`, `subscribe`, ...): the first quote ends the type.
    let end = rest.iter().position(|&b| b == b'"')?;
    let rest = rest[end + 1..].strip_prefix(MID)?;
    ErrorCode::ALL.into_iter().find(|c| {
        rest.strip_prefix(c.code().as_bytes())
            .is_some_and(|r| r.first() == Some(&b'"'))
    })
}

/// `{"type":<ctx>,"status":"error","error":{"code":..,"message":..}[,"uid":<raw>]}`
pub fn error_frame(context: &str, code: ErrorCode, message: &str, uid: Option<&Uid>) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + message.len());
    out.extend_from_slice(b"{\"type\":");
    crate::value::write_json_string(&mut out, context);
    out.extend_from_slice(b",\"status\":\"error\",\"error\":{\"code\":\"");
    out.extend_from_slice(code.code().as_bytes());
    out.extend_from_slice(b"\",\"message\":");
    crate::value::write_json_string(&mut out, message);
    out.push(b'}');
    if let Some(uid) = uid {
        out.extend_from_slice(b",\"uid\":");
        uid.write_raw(&mut out);
    }
    out.push(b'}');
    out
}

/// `{"type":"auth","status":"ok"[,"uid":<raw>][,"refresh_token":..]}`
pub fn auth_ok_frame(uid: Option<&Uid>, refresh_token: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"type\":\"auth\",\"status\":\"ok\"");
    if let Some(uid) = uid {
        out.extend_from_slice(b",\"uid\":");
        uid.write_raw(&mut out);
    }
    if let Some(token) = refresh_token {
        out.extend_from_slice(b",\"refresh_token\":");
        crate::value::write_json_string(&mut out, token);
    }
    out.push(b'}');
    out
}

pub const PING_FRAME: &[u8] = b"{\"type\":\"ping\"}";

/// `{"type":"pong"[,"uid":<raw>]}`
pub fn pong_frame(uid: Option<&Uid>) -> Vec<u8> {
    let mut out = b"{\"type\":\"pong\"".to_vec();
    if let Some(uid) = uid {
        out.extend_from_slice(b",\"uid\":");
        uid.write_raw(&mut out);
    }
    out.push(b'}');
    out
}

/// `{"type":"subscription","event":"unsubscribe"[,"uid":<raw>]}`
pub fn unsubscribe_frame(uid: Option<&Uid>) -> Vec<u8> {
    let mut out = b"{\"type\":\"subscription\",\"event\":\"unsubscribe\"".to_vec();
    if let Some(uid) = uid {
        out.extend_from_slice(b",\"uid\":");
        uid.write_raw(&mut out);
    }
    out.push(b'}');
    out
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

/// The body of an event message shared by every subscriber of one query:
/// `{"type":"subscription","event":"<e>","data":<data>` — each subscriber's frame is this plus its suffix.
pub fn event_body(event: EventKind, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(56 + data.len());
    out.extend_from_slice(b"{\"type\":\"subscription\",\"event\":\"");
    out.extend_from_slice(event.as_str().as_bytes());
    out.extend_from_slice(b"\",\"data\":");
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn error_codes_are_read_back_from_error_frames_only() {
        for code in ErrorCode::ALL {
            let frame = error_frame("subscribe", code, "m", Some(&Uid::Str("a".into())));
            assert_eq!(error_code_of(&frame), Some(code));
        }
        assert_eq!(error_code_of(PING_FRAME), None);
        assert_eq!(error_code_of(br#"{"type":"auth","status":"ok"}"#), None);
        // An event whose data happens to contain the error text is not an error.
        assert_eq!(
            error_code_of(
                br#"{"type":"subscription","event":"init","data":[{"t":",\"status\":\"error\",\"error\":{\"code\":\"FORBIDDEN\""}]}"#
            ),
            None
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
}
