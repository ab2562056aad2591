//! An account spreads itself (rules §21): how many lanes it has, decided by contention, with no
//! operator call. The policy is pure (`widen_to`, `narrow_to`, `quiet_due`): it reads the
//! account's `Lanes` and what this process saw, and answers a lane count; the engine's lanes
//! hook commits it. `docs/hot-accounts.md` states the policy in words.
//!
//! - **Contention** is what one process sees of one account: writes that lost a race (a
//!   `TransactionConflict`, a stale version) or were throttled by their partition, on the
//!   account's item or on one of its lanes. Each process counts its own, in windows of
//!   `WINDOW_MS`; none of it is shared or stored.
//! - **Widen** when a process lost `WIDEN_LOST` races in one window on an account whose debits
//!   could go to lanes: the lane count doubles (1 → 2 → 4 … up to the account's `max`), at most
//!   once per `WIDEN_COOLDOWN_MS` per account (the account item says when it last changed, so
//!   every process sees the same cooldown). Widening moves no credits: it needs no recall.
//! - **Narrow** when lanes sit unused: a lease (which writes the account anyway) looks at which
//!   lanes leased in the last `QUIET_MS`; if at most a quarter of them did, the count halves or
//!   more, to the next power of two at or above what is in use (never below `min`). A lane
//!   count that changes takes every lane's credits home first (a recall).
//! - **A quiet account** (no lease at all for `QUIET_MS`) is due in the scheduled expiry run's
//!   index (`quiet_due`), which narrows it to `min` and brings every lane's credits home, so a
//!   hot account that went silent returns to one item by itself.
//! - **Bounds**: `PUT …/lanes {"lanes": K}` fixes the count (`min = max = K`, nothing
//!   automatic); `{"min": a, "max": b}` lets it move within them; the default is `1..=AUTO_MAX`.

use std::collections::HashMap;
use std::sync::Mutex;

use super::Lanes;

/// The most lanes an account spreads itself over by default.
pub const AUTO_MAX: u32 = 64;
/// The window contention is counted in.
const WINDOW_MS: i64 = 1_000;
/// Races lost (or throttled writes) in one window that make a process widen the account.
const WIDEN_LOST: u32 = 4;
/// The least time between two changes of an account's lane count by the policy.
pub const WIDEN_COOLDOWN_MS: i64 = 500;
/// Lanes with no lease for this long are not in use; an account none of whose lanes leased for
/// this long is quiet.
pub const QUIET_MS: i64 = 600_000;

/// An account's lane bounds, as the policy reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub min: u32,
    pub max: u32,
}

impl Bounds {
    /// The bounds `lanes` stores (none stored: the default, `1..=AUTO_MAX`).
    pub fn of(lanes: Option<&Lanes>) -> Bounds {
        let (min, max) = lanes.map_or((0, 0), |l| (l.min, l.max));
        let min = min.max(1);
        let max = if max == 0 { AUTO_MAX } else { max }.max(min);
        Bounds { min, max }
    }

    /// Whether the count is fixed (the operator's override).
    pub fn fixed(self) -> bool {
        self.min == self.max
    }
}

/// The lane count the account has now (at least 1).
pub fn count(lanes: Option<&Lanes>) -> u32 {
    lanes.map_or(1, |l| l.k.max(1))
}

/// The count to widen to when a process saw contention at `now`: double, within the bounds,
/// and not within `WIDEN_COOLDOWN_MS` of the last change. `None`: leave it.
pub fn widen_to(lanes: Option<&Lanes>, now: i64) -> Option<u32> {
    let b = Bounds::of(lanes);
    let k = count(lanes);
    let changed_at = lanes.map_or(i64::MIN, |l| l.changed_at);
    if b.fixed() || k >= b.max || now.saturating_sub(changed_at) < WIDEN_COOLDOWN_MS {
        return None;
    }
    Some(k.saturating_mul(2).clamp(2, b.max))
}

