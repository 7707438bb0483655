//! The Directus realtime protocol on `/websocket`, as a [`Protocol`] for the socket task.
//!
//! The rules (auth modes, handshake, token expiry, heartbeat, uid echo, subscription bookkeeping) are the
//! pure [`Session`]; this module runs what the session asks for: authentication, subscribe (normalise,
//! register, snapshot: `crate::subscribe`), and re-authorising every subscription when the identity
//! changes. Events are framed with the protocol's static head per kind and the subscriber's uid suffix.

use super::{Conn, Io, Protocol};
use crate::auth::{Accountability, AuthError, Authenticated, ClientInfo, Proof};
use crate::session::{Action, AuthPurpose, Session};
use crate::state::AppState;
use crate::subscribe::{ActiveSub, SubCtx, Subscribed, detach, reauthorize, subscribe};
use crate::telemetry::{self, AuthState};
use common::error::RealtimeError;
use common::event::EventKind;
use common::normalize::NormalizedQuery;
use common::protocol::{self, Credentials, ErrorReply, Uid, close};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// A subscription's uid and its normalisation for a new identity (or why it is refused).
type Reauthorized = (String, Result<Arc<NormalizedQuery>, RealtimeError>);

/// Result of the operation in flight.
pub enum Done {
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
    /// A rights change at commit LSN `at` touched the connection: its identity checked again (or why
    /// it no longer holds) and its subscriptions normalised for it.
    Reevaluated {
        at: u64,
        identity: Result<(Arc<Accountability>, Proof), AuthError>,
        /// The credentials were revoked and the connection goes on as the public role.
        revoked: bool,
        results: Vec<Reauthorized>,
    },
}

/// How the connection was admitted at the HTTP upgrade.
pub struct Admission {
    /// The identity from a token in the URL or cookie (any mode), else `None`.
    pub token: Option<Authenticated>,
    /// The public role for this client.
    pub public: Arc<Accountability>,
    pub client: ClientInfo,
}

/// One connection's Directus protocol state.
pub struct Directus {
    session: Session<ActiveSub>,
    next_sub: u32,
    acct: Arc<Accountability>,
    public: Arc<Accountability>,
    client: ClientInfo,
    /// What the identity rests on (checked again when a rights change touches it).
    proof: Proof,
    /// The identity changed while another operation ran: re-authorise subscriptions after it.
    reauth_needed: bool,
    /// Filed in the rights registry (done on the first idle turn, when the connection id is known).
    filed: bool,
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

/// Serve one upgraded `/websocket` connection until it closes. `leftover` is what the HTTP layer read
/// past the request.
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
    let acct = admission
        .token
        .as_ref()
        .map(|t| t.accountability.clone())
        .unwrap_or_else(|| admission.public.clone());
    let proof = admission
        .token
        .as_ref()
        .map_or(Proof::Public, |t| t.proof.clone());
    let proto = Directus {
        session: Session::new(&state.rest_session, now, token_expiry),
        next_sub: 0,
        acct,
        public: admission.public,
        client: admission.client,
        proof,
        reauth_needed: false,
        filed: false,
    };
    let conn = Conn::new(state, stream, leftover, proto);
    let span = tracing::info_span!(
        target: common_io::telemetry::OTEL_TARGET,
        "ws.connection",
        conn = conn.id(),
        gateway = %conn.io.state.registrar.gateway_id,
        endpoint = telemetry::WEBSOCKET,
    );
    tracing::Instrument::instrument(conn.run(), span).await;
}

impl Protocol for Directus {
    type Done = Done;

    fn on_message(&mut self, io: &mut Io<Self>, payload: &[u8]) {
        let actions = self
            .session
            .on_message(&io.state.rest_session, Instant::now(), payload);
        self.apply(io, actions);
    }

