//! RFC 6455 framing, as a pure codec.
//!
//! The gateway does the HTTP upgrade with fastwebsockets and then owns the raw TCP stream: one task per
//! socket reads into a buffer that exists only while bytes are pending and feeds it to [`Decoder`], and
//! writes frames produced by [`encode_header`] straight into a per-connection write buffer, so many queued
//! frames leave in one syscall. That is what keeps an idle connection within a few KiB and lets
//! fan-out batch writes (see ARCHITECTURE.md).

/// Opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    fn from_u8(b: u8) -> Option<OpCode> {
        Some(match b {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Header bytes for one unfragmented frame of `len` payload bytes; `mask` for client-to-server frames.
pub fn encode_header(out: &mut Vec<u8>, op: OpCode, len: usize, mask: Option<[u8; 4]>) {
    out.push(0x80 | op as u8);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(m) = mask {
        out.extend_from_slice(&m);
    }
}

/// Append a whole server (unmasked) frame.
pub fn encode_frame(out: &mut Vec<u8>, op: OpCode, payload: &[u8]) {
    encode_header(out, op, payload.len(), None);
    out.extend_from_slice(payload);
}

/// Append a whole client (masked) frame.
pub fn encode_masked_frame(out: &mut Vec<u8>, op: OpCode, payload: &[u8], mask: [u8; 4]) {
    encode_header(out, op, payload.len(), Some(mask));
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
}

/// A close frame payload: the code and an optional reason (`None` = no status, peer sees 1005).
pub fn encode_close(out: &mut Vec<u8>, code: Option<u16>, reason: &str) {
    match code {
        None => encode_frame(out, OpCode::Close, &[]),
        Some(code) => {
            let mut payload = code.to_be_bytes().to_vec();
            // Control frames carry at most 125 bytes.
            let reason = truncate_utf8(reason, 123);
            payload.extend_from_slice(reason.as_bytes());
            encode_frame(out, OpCode::Close, &payload);
        }
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[(i + offset) % 4];
    }
}

/// A complete message or control frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (validated UTF-8) or a binary message (raw bytes): both carry JSON here.
    Data {
        text: bool,
        payload: Vec<u8>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// The peer's close frame: its code (if any).
    Close(Option<u16>),
}

/// Why the stream must be closed, with the close code to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("message of {0} bytes exceeds the limit")]
    TooBig(usize),
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
}

impl crate::error::Classify for FrameError {
    /// The peer broke RFC 6455 or a limit: its connection is closed.
    fn fault(&self) -> crate::error::Fault {
        crate::error::Fault::Client
    }
}

impl FrameError {
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => crate::protocol::close::PROTOCOL_ERROR,
            FrameError::TooBig(_) => crate::protocol::close::MESSAGE_TOO_BIG,
            FrameError::InvalidUtf8 => crate::protocol::close::INVALID_DATA,
        }
    }
}

/// Incremental decoder. Feed it bytes with [`Decoder::decode`]; it consumes whole frames and keeps the
/// state of a fragmented message between calls.
#[derive(Debug)]
pub struct Decoder {
    max_message: usize,
    /// Whether frames must be masked (server side) or must not be (client side).
    expect_masked: bool,
    /// A fragmented data message being assembled: (is_text, bytes so far).
    partial: Option<(bool, Vec<u8>)>,
}