/// The count to narrow to at `now`, judged by which lanes leased in the last `QUIET_MS`: the
/// next power of two at or above the lanes in use (at least `min`), when that is at most a
/// quarter of today's count, or `min` when none leased. `None`: leave it.
pub fn narrow_to(lanes: Option<&Lanes>, now: i64) -> Option<u32> {
    let l = lanes?;
    let b = Bounds::of(lanes);
    let k = count(lanes);
    if b.fixed() || k <= b.min || now.saturating_sub(l.changed_at) < QUIET_MS {
        return None;
    }
    let in_use = l.leased_at.iter().filter(|(n, t)| **n <= k && now.saturating_sub(**t) < QUIET_MS).count() as u32;
    let target = if in_use == 0 { b.min } else { in_use.next_power_of_two().max(b.min) };
    (target.saturating_mul(4) <= k || in_use == 0).then_some(target)
}

/// When the scheduled run must look at the account to narrow it: `QUIET_MS` after its last
/// lease or change, while it spreads automatically over more lanes than its `min`.
pub fn quiet_due(lanes: Option<&Lanes>) -> Option<i64> {
    let l = lanes?;
    let b = Bounds::of(lanes);
    if b.fixed() || count(lanes) <= b.min {
        return None;
    }
    let last = l.leased_at.values().copied().max().unwrap_or(i64::MIN).max(l.changed_at);
    Some(last.saturating_add(QUIET_MS))
}

/// How long a lease should last, in ms: a second of the lane's spending, longer as the account
/// has more lanes so that their leases together stay a few a second on the account's item.
pub fn lease_window_ms(k: u32) -> i64 {
    1_000 * i64::from((k / 8).max(1))
}

/// What one process saw of each account's contention, in windows of `WINDOW_MS`.
#[derive(Debug, Default)]
pub struct Contention {
    seen: Mutex<HashMap<String, Window>>,
    /// The lane this process last wrote on a state it had cached: nobody else had written it
    /// in between, so this process has it to itself (until a stale write says otherwise).
    alone_on: Mutex<Option<String>>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Window {
    start: i64,
    lost: u32,
}

/// The most accounts a process tracks (the map starts over past it).
const TRACKED: usize = 10_000;

impl Contention {
    /// A write to `owner`'s account (or one of its lanes) lost a race or was throttled at
    /// `now`. Answers whether this window has now seen enough to widen the account.
    pub fn lost(&self, owner: &str, now: i64) -> bool {
        let Ok(mut seen) = self.seen.lock() else { return false };
        if seen.len() >= TRACKED && !seen.contains_key(owner) {
            seen.clear();
        }
        let w = seen.entry(owner.to_string()).or_default();
        if now.saturating_sub(w.start) >= WINDOW_MS {
            *w = Window { start: now, lost: 0 };
        }
        w.lost += 1;
        w.lost >= WIDEN_LOST
    }

    /// Whether `owner`'s account is contended now, as this process saw it.
    pub fn contended(&self, owner: &str, now: i64) -> bool {
        let Ok(seen) = self.seen.lock() else { return false };
        seen.get(owner).is_some_and(|w| now.saturating_sub(w.start) < WINDOW_MS && w.lost >= WIDEN_LOST)
    }

    /// A write on lane `id` committed; `cached`: on the state this process had cached, so
    /// nobody else wrote the lane since this process's last write.
    pub fn wrote(&self, id: &str, cached: bool) {
        if let Ok(mut alone) = self.alone_on.lock() {
            if cached {
                *alone = Some(id.to_string());
            }
        }
    }

    /// Another process wrote lane `id` since this one last did.
    pub fn shared(&self, id: &str) {
        if let Ok(mut alone) = self.alone_on.lock() {
            if alone.as_deref() == Some(id) {
                *alone = None;
            }
        }
    }