    fn on_done(&mut self, io: &mut Io<Self>, done: Done) {
        let state = io.state.clone();
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
                        self.proof = auth.proof.clone();
                        self.set_identity(io, auth.accountability.clone());
                        Ok((expires, auth.refresh_token))
                    }
                    Err(e) => {
                        tracing::debug!(conn = io.id, gateway = %io.state.registrar.gateway_id, method, error = %e, "websocket authentication failed");
                        telemetry::auth_failure(method);
                        Err(())
                    }
                };
                let actions = self
                    .session
                    .on_auth(cfg, now, purpose, uid.as_ref(), outcome);
                self.apply(io, actions);
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
                    self.apply(io, actions);
                    // `init` is in the write buffer: now the events its snapshot does not contain.
                    for (kind, data) in io.state.hub.activate(id, key, snapshot, until) {
                        io.send_event(kind, &data, &suffix);
                    }
                    if self.reauth_needed {
                        // The identity changed while this subscribe ran: it is re-checked with the others.
                        detach(&io.state, id, key);
                    }
                }
                Err(e) => {
                    let actions = self.session.on_subscribed(uid, Err(e));
                    self.apply(io, actions);
                }
            },
            Done::Reauthorized(results) => self.on_reauthorized(io, results),
            Done::Reevaluated {
                at,
                identity,
                revoked,
                results,
            } => self.on_reevaluated(io, at, identity, revoked, results),
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.session.next_deadline()
    }

    fn on_timer(&mut self, io: &mut Io<Self>, now: Instant) {
        let actions = self.session.on_timer(&io.state.rest_session, now);
        self.apply(io, actions);
    }

    fn on_idle(&mut self, io: &mut Io<Self>) {
        if !self.filed {
            self.filed = true;
            io.state
                .hub
                .rights
                .set_identity(io.id, io.outbox(), &self.acct);
        }
        if self.reauth_needed {
            self.start_reauthorization(io);
        } else if io.outbox().take_rights_flag() || io.state.hub.rights.pending_cut(io.id).is_some()
        {
            self.start_reevaluation(io);
        }
    }

    fn event_len(kind: EventKind, data: &[u8], suffix: &[u8]) -> usize {
        protocol::event_head(kind).len() + data.len() + suffix.len()
    }

    /// `{"type":"subscription","event":"<kind>","data":` + data + `,"uid":"…"}`.
    fn write_event(out: &mut Vec<u8>, kind: EventKind, data: &[u8], suffix: &[u8]) {
        out.extend_from_slice(protocol::event_head(kind));
        out.extend_from_slice(data);
        out.extend_from_slice(suffix);
    }

    fn finish(&mut self, io: &mut Io<Self>) {
        for sub in self.session.take_all() {
            detach(&io.state, sub.id, sub.key);
        }
        for (old, key) in io.state.hub.rights.remove(io.id) {
            detach(&io.state, old, key);
        }
    }

    fn auth_state(&self) -> AuthState {
        if self.session.in_handshake() {
            AuthState::Pending
        } else if self.acct.user.is_some() {
            AuthState::Authenticated
        } else {
            AuthState::Public
        }
    }
}

impl Directus {
    /// Render an error reply (the only place errors become bytes) and count it by code.
    fn send_error(io: &mut Io<Self>, reply: &ErrorReply) {
        telemetry::protocol_error(reply.code.code());
        io.send(&reply.frame());
    }

    fn apply(&mut self, io: &mut Io<Self>, actions: Vec<Action<ActiveSub>>) {
        for action in actions {
            if io.is_closing() {
                return;
            }
            match action {
                Action::Send(frame) => io.send(&frame),
                Action::Error(reply) => Self::send_error(io, &reply),
                Action::Close(reason) => io.close(close::NO_STATUS, "", reason),
                Action::FallBackToPublic => self.set_identity(io, self.public.clone()),
                Action::Authenticate {
                    credentials,
                    uid,
                    purpose,
                } => {
                    let state = io.state.clone();
                    let client = self.client.clone();
                    let method = match &credentials {
                        Credentials::AccessToken(_) => "access_token",
                        Credentials::RefreshToken(_) => "refresh_token",
                        Credentials::Login { .. } => "password",
                    };
                    io.start(async move {
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
                    });
                }
                Action::Subscribe { request, uid } => {
                    let state = io.state.clone();
                    let acct = self.acct.clone();
                    self.next_sub = self.next_sub.wrapping_add(1);
                    let ctx = SubCtx {
                        conn: io.id,
                        sub: self.next_sub,
                        outbox: io.outbox().clone(),
                    };
                    let span = tracing::info_span!(
                        target: common_io::telemetry::OTEL_TARGET,
                        "ws.subscription",
                        collection = %request.collection,
                        uid = %uid,
                        query = tracing::field::Empty,
                        ok = tracing::field::Empty,
                    );
                    io.start(tracing::Instrument::instrument(
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
                    ));
                }
                Action::Unsubscribed(subs) => {
                    for sub in subs {
                        detach(&io.state, sub.id, sub.key);
                    }
                    // Detached: nothing more is queued for them. What was queued already goes out now,
                    // ahead of the confirmation the session sends next, so no event of an ended
                    // subscription ever follows its confirmation.
                    io.drain_outbox();
                }
            }
        }
    }

