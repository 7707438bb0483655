//! The task that owns one WebSocket connection, for any wire protocol.
//!
//! The socket side is the same for every protocol and lives here: one task per socket selects over the
//! socket becoming readable, the protocol's one operation in flight (authentication, subscribe, ...),
//! events arriving in the outbox, the socket becoming writable while output is pending, the protocol's
//! next deadline (heartbeat, auth timeout), and shutdown. It never blocks on a write: frames go into a
//! write buffer flushed with non-blocking writes, so frames that queued up leave in one syscall. It owns
//! RFC 6455 framing (`common::ws`), pings, close codes, the slow-consumer rule and the shutdown drain.
//!
//! What the messages mean is the [`Protocol`]'s business: a pure-ish state machine that gets each data
//! message, the result of the operation it started, and its deadlines, and acts through [`Io`] (send a
//! frame, close, start an operation). [`directus`] is the Directus `/websocket` protocol; another protocol
//! (GraphQL subscriptions) is another implementation, not a fork of this loop. The trait is generic, not
//! dynamic: each protocol gets its own monomorphised loop, and framing an event stays a byte copy.
//!
//! Memory: the read buffer exists only while bytes are pending and the write buffer only while output is
//! pending; an idle connection holds the task, the socket, the protocol state and an empty outbox.

pub mod directus;

pub use directus::{Admission, serve};

use crate::outbox::Outbox;
use crate::state::AppState;
use crate::telemetry::{self, AuthState, CloseReason};
use common::event::EventKind;
use common::protocol::close;
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

/// An operation a protocol runs while the connection waits (reads nothing more until it ends).
pub type Operation<D> = Pin<Box<dyn Future<Output = D> + Send>>;

/// A wire protocol spoken on a WebSocket connection.
pub trait Protocol: Send + Sized + 'static {
    /// What the protocol's operation in flight ends with.
    type Done: Send + 'static;

    /// One data message (the payload of a text or binary message).
    fn on_message(&mut self, io: &mut Io<Self>, payload: &[u8]);

    /// The operation started with [`Io::start`] finished.
    fn on_done(&mut self, io: &mut Io<Self>, done: Self::Done);

    /// The protocol's next deadline, if any.
    fn next_deadline(&self) -> Option<Instant>;

    /// A deadline passed.
    fn on_timer(&mut self, io: &mut Io<Self>, now: Instant);

    /// Nothing is in flight: start work the protocol deferred (called before every wait).
    fn on_idle(&mut self, _io: &mut Io<Self>) {}

    /// Length of the frame payload [`Protocol::write_event`] writes.
    fn event_len(kind: EventKind, data: &[u8], suffix: &[u8]) -> usize;

    /// One event for one subscriber: this protocol's envelope around the shared `data` and the
    /// subscriber's own `suffix`.
    fn write_event(out: &mut Vec<u8>, kind: EventKind, data: &[u8], suffix: &[u8]);

    /// The connection is over: release what it holds (subscriptions).
    fn finish(&mut self, io: &mut Io<Self>);

    /// How the connections gauge counts the connection now.
    fn auth_state(&self) -> AuthState;
}

/// The socket side a protocol acts through.
pub struct Io<P: Protocol> {
    pub state: Arc<AppState>,
    /// Connection id, unique in this gateway.
    pub id: u64,
    /// Outbound bytes not yet written, `wbuf[wpos..]`.
    wbuf: Vec<u8>,
    wpos: usize,
    outbox: Arc<Outbox>,
    pending: Option<Operation<P::Done>>,
    closing: Option<Instant>,
    close_reason: Option<CloseReason>,
}

impl<P: Protocol> Io<P> {
    /// Queue a text frame.
    pub fn send(&mut self, frame: &[u8]) {
        telemetry::hot().messages_sent.increment(1);
        encode_frame(&mut self.wbuf, OpCode::Text, frame);
    }

    /// Send a close frame (`code` `None`: no status code) after what is queued, and stop reading.
    pub fn close(&mut self, code: Option<u16>, text: &str, reason: CloseReason) {
        if self.closing.is_some() {
            return;
        }
        self.close_reason = Some(reason);
        self.closing = Some(Instant::now() + CLOSE_LINGER);
        encode_close(&mut self.wbuf, code, text);
    }

