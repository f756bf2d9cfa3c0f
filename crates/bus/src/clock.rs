//! The wall clock the runtimes stamp records and measure ages with.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; 0 for a clock set before it, and
/// saturating far in the future. One type for every runtime: convert with
/// `as i64` (exact until the year 292 million) where a wire field is an
/// Avro `long`.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_after_2020_and_does_not_go_backwards_between_calls() {
        let a = now_ms();
        let b = now_ms();
        assert!(a > 1_577_836_800_000, "{a}");
        assert!(b >= a);
    }
}
