//! The task that owns one `/websocket` connection.
//!
//! One task per socket selects over: the socket becoming readable, the one operation in flight
//! (authentication, subscribe, or re-authorising subscriptions), event frames arriving in the outbox, the
//! socket becoming writable while output is pending, the session's next timer, and shutdown. It never
//! blocks on a write: frames go into a write buffer flushed with non-blocking writes, so frames that
//! queued up leave in one syscall.
//!
//! Memory: the read buffer exists only while bytes are pending and the write buffer only while output is
//! pending; an idle connection holds the task, the socket, the session and an empty outbox.

use crate::auth::{Accountability, AuthError, Authenticated, ClientInfo};
use crate::outbox::Outbox;
use crate::session::{Action, AuthPurpose, Session, subscription_refused};
use crate::state::AppState;
use crate::subscribe::{ActiveSub, SubCtx, Subscribed, detach, reauthorize, subscribe};
use crate::telemetry::{self, AuthState, CloseReason};
use common::error::RealtimeError;
use common::event::EventKind;
use common::normalize::NormalizedQuery;
use common::protocol::{self, Credentials, ErrorReply, Uid, close};
use common::ws::{Decoder, Message, OpCode, encode_close, encode_frame, encode_header};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Bytes read per readiness event before frames are processed (bounds one read burst).
const READ_CHUNK: usize = 16 * 1024;
/// How long a closing connection may take to flush its output and let the peer answer before the socket
/// is dropped (a slow consumer that stopped reading never drains).
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// A subscription's uid and its normalisation for a new identity (or why it is refused).
type Reauthorized = (String, Result<Arc<NormalizedQuery>, RealtimeError>);

/// Result of the operation in flight.
enum Done {
    Auth {
        /// `password`, `access_token` or `refresh_token` (metrics).
        method: &'static str,
        purpose: AuthPurpose,
        uid: Option<Uid>,
        result: Result<Authenticated, AuthError>,
    },
    Subscribe {
        uid: String,
        result: Box<Result<Subscribed, RealtimeError>>,
    },
    /// New normalisations of the subscriptions for a changed identity, by uid.
    Reauthorized(Vec<Reauthorized>),
}

type Pending = Pin<Box<dyn Future<Output = Done> + Send>>;

/// How the connection was admitted at the HTTP upgrade.
pub struct Admission {
    /// The identity from a token in the URL or cookie (any mode), else `None`.
    pub token: Option<Authenticated>,
    /// The public role for this client.
    pub public: Arc<Accountability>,
    pub client: ClientInfo,
}

struct Conn {
    state: Arc<AppState>,
    id: u64,
    stream: TcpStream,
    /// Unprocessed inbound bytes, `rbuf[rpos..]`. Empty (no allocation) when idle.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Outbound bytes not yet written, `wbuf[wpos..]`.
    wbuf: Vec<u8>,
    wpos: usize,
    decoder: Decoder,
    session: Session<ActiveSub>,
    outbox: Arc<Outbox>,
    next_sub: u32,
    acct: Arc<Accountability>,
    public: Arc<Accountability>,
    client: ClientInfo,
    pending: Option<Pending>,
    /// The identity changed while another operation ran: re-authorise subscriptions after it.
    reauth_needed: bool,
    closing: Option<Instant>,
    close_reason: Option<CloseReason>,
    peer_gone: bool,
    /// When the gateway drains: the moment (jittered) this connection closes with 1012.
    drain_at: Option<Instant>,
    /// The state counted in the connections gauge.
    auth_state: AuthState,
    /// Pending output last added to the send-queue gauge.
    queued_reported: i64,
}

fn instant_for(epoch_secs: i64) -> Instant {
    let now_secs = common_io::clock::since_epoch().as_secs_f64();
    let delta = epoch_secs as f64 - now_secs;
    if delta <= 0.0 {
        Instant::now()
    } else {
        Instant::now() + Duration::from_secs_f64(delta)
    }
}