impl Decoder {
    pub fn server(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            expect_masked: true,
            partial: None,
        }
    }

    pub fn client(max_message: usize) -> Decoder {
        Decoder {
            max_message,
            expect_masked: false,
            partial: None,
        }
    }

    /// Decode the next message from the front of `buf`. Returns the message and the number of bytes
    /// consumed, `Ok(None)` when more bytes are needed (nothing consumed), or an error.
    /// A consumed continuation frame that does not finish a message returns `Ok(Some((None, n)))`.
    #[allow(clippy::type_complexity)]
    pub fn decode(
        &mut self,
        buf: &mut [u8],
    ) -> Result<Option<(Option<Message>, usize)>, FrameError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let fin = buf[0] & 0x80 != 0;
        if buf[0] & 0x70 != 0 {
            return Err(FrameError::Protocol("reserved bits set"));
        }
        let op = OpCode::from_u8(buf[0] & 0x0F).ok_or(FrameError::Protocol("unknown opcode"))?;
        let masked = buf[1] & 0x80 != 0;
        if masked != self.expect_masked {
            return Err(FrameError::Protocol(if self.expect_masked {
                "client frames must be masked"
            } else {
                "server frames must not be masked"
            }));
        }
        let (len, mut pos) = match buf[1] & 0x7F {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let l = u64::from_be_bytes(b);
                if l >> 63 != 0 {
                    return Err(FrameError::Protocol("payload length has the high bit set"));
                }
                (l, 10)
            }
            l => (l as u64, 2),
        };
        if op.is_control() {
            if !fin {
                return Err(FrameError::Protocol("fragmented control frame"));
            }
            if len > 125 {
                return Err(FrameError::Protocol("control frame too long"));
            }
        }
        let so_far = self.partial.as_ref().map_or(0, |(_, b)| b.len()) as u64;
        if !op.is_control() && len.saturating_add(so_far) > self.max_message as u64 {
            return Err(FrameError::TooBig(
                (len + so_far).min(usize::MAX as u64) as usize
            ));
        }
        let mask = if masked {
            if buf.len() < pos + 4 {
                return Ok(None);
            }
            let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            Some(m)
        } else {
            None
        };
        let len = len as usize;
        if buf.len() < pos + len {
            return Ok(None);
        }
        let payload = &mut buf[pos..pos + len];
        if let Some(m) = mask {
            apply_mask(payload, m, 0);
        }
        let consumed = pos + len;
        let payload = payload.to_vec();
        let msg = match op {
            OpCode::Ping => Some(Message::Ping(payload)),
            OpCode::Pong => Some(Message::Pong(payload)),
            OpCode::Close => {
                let code = match payload.len() {
                    0 => None,
                    1 => return Err(FrameError::Protocol("close payload of one byte")),
                    _ => {
                        if std::str::from_utf8(&payload[2..]).is_err() {
                            return Err(FrameError::InvalidUtf8);
                        }
                        Some(u16::from_be_bytes([payload[0], payload[1]]))
                    }
                };
                Some(Message::Close(code))
            }
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(FrameError::Protocol(
                        "new message before the previous one finished",
                    ));
                }
                let text = op == OpCode::Text;
                if fin {
                    Some(finish(text, payload)?)
                } else {
                    self.partial = Some((text, payload));
                    None
                }
            }
            OpCode::Continuation => {
                let Some((text, mut acc)) = self.partial.take() else {
                    return Err(FrameError::Protocol("continuation without a message"));
                };
                acc.extend_from_slice(&payload);
                if fin {
                    Some(finish(text, acc)?)
                } else {
                    self.partial = Some((text, acc));
                    None
                }
            }
        };
        Ok(Some((msg, consumed)))
    }

    /// Is a fragmented message in progress (its bytes are held here)?
    pub fn has_partial(&self) -> bool {
        self.partial.is_some()
    }
}

