//! The protocol state of one `/websocket` connection, as a pure state machine.
//!
//! The socket task feeds it messages, results of the work it asked for, and the clock; it answers with
//! [`Action`]s (frames to send, a close, an authentication or subscription to run). No I/O happens here,
//! so every rule of spec §1–§3 (auth modes, the handshake, token expiry and re-auth window, heartbeat,
//! uid echo rules, subscribe/unsubscribe bookkeeping) is unit-tested (in `tests.rs`) with a fake clock.
//!
//! Decisions where the sources disagree (DESIGN §4): a subscribe without uid gets a server-generated uid; a
//! subscribe that repeats a live uid is ignored; after a failed re-auth or a token expiry the connection
//! falls back to the public role (never to unrestricted).

use crate::config::{AuthMode, RateLimit};
use crate::telemetry::CloseReason;
use common::error::RealtimeError;
use common::protocol::{
    self, ClientMessage, Credentials, ErrorCode, ErrorReply, SubscribeRequest, Uid,
    parse_client_message,
};
use std::time::{Duration, Instant};

/// An error reply with one of this protocol's texts.
fn error<S>(
    context: &'static str,
    code: ErrorCode,
    message: impl Into<String>,
    uid: Option<&Uid>,
) -> Action<S> {
    Action::Error(ErrorReply {
        context,
        code,
        message: message.into(),
        uid: uid.cloned(),
    })
}

/// A refused subscription (at subscribe time, or after an identity change): Directus's service errors are
/// `subscribe` errors without a uid.
pub fn subscription_refused(e: RealtimeError) -> ErrorReply {
    ErrorReply::new("subscribe", e, None)
}

/// Settings shared by every session of a listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub mode: AuthMode,
    /// Handshake wait and the re-auth window after TOKEN_EXPIRED.
    pub auth_timeout: Duration,
    /// `None` when the heartbeat is disabled.
    pub heartbeat: Option<Duration>,
    pub max_subscriptions: usize,
    pub rate_limit: Option<RateLimit>,
}

/// Why an authentication was requested: it decides what success and failure do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthPurpose {
    /// The first message in handshake mode.
    Handshake,
    /// An `auth` message on an open connection (login, refresh, or re-auth after expiry).
    Message,
}

/// What the socket task must do.
#[derive(Debug, PartialEq)]
pub enum Action<S> {
    Send(Vec<u8>),
    /// Send this error (the socket renders it and counts it by code).
    Error(ErrorReply),
    /// Close after flushing what was sent, with no status code (Directus's `close()`); the reason is
    /// for metrics.
    Close(CloseReason),
    /// Verify the credentials, set the connection's identity on success, and report with
    /// [`Session::on_auth`].
    Authenticate {
        credentials: Credentials,
        uid: Option<Uid>,
        purpose: AuthPurpose,
    },
    /// The connection is back to the public role (failed auth, or token expiry).
    FallBackToPublic,
    /// Normalise, register and snapshot a subscription, then report with [`Session::on_subscribed`].
    /// `uid` is `String(uid)`, or a generated uid when the client sent none.
    Subscribe {
        request: SubscribeRequest,
        uid: String,
    },
    /// These subscriptions ended: unregister them.
    Unsubscribed(Vec<S>),
}

enum Phase {
    Handshake { deadline: Instant },
    Open,
}

/// A live subscription: its uid and whatever the socket task keeps for it.
pub struct Sub<S> {
    pub uid: String,
    pub data: S,
}

/// The identity-independent protocol state of one connection.
pub struct Session<S> {
    phase: Phase,
    /// A user (not the public role) is authenticated.
    authenticated: bool,
    expires_at: Option<Instant>,
    reauth_deadline: Option<Instant>,
    heartbeat_due: Option<Instant>,
    /// A ping went out and no sign of life came back yet.
    awaiting_life: bool,
    /// An authentication or subscription is running; the socket task reads no further messages meanwhile.
    busy: bool,
    subs: Vec<Sub<S>>,
    /// Fixed-window rate limiting: (window start, messages counted in it).
    rate: Option<(Instant, u32)>,
}

impl<S> Session<S> {
    /// A new session. `token` is set when the upgrade carried a valid token (any mode): the connection
    /// starts authenticated, with the token's expiry.
    pub fn new(cfg: &SessionConfig, now: Instant, token: Option<Option<Instant>>) -> Session<S> {
        let mut s = Session {
            phase: Phase::Open,
            authenticated: false,
            expires_at: None,
            reauth_deadline: None,
            heartbeat_due: None,
            awaiting_life: false,
            busy: false,
            subs: Vec::new(),
            rate: None,
        };
        match token {
            Some(expires) => {
                s.authenticated = true;
                s.expires_at = expires;
                s.open(cfg, now);
            }
            None if cfg.mode == AuthMode::Handshake => {
                s.phase = Phase::Handshake {
                    deadline: now + cfg.auth_timeout,
                };
            }
            None => s.open(cfg, now),
        }
        s
    }

    fn open(&mut self, cfg: &SessionConfig, now: Instant) {
        self.phase = Phase::Open;
        self.heartbeat_due = cfg.heartbeat.map(|p| now + p);
    }

