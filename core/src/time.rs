//! Wall-clock time for the I/O shells. The state machines here never read a clock:
//! they are handed the time ([`crate::session::Now`]), so tests run on a fake one.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch at `t` (0 before 1970, saturating far after).
pub fn unix_ms_at(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms() -> u64 {
    unix_ms_at(SystemTime::now())
}

/// Seconds since the Unix epoch now.
pub fn unix_secs() -> u64 {
    unix_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn before_the_epoch_is_zero_and_after_it_counts() {
        assert_eq!(unix_ms_at(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(unix_ms_at(UNIX_EPOCH + Duration::from_millis(1500)), 1500);
        assert!(unix_secs() > 1_700_000_000);
    }
}
