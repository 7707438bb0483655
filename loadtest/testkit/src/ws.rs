//! The WebSocket client: a raw `TcpStream`, RFC 6455 framing from [`common::ws`], and no buffers while
//! idle. The load agents use [`Conn`] directly; tests use it through [`crate::client::WsClient`].
//!
//! Many thousands of these live in one process, so an idle connection is only its socket, its decoder
//! state and the task around it: reads go through a stack buffer after readiness (not held across an
//! `.await`, so it is not part of the task's state) and only a partial frame is kept on the heap, freed
//! once it completes. `connect` can bind a loopback source address first (with
//! `IP_BIND_ADDRESS_NO_PORT`, so the port is chosen per destination at connect time), which is how one
//! machine opens more connections than one source address has ports.

use anyhow::{Context, Result, bail};
use common::ws::{Decoder, Message, OpCode, encode_masked_frame};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest message a client accepts (tests read `init`s of up to `REALTIME_INIT_MAX_ROWS` rows).
const MAX_MESSAGE: usize = 64 << 20;
/// Bytes read per `read` call; lives on the thread's stack only while reading.
const READ_CHUNK: usize = 16 * 1024;
/// Reads per wake-up before yielding to other connections (fairness under a flood).
const READS_PER_WAKE: usize = 8;

/// Where to connect: the resolved address, the `Host` header and the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
}

/// Split a `ws://host:port/path?query` URL into (`host:port`, path-and-query).
pub fn split_ws_url(url: &str) -> Result<(String, String)> {
    let u = url::Url::parse(url).with_context(|| format!("bad URL {url:?}"))?;
    match u.scheme() {
        "ws" | "http" => {}
        "wss" | "https" => bail!(
            "{url}: TLS is not supported by the harness; connect to the service port directly"
        ),
        s => bail!("{url}: unsupported scheme {s}"),
    }
    let host = u.host_str().context("URL without host")?;
    let port = u.port_or_known_default().unwrap_or(80);
    let mut path = u.path().to_owned();
    if path.is_empty() || path == "/" {
        path = "/websocket".into();
    }
    if let Some(q) = u.query() {
        path.push('?');
        path.push_str(q);
    }
    let host = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok((host, path))
}

pub async fn resolve(url: &str) -> Result<Target> {
    let (host, path) = split_ws_url(url)?;
    let addr = tokio::net::lookup_host(&host)
        .await
        .with_context(|| format!("resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))?;
    Ok(Target { addr, host, path })
}

/// Open a TCP connection, from `source` when given.
pub async fn tcp_connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> std::io::Result<TcpStream> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = source.filter(|_| addr.is_ipv4()) {
        let one: libc::c_int = 1;
        // IP_BIND_ADDRESS_NO_PORT (many source addresses, one port range) has no safe wrapper in std,
        // rustix or socket2, so this stays a raw setsockopt.
        // SAFETY: setsockopt on a socket we own, with a pointer to an int that outlives the call and its
        // size; the kernel only reads it.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    }
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn ws_key() -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>())
}

/// A client WebSocket.
pub struct Conn {
    stream: TcpStream,
    decoder: Decoder,
    /// Bytes of an incomplete frame; empty (no allocation) between messages.
    pending: Vec<u8>,
}

/// What a non-blocking read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadState {
    Open,
    /// EOF or a reset.
    Closed,
}

/// Result of an upgrade attempt.
pub enum Upgrade {
    Open(Conn),
    /// The server answered with this HTTP status instead of 101.
    Refused(u16),
}