    pub fn is_busy(&self) -> bool {
        self.busy
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Still waiting for the handshake's `auth` message.
    pub fn in_handshake(&self) -> bool {
        matches!(self.phase, Phase::Handshake { .. })
    }

    pub fn subscriptions(&self) -> &[Sub<S>] {
        &self.subs
    }

    pub fn subscriptions_mut(&mut self) -> &mut [Sub<S>] {
        &mut self.subs
    }

    /// Remove the subscriptions for which `drop` is true (e.g. no longer permitted) and return them.
    pub fn remove_where(&mut self, mut drop: impl FnMut(&Sub<S>) -> bool) -> Vec<S> {
        let mut removed = Vec::new();
        let mut i = 0;
        while i < self.subs.len() {
            if drop(&self.subs[i]) {
                removed.push(self.subs.remove(i).data);
            } else {
                i += 1;
            }
        }
        removed
    }

    /// Take every subscription (the connection is closing).
    pub fn take_all(&mut self) -> Vec<S> {
        self.subs.drain(..).map(|s| s.data).collect()
    }

    /// When [`Session::on_timer`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let handshake = match self.phase {
            Phase::Handshake { deadline } => Some(deadline),
            Phase::Open => None,
        };
        [
            handshake,
            self.expires_at,
            self.reauth_deadline,
            self.heartbeat_due,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn handshake_failed() -> Action<S> {
        error(
            "auth",
            ErrorCode::AuthFailed,
            protocol::MSG_HANDSHAKE_FAILED,
            None,
        )
    }

    /// One inbound text (or binary) message.
    pub fn on_message(&mut self, cfg: &SessionConfig, now: Instant, text: &[u8]) -> Vec<Action<S>> {
        if let Phase::Handshake { .. } = self.phase {
            return match parse_client_message(text) {
                Ok(ClientMessage::Auth {
                    credentials: Ok(credentials),
                    uid,
                }) => {
                    self.busy = true;
                    vec![Action::Authenticate {
                        credentials,
                        uid,
                        purpose: AuthPurpose::Handshake,
                    }]
                }
                _ => vec![
                    Self::handshake_failed(),
                    Action::Close(CloseReason::AuthFailed),
                ],
            };
        }
        if let Some(limit) = &cfg.rate_limit {
            let (start, count) = self.rate.get_or_insert((now, 0));
            if now.duration_since(*start) >= limit.duration {
                *start = now;
                *count = 0;
            }
            if *count >= limit.points {
                let retry = limit
                    .duration
                    .saturating_sub(now.duration_since(*start))
                    .as_millis();
                return vec![error(
                    "server",
                    ErrorCode::RequestsExceeded,
                    protocol::msg_requests_exceeded(retry),
                    None,
                )];
            }
            *count += 1;
        }
        let msg = match parse_client_message(text) {
            Ok(m) => m,
            // JSON and zod errors never carry a uid.
            Err(rejection) => return vec![Action::Error(rejection)],
        };
        if let ClientMessage::Auth { credentials, uid } = msg {
            // Any auth message ends the re-auth wait after TOKEN_EXPIRED; it is then handled normally.
            self.reauth_deadline = None;
            return match credentials {
                Ok(credentials) => {
                    self.busy = true;
                    vec![Action::Authenticate {
                        credentials,
                        uid,
                        purpose: AuthPurpose::Message,
                    }]
                }
                Err(_) => self.auth_failed(cfg, uid.as_ref()),
            };
        }
        // Every valid non-auth message is a sign of life for the heartbeat.
        self.awaiting_life = false;
        match msg {
            ClientMessage::Subscribe(request) => {
                let uid = match &request.uid {
                    Some(u) => u.to_js_string(),
                    None => uuid::Uuid::new_v4().to_string(),
                };
                if self.subs.iter().any(|s| s.uid == uid) {
                    // A repeated live uid is ignored (the SDK re-sends its subscribes after a reconnect).
                    return Vec::new();
                }
                if self.subs.len() >= cfg.max_subscriptions {
                    return vec![error(
                        "subscribe",
                        ErrorCode::LimitExceeded,
                        protocol::msg_too_many_subscriptions(cfg.max_subscriptions),
                        request.uid.as_ref(),
                    )];
                }
                self.busy = true;
                vec![Action::Subscribe { request, uid }]
            }
            ClientMessage::Unsubscribe { uid } => {
                let removed = match &uid {
                    Some(u) => {
                        let key = u.to_js_string();
                        self.remove_where(|s| s.uid == key)
                    }
                    None => self.take_all(),
                };
                let mut actions = Vec::new();
                if !removed.is_empty() {
                    actions.push(Action::Unsubscribed(removed));
                }
                actions.push(Action::Send(protocol::unsubscribe_frame(uid.as_ref())));
                actions
            }
            ClientMessage::Ping { uid } if cfg.heartbeat.is_some() => {
                vec![Action::Send(protocol::pong_frame(uid.as_ref()))]
            }
            // A well-formed `items` message (the parser checked Directus's shape): not served here.
            ClientMessage::Items { uid } => vec![error(
                "items",
                ErrorCode::InvalidPayload,
                protocol::msg_invalid_payload(protocol::REASON_ITEMS_UNSUPPORTED),
                uid.as_ref(),
            )],
            _ => Vec::new(),
        }
    }

    fn auth_failed(&mut self, cfg: &SessionConfig, uid: Option<&Uid>) -> Vec<Action<S>> {
        self.authenticated = false;
        self.expires_at = None;
        let mut actions = vec![
            Action::FallBackToPublic,
            error(
                "auth",
                ErrorCode::AuthFailed,
                protocol::MSG_AUTH_FAILED,
                uid,
            ),
        ];
        if cfg.mode != AuthMode::Public {
            actions.push(Action::Close(CloseReason::AuthFailed));
        }
        actions
    }

    /// The connection's credentials stopped being valid while it was open (the user was suspended or
    /// deleted, its static token or session removed; `crate::rights`). Like a failed `auth`: an
    /// AUTH_FAILED error, then a close unless the mode is public, where the connection goes on with the
    /// public policies (the socket task has already moved its subscriptions to them).
    pub fn on_revoked(&mut self, cfg: &SessionConfig) -> Vec<Action<S>> {
        self.authenticated = false;
        self.expires_at = None;
        self.reauth_deadline = None;
        let mut actions = vec![error(
            "auth",
            ErrorCode::AuthFailed,
            protocol::MSG_AUTH_FAILED,
            None,
        )];
        if cfg.mode != AuthMode::Public {
            actions.push(Action::Close(CloseReason::AuthFailed));
        }
        actions
    }

    /// The result of an [`Action::Authenticate`]. On success the socket task has already replaced the
    /// identity; `expires_at` is the new token's expiry.
    pub fn on_auth(
        &mut self,
        cfg: &SessionConfig,
        now: Instant,
        purpose: AuthPurpose,
        uid: Option<&Uid>,
        result: Result<(Option<Instant>, Option<String>), ()>,
    ) -> Vec<Action<S>> {
        self.busy = false;
        match (purpose, result) {
            (AuthPurpose::Handshake, Ok((expires, refresh))) => {
                self.authenticated = true;
                self.expires_at = expires;
                self.open(cfg, now);
                vec![Action::Send(protocol::auth_ok_frame(
                    uid,
                    refresh.as_deref(),
                ))]
            }
            (AuthPurpose::Handshake, Err(())) => {
                vec![
                    Self::handshake_failed(),
                    Action::Close(CloseReason::AuthFailed),
                ]
            }
            (AuthPurpose::Message, Ok((expires, refresh))) => {
                self.authenticated = true;
                self.expires_at = expires;
                vec![Action::Send(protocol::auth_ok_frame(
                    uid,
                    refresh.as_deref(),
                ))]
            }
            (AuthPurpose::Message, Err(())) => self.auth_failed(cfg, uid),
        }
    }

    /// The result of an [`Action::Subscribe`]: the subscription and its `init` frame, or why it was
    /// refused.
    pub fn on_subscribed(
        &mut self,
        uid: String,
        result: Result<(S, Vec<u8>), RealtimeError>,
    ) -> Vec<Action<S>> {
        self.busy = false;
        match result {
            Ok((data, init)) => {
                self.subs.push(Sub { uid, data });
                vec![Action::Send(init)]
            }
            Err(e) => vec![Action::Error(subscription_refused(e))],
        }
    }

    /// Run the timers that are due.
    pub fn on_timer(&mut self, cfg: &SessionConfig, now: Instant) -> Vec<Action<S>> {
        let mut actions = Vec::new();
        if let Phase::Handshake { deadline } = self.phase
            && now >= deadline
            && !self.busy
        {
            actions.push(Self::handshake_failed());
            actions.push(Action::Close(CloseReason::AuthTimeout));
            return actions;
        }
        if self.expires_at.is_some_and(|t| now >= t) {
            self.expires_at = None;
            self.authenticated = false;
            self.reauth_deadline = Some(now + cfg.auth_timeout);
            actions.push(Action::FallBackToPublic);
            actions.push(error(
                "auth",
                ErrorCode::TokenExpired,
                protocol::MSG_TOKEN_EXPIRED,
                None,
            ));
        }
        if self.reauth_deadline.is_some_and(|t| now >= t) {
            self.reauth_deadline = None;
            actions.push(error(
                "auth",
                ErrorCode::AuthTimeout,
                protocol::MSG_AUTH_TIMEOUT,
                None,
            ));
            if cfg.mode != AuthMode::Public {
                actions.push(Action::Close(CloseReason::AuthTimeout));
                return actions;
            }
        }
        if let (Some(due), Some(period)) = (self.heartbeat_due, cfg.heartbeat)
            && now >= due
        {
            if self.awaiting_life {
                actions.push(Action::Close(CloseReason::HeartbeatTimeout));
                return actions;
            }
            self.awaiting_life = true;
            // Rounds are back to back: the next one starts when this one's deadline passes.
            self.heartbeat_due = Some(due + period);
            actions.push(Action::Send(protocol::PING_FRAME.to_vec()));
        }
        actions
    }
}

#[cfg(test)]
mod tests;
