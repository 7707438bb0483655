//! The error vocabulary of the whole product: who is at fault and whether retrying helps ([`Classify`],
//! implemented by every library error type), and [`RealtimeError`], an error meant for a client, carried as a
//! value until a wire protocol renders it (`protocol::ErrorReply` for the Directus `/websocket` protocol).
//! No error travels as frame bytes.

use crate::protocol::ErrorCode;

/// Whose fault an error is, for logs, metrics and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The request was wrong (bad message, forbidden collection, expired token): tell the client, log at
    /// debug at most.
    Client,
    /// A service we depend on (PostgreSQL, Redis) failed or timed out: warn, and the same request may
    /// succeed later.
    Dependency,
    /// Data our own processes produced is wrong (a malformed message between gateway and worker, an
    /// invariant broken): a bug, or two incompatible versions running side by side.
    Bug,
}

/// Classification every error type of the libraries gives.
pub trait Classify {
    fn fault(&self) -> Fault;

    /// Whether the same operation, repeated unchanged, can succeed. Dependency failures can by default.
    fn retryable(&self) -> bool {
        self.fault() == Fault::Dependency
    }
}

/// An error a client is told about: the code, and the exact text Directus (or our own protocol rules)
/// send with it. How it is framed (context, uid) is the wire protocol's business.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.code())]
pub struct RealtimeError {
    pub code: ErrorCode,
    pub message: String,
}

impl RealtimeError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RealtimeError {
        RealtimeError {
            code,
            message: message.into(),
        }
    }
}

impl Classify for RealtimeError {
    fn fault(&self) -> Fault {
        match self.code {
            ErrorCode::ServiceUnavailable => Fault::Dependency,
            _ => Fault::Client,
        }
    }

    fn retryable(&self) -> bool {
        // A rate-limited message may be sent again after the window; an unavailable service may recover.
        matches!(
            self.code,
            ErrorCode::ServiceUnavailable | ErrorCode::RequestsExceeded
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_and_retries_by_code() {
        for code in ErrorCode::ALL {
            let e = RealtimeError::new(code, "m");
            let dependency = code == ErrorCode::ServiceUnavailable;
            assert_eq!(e.fault() == Fault::Dependency, dependency, "{code:?}");
            assert_eq!(
                e.retryable(),
                dependency || code == ErrorCode::RequestsExceeded,
                "{code:?}"
            );
            assert_eq!(e.to_string(), format!("{}: m", code.code()));
        }
    }
}