    /// A new identity applies to existing subscriptions too: stop their events at once and normalise
    /// them again for it (they may lose rows, fields, or access altogether).
    fn set_identity(&mut self, io: &mut Io<Self>, acct: Arc<Accountability>) {
        let changed = *self.acct != *acct;
        if Arc::ptr_eq(&acct, &self.public) {
            self.proof = Proof::Public;
        }
        io.state.hub.rights.set_identity(io.id, io.outbox(), &acct);
        self.acct = acct;
        if changed && !self.session.subscriptions().is_empty() {
            for sub in self.session.subscriptions() {
                detach(&io.state, sub.data.id, sub.data.key);
            }
            self.reauth_needed = true;
        }
    }

    fn start_reauthorization(&mut self, io: &mut Io<Self>) {
        self.reauth_needed = false;
        let state = io.state.clone();
        let acct = self.acct.clone();
        let subs: Vec<(String, common::protocol::SubscribeRequest)> = self
            .session
            .subscriptions()
            .iter()
            .map(|s| (s.uid.clone(), s.data.request.request()))
            .collect();
        io.start(async move {
            let mut out = Vec::with_capacity(subs.len());
            for (uid, req) in subs {
                out.push((uid, reauthorize(&state, &acct, &req).await));
            }
            Done::Reauthorized(out)
        });
    }

