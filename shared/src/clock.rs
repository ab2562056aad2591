//! Time as integers: milliseconds since the Unix epoch, calendar months in UTC, RFC 3339.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// (year, month, day) of a day count since 1970-01-01 (H. Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The UTC calendar month of `ms`, as `YYYY-MM`: the key of monthly allowances and caps.
pub fn month_of(ms: i64) -> String {
    let (y, m, _) = civil_from_days(ms.div_euclid(86_400_000));
    format!("{y:04}-{m:02}")
}

/// RFC 3339 in UTC with millisecond precision: `2026-11-22T00:32:07.123Z`.
/// When a job should stop, given its Lambda invocation's deadline (epoch ms): leaving
/// `spare_ms`, or a quarter of the time left if that is less. `None` when the runtime gave no
/// deadline (0) or it has passed.
pub fn stop_before(invocation_deadline_ms: u64, spare_ms: u64) -> Option<std::time::Instant> {
    let left_ms = invocation_deadline_ms.saturating_sub(u64::try_from(now_ms()).unwrap_or(0));
    (left_ms > 0)
        .then(|| std::time::Instant::now() + std::time::Duration::from_millis(left_ms - (left_ms / 4).min(spare_ms)))
}

/// `YYYY-MM-DD` (UTC) of epoch milliseconds.
pub fn date_of(ms: i64) -> String {
    rfc3339(ms).chars().take(10).collect()
}

pub fn rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, min, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_and_timestamps() {
        assert_eq!(month_of(0), "1970-01");
        // 2026-11-30T23:59:59.999Z and one millisecond later.
        let end_nov = 1_796_083_199_999;
        assert_eq!(rfc3339(end_nov), "2026-11-30T23:59:59.999Z");
        assert_eq!(month_of(end_nov), "2026-11");
        assert_eq!(month_of(end_nov + 1), "2026-12");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
