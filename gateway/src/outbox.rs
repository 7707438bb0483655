//! The queue of event frames waiting for one connection's socket task.
//!
//! The delivery path pushes events (kind, shared data, the subscriber's uid suffix); the socket task drains
//! them into its write buffer, framing each as its protocol does, so frames that queued up leave in one
//! write. Full policy: **close**. When the
//! bytes queued pass the connection's budget (`REALTIME_SEND_BUFFER_BYTES`), further pushes are refused and
//! the socket task closes the connection with 4008 (slow consumer): one slow client never holds up the
//! others or the gateway's memory.

use bytes::Bytes;
use common::event::EventKind;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

/// Bytes counted per queued event for the envelope its protocol adds around the data (the Directus
/// head is 45–46 bytes, plus the frame header).
const ENVELOPE_ALLOWANCE: usize = 56;

/// One event waiting for the socket.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    pub kind: EventKind,
    /// The event's shared `data` (the same bytes for every subscriber of the query).
    pub data: Bytes,
    /// This subscriber's end of the frame (`,"uid":"…"}`).
    pub suffix: Bytes,
}

pub struct Outbox {
    frames: Mutex<(VecDeque<Queued>, usize)>,
    pub notify: Notify,
    overflowed: AtomicBool,
    /// A rights change touched this connection (`crate::rights`): re-evaluate its subscriptions.
    rights_changed: AtomicBool,
    limit: usize,
}

impl Outbox {
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            frames: Mutex::new((VecDeque::new(), 0)),
            notify: Notify::new(),
            overflowed: AtomicBool::new(false),
            rights_changed: AtomicBool::new(false),
            limit,
        }
    }

    /// Queue an event. Returns false (and marks the outbox overflowed) when over budget.
    pub fn push(&self, kind: EventKind, data: Bytes, suffix: Bytes) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let size = data.len() + suffix.len() + ENVELOPE_ALLOWANCE;
        {
            let mut q = self.frames.lock();
            if q.1 + size > self.limit {
                drop(q);
                self.overflowed.store(true, Ordering::Relaxed);
                crate::telemetry::slow_consumer();
                self.notify.notify_one();
                return false;
            }
            q.0.push_back(Queued { kind, data, suffix });
            q.1 += size;
        }
        self.notify.notify_one();
        true
    }

    /// Take everything queued.
    pub fn drain(&self) -> VecDeque<Queued> {
        let mut q = self.frames.lock();
        q.1 = 0;
        std::mem::take(&mut q.0)
    }

    /// Mark the connection as a slow consumer (its pending init buffer passed the budget).
    pub fn force_overflow(&self) {
        if !self.overflowed.swap(true, Ordering::Relaxed) {
            crate::telemetry::slow_consumer();
        }
        self.notify.notify_one();
    }

    /// Tell the socket task its rights may have changed.
    pub fn flag_rights(&self) {
        self.rights_changed.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Whether a rights change was flagged since the last call.
    pub fn take_rights_flag(&self) -> bool {
        self.rights_changed.swap(false, Ordering::AcqRel)
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_closes_instead_of_growing() {
        let o = Outbox::new(200);
        let push = |data: Bytes, suffix: Bytes| o.push(EventKind::Create, data, suffix);
        assert!(push(Bytes::from(vec![0; 40]), Bytes::from_static(b"}")));
        assert!(push(Bytes::from(vec![0; 40]), Bytes::from_static(b"}")));
        assert!(
            !push(Bytes::from(vec![0; 40]), Bytes::from_static(b"}")),
            "third frame passes the budget"
        );
        assert!(o.overflowed());
        assert!(
            !push(Bytes::from_static(b"x"), Bytes::new()),
            "stays refused once overflowed"
        );
        assert_eq!(o.drain().len(), 2);
    }
}
