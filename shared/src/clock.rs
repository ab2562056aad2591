//! Time as integers: milliseconds since the Unix epoch, calendar months in UTC, RFC 3339.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now, by the system's clock. The service reads time
/// through its `Clock` (`Credits::now`), so that tests and the simulator can move it.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Where the service reads the time: the system's clock deployed, a clock a test moves.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// A clock that stands still until it is moved: tests and the simulator run in its virtual
/// time (a grant expires when the clock passes its instant, not after a sleep).
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn at(ms: i64) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicI64::new(ms))
    }

    /// Moves the clock `ms` forward.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms.max(0), std::sync::atomic::Ordering::SeqCst);
    }

    pub fn set(&self, ms: i64) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
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

/// RFC 3339 in UTC with millisecond precision: `2026-11-22T00:32:07.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    let (h, min, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// Days since 1970-01-01 of a civil date (H. Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Epoch milliseconds of an RFC 3339 timestamp (`2026-12-31T23:59:59Z`, fractions and offsets
/// allowed); `None` if it is not one.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if !s.is_ascii()
        || b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes().all(|c| c.is_ascii_digit()).then(|| t.parse().ok())?
    };
    let (y, mo, d, h, mi, sec) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    let mo = u32::try_from(mo).ok().filter(|m| (1..=12).contains(m))?;
    let d = u32::try_from(d).ok().filter(|d| *d >= 1 && *d <= days_in_month(y, mo))?;
    if h > 23 || mi > 59 || sec > 59 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let f = &frac[..digits];
        millis = format!("{:0<3}", &f[..digits.min(3)]).parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && matches!(&o[0..1], "+" | "-") && &o[3..4] == ":" => {
            let oh: i64 = o[1..3].parse().ok()?;
            let om: i64 = o[4..6].parse().ok()?;
            let sign = if &o[0..1] == "-" { -1 } else { 1 };
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo, d);
    Some(((days * 86_400 + h * 3600 + mi * 60 + sec) - offset_min * 60) * 1000 + millis)
}

/// The last millisecond RFC 3339's four-digit years reach: 9999-12-31T23:59:59.999Z.
pub const MAX_MS: i64 = 253_402_300_799_999;

/// The first millisecond of a `YYYY-MM` month and of the month after it.
pub fn month_bounds(month: &str) -> Option<(i64, i64)> {
    let (y, m) = month.split_once('-')?;
    if y.len() != 4 || m.len() != 2 || !y.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = y.parse().ok()?;
    let m: u32 = m.parse().ok().filter(|m| (1..=12).contains(m))?;
    let start = days_from_civil(y, m, 1) * 86_400_000;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    Some((start, days_from_civil(ny, nm, 1) * 86_400_000))
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

    #[test]
    fn timestamps_and_months_parse_back() {
        for ms in [0, 951_782_400_000, 1_796_083_199_999, 1_795_305_600_123] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(parse_rfc3339("2026-11-30T23:59:59+01:00"), Some(1_796_083_199_000 - 3_600_000));
        assert_eq!(parse_rfc3339("2026-12-01T00:00:00Z"), Some(1_796_083_200_000));
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-11-30",
            "2026-11-30T24:00:00Z",
            "2026-11-30T10:00:00",
            "x",
            "2026-12-31T00:00:00é1234",
            "2026-12-31T00:00:00.é",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
        assert_eq!(month_bounds("2026-11"), Some((1_793_491_200_000, 1_796_083_200_000)));
        assert_eq!(month_bounds("2026-12").map(|b| b.1), parse_rfc3339("2027-01-01T00:00:00Z"));
        assert_eq!(month_bounds("2026-13"), None);
        assert_eq!(month_bounds("+123-+1"), None);
    }
}
