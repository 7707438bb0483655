//! The test-facing clients: [`WsClient`] (a WebSocket that queues what arrives, answers pings and reports
//! closes, on the one client in [`crate::ws`]) and [`http`] (one request on hyper's HTTP/1.1 client), so
//! tests see exactly what the server answers: the HTTP status of a refused upgrade, close frames with or
//! without a code, every text frame.

use crate::ws::{self, Conn, ReadState, Target};
use anyhow::{Context, Result, bail};
use bytes::Bytes;
use common::ws::{Message, OpCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value as Json;
use std::collections::VecDeque;
use std::time::Duration;

/// What arrived on a socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A text frame, parsed as JSON.
    Json(Json),
    /// The server's close frame (its code, `None` for a close without status) or EOF (`Closed(None)` too,
    /// with `eof` true).
    Closed { code: Option<u16>, eof: bool },
}

pub struct WsClient {
    conn: Conn,
    queue: VecDeque<Incoming>,
    closed: bool,
}

/// Result of an upgrade attempt.
pub enum Upgrade {
    Open(WsClient),
    /// The server answered with this HTTP status instead of 101.
    Refused(u16),
}

impl Upgrade {
    pub fn open(self) -> Result<WsClient> {
        match self {
            Upgrade::Open(c) => Ok(c),
            Upgrade::Refused(s) => bail!("upgrade refused with HTTP {s}"),
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Upgrade::Open(_) => 101,
            Upgrade::Refused(s) => *s,
        }
    }
}

impl WsClient {
    /// `GET path` on `addr` (`host:port`) with an upgrade to WebSocket; `headers` are extra request
    /// headers.
    pub async fn connect(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<Upgrade> {
        let sock = tokio::net::lookup_host(addr)
            .await
            .with_context(|| format!("resolve {addr}"))?
            .next()
            .with_context(|| format!("{addr} has no address"))?;
        let target = Target {
            addr: sock,
            host: addr.to_owned(),
            path: path.to_owned(),
        };
        Ok(match Conn::upgrade(&target, None, headers).await? {
            ws::Upgrade::Open(conn) => Upgrade::Open(WsClient {
                conn,
                queue: VecDeque::new(),
                closed: false,
            }),
            ws::Upgrade::Refused(status) => Upgrade::Refused(status),
        })
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.conn.send_text(text).await?;
        Ok(())
    }

    pub async fn send_json(&mut self, v: &Json) -> Result<()> {
        self.send_text(&v.to_string()).await
    }

    /// Send raw bytes (for malformed-frame tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.conn.send_raw(bytes).await?;
        Ok(())
    }

    pub async fn send_frame(&mut self, op: OpCode, payload: &[u8]) -> Result<()> {
        self.conn.send_frame(op, payload).await?;
        Ok(())
    }

    /// Close from our side with a code.
    pub async fn close(&mut self, code: u16) -> Result<()> {
        self.send_frame(OpCode::Close, &code.to_be_bytes()).await
    }

    /// Queue what decoded messages mean for a test; answer pings.
    async fn take(&mut self, msgs: Vec<Message>) -> Result<()> {
        for msg in msgs {
            match msg {
                Message::Data { payload, .. } => {
                    let v: Json = serde_json::from_slice(&payload).with_context(|| {
                        format!(
                            "server sent non-JSON: {}",
                            String::from_utf8_lossy(&payload)
                        )
                    })?;
                    self.queue.push_back(Incoming::Json(v));
                }
                Message::Close(code) => {
                    self.queue.push_back(Incoming::Closed { code, eof: false });
                    self.closed = true;
                }
                Message::Ping(p) => {
                    let _ = self.conn.send_frame(OpCode::Pong, &p).await;
                }
                Message::Pong(_) => {}
            }
        }
        Ok(())
    }

    /// Next incoming event, or `Ok(None)` if nothing arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Incoming>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut msgs = Vec::new();
        self.conn.decode_pending(&mut msgs)?;
        self.take(std::mem::take(&mut msgs)).await?;
        loop {
            if let Some(ev) = self.queue.pop_front() {
                return Ok(Some(ev));
            }
            if self.closed {
                return Ok(Some(Incoming::Closed {
                    code: None,
                    eof: true,
                }));
            }
            match tokio::time::timeout_at(deadline, self.conn.readable()).await {
                Err(_) => return Ok(None),
                Ok(Err(_)) => self.closed = true,
                Ok(Ok(())) => {
                    if self.conn.read_available(&mut msgs)? == ReadState::Closed {
                        self.take(std::mem::take(&mut msgs)).await?;
                        if !self.closed {
                            self.closed = true;
                            self.queue.push_back(Incoming::Closed {
                                code: None,
                                eof: true,
                            });
                        }
                        continue;
                    }
                    self.take(std::mem::take(&mut msgs)).await?;
                }
            }
        }
    }

    /// The next JSON message, failing on timeout or close.
    pub async fn recv(&mut self, wait: Duration) -> Result<Json> {
        match self.next(wait).await? {
            Some(Incoming::Json(v)) => Ok(v),
            Some(Incoming::Closed { code, .. }) => {
                bail!("connection closed (code {code:?}) while waiting for a message")
            }
            None => bail!("no message within {wait:?}"),
        }
    }

    /// The next JSON message that is not a server heartbeat `ping`.
    pub async fn recv_skip_ping(&mut self, wait: Duration) -> Result<Json> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.recv(left).await?;
            if v["type"] != "ping" {
                return Ok(v);
            }
        }
    }

    /// Wait for the connection to close; returns the close code (None = no status code or EOF).
    pub async fn expect_close(&mut self, wait: Duration) -> Result<Option<u16>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Some(Incoming::Closed { code, .. }) => return Ok(code),
                Some(Incoming::Json(_)) => continue,
                None => bail!("still open after {wait:?}"),
            }
        }
    }

    /// Assert nothing but heartbeat pings arrives for `wait` (used to check that an event is *not* sent).
    pub async fn expect_silence(&mut self, wait: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                None => return Ok(()),
                Some(Incoming::Json(v)) if v["type"] == "ping" => continue,
                Some(other) => bail!("expected silence, got {other:?}"),
            }
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> Result<Json> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Longest one test request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 request on its own connection (hyper's client); a JSON `body` is sent with its content
/// type.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Json>,
) -> Result<HttpResponse> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = hyper::Request::builder()
        .method(hyper::Method::from_bytes(method.as_bytes()).context("HTTP method")?)
        .uri(path)
        .header(hyper::header::HOST, addr);
    if body.is_some() {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let req = req.body(Full::new(bytes)).context("HTTP request")?;
    let resp = tokio::time::timeout(HTTP_TIMEOUT, async {
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp.into_body().collect().await?.to_bytes().to_vec();
        anyhow::Ok(HttpResponse {
            status,
            headers,
            body,
        })
    })
    .await
    .context("HTTP response timed out")??;
    Ok(resp)
}
