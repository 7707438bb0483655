//! The queue of event frames waiting for one connection's socket task.
//!
//! The delivery path pushes (shared body, the subscriber's uid suffix) pairs; the socket task drains them
//! into its write buffer, so frames that queued up leave in one write. Full policy: **close**. When the
//! bytes queued pass the connection's budget (`REALTIME_SEND_BUFFER_BYTES`), further pushes are refused and
//! the socket task closes the connection with 4008 (slow consumer): one slow client never holds up the
//! others or the gateway's memory.

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

pub struct Outbox {
    frames: Mutex<(VecDeque<(Bytes, Bytes)>, usize)>,
    pub notify: Notify,
    overflowed: AtomicBool,
    limit: usize,
}

impl Outbox {
    pub fn new(limit: usize) -> Outbox {
        Outbox {
            frames: Mutex::new((VecDeque::new(), 0)),
            notify: Notify::new(),
            overflowed: AtomicBool::new(false),
            limit,
        }
    }

    /// Queue a frame. Returns false (and marks the outbox overflowed) when over budget.
    pub fn push(&self, body: Bytes, suffix: Bytes) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let size = body.len() + suffix.len() + 10;
        {
            let mut q = self.frames.lock();
            if q.1 + size > self.limit {
                drop(q);
                self.overflowed.store(true, Ordering::Relaxed);
                crate::telemetry::slow_consumer();
                self.notify.notify_one();
                return false;
            }
            q.0.push_back((body, suffix));
            q.1 += size;
        }
        self.notify.notify_one();
        true
    }

    /// Take everything queued.
    pub fn drain(&self) -> VecDeque<(Bytes, Bytes)> {
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
        let o = Outbox::new(120);
        assert!(o.push(Bytes::from(vec![0; 40]), Bytes::from_static(b"}")));
        assert!(o.push(Bytes::from(vec![0; 40]), Bytes::from_static(b"}")));
        assert!(
            !o.push(Bytes::from(vec![0; 40]), Bytes::from_static(b"}")),
            "third frame passes the budget"
        );
        assert!(o.overflowed());
        assert!(
            !o.push(Bytes::from_static(b"x"), Bytes::new()),
            "stays refused once overflowed"
        );
        assert_eq!(o.drain().len(), 2);
    }
}
