//! Lanes as the rest of the crate sees them (re-exported as `crate::parts`): an account may be
//! held on several items, its own and its **parts** (its lanes, rules §14), and code outside
//! `lanes` asks only these lane-neutral questions of it, never how lanes decide:
//!
//! - whose an item is (`owner_of`): a lane's item belongs to its account, whose keys,
//!   entities, audit chain, revenue line and lookups are the account's;
//! - how an item is spread (`Parts`, kept on the account item): whether it is a part
//!   (`Account::is_part`), which account entry a part's entries follow (`Account::anchor`),
//!   whether some of its credits or of a grant are out on parts (`Account::leased_out`,
//!   `Account::grant_out`);
//! - what an item may draw a debit from (`Account::draws`), and the refusal of a part that
//!   cannot take it (`ApiError::Elsewhere`: the whole account decides it);
//! - what the console shows of how it is spread (`Parts::console_fields`);
//! - the account as a whole: `Credits::whole_account`, `Credits::whole_with_recent`,
//!   `Credits::whole_page`, `Credits::whole_entries`, `Credits::shown_entries` (`whole.rs`),
//!   and its reconciliation as a whole, `Credits::part_differences` (`reconcile.rs`).
//!
//! Which writes may commit beside credits out on lanes is the lanes' own policy, read off the
//! cause (`Cause::beside_lanes`, `beside.rs`).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::account::Account;
use crate::error::ApiError;

use super::{lane_serves, LaneOf, Lanes};

pub use super::{beside_of, owner_of};

/// The name events carry in their `cause` for a change of how an account is spread
/// (`Cause::Spread`: `PUT …/lanes`).
pub const SPREAD_CAUSE: &str = "lanes";
/// The name events carry for `Cause::Widen`: the account added lanes by itself (rules §21).
pub const WIDEN_CAUSE: &str = "spread";

/// How an account item is spread over items, kept on the item (flattened into `Account`, under
/// the names it has always been stored with): on an account, its lanes; on a lane's own item,
/// whose lane it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parts {
    /// A hot account's lanes (rules §14): how many, and what each holds on lease.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "through_json")]
    pub lanes: Option<Lanes>,
    /// Set on a lane's own item: the account it belongs to and the lease that funds it.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "through_json")]
    pub lane: Option<LaneOf>,
}

/// Reads a field of `Parts` by way of a JSON value. Flattened into `Account`, the whole item is
/// buffered before its fields are read, and a buffered map's keys are strings: the lane numbers
/// that key `Lanes::out` read back from them only as JSON reads them (as they always did when
/// these were fields of `Account` itself).
fn through_json<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        Some(v) => serde_json::from_value(v).map(Some).map_err(serde::de::Error::custom),
        None => Ok(None),
    }
}

impl Parts {
    /// When the scheduled run must look at the account to narrow its lanes (rules §21,
    /// `spread::quiet_due`): `None` while there is nothing to narrow.
    pub fn review_due(&self) -> Option<i64> {
        super::spread::quiet_due(self.lanes.as_ref())
    }

    /// What the console shows of how the account is spread (rules §19), as fields of its
    /// details: how many lanes its debits go over (1: none).
    pub fn console_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut out = serde_json::Map::new();
        out.insert("lanes".into(), self.lanes.as_ref().map_or(1, |l| l.k.max(1)).into());
        out
    }
}

/// What an item may draw a debit from (`Account::draws`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draws {
    /// The account itself: the month's allowance first, then credits; what it cannot pay is
    /// its own refusal (402).
    Everything,
    /// A part (a lane): credits only, never allowance (allowance is never leased); what it
    /// cannot pay is not its to refuse (`ApiError::Elsewhere`).
    CreditsOnly,
}

impl Account {
    /// Whether this item is a part of another account (a lane's own item). A lane's grants
    /// are parts of its account's, which recalls them before they expire, so nothing expires
    /// on it and the expiry run never visits it; its balance is part of its account's, whose
    /// thresholds, events, audit chain and lookups are decided on the account.
    pub fn is_part(&self) -> bool {
        self.spread.lane.is_some()
    }

    /// On a part: the account entry its entries follow (its last lease or return), which
    /// orders them among the account's (`ledger.rs`); `None` on an account.
    pub fn anchor(&self) -> Option<u64> {
        self.spread.lane.as_ref().map(|l| l.anchor)
    }

    /// What a debit of `consumable` at `now` may draw on this item; `ApiError::Elsewhere` when
    /// it is a part that does not take it. A lane takes only a consumable whose allowance was
    /// used up when it was leased, in the month of its lease, while none of its grant parts is
    /// near its expiry (rules §14).
    pub fn draws(&self, consumable: &str, now: i64) -> Result<Draws, ApiError> {
        if !self.is_part() {
            Ok(Draws::Everything)
        } else if lane_serves(self, consumable, now) {
            Ok(Draws::CreditsOnly)
        } else {
            Err(ApiError::Elsewhere)
        }
    }
}


#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::profile::Profile;

    /// The account item reads back as it was written, its lanes (keyed by lane number) and a
    /// lane's own item included, under the field names stored before `Parts` grouped them.
    #[test]
    fn an_account_with_lanes_reads_back_under_its_stored_names() {
        let p = Profile::load("usd-overage").unwrap();
        let mut a = Account::new(&p, "a", "free", vec![], 1_000);
        a.spread.lanes = Some(Lanes { k: 2, ever: 3, out: BTreeMap::from([(2, vec![("g1".to_string(), 5)])]), moves: 7, leased_at: BTreeMap::from([(2, 1_000)]), min: 1, max: 8, changed_at: 5, draining_until: 0 });
        let mut lane = Account::new(&p, "a~2", "free", vec![], 1_000);
        lane.spread.lane = Some(LaneOf {
            account: "a".into(),
            n: 2,
            anchor: 4,
            month: "2025-01".into(),
            credit_only: vec!["api_calls".into()],
            leased: 5,
            leased_at: 900,
        });
        for item in [&a, &lane] {
            let mut json = serde_json::to_value(item).unwrap();
            assert!(json.get("spread").is_none(), "{json}");
            // As the store reads it back: with the index keys beside the record's own fields.
            json["gsi2pk"] = serde_json::json!("EXPIRY#a");
            let back: Account = serde_json::from_value(json).unwrap();
            assert_eq!(&back, item);
        }
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(
            json["lanes"],
            serde_json::json!({"k": 2, "ever": 3, "out": {"2": [["g1", 5]]}, "moves": 7, "min": 1, "max": 8, "changed_at": 5, "leased_at": {"2": 1000}})
        );
        assert!(json.get("lane").is_none());
        assert_eq!(serde_json::to_value(&lane).unwrap()["lane"]["anchor"], serde_json::json!(4));
        // Stored before lanes, or with `null`: none.
        let mut old = serde_json::to_value(Account::new(&p, "b", "free", vec![], 1_000)).unwrap();
        old["lanes"] = serde_json::Value::Null;
        let back: Account = serde_json::from_value(old).unwrap();
        assert_eq!(back.spread, Parts::default());
    }
}
