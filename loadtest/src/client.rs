//! A minimal WebSocket and HTTP client over the public protocol, for tests and the load generator.
//!
//! It speaks raw HTTP/1.1 and RFC 6455 (with [`common::ws`]) so tests can see exactly what the server
//! answers: the HTTP status of a refused upgrade, close frames with or without a code, every text frame.

use anyhow::{Context, Result, bail};
use common::ws::{Decoder, Message, OpCode, encode_masked_frame};
use serde_json::Value as Json;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    stream: TcpStream,
    decoder: Decoder,
    buf: Vec<u8>,
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

fn mask() -> [u8; 4] {
    rand::random()
}

impl WsClient {
    /// `GET path` with an upgrade to WebSocket; `headers` are extra request headers.
    pub async fn connect(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<Upgrade> {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let key = base64_key();
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        let (status, rest) = read_head(&mut stream).await?;
        if status != 101 {
            return Ok(Upgrade::Refused(status));
        }
        Ok(Upgrade::Open(WsClient {
            stream,
            decoder: Decoder::client(64 << 20),
            buf: rest,
            queue: VecDeque::new(),
            closed: false,
        }))
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        let mut out = Vec::with_capacity(text.len() + 14);
        encode_masked_frame(&mut out, OpCode::Text, text.as_bytes(), mask());
        self.stream.write_all(&out).await?;
        Ok(())
    }

    pub async fn send_json(&mut self, v: &Json) -> Result<()> {
        self.send_text(&v.to_string()).await
    }

    /// Send raw bytes (for malformed-frame tests).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    pub async fn send_frame(&mut self, op: OpCode, payload: &[u8]) -> Result<()> {
        let mut out = Vec::new();
        encode_masked_frame(&mut out, op, payload, mask());
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// Close from our side with a code.
    pub async fn close(&mut self, code: u16) -> Result<()> {
        self.send_frame(OpCode::Close, &code.to_be_bytes()).await
    }

    /// Next incoming event, or `Ok(None)` if nothing arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Incoming>> {
        let deadline = tokio::time::Instant::now() + wait;
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
            // Decode whatever is buffered.
            while let Some((msg, n)) = self
                .decoder
                .decode(&mut self.buf)
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                self.buf.drain(..n);
                match msg {
                    Some(Message::Data { payload, .. }) => {
                        let v: Json = serde_json::from_slice(&payload).with_context(|| {
                            format!(
                                "server sent non-JSON: {}",
                                String::from_utf8_lossy(&payload)
                            )
                        })?;
                        self.queue.push_back(Incoming::Json(v));
                    }
                    Some(Message::Close(code)) => {
                        self.queue.push_back(Incoming::Closed { code, eof: false });
                        self.closed = true;
                    }
                    Some(Message::Ping(p)) => {
                        let mut out = Vec::new();
                        encode_masked_frame(&mut out, OpCode::Pong, &p, mask());
                        let _ = self.stream.write_all(&out).await;
                    }
                    _ => {}
                }
            }
            if !self.queue.is_empty() {
                continue;
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await;
            match read {
                Err(_) => return Ok(None),
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.closed = true;
                    return Ok(Some(Incoming::Closed {
                        code: None,
                        eof: true,
                    }));
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
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

fn base64_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

/// Read an HTTP response head; returns the status and any bytes after the head.
async fn read_head(stream: &mut TcpStream) -> Result<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .context("timed out reading the HTTP response")??;
        if n == 0 {
            bail!("connection closed before an HTTP response");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("bad status line: {head}"))?;
            return Ok((status, buf[end + 4..].to_vec()));
        }
        if buf.len() > 64 * 1024 {
            bail!("HTTP head too large");
        }
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

/// One HTTP/1.1 request with `Connection: close`.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Json>,
) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr).await?;
    let body_bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if body.is_some() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n", body_bytes.len()));
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body_bytes);
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .context("HTTP response timed out")??;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP head")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("status")?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| {
            l.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line_end])?.trim(), 16)?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