fn finish(text: bool, payload: Vec<u8>) -> Result<Message, FrameError> {
    if text && std::str::from_utf8(&payload).is_err() {
        return Err(FrameError::InvalidUtf8);
    }
    Ok(Message::Data { text, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [1, 2, 3, 4];

    fn client_frame(op: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_masked_frame(&mut out, op, payload, MASK);
        if !fin {
            out[0] &= 0x7F;
        }
        out
    }

    fn decode_all(d: &mut Decoder, mut bytes: Vec<u8>) -> Result<Vec<Message>, FrameError> {
        let mut out = Vec::new();
        let mut start = 0;
        while let Some((msg, n)) = d.decode(&mut bytes[start..])? {
            start += n;
            out.extend(msg);
        }
        assert_eq!(start, bytes.len(), "all bytes consumed");
        Ok(out)
    }

    #[test]
    fn round_trip_all_length_forms() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
            let payload = vec![b'a'; len];
            let mut d = Decoder::server(1 << 20);
            let msgs = decode_all(&mut d, client_frame(OpCode::Text, true, &payload)).unwrap();
            assert_eq!(
                msgs,
                vec![Message::Data {
                    text: true,
                    payload
                }]
            );
        }
    }

    #[test]
    fn partial_input_needs_more_bytes() {
        let frame = client_frame(OpCode::Text, true, b"{\"type\":\"ping\"}");
        let mut d = Decoder::server(1024);
        for cut in 0..frame.len() {
            let mut part = frame[..cut].to_vec();
            assert_eq!(d.decode(&mut part).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn fragments_and_interleaved_control_frames() {
        let mut bytes = client_frame(OpCode::Text, false, b"{\"type\":");
        bytes.extend(client_frame(OpCode::Ping, true, b"hi"));
        bytes.extend(client_frame(OpCode::Continuation, true, b"\"ping\"}"));
        let mut d = Decoder::server(1024);
        let msgs = decode_all(&mut d, bytes).unwrap();
        assert_eq!(msgs[0], Message::Ping(b"hi".to_vec()));
        assert_eq!(
            msgs[1],
            Message::Data {
                text: true,
                payload: b"{\"type\":\"ping\"}".to_vec()
            }
        );
    }

    #[test]
    fn violations_are_errors_with_close_codes() {
        let mut unmasked = Vec::new();
        encode_frame(&mut unmasked, OpCode::Text, b"x");
        let e = Decoder::server(10).decode(&mut unmasked).unwrap_err();
        assert_eq!(e.close_code(), 1002);
        let e = Decoder::server(10)
            .decode(&mut client_frame(OpCode::Text, true, &[b'x'; 11]))
            .unwrap_err();
        assert_eq!(e.close_code(), 1009);
        let e = Decoder::server(10)
            .decode(&mut client_frame(OpCode::Text, true, &[0xff, 0xfe]))
            .unwrap_err();
        assert_eq!(e.close_code(), 1007);
        let e = Decoder::server(10)
            .decode(&mut client_frame(OpCode::Ping, false, b""))
            .unwrap_err();
        assert_eq!(e.close_code(), 1002);
        let e = Decoder::server(10)
            .decode(&mut client_frame(OpCode::Continuation, true, b"a"))
            .unwrap_err();
        assert_eq!(e.close_code(), 1002);
        let mut bad = client_frame(OpCode::Text, true, b"a");
        bad[0] |= 0x40;
        assert_eq!(
            Decoder::server(10)
                .decode(&mut bad)
                .unwrap_err()
                .close_code(),
            1002
        );
        let mut bad = client_frame(OpCode::Text, true, b"a");
        bad[0] = (bad[0] & 0xF0) | 0x3;
        assert_eq!(
            Decoder::server(10)
                .decode(&mut bad)
                .unwrap_err()
                .close_code(),
            1002
        );
        // A fragmented message that grows past the limit is refused before it is buffered.
        let mut d = Decoder::server(10);
        let mut first = client_frame(OpCode::Text, false, b"12345678");
        assert!(d.decode(&mut first).unwrap().is_some());
        let e = d
            .decode(&mut client_frame(OpCode::Continuation, true, b"12345"))
            .unwrap_err();
        assert_eq!(e.close_code(), 1009);
    }

    #[test]
    fn close_frames() {
        let mut out = Vec::new();
        encode_close(&mut out, None, "");
        assert_eq!(out, vec![0x88, 0x00]);
        let mut d = Decoder::client(100);
        assert_eq!(decode_all(&mut d, out).unwrap(), vec![Message::Close(None)]);
        let mut out = Vec::new();
        encode_close(&mut out, Some(4008), &"x".repeat(300));
        assert_eq!(out.len(), 2 + 125);
        let mut d = Decoder::client(100);
        assert_eq!(
            decode_all(&mut d, out).unwrap(),
            vec![Message::Close(Some(4008))]
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut seed = 0x1234_5678u64;
        for _ in 0..20_000 {
            let len = (seed % 40) as usize;
            let mut buf: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let _ = Decoder::server(64).decode(&mut buf);
            let _ = Decoder::client(64).decode(&mut buf);
        }
    }
}