    pub fn is_closing(&self) -> bool {
        self.closing.is_some()
    }

    /// Run `op` as the operation in flight; its result comes back through [`Protocol::on_done`].
    pub fn start(&mut self, op: impl Future<Output = P::Done> + Send + 'static) {
        debug_assert!(self.pending.is_none(), "one operation at a time");
        self.pending = Some(Box::pin(op));
    }

    pub fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// The queue the delivery path fills for this connection.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Frame one event as one text frame (bytes are copied, nothing is encoded).
    pub fn send_event(&mut self, kind: EventKind, data: &[u8], suffix: &[u8]) {
        encode_header(
            &mut self.wbuf,
            OpCode::Text,
            P::event_len(kind, data, suffix),
            None,
        );
        P::write_event(&mut self.wbuf, kind, data, suffix);
    }

    /// Move queued events into the write buffer; close a connection that fell too far behind.
    pub fn drain_outbox(&mut self) {
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
}

/// One connection: the socket, its buffers, and the protocol speaking on it.
pub struct Conn<P: Protocol> {
    io: Io<P>,
    proto: P,
    stream: TcpStream,
    /// Unprocessed inbound bytes, `rbuf[rpos..]`. Empty (no allocation) when idle.
    rbuf: Vec<u8>,
    rpos: usize,
    decoder: Decoder,
    peer_gone: bool,
    /// When the gateway drains: the moment (jittered) this connection closes with 1012.
    drain_at: Option<Instant>,
    /// The state counted in the connections gauge.
    auth_state: AuthState,
    /// Pending output last added to the send-queue gauge.
    queued_reported: i64,
}

impl<P: Protocol> Conn<P> {
    /// A connection on `stream`; `leftover` is what the HTTP layer read past the upgrade request.
    pub fn new(state: Arc<AppState>, stream: TcpStream, leftover: Vec<u8>, proto: P) -> Conn<P> {
        let io = Io {
            id: state.next_conn.fetch_add(1, Ordering::Relaxed),
            outbox: Arc::new(Outbox::new(state.config.limits.send_buffer_bytes)),
            wbuf: Vec::new(),
            wpos: 0,
            pending: None,
            closing: None,
            close_reason: None,
            state,
        };
        let auth_state = proto.auth_state();
        io.state.gauges.opened(auth_state);
        Conn {
            decoder: Decoder::server(io.state.config.limits.max_message_bytes),
            io,
            proto,
            stream,
            rbuf: leftover,
            rpos: 0,
            peer_gone: false,
            drain_at: None,
            auth_state,
            queued_reported: 0,
        }
    }

    pub fn id(&self) -> u64 {
        self.io.id
    }