    /// Whether this process has lane `id` to itself, as far as it saw.
    pub fn alone_on(&self, id: &str) -> bool {
        self.alone_on.lock().is_ok_and(|a| a.as_deref() == Some(id))
    }

    /// The account was widened (or found wide enough): start counting again.
    pub fn reset(&self, owner: &str) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.remove(owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes(k: u32, min: u32, max: u32, changed_at: i64, leased: &[(u32, i64)]) -> Lanes {
        Lanes { k, ever: k, min, max, changed_at, leased_at: leased.iter().copied().collect(), ..Lanes::default() }
    }

    #[test]
    fn widening_doubles_within_bounds_and_cooldown() {
        assert_eq!(widen_to(None, 0), Some(2));
        let l = lanes(2, 0, 0, 1_000, &[]);
        assert_eq!(widen_to(Some(&l), 1_000 + WIDEN_COOLDOWN_MS - 1), None, "inside the cooldown");
        assert_eq!(widen_to(Some(&l), 1_000 + WIDEN_COOLDOWN_MS), Some(4));
        assert_eq!(widen_to(Some(&lanes(48, 0, 0, 0, &[])), 10_000), Some(AUTO_MAX), "capped at the default max");
        assert_eq!(widen_to(Some(&lanes(64, 0, 0, 0, &[])), 10_000), None);
        assert_eq!(widen_to(Some(&lanes(4, 1, 6, 0, &[])), 10_000), Some(6), "capped at the account's max");
        assert_eq!(widen_to(Some(&lanes(8, 8, 8, 0, &[])), 10_000), None, "a fixed count never moves");
    }

    #[test]
    fn narrowing_needs_quiet_lanes() {
        let now = 10 * QUIET_MS;
        // 64 lanes, 3 leased lately: down to 4.
        let busy: Vec<(u32, i64)> = (1..=64).map(|n| (n, if n <= 3 { now - 1_000 } else { now - QUIET_MS })).collect();
        assert_eq!(narrow_to(Some(&lanes(64, 0, 0, 0, &busy)), now), Some(4));
        // 8 lanes, 3 in use: 4 is more than a quarter of 8, so it stays.
        assert_eq!(narrow_to(Some(&lanes(8, 0, 0, 0, &busy)), now), None);
        // None in use: down to the minimum, whatever the count.
        assert_eq!(narrow_to(Some(&lanes(2, 0, 0, 0, &[])), now), Some(1));
        assert_eq!(narrow_to(Some(&lanes(16, 4, 0, 0, &[])), now), Some(4));
        // Changed lately, or fixed: left alone.
        assert_eq!(narrow_to(Some(&lanes(16, 0, 0, now - 1, &[])), now), None);
        assert_eq!(narrow_to(Some(&lanes(16, 16, 16, 0, &[])), now), None);
        assert_eq!(narrow_to(None, now), None);
    }

    #[test]
    fn a_quiet_account_is_due_after_its_last_lease() {
        assert_eq!(quiet_due(Some(&lanes(8, 0, 0, 5, &[(1, 100), (2, 300)]))), Some(300 + QUIET_MS));
        assert_eq!(quiet_due(Some(&lanes(1, 0, 0, 5, &[(1, 100)]))), None, "one lane: nothing to narrow");
        assert_eq!(quiet_due(Some(&lanes(8, 8, 8, 5, &[]))), None, "fixed");
    }

    #[test]
    fn contention_counts_per_window() {
        let c = Contention::default();
        for i in 0..WIDEN_LOST - 1 {
            assert!(!c.lost("a", i64::from(i)));
        }
        assert!(!c.lost("b", 0), "another account counts apart");
        assert!(c.lost("a", 10));
        assert!(c.contended("a", 10));
        assert!(!c.contended("a", 10 + WINDOW_MS));
        assert!(!c.lost("a", 10 + WINDOW_MS), "a new window starts over");
        c.reset("a");
        assert!(!c.contended("a", 11));
    }
}
