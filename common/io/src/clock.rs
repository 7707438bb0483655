//! The wall clock: Unix time in the units the data path uses. A clock set before 1970 reads as 0.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch.
pub fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Microseconds since the Unix epoch (commit and delivery times).
pub fn unix_micros() -> i64 {
    i64::try_from(since_epoch().as_micros()).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch (lease and heartbeat stamps).
pub fn unix_millis() -> u64 {
    u64::try_from(since_epoch().as_millis()).unwrap_or(u64::MAX)
}

/// Whole seconds since the Unix epoch (token expiry).
pub fn unix_secs() -> i64 {
    i64::try_from(since_epoch().as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_agree() {
        let (s, ms, us) = (unix_secs(), unix_millis(), unix_micros());
        // 2020-01-01 or later, and the three readings within a second of each other.
        assert!(s > 1_577_836_800, "{s}");
        assert!((ms as i64 / 1000 - s).abs() <= 1, "{ms} vs {s}");
        assert!((us / 1_000_000 - s).abs() <= 1, "{us} vs {s}");
    }
}
