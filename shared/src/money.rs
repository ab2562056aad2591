//! Integer amounts (rules §2). Credits are `i64` micro-credits; money is `i64` minor units.
//! No floating point touches an amount, a rate or a price.

use serde::{Deserialize, Serialize};

/// One credit, in micro-credits.
pub const MICROS_PER_CREDIT: i64 = 1_000_000;

/// A total of money that never wraps (rules §16): at `i64::MAX` or `i64::MIN` it stays there,
/// so a total past what any account can hold is wrong where it shows (reconciliation reports
/// it), never silently small. Every amount that enters is bounded far below these, so no real
/// total reaches them.
pub fn total<I: IntoIterator<Item = i64>>(amounts: I) -> i64 {
    amounts.into_iter().fold(0i64, i64::saturating_add)
}

/// A signed amount of micro-credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Micros(i64);

impl Micros {
    pub const ZERO: Micros = Micros(0);

    pub const fn new(micros: i64) -> Micros {
        Micros(micros)
    }

    /// The number of micro-credits.
    pub const fn get(self) -> i64 {
        self.0
    }

    pub fn checked_add(self, other: Micros) -> Option<Micros> {
        self.0.checked_add(other.0).map(Micros)
    }

    pub fn checked_sub(self, other: Micros) -> Option<Micros> {
        self.0.checked_sub(other.0).map(Micros)
    }
}

/// Money in minor units of a currency (cents for usd).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cents(i64);

impl Cents {
    pub const fn new(cents: i64) -> Cents {
        Cents(cents)
    }

    /// The number of minor units.
    pub const fn get(self) -> i64 {
        self.0
    }
}

/// A usage rate: `micros` micro-credits for every `per` units, so fractional micro-credit rates
/// (15 micro-credits per 1,000 tokens) stay exact. Cost is rounded up to the micro-credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub micros: i64,
    #[serde(default = "one")]
    pub per: i64,
}

fn one() -> i64 {
    1
}

impl Rate {
    /// The cost of `units`, rounded up to the micro-credit; `None` on overflow.
    pub fn cost(&self, units: i64) -> Option<Micros> {
        if units < 0 || self.per <= 0 || self.micros < 0 {
            return None;
        }
        let num = i128::from(units) * i128::from(self.micros);
        let per = i128::from(self.per);
        let cost = (num + per - 1) / per;
        i64::try_from(cost).ok().map(Micros)
    }

    /// The most whole units that `budget` pays for at this rate (the inverse of `cost`).
    pub fn units_affordable(&self, budget: Micros) -> i64 {
        if budget.0 <= 0 {
            return if self.micros == 0 { i64::MAX } else { 0 };
        }
        if self.micros == 0 {
            return i64::MAX;
        }
        let units = i128::from(budget.0) * i128::from(self.per) / i128::from(self.micros);
        i64::try_from(units).unwrap_or(i64::MAX)
    }
}

/// How an amount is shown to a person: `{"code":"usd","symbol":"$","micros_per_unit":1000000}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    pub code: String,
    pub symbol: String,
    pub micros_per_unit: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_to_the_micro_credit() {
        let r = Rate { micros: 15, per: 1000 };
        assert_eq!(r.cost(0), Some(Micros(0)));
        assert_eq!(r.cost(1), Some(Micros(1)));
        assert_eq!(r.cost(1000), Some(Micros(15)));
        assert_eq!(r.cost(1001), Some(Micros(16)));
        assert_eq!(r.cost(-1), None);
        let whole = Rate { micros: 10_000, per: 1 };
        assert_eq!(whole.cost(100), Some(Micros(MICROS_PER_CREDIT)));
    }

    #[test]
    fn cost_overflow_is_none_not_a_wrap() {
        let r = Rate { micros: 1_000_000, per: 1 };
        assert_eq!(r.cost(i64::MAX), None);
    }

    #[test]
    fn units_affordable_is_the_inverse_of_cost() {
        let r = Rate { micros: 15, per: 1000 };
        for budget in [0, 1, 14, 15, 16, 29, 30, 12345] {
            let u = r.units_affordable(Micros(budget));
            assert!(r.cost(u).unwrap().0 <= budget, "budget {budget} units {u}");
            assert!(r.cost(u + 1).unwrap().0 > budget, "budget {budget} units {u}");
        }
    }
}

#[cfg(test)]
mod total_tests {
    #[test]
    fn a_total_never_wraps() {
        assert_eq!(super::total([1, 2, 3]), 6);
        assert_eq!(super::total([i64::MAX, 1, 5]), i64::MAX, "not negative");
        assert_eq!(super::total([i64::MIN, -1]), i64::MIN, "not positive");
        assert_eq!(super::total(std::iter::empty()), 0);
    }
}