    /// Serve the connection until it closes.
    pub async fn run(mut self) {
        let mut shutdown = self.io.state.shutdown.clone();
        let outbox = self.io.outbox.clone();
        // Frames that arrived together with the upgrade request.
        self.process_input();
        // One timer for the connection's life, moved only when the next deadline changes: creating a
        // timer on every wake-up (each event delivered) showed up as timer-wheel work in profiles.
        let timer = tokio::time::sleep_until(far_future());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            self.sync_auth_state();
            self.flush();
            if self.peer_gone {
                break;
            }
            if let Some(deadline) = self.io.closing
                && (self.io.wpos == self.io.wbuf.len() || Instant::now() >= deadline)
            {
                break;
            }
            if !self.io.busy() && !self.io.is_closing() {
                self.proto.on_idle(&mut self.io);
            }
            let deadline = match self.io.closing {
                Some(d) => Some(d),
                None => earliest(self.proto.next_deadline(), self.drain_at),
            };
            if deadline != armed {
                timer
                    .as_mut()
                    .reset(deadline.map_or_else(far_future, Into::into));
                armed = deadline;
            }
            let can_read = !self.io.is_closing() && !self.io.busy();
            let pending = self.io.pending.is_some();
            tokio::select! {
                ready = self.stream.readable(), if can_read => {
                    if ready.is_err() {
                        self.peer_gone = true;
                        continue;
                    }
                    self.read_available();
                    self.process_input();
                }
                done = async { self.io.pending.as_mut().expect("guarded").await }, if pending => {
                    self.io.pending = None;
                    self.proto.on_done(&mut self.io, done);
                    // Messages that queued up behind the operation.
                    self.process_input();
                }
                _ = outbox.notify.notified(), if !self.io.is_closing() => self.io.drain_outbox(),
                ready = self.stream.writable(), if self.io.wpos < self.io.wbuf.len() => {
                    if ready.is_err() {
                        self.peer_gone = true;
                    }
                }
                _ = &mut timer, if armed.is_some() => {
                    // Fired: re-arm on the next round even if the deadline stays the same.
                    armed = None;
                    if !self.io.is_closing() {
                        if self.drain_at.is_some_and(|t| Instant::now() >= t) {
                            self.io.close(Some(close::SERVICE_RESTART), "server shutting down", CloseReason::Shutdown);
                        } else {
                            self.proto.on_timer(&mut self.io, Instant::now());
                        }
                    }
                }
                changed = shutdown.changed(), if self.drain_at.is_none() => {
                    if changed.is_err() || *shutdown.borrow() {
                        // Spread the closes so the clients do not all reconnect at the same moment.
                        let spread = self.io.state.config.drain.spread;
                        self.drain_at = Some(Instant::now() + spread.mul_f64(rand::random::<f64>()));
                    }
                }
            }
        }
        self.finish().await;
    }

    /// Keep the connections gauge in step with the protocol.
    fn sync_auth_state(&mut self) {
        let now = self.proto.auth_state();
        if now != self.auth_state {
            self.io.state.gauges.moved(self.auth_state, now);
            self.auth_state = now;
        }
    }

    async fn finish(&mut self) {
        self.proto.finish(&mut self.io);
        let reason = self.io.close_reason.unwrap_or(CloseReason::Disconnected);
        self.io.state.gauges.closed(self.auth_state, reason);
        self.io
            .state
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
        while !self.io.is_closing() && !self.io.busy() && self.rpos < self.rbuf.len() {
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
                    tracing::debug!(conn = self.io.id, gateway = %self.io.state.registrar.gateway_id, error = %e, "closing connection on a framing error");
                    let code = e.close_code();
                    let reason = if code == close::MESSAGE_TOO_BIG {
                        CloseReason::TooBig
                    } else {
                        CloseReason::ProtocolError
                    };
                    self.io.close(Some(code), &e.to_string(), reason);
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
                self.proto.on_message(&mut self.io, &payload);
            }
            // RFC 6455 requires answering pings (Directus's `ws` server does not; answering is harmless).
            Message::Ping(payload) => encode_frame(&mut self.io.wbuf, OpCode::Pong, &payload),
            Message::Pong(_) => {}
            Message::Close(code) => {
                // Echo the peer's code, as the close handshake asks.
                let code = code
                    .filter(|c| *c >= 1000 && *c != 1005 && *c != 1006)
                    .or(Some(close::NORMAL));
                self.io.close(code, "", CloseReason::Client);
            }
        }
    }

    /// Write as much pending output as the socket takes without blocking.
    fn flush(&mut self) {
        let io = &mut self.io;
        while io.wpos < io.wbuf.len() {
            match self.stream.try_write(&io.wbuf[io.wpos..]) {
                Ok(0) => {
                    self.peer_gone = true;
                    return;
                }
                Ok(n) => {
                    io.wpos += n;
                    telemetry::hot().sent_bytes.increment(n as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.peer_gone = true;
                    return;
                }
            }
        }
        if io.wpos == io.wbuf.len() {
            // Idle: give the buffer back.
            io.wbuf = Vec::new();
            io.wpos = 0;
        }
        let queued = (io.wbuf.len() - io.wpos) as i64;
        if queued != self.queued_reported {
            io.state
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

/// Counts an open WebSocket connection for its lifetime.
pub struct ConnGuard(pub Arc<AppState>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.rest_connections.fetch_sub(1, Ordering::Relaxed);
    }
}
