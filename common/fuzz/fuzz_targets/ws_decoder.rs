//! `common::ws::Decoder` on arbitrary bytes.
//!
//! Input: `[max_message, split_seed, stream...]`. The stream is decoded three ways, each of which must agree:
//! 1. server side, the whole stream in one buffer, consumed frame by frame;
//! 2. server side, the stream arriving in pieces (sizes from `split_seed`) appended to a pending buffer, the
//!    way `gateway::conn` reads a socket;
//! 3. client side (unmasked frames), whole, only for the no-panic property.
//!
//! Checked: no panic; `Ok(None)` consumes and changes nothing; `Ok(Some((_, n)))` consumes `0 < n <= len`;
//! data messages respect the limit and text is UTF-8; control payloads are at most 125 bytes; both server
//! runs yield the same messages and the same final error; and every decoded message re-encodes (as a
//! client frame, or a server close frame) to bytes that decode to the same message.
#![no_main]

use common::ws::{Decoder, FrameError, Message, OpCode, encode_close, encode_masked_frame};
use libfuzzer_sys::fuzz_target;

/// The outcome of decoding a stream: messages in order, then the error that stopped it (if any) and
/// the number of bytes consumed.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<Message>,
    error: Option<FrameError>,
    consumed: usize,
}

/// One decode call on `buf[start..]`, with the per-call invariants checked.
fn step(
    d: &mut Decoder,
    buf: &mut [u8],
    max: usize,
) -> Result<Option<(Option<Message>, usize)>, FrameError> {
    let before = buf.to_vec();
    let r = d.decode(buf);
    match &r {
        Ok(None) => assert_eq!(buf, &before[..], "Ok(None) must leave the buffer alone"),
        Ok(Some((msg, n))) => {
            assert!(*n > 0 && *n <= before.len(), "consumed {n} of {}", before.len());
            if let Some(m) = msg {
                check_message(m, max);
            }
        }
        Err(_) => {}
    }
    r
}

fn check_message(m: &Message, max: usize) {
    match m {
        Message::Data { text, payload } => {
            assert!(payload.len() <= max, "{} > limit {max}", payload.len());
            if *text {
                assert!(std::str::from_utf8(payload).is_ok(), "text is UTF-8");
            }
        }
        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
        Message::Close(_) => {}
    }
}

fn whole(mut bytes: Vec<u8>, max: usize) -> Outcome {
    let mut d = Decoder::server(max);
    let mut out = Outcome {
        messages: Vec::new(),
        error: None,
        consumed: 0,
    };
    loop {
        match step(&mut d, &mut bytes[out.consumed..], max) {
            Ok(None) => break,
            Ok(Some((msg, n))) => {
                out.consumed += n;
                out.messages.extend(msg);
            }
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out
}

/// Deliver `bytes` in pieces; decode whatever is buffered after each piece, like the gateway's read loop.
fn pieces(bytes: &[u8], max: usize, seed: u8) -> Outcome {
    let mut d = Decoder::server(max);
    let mut out = Outcome {
        messages: Vec::new(),
        error: None,
        consumed: 0,
    };
    let mut rbuf: Vec<u8> = Vec::new();
    let mut rpos = 0usize;
    let mut fed = 0usize;
    let mut x = u32::from(seed) | 0x100;
    'feed: while fed < bytes.len() {
        // xorshift32: piece sizes 1..=16.
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (1 + (x % 16) as usize).min(bytes.len() - fed);
        rbuf.extend_from_slice(&bytes[fed..fed + n]);
        fed += n;
        while rpos < rbuf.len() {
            match step(&mut d, &mut rbuf[rpos..], max) {
                Ok(None) => break,
                Ok(Some((msg, used))) => {
                    rpos += used;
                    out.consumed += used;
                    out.messages.extend(msg);
                }
                Err(e) => {
                    out.error = Some(e);
                    break 'feed;
                }
            }
        }
        if rpos == rbuf.len() {
            rbuf.clear();
            rpos = 0;
        } else if rpos > rbuf.len() / 2 {
            rbuf.drain(..rpos);
            rpos = 0;
        }
    }
    out
}

/// Re-encode a decoded message and decode it again: it must come back unchanged, consuming every byte.
fn reencode(m: &Message, max: usize) {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = Vec::new();
    let mut d = match m {
        Message::Data { text, payload } => {
            let op = if *text { OpCode::Text } else { OpCode::Binary };
            encode_masked_frame(&mut frame, op, payload, MASK);
            Decoder::server(max)
        }
        Message::Ping(p) => {
            encode_masked_frame(&mut frame, OpCode::Ping, p, MASK);
            Decoder::server(max)
        }
        Message::Pong(p) => {
            encode_masked_frame(&mut frame, OpCode::Pong, p, MASK);
            Decoder::server(max)
        }
        Message::Close(code) => {
            // What the gateway sends back: a server close frame with the same code.
            encode_close(&mut frame, *code, "");
            Decoder::client(max)
        }
    };
    let len = frame.len();
    match d.decode(&mut frame) {
        Ok(Some((Some(again), n))) => {
            assert_eq!(n, len, "the whole re-encoded frame is consumed");
            assert_eq!(&again, m, "re-encoded message decodes to itself");
        }
        other => panic!("re-encoded {m:?} decoded as {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let [max, seed, stream @ ..] = data else {
        return;
    };
    let max = *max as usize;

    let a = whole(stream.to_vec(), max);
    let b = pieces(stream, max, *seed);
    assert_eq!(a, b, "whole and piecewise decoding agree");
    for m in &a.messages {
        reencode(m, max);
    }

    // The client side only has to survive.
    let mut bytes = stream.to_vec();
    let mut d = Decoder::client(max);
    let mut at = 0;
    while let Ok(Some((_, n))) = d.decode(&mut bytes[at..]) {
        at += n;
    }
});