/// Longest the server may take to answer the upgrade request.
const UPGRADE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Conn {
    /// TCP connect (from `source` when given) and the HTTP upgrade, with extra request `headers`.
    pub async fn upgrade(
        target: &Target,
        source: Option<Ipv4Addr>,
        headers: &[(&str, &str)],
    ) -> Result<Upgrade> {
        let mut stream = tcp_connect(target.addr, source)
            .await
            .with_context(|| format!("connect {}", target.addr))?;
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
            target.path,
            target.host,
            ws_key()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;
        let mut head = Vec::with_capacity(256);
        let mut byte = [0u8; 512];
        let rest = loop {
            let n = tokio::time::timeout(UPGRADE_TIMEOUT, stream.read(&mut byte))
                .await
                .context("timed out waiting for the upgrade response")??;
            if n == 0 {
                bail!("closed during the upgrade");
            }
            head.extend_from_slice(&byte[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break head.split_off(end + 4);
            }
            if head.len() > 16 * 1024 {
                bail!("upgrade response too large");
            }
        };
        let status = std::str::from_utf8(&head)
            .ok()
            .and_then(|h| h.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .with_context(|| format!("bad status line: {}", String::from_utf8_lossy(&head)))?;
        if status != 101 {
            return Ok(Upgrade::Refused(status));
        }
        Ok(Upgrade::Open(Conn {
            stream,
            decoder: Decoder::client(MAX_MESSAGE),
            pending: rest,
        }))
    }

    /// [`Conn::upgrade`] without extra headers; `Err` on any failure, including a refused upgrade.
    pub async fn open(target: &Target, source: Option<Ipv4Addr>) -> Result<Conn> {
        match Conn::upgrade(target, source, &[]).await? {
            Upgrade::Open(c) => Ok(c),
            Upgrade::Refused(status) => bail!("upgrade refused: HTTP {status}"),
        }
    }

    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(text.len() + 14);
        encode_masked_frame(&mut out, OpCode::Text, text.as_bytes(), rand::random());
        self.stream.write_all(&out).await
    }

    /// Write pre-encoded frames.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// One masked frame of any opcode.
    pub async fn send_frame(&mut self, op: OpCode, payload: &[u8]) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        encode_masked_frame(&mut out, op, payload, rand::random());
        self.stream.write_all(&out).await
    }

    /// Send a close frame with 1000, then wait briefly for the server to close TCP first (so the
    /// TIME_WAIT state lands on the server side, not on our ports).
    pub async fn close(mut self) {
        let mut out = Vec::new();
        encode_masked_frame(
            &mut out,
            OpCode::Close,
            &1000u16.to_be_bytes(),
            rand::random(),
        );
        if self.stream.write_all(&out).await.is_err() {
            return;
        }
        let mut sink = [0u8; 1024];
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            loop {
                match self.stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }

    pub async fn readable(&self) -> std::io::Result<()> {
        self.stream.readable().await
    }

    /// Decode frames already buffered (bytes that came with the upgrade response).
    pub fn decode_pending(&mut self, out: &mut Vec<Message>) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut buf = std::mem::take(&mut self.pending);
        let used = decode_all(&mut self.decoder, &mut buf, out)?;
        buf.drain(..used);
        self.pending = buf;
        Ok(())
    }

    /// Read what is available without waiting and decode complete messages into `out`.
    pub fn read_available(&mut self, out: &mut Vec<Message>) -> Result<ReadState> {
        let mut chunk = [0u8; READ_CHUNK];
        for _ in 0..READS_PER_WAKE {
            let n = match self.stream.try_read(&mut chunk) {
                Ok(0) => return Ok(ReadState::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(ReadState::Open),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Ok(ReadState::Closed),
            };
            if self.pending.is_empty() {
                let used = decode_all(&mut self.decoder, &mut chunk[..n], out)?;
                if used < n {
                    self.pending.extend_from_slice(&chunk[used..n]);
                }
            } else {
                self.pending.extend_from_slice(&chunk[..n]);
                let mut buf = std::mem::take(&mut self.pending);
                let used = decode_all(&mut self.decoder, &mut buf, out)?;
                buf.drain(..used);
                // Give the allocation back once no partial frame remains: idle connections hold nothing.
                self.pending = if buf.is_empty() { Vec::new() } else { buf };
            }
            if n < READ_CHUNK {
                return Ok(ReadState::Open);
            }
        }
        Ok(ReadState::Open)
    }
}

/// Decode every complete frame at the front of `buf`; returns the bytes consumed.
fn decode_all(decoder: &mut Decoder, buf: &mut [u8], out: &mut Vec<Message>) -> Result<usize> {
    let mut off = 0;
    while let Some((msg, used)) = decoder
        .decode(&mut buf[off..])
        .map_err(|e| anyhow::anyhow!("bad frame from the server: {e}"))?
    {
        off += used;
        if let Some(m) = msg {
            out.push(m);
        }
    }
    Ok(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_ws_url("ws://127.0.0.1:8055/websocket").unwrap(),
            ("127.0.0.1:8055".into(), "/websocket".into())
        );
        assert_eq!(
            split_ws_url("ws://example.com").unwrap(),
            ("example.com:80".into(), "/websocket".into())
        );
        assert_eq!(
            split_ws_url("ws://h:1/ws?access_token=x").unwrap(),
            ("h:1".into(), "/ws?access_token=x".into())
        );
        assert!(split_ws_url("wss://h/websocket").is_err());
    }

    /// A tiny server: accepts one upgrade, sends two text frames split across writes, then closes.
    #[tokio::test]
    async fn reads_frames_split_across_segments_and_binds_a_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, peer) = listener.accept().await.unwrap();
            let mut buf = [0u8; 2048];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).await.unwrap();
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").await.unwrap();
            let mut frames = Vec::new();
            common::ws::encode_frame(&mut frames, OpCode::Text, b"{\"type\":\"ping\"}");
            common::ws::encode_frame(&mut frames, OpCode::Text, &vec![b'x'; 40_000]);
            let (a, b) = frames.split_at(30);
            s.write_all(a).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            s.write_all(b).await.unwrap();
            drop(s);
            peer
        });
        let target = Target {
            addr,
            host: addr.to_string(),
            path: "/websocket".into(),
        };
        let mut c = Conn::open(&target, Some(Ipv4Addr::new(127, 0, 0, 7)))
            .await
            .unwrap();
        let mut got = Vec::new();
        c.decode_pending(&mut got).unwrap();
        loop {
            c.readable().await.unwrap();
            if c.read_available(&mut got).unwrap() == ReadState::Closed {
                break;
            }
        }
        assert_eq!(got.len(), 2);
        assert!(
            matches!(&got[0], Message::Data { payload, .. } if payload == b"{\"type\":\"ping\"}")
        );
        assert!(matches!(&got[1], Message::Data { payload, .. } if payload.len() == 40_000));
        assert!(c.pending.is_empty() && c.pending.capacity() == 0);
        let peer = server.await.unwrap();
        assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7)));
    }
}