    fn on_reauthorized(&mut self, io: &mut Io<Self>, results: Vec<Reauthorized>) {
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
                    let outbox = io.outbox().clone();
                    let hub = &io.state.hub;
                    let new_here = hub.rights.attach_sub(io.id, id, key, |cut| {
                        hub.attach_with_cut(id, def.clone(), 0, key, outbox, suffix, cut)
                    });
                    if new_here {
                        let registrar = io.state.registrar.clone();
                        let hub = io.state.hub.clone();
                        tokio::spawn(async move {
                            if let Err(e) = registrar.register_live(&hub, id, &def).await {
                                tracing::warn!(error = %e, "re-registering after an identity change failed");
                            }
                        });
                    }
                    io.state.hub.activate(id, key, None, 0);
                }
                Err(e) => {
                    Self::send_revoked(io, &uid, &e);
                    denied.push(uid);
                }
            }
        }
        // Subscriptions the new identity may not have end here (their uid can be reused).
        self.session.remove_where(|s| denied.contains(&s.uid));
    }

    /// End one subscription the connection's rights no longer allow, with a frame `@directus/sdk` hands
    /// to that subscription only (`protocol::revoked_frame`); the others keep running.
    fn send_revoked(io: &mut Io<Self>, uid: &str, e: &RealtimeError) {
        telemetry::protocol_error(e.code.code());
        telemetry::subscription_revoked();
        io.send(&protocol::revoked_frame(Some(&Uid::Str(uid.to_owned())), e));
    }

    /// Check the identity again and normalise every subscription for it, from the connection's pending
    /// rights cut (`crate::rights`).
    fn start_reevaluation(&mut self, io: &mut Io<Self>) {
        let Some(at) = io.state.hub.rights.take_cut(io.id) else {
            return;
        };
        tracing::debug!(conn = io.id, at, "rights: re-evaluating");
        let state = io.state.clone();
        let acct = self.acct.clone();
        let proof = self.proof.clone();
        let public_mode = state.rest_session.mode == crate::config::AuthMode::Public;
        let subs: Vec<(String, common::protocol::SubscribeRequest)> = self
            .session
            .subscriptions()
            .iter()
            .map(|s| (s.uid.clone(), s.data.request.request()))
            .collect();
        let started = Instant::now();
        io.start(async move {
            let mut revoked = false;
            let identity = match state.auth.recheck(&acct, &proof).await {
                Ok(a) => Ok((a, proof)),
                Err(AuthError::Unavailable(e)) => Err(AuthError::Unavailable(e)),
                Err(e) if public_mode => {
                    tracing::info!(error = %e, "credentials revoked: the connection goes on as the public role");
                    revoked = true;
                    state
                        .auth
                        .recheck(&acct_public(&acct), &Proof::Public)
                        .await
                        .map(|a| (a, Proof::Public))
                }
                Err(e) => Err(e),
            };
            let mut results = Vec::with_capacity(subs.len());
            if let Ok((acct, _)) = &identity {
                for (uid, req) in subs {
                    results.push((uid, reauthorize(&state, acct, &req).await));
                }
            }
            telemetry::rights_reevaluated(started.elapsed());
            Done::Reevaluated {
                at,
                identity,
                revoked,
                results,
            }
        });
    }

    fn on_reevaluated(
        &mut self,
        io: &mut Io<Self>,
        at: u64,
        identity: Result<(Arc<Accountability>, Proof), AuthError>,
        revoked: bool,
        results: Vec<Reauthorized>,
    ) {
        self.apply_reevaluation(io, at, identity, revoked, results);
        io.state.hub.rights.evaluated(io.id);
    }

    fn apply_reevaluation(
        &mut self,
        io: &mut Io<Self>,
        at: u64,
        identity: Result<(Arc<Accountability>, Proof), AuthError>,
        revoked: bool,
        results: Vec<Reauthorized>,
    ) {
        let (acct, proof) = match identity {
            Ok(v) => v,
            Err(AuthError::Unavailable(e)) => {
                // Nothing can be decided without the database; the held events must not go out under
                // the old rights. The client reconnects and starts over with a fresh init.
                tracing::warn!(conn = io.id, error = %e, "rights re-check failed; closing the connection");
                io.close(
                    Some(close::INTERNAL_ERROR),
                    "rights could not be re-checked",
                    crate::telemetry::CloseReason::Unavailable,
                );
                return;
            }
            Err(e) => {
                tracing::info!(conn = io.id, error = %e, "credentials revoked; closing the connection");
                let actions = self.session.on_revoked(&io.state.rest_session);
                self.apply(io, actions);
                return;
            }
        };
        if revoked {
            let actions = self.session.on_revoked(&io.state.rest_session);
            self.apply(io, actions);
        }
        self.proof = proof;
        io.state.hub.rights.set_identity(io.id, io.outbox(), &acct);
        self.acct = acct;
        let state = io.state.clone();
        let hub = &state.hub;
        // A change that arrived while this ran stays cut; it is evaluated next.
        let still_cut = hub.rights.pending_cut(io.id);
        let mut denied = Vec::new();
        for (uid, result) in results {
            let Some(sub) = self
                .session
                .subscriptions_mut()
                .iter_mut()
                .find(|s| s.uid == uid)
            else {
                continue;
            };
            let (old, key, suffix) = (sub.data.id, sub.data.key, sub.data.suffix.clone());
            match result {
                Ok(query) if query.id() == old => {
                    tracing::debug!(conn = io.id, uid = %uid, query = %old, at, "rights: subscription unchanged");
                    hub.release(old, key, still_cut)
                }
                Ok(query) => {
                    // New filter or fields: this query's events after the change, from a replay,
                    // once the old query's worker has sent everything up to the change.
                    let id = query.id();
                    sub.data.id = id;
                    let m = crate::rights::Move {
                        conn: io.id,
                        key,
                        at,
                        old,
                        old_shard: common::shard::shard_of(old, state.registrar.shards()),
                        new: id,
                        def: query.canonical_json().into(),
                        suffix,
                        outbox: io.outbox().clone(),
                        request: state.registrar.replay_request(at),
                    };
                    tracing::debug!(conn = io.id, uid = %uid, %old, new = %id, at, def = %query.canonical_json(), "rights: moving a subscription");
                    if let Some(moved) = hub.rights.plan_move(hub, m) {
                        state.registrar.start_move_work(&state.hub, moved);
                    }
                }
                Err(e) => {
                    detach(&state, old, key);
                    Self::send_revoked(io, &uid, &e);
                    denied.push(uid);
                }
            }
        }
        self.session.remove_where(|s| denied.contains(&s.uid));
    }
}

/// The public identity at the same client address as `acct`.
fn acct_public(acct: &Accountability) -> Accountability {
    Accountability {
        user: None,
        role: None,
        roles: Vec::new(),
        admin: false,
        app: false,
        policies: Vec::new(),
        considered: Vec::new(),
        ip: acct.ip,
    }
}
