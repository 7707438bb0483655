//! Events as the data path carries them, before any wire protocol frames them.
//!
//! A worker matches a change against a query and produces a neutral event: its [`EventKind`] and its
//! `data`, the JSON every protocol sends (an array of projected rows for create/update, of primary keys
//! for delete; a single object for an item subscription). The gateway's protocol adds the envelope and the
//! per-subscriber part: for the Directus `/websocket` protocol, `protocol::event_head` before the data
//! and the uid suffix after it, so the shared data is encoded once per query and copied, never
//! re-encoded, per subscriber.

/// What happened to the rows of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum EventKind {
    Create,
    Update,
    Delete,
}

impl EventKind {
    pub const ALL: [EventKind; 3] = [EventKind::Create, EventKind::Update, EventKind::Delete];

    /// The name Directus uses (`event` of a subscription message, `event` of a subscribe request).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Create => "create",
            EventKind::Update => "update",
            EventKind::Delete => "delete",
        }
    }

    /// Bit in a query's set of wanted events.
    pub fn bit(self) -> u8 {
        match self {
            EventKind::Create => 1,
            EventKind::Update => 2,
            EventKind::Delete => 4,
        }
    }
}
