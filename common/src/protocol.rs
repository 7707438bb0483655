//! The Directus realtime wire protocol on the `/websocket` endpoint (spec §1–§3).
//!
//! Inbound: [`parse_client_message`] applies the envelope rules (any JSON parses; the value must be an object
//! with a string `type` and an optional string/number `uid`) and the per-type shape checks. Outbound: the
//! `*_frame` functions build frames byte-for-byte as Directus does (same key order, same uid rules), and
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

pub const MSG_UNPARSEABLE: &str = "Unable to parse the incoming message.";
pub const MSG_AUTH_FAILED: &str = "Authentication failed.";
pub const MSG_HANDSHAKE_FAILED: &str = "Authentication handshake failed.";
pub const MSG_TOKEN_EXPIRED: &str = "Token expired.";
pub const MSG_AUTH_TIMEOUT: &str = "Authentication timed out.";
pub const MSG_INVALID_COLLECTION: &str =
    "The provided collection does not exists or is not accessible.";
pub const MSG_FORBIDDEN: &str = "You don't have permission to access this.";

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

/// A rejected inbound message: what to send back.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The `type` field of the error frame.
    pub context: &'static str,
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn frame(&self, uid: Option<&Uid>) -> Vec<u8> {
        error_frame(self.context, self.code, &self.message, uid)
    }
}

/// Parse one text frame. `Err` carries the error frame to send; the connection stays open either way.
pub fn parse_client_message(text: &[u8]) -> Result<ClientMessage, Rejection> {
    let value: Json = serde_json::from_slice(text).map_err(|_| Rejection {
        context: "server",
        code: ErrorCode::InvalidPayload,
        message: MSG_UNPARSEABLE.into(),
    })?;
    let envelope_err = |msg: String| Rejection {
        context: "server",
        code: ErrorCode::InvalidPayload,
        message: msg,
    };
    let obj = match &value {
        Json::Object(o) => o,
        other => {
            return Err(envelope_err(format!(
                "Validation error: Expected object, received {}",
                js_type(other)
            )));
        }
    };
    let ty = match obj.get("type") {
        Some(Json::String(t)) => t.as_str(),
        None => {
            return Err(envelope_err(
                "Validation error: Required at \"type\"".into(),
            ));
        }
        Some(other) => {
            return Err(envelope_err(format!(
                "Validation error: Expected string, received {} at \"type\"",
                js_type(other)
            )));
        }
    };
    let uid = match obj.get("uid") {
        None => None,
        Some(v) => Some(Uid::from_json(v).ok_or_else(|| {
            envelope_err(format!(
                "Validation error: Expected string | number, received {} at \"uid\"",
                js_type(v)
            ))
        })?),
    };
    Ok(match ty {
        "auth" => ClientMessage::Auth {
            credentials: parse_credentials(obj),
            uid,
        },
        "subscribe" => ClientMessage::Subscribe(parse_subscribe(obj, uid)?),
        "unsubscribe" => ClientMessage::Unsubscribe { uid },
        "ping" => ClientMessage::Ping { uid },
        "pong" => ClientMessage::Pong,
        "items" => ClientMessage::Items { uid },
        _ => ClientMessage::Other,
    })
}

fn js_type(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
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

fn parse_subscribe(
    obj: &Map<String, Json>,
    uid: Option<Uid>,
) -> Result<SubscribeRequest, Rejection> {
    let mut issues = Vec::new();
    let collection = match obj.get("collection") {
        Some(Json::String(c)) => Some(c.clone()),
        None => {
            issues.push("Required at \"collection\"".to_owned());
            None
        }
        Some(v) => {
            issues.push(format!(
                "Expected string, received {} at \"collection\"",
                js_type(v)
            ));
            None
        }
    };
    let event = match obj.get("event") {
        None => None,
        Some(Json::String(e)) if e == "create" => Some(EventKind::Create),
        Some(Json::String(e)) if e == "update" => Some(EventKind::Update),
        Some(Json::String(e)) if e == "delete" => Some(EventKind::Delete),
        Some(v) => {
            issues.push(format!(
                "Invalid literal value, expected \"create\" | \"update\" | \"delete\", received {} at \"event\"",
                short_json(v)
            ));
            None
        }
    };
    let item = match obj.get("item") {
        None => None,
        Some(v @ (Json::String(_) | Json::Number(_))) => {
            Uid::from_json(v).map(|u| u.to_js_string())
        }
        Some(v) => {
            issues.push(format!(
                "Expected string | number, received {} at \"item\"",
                js_type(v)
            ));
            None
        }
    };
    let query = match obj.get("query") {
        None => None,
        Some(Json::Object(q)) => Some(q.clone()),
        Some(v) => {
            issues.push(format!(
                "Expected object, received {} at \"query\"",
                js_type(v)
            ));
            None
        }
    };
    if !issues.is_empty() {
        return Err(Rejection {
            context: "subscribe",
            code: ErrorCode::InvalidPayload,
            message: format!("Validation error: {}", issues.join("; ")),
        });
    }
    Ok(SubscribeRequest {
        collection: collection.expect("checked"),
        event,
        item,
        query,
        uid,
    })
}

fn short_json(v: &Json) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
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

    #[test]
    fn envelope_errors() {
        let r = reject("{not json");
        assert_eq!(
            s(r.frame(None)),
            r#"{"type":"server","status":"error","error":{"code":"INVALID_PAYLOAD","message":"Unable to parse the incoming message."}}"#
        );
        assert_eq!(
            reject("[]").message,
            "Validation error: Expected object, received array"
        );
        assert_eq!(reject("123").context, "server");
        assert_eq!(
            reject("{}").message,
            "Validation error: Required at \"type\""
        );
        assert_eq!(
            reject(r#"{"type":1}"#).message,
            "Validation error: Expected string, received number at \"type\""
        );
        assert!(
            reject(r#"{"type":"ping","uid":true}"#)
                .message
                .contains("at \"uid\"")
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
    fn subscribe_shapes() {
        let p = |t: &str| parse_client_message(t.as_bytes());
        let ok = p(r#"{"type":"subscribe","collection":"a","event":"update","item":5,"uid":"u","query":{"fields":"*"}}"#)
            .unwrap();
        let ClientMessage::Subscribe(req) = ok else {
            panic!()
        };
        assert_eq!(req.item.as_deref(), Some("5"));
        assert_eq!(req.event, Some(EventKind::Update));
        let err = p(r#"{"type":"subscribe","event":"x","query":"a"}"#).unwrap_err();
        assert_eq!(err.context, "subscribe");
        assert!(
            err.message.contains("Required at \"collection\""),
            "{}",
            err.message
        );
        assert!(err.message.contains("at \"event\""));
        assert!(
            err.message
                .contains("Expected object, received string at \"query\"")
        );
        assert!(p(r#"{"type":"subscribe","collection":"a","item":[1]}"#).is_err());
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