/// Serve one upgraded connection until it closes. `leftover` is what the HTTP layer read past the request.
pub async fn serve(
    state: Arc<AppState>,
    stream: TcpStream,
    leftover: Vec<u8>,
    admission: Admission,
) {
    let now = Instant::now();
    let token_expiry = admission
        .token
        .as_ref()
        .map(|t| t.expires_at.map(instant_for));
    let session = Session::new(&state.rest_session, now, token_expiry);
    let acct = admission
        .token
        .as_ref()
        .map(|t| t.accountability.clone())
        .unwrap_or_else(|| admission.public.clone());
    let mut conn = Conn {
        decoder: Decoder::server(state.config.limits.max_message_bytes),
        id: state.next_conn.fetch_add(1, Ordering::Relaxed),
        outbox: Arc::new(Outbox::new(state.config.limits.send_buffer_bytes)),
        state,
        stream,
        rbuf: leftover,
        rpos: 0,
        wbuf: Vec::new(),
        wpos: 0,
        session,
        next_sub: 0,
        acct,
        public: admission.public,
        client: admission.client,
        pending: None,
        reauth_needed: false,
        closing: None,
        close_reason: None,
        peer_gone: false,
        drain_at: None,
        auth_state: AuthState::Pending,
        queued_reported: 0,
    };
    conn.auth_state = conn.current_auth_state();
    conn.state.gauges.opened(conn.auth_state);
    let span = tracing::info_span!(
        target: common_io::telemetry::OTEL_TARGET,
        "ws.connection",
        conn = conn.id,
        gateway = %conn.state.registrar.gateway_id,
        endpoint = telemetry::WEBSOCKET,
    );
    tracing::Instrument::instrument(conn.run(), span).await;
}

