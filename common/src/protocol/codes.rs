//! Error codes sent to clients, every error and reason text the `/websocket` endpoint sends (Directus's
//! exact texts, and our own), and the WebSocket close codes.

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
/// Our own: a read permission the subscription depends on cannot be used (its filter does not parse).
pub fn msg_broken_permission(collection: &str, reason: &str) -> String {
    format!(
        "A read permission of collection \"{collection}\" has an invalid filter ({reason}); ask an administrator to fix it."
    )
}

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
    /// The server could not go on safely (the database did not answer a rights re-check): reconnect.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The server is draining (shutdown or redeploy): reconnect, preferably to another node.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The client did not read fast enough and its send queue passed `REALTIME_SEND_BUFFER_BYTES`:
    /// reconnect (and resubscribe).
    pub const SLOW_CONSUMER: u16 = 4008;
}