impl Conn {
    async fn run(&mut self) {
        let mut shutdown = self.state.shutdown.clone();
        let outbox = self.outbox.clone();
        // Frames that arrived together with the upgrade request.
        self.process_input();
        // One timer for the connection's life, moved only when the next deadline changes: creating a
        // timer on every wake-up (each event delivered) showed up as timer-wheel work in profiles.
        let timer = tokio::time::sleep_until(far_future());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            self.flush();
            if self.peer_gone {
                break;
            }
            if let Some(deadline) = self.closing
                && (self.wpos == self.wbuf.len() || Instant::now() >= deadline)
            {
                break;
            }
            if self.pending.is_none() && self.reauth_needed {
                self.start_reauthorization();
            }
            let deadline = match self.closing {
                Some(d) => Some(d),
                None => earliest(self.session.next_deadline(), self.drain_at),
            };
            if deadline != armed {
                timer
                    .as_mut()
                    .reset(deadline.map_or_else(far_future, Into::into));
                armed = deadline;
            }
            let can_read = self.closing.is_none() && self.pending.is_none();
            tokio::select! {
                ready = self.stream.readable(), if can_read => {
                    if ready.is_err() {
                        self.peer_gone = true;
                        continue;
                    }
                    self.read_available();
                    self.process_input();
                }
                done = async { self.pending.as_mut().expect("guarded").await }, if self.pending.is_some() => {
                    self.pending = None;
                    self.on_done(done);
                    // Messages that queued up behind the operation.
                    self.process_input();
                }
                _ = outbox.notify.notified(), if self.closing.is_none() => self.drain_outbox(),
                ready = self.stream.writable(), if self.wpos < self.wbuf.len() => {
                    if ready.is_err() {
                        self.peer_gone = true;
                    }
                }
                _ = &mut timer, if armed.is_some() => {
                    // Fired: re-arm on the next round even if the deadline stays the same.
                    armed = None;
                    if self.closing.is_none() {
                        if self.drain_at.is_some_and(|t| Instant::now() >= t) {
                            self.close(Some(close::SERVICE_RESTART), "server shutting down", CloseReason::Shutdown);
                        } else {
                            let actions = self.session.on_timer(&self.state.rest_session, Instant::now());
                            self.apply(actions);
                        }
                    }
                }
                changed = shutdown.changed(), if self.drain_at.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        // Spread the closes so the clients do not all reconnect at the same moment.
                        let spread = self.state.config.drain.spread;
                        self.drain_at = Some(Instant::now() + spread.mul_f64(rand::random::<f64>()));
                    }
                }
            }
        }
        self.finish().await;
    }

    fn current_auth_state(&self) -> AuthState {
        if self.session.in_handshake() {
            AuthState::Pending
        } else if self.acct.user.is_some() {
            AuthState::Authenticated
        } else {
            AuthState::Public
        }
    }

    /// Keep the connections gauge in step with the session.
    fn update_auth_state(&mut self) {
        let now = self.current_auth_state();
        self.state.gauges.moved(self.auth_state, now);
        self.auth_state = now;
    }

    async fn finish(&mut self) {
        for sub in self.session.take_all() {
            detach(&self.state, sub.id, sub.key);
        }
        let reason = self.close_reason.unwrap_or(CloseReason::Disconnected);
        self.state.gauges.closed(self.auth_state, reason);
        self.state
            .gauges
            .send_queue_bytes
            .fetch_sub(self.queued_reported, Ordering::Relaxed);
        self.queued_reported = 0;
        if self.peer_gone {
            return;
        }
        // Our close frame is out; half-close and give the peer a moment to answer before dropping.
        let _ = self.stream.shutdown().await;
        // On the heap: a stack buffer would sit in every connection's future for its whole life.
        let mut scratch = vec![0u8; 1024];
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            loop {
                if self.stream.readable().await.is_err() {
                    return;
                }
                match self.stream.try_read(&mut scratch) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }

    /// Read what the socket has, up to one chunk.
    fn read_available(&mut self) {
        if self.rpos > 0 && self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        }
        self.rbuf.reserve(READ_CHUNK);
        match self.stream.try_read_buf(&mut self.rbuf) {
            Ok(0) => self.peer_gone = true,
            Ok(n) => telemetry::hot().received_bytes.increment(n as u64),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => self.peer_gone = true,
        }
    }

    /// Decode and handle buffered frames until the buffer is empty, an operation starts, or we close.
    fn process_input(&mut self) {
        while self.closing.is_none() && self.pending.is_none() && self.rpos < self.rbuf.len() {
            let decoded = self.decoder.decode(&mut self.rbuf[self.rpos..]);
            match decoded {
                Ok(None) => break,
                Ok(Some((msg, used))) => {
                    self.rpos += used;
                    if let Some(msg) = msg {
                        self.on_frame(msg);
                    }
                }
                Err(e) => {
                    tracing::debug!(conn = self.id, gateway = %self.state.registrar.gateway_id, error = %e, "closing connection on a framing error");
                    let code = e.close_code();
                    let reason = if code == close::MESSAGE_TOO_BIG {
                        CloseReason::TooBig
                    } else {
                        CloseReason::ProtocolError
                    };
                    self.close(Some(code), &e.to_string(), reason);
                }
            }
        }
        if self.rpos == self.rbuf.len() {
            // Idle: give the buffer back.
            self.rbuf = Vec::new();
            self.rpos = 0;
        } else if self.rpos > 0 && self.rpos > self.rbuf.len() / 2 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
    }

    fn on_frame(&mut self, msg: Message) {
        match msg {
            Message::Data { payload, .. } => {
                telemetry::hot().messages_received.increment(1);
                let actions =
                    self.session
                        .on_message(&self.state.rest_session, Instant::now(), &payload);
                self.apply(actions);
            }
            // RFC 6455 requires answering pings (Directus's `ws` server does not; answering is harmless).
            Message::Ping(payload) => encode_frame(&mut self.wbuf, OpCode::Pong, &payload),
            Message::Pong(_) => {}
            Message::Close(code) => {
                // Echo the peer's code, as the close handshake asks.
                let code = code
                    .filter(|c| *c >= 1000 && *c != 1005 && *c != 1006)
                    .or(Some(close::NORMAL));
                self.close(code, "", CloseReason::Client);
            }
        }
    }

    fn close(&mut self, code: Option<u16>, text: &str, reason: CloseReason) {
        if self.closing.is_some() {
            return;
        }
        self.close_reason = Some(reason);
        self.closing = Some(Instant::now() + CLOSE_LINGER);
        encode_close(&mut self.wbuf, code, text);
    }

    /// Render an error reply (the only place errors become bytes) and count it by code.
    fn send_error(&mut self, reply: &ErrorReply) {
        telemetry::protocol_error(reply.code.code());
        self.send(&reply.frame());
    }

    fn send(&mut self, frame: &[u8]) {
        telemetry::hot().messages_sent.increment(1);
        encode_frame(&mut self.wbuf, OpCode::Text, frame);
    }

    /// Frame an event as the Directus protocol does, as one text frame: the static head for its kind,
    /// the shared data, this subscriber's suffix. Bytes are copied, nothing is encoded.
    fn send_event(&mut self, kind: EventKind, data: &[u8], suffix: &[u8]) {
        let head = protocol::event_head(kind);
        encode_header(
            &mut self.wbuf,
            OpCode::Text,
            head.len() + data.len() + suffix.len(),
            None,
        );
        self.wbuf.extend_from_slice(head);
        self.wbuf.extend_from_slice(data);
        self.wbuf.extend_from_slice(suffix);
    }

    /// Move queued event frames into the write buffer; close a connection that fell too far behind.
    fn drain_outbox(&mut self) {
        let frames = self.outbox.drain();
        telemetry::hot()
            .messages_sent
            .increment(frames.len() as u64);
        for q in frames {
            self.send_event(q.kind, &q.data, &q.suffix);
        }
        if self.outbox.overflowed()
            || self.wbuf.len() - self.wpos > self.state.config.limits.send_buffer_bytes
        {
            tracing::info!(
                conn = self.id,
                gateway = %self.state.registrar.gateway_id,
                queued = self.wbuf.len() - self.wpos,
                "closing a slow consumer"
            );
            self.close(
                Some(close::SLOW_CONSUMER),
                "slow consumer: send buffer exceeded",
                CloseReason::SlowConsumer,
            );
        }
    }

    fn apply(&mut self, actions: Vec<Action<ActiveSub>>) {
        for action in actions {
            if self.closing.is_some() {
                return;
            }
            match action {
                Action::Send(frame) => self.send(&frame),
                Action::Error(reply) => self.send_error(&reply),
                Action::Close(reason) => self.close(close::NO_STATUS, "", reason),
                Action::FallBackToPublic => {
                    self.set_identity(self.public.clone());
                    self.update_auth_state();
                }
                Action::Authenticate {
                    credentials,
                    uid,
                    purpose,
                } => {
                    let state = self.state.clone();
                    let client = self.client.clone();
                    let method = match &credentials {
                        Credentials::AccessToken(_) => "access_token",
                        Credentials::RefreshToken(_) => "refresh_token",
                        Credentials::Login { .. } => "password",
                    };
                    self.pending = Some(Box::pin(async move {
                        let result = match credentials {
                            Credentials::AccessToken(t) => {
                                state.auth.verify_access_token(&t, client.ip).await
                            }
                            Credentials::RefreshToken(t) => {
                                state.auth.authenticate_refresh(&t, &client).await
                            }
                            Credentials::Login { email, password } => {
                                state
                                    .auth
                                    .authenticate_login(&email, &password, &client)
                                    .await
                            }
                        };
                        Done::Auth {
                            method,
                            purpose,
                            uid,
                            result,
                        }
                    }));
                }
                Action::Subscribe { request, uid } => {
                    let state = self.state.clone();
                    let acct = self.acct.clone();
                    self.next_sub = self.next_sub.wrapping_add(1);
                    let ctx = SubCtx {
                        conn: self.id,
                        sub: self.next_sub,
                        outbox: self.outbox.clone(),
                    };
                    let span = tracing::info_span!(
                        target: common_io::telemetry::OTEL_TARGET,
                        "ws.subscription",
                        collection = %request.collection,
                        uid = %uid,
                        query = tracing::field::Empty,
                        ok = tracing::field::Empty,
                    );
                    self.pending = Some(Box::pin(tracing::Instrument::instrument(
                        async move {
                            let result = subscribe(&state, &acct, request, &uid, ctx).await;
                            let span = tracing::Span::current();
                            span.record("ok", result.is_ok());
                            if let Ok(s) = &result {
                                span.record("query", tracing::field::display(s.sub.id));
                            }
                            Done::Subscribe {
                                uid,
                                result: Box::new(result),
                            }
                        },
                        span,
                    )));
                }
                Action::Unsubscribed(subs) => {
                    for sub in subs {
                        detach(&self.state, sub.id, sub.key);
                    }
                    // Detached: nothing more is queued for them. What was queued already goes out now,
                    // ahead of the confirmation the session sends next, so no event of an ended
                    // subscription ever follows its confirmation.
                    self.drain_outbox();
                }
            }
        }
    }

    /// A new identity applies to existing subscriptions too: stop their events at once and normalise
    /// them again for it (they may lose rows, fields, or access altogether).
    fn set_identity(&mut self, acct: Arc<Accountability>) {
        let changed = *self.acct != *acct;
        self.acct = acct;
        if changed && !self.session.subscriptions().is_empty() {
            for sub in self.session.subscriptions() {
                detach(&self.state, sub.data.id, sub.data.key);
            }
            self.reauth_needed = true;
        }
    }

    fn start_reauthorization(&mut self) {
        self.reauth_needed = false;
        let state = self.state.clone();
        let acct = self.acct.clone();
        let subs: Vec<(String, common::protocol::SubscribeRequest)> = self
            .session
            .subscriptions()
            .iter()
            .map(|s| (s.uid.clone(), s.data.request.request()))
            .collect();
        self.pending = Some(Box::pin(async move {
            let mut out = Vec::with_capacity(subs.len());
            for (uid, req) in subs {
                out.push((uid, reauthorize(&state, &acct, &req).await));
            }
            Done::Reauthorized(out)
        }));
    }

    fn on_done(&mut self, done: Done) {
        let state = self.state.clone();
        let cfg = &state.rest_session;
        let now = Instant::now();
        match done {
            Done::Auth {
                method,
                purpose,
                uid,
                result,
            } => {
                let outcome = match result {
                    Ok(auth) => {
                        let expires = auth.expires_at.map(instant_for);
                        self.set_identity(auth.accountability.clone());
                        Ok((expires, auth.refresh_token))
                    }
                    Err(e) => {
                        tracing::debug!(conn = self.id, gateway = %self.state.registrar.gateway_id, method, error = %e, "websocket authentication failed");
                        telemetry::auth_failure(method);
                        Err(())
                    }
                };
                let actions = self
                    .session
                    .on_auth(cfg, now, purpose, uid.as_ref(), outcome);
                self.apply(actions);
                self.update_auth_state();
            }
            Done::Subscribe { uid, result } => match *result {
                Ok(Subscribed {
                    sub,
                    init,
                    snapshot,
                    until,
                }) => {
                    let (id, key, suffix) = (sub.id, sub.key, sub.suffix.clone());
                    let actions = self.session.on_subscribed(uid, Ok((sub, init)));
                    self.apply(actions);
                    // `init` is in the write buffer: now the events its snapshot does not contain.
                    for (kind, data) in self.state.hub.activate(id, key, snapshot, until) {
                        self.send_event(kind, &data, &suffix);
                    }
                    if self.reauth_needed {
                        // The identity changed while this subscribe ran: it is re-checked with the others.
                        detach(&self.state, id, key);
                    }
                }
                Err(e) => {
                    let actions = self.session.on_subscribed(uid, Err(e));
                    self.apply(actions);
                }
            },
            Done::Reauthorized(results) => self.on_reauthorized(results),
        }
    }

    fn on_reauthorized(&mut self, results: Vec<Reauthorized>) {
        let mut denied = Vec::new();
        for (uid, result) in results {
            match result {
                Ok(query) => {
                    let Some(sub) = self
                        .session
                        .subscriptions_mut()
                        .iter_mut()
                        .find(|s| s.uid == uid)
                    else {
                        continue;
                    };
                    sub.data.id = query.id();
                    let (id, key, suffix) = (sub.data.id, sub.data.key, sub.data.suffix.clone());
                    let def: Arc<str> = query.canonical_json().into();
                    // No snapshot is re-sent (Directus sends none either): events continue from now.
                    if self
                        .state
                        .hub
                        .attach(id, def.clone(), 0, key, self.outbox.clone(), suffix)
                    {
                        let registrar = self.state.registrar.clone();
                        let hub = self.state.hub.clone();
                        tokio::spawn(async move {
                            if let Err(e) = registrar.register_live(&hub, id, &def).await {
                                tracing::warn!(error = %e, "re-registering after an identity change failed");
                            }
                        });
                    }
                    self.state.hub.activate(id, key, None, 0);
                }
                Err(e) => {
                    denied.push(uid);
                    self.send_error(&subscription_refused(e));
                }
            }
        }
        // Subscriptions the new identity may not have end here (their uid can be reused).
        self.session.remove_where(|s| denied.contains(&s.uid));
    }

    /// Write as much pending output as the socket takes without blocking.
    fn flush(&mut self) {
        while self.wpos < self.wbuf.len() {
            match self.stream.try_write(&self.wbuf[self.wpos..]) {
                Ok(0) => {
                    self.peer_gone = true;
                    return;
                }
                Ok(n) => {
                    self.wpos += n;
                    telemetry::hot().sent_bytes.increment(n as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.peer_gone = true;
                    return;
                }
            }
        }
        if self.wpos == self.wbuf.len() {
            // Idle: give the buffer back.
            self.wbuf = Vec::new();
            self.wpos = 0;
        }
        let queued = (self.wbuf.len() - self.wpos) as i64;
        if queued != self.queued_reported {
            self.state
                .gauges
                .send_queue_bytes
                .fetch_add(queued - self.queued_reported, Ordering::Relaxed);
            self.queued_reported = queued;
        }
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A deadline that never comes (for a timer with nothing to wait for).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Counts an open `/websocket` connection for its lifetime.
pub struct ConnGuard(pub Arc<AppState>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.rest_connections.fetch_sub(1, Ordering::Relaxed);
    }
}
