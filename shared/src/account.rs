//! The account: one item that holds everything a balance change must see at once — plan,
//! balance, lifetime totals, the month's allowance use, open holds, auto-recharge settings.
//! Every change to it is a compare-and-swap on `version` (see `store`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::clock;
use crate::grants::{Grant, Pending};
use crate::ids::RechargeId;
use crate::money::Micros;
use crate::profile::Profile;

/// The most the account item may take (rules §16), inside DynamoDB's 400 KB an item: what an
/// account at every limit needs (1,000 active grants, 100 open holds, the most parts it may be
/// spread over with what each holds (`parts`), five alerts, a card and auto-recharge), with
/// room to spare. A test builds that
/// account and measures it by DynamoDB's size rules.
pub const ACCOUNT_ITEM_BUDGET: usize = 300 * 1024;


#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default)]
    pub sms_opt_in: bool,
}

/// One email address, an addr-spec (rules §12): a local part, one `@`, a dotted domain; no
/// display name, comma, semicolon, angle bracket, quote, parenthesis, whitespace or control
/// character; at most 254 characters. `Ann <a@b.co>` and `a@b.co,c@x.io` are refused.
pub fn valid_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else { return false };
    let forbidden = |c: char| c.is_whitespace() || c.is_control() || ",;<>\"()[]\\:@".contains(c);
    let label_ok = |l: &str| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-');
    e.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && !local.chars().any(forbidden)
        && !domain.chars().any(forbidden)
        && domain.contains('.')
        && domain.split('.').all(label_ok)
}

/// A reservation for a metered session (rules §6): allowance units and credits set aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub consumable: String,
    /// Units reserved in all.
    pub units: i64,
    /// Of those, units reserved from the month's allowance.
    pub allowance_units: i64,
    /// Credits reserved for the rest.
    pub micros: Micros,
    /// The allowance month the units were reserved from.
    pub month: String,
    pub expires_at: i64,
    /// The entity whose usage it reserves for (rules §17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoRecharge {
    pub enabled: bool,
    pub threshold: Micros,
    pub amount: Micros,
    pub monthly_max: u32,
    /// Recharges made in `month`.
    pub used_month: String,
    pub used_this_month: u32,
    /// The recharge being charged now: one at a time per account (rules §8).
    #[serde(default)]
    pub in_flight: Option<RechargeClaim>,
    /// Set by a failed charge; cleared by a new card or a manual purchase. No automatic retry.
    #[serde(default)]
    pub suspended: bool,
    /// The month whose cap pause was announced (`AutoRechargePaused` once a month).
    #[serde(default)]
    pub paused_notice_month: Option<String>,
    /// An optional money cap: the most auto-recharges may charge in a calendar month, in cents.
    #[serde(default)]
    pub monthly_spend_max_cents: Option<i64>,
    /// What auto-recharges charged in `used_month`, in cents (claims included).
    #[serde(default)]
    pub spent_this_month_cents: i64,
    /// A recharge was claimed in the current low-balance episode: no other until the balance is
    /// no longer low (rules §10.5), even if the recharge left it low (a threshold at or above the
    /// amount). Cleared by any change that leaves the balance above the threshold, and by a
    /// failed charge (which adds nothing).
    #[serde(default)]
    pub episode_charged: bool,
    /// The balance went low through a refund, a dispute or a negative adjustment, not usage:
    /// only usage starts a recharge (rules §12), so none is claimed until usage draws on the
    /// low balance or the balance is above the threshold again.
    #[serde(default)]
    pub low_without_usage: bool,
    /// Failed recharges of `used_month` whose PaymentIntent was still processing when Stripe
    /// was asked to cancel it (rules §16): their count and money stay in the month until it
    /// settles, so a late success is not counted again and a late failure gives them back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<KeptRecharge>,
}

/// A failed recharge whose payment may still come (`AutoRecharge::kept`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptRecharge {
    pub recharge_id: RechargeId,
    pub charge_cents: i64,
}

/// What the product recorded of a recharge when it claimed it, before charging, kept for good
/// (rules §12): the only thing a `payment_intent.succeeded` can credit a recharge from. The
/// PaymentIntent's metadata names it; its amount and currency must be the record's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeRecord {
    pub recharge_id: RechargeId,
    pub account_id: String,
    pub credits: Micros,
    pub charge_cents: i64,
    pub currency: String,
    pub claimed_at: i64,
    /// The calendar month (UTC) whose count and spending limit the recharge counts toward.
    pub month: String,
}

/// A claimed recharge: what will be charged, under which id (the Stripe idempotency key is
/// derived from it, so a recovered claim can never charge twice).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeClaim {
    pub recharge_id: RechargeId,
    pub claimed_at: i64,
    pub credits: Micros,
    pub charge_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethod {
    pub id: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: u32,
    pub exp_year: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeError {
    pub code: String,
    /// The card network's reason (`insufficient_funds`, ...), when the charge was declined.
    #[serde(default)]
    pub decline_code: Option<String>,
    pub message: String,
    pub at: i64,
}

/// Decline codes after which card networks forbid retrying the same card: a new card is the
/// only way forward, and the view says so.
pub const DO_NOT_RETRY: [&str; 10] = [
    "lost_card",
    "stolen_card",
    "pickup_card",
    "restricted_card",
    "security_violation",
    "fraudulent",
    "merchant_blacklist",
    "invalid_account",
    "revocation_of_all_authorizations",
    "stop_payment_order",
];

impl RechargeError {
    /// Whether the card networks forbid charging this card again.
    pub fn do_not_retry(&self) -> bool {
        self.decline_code.as_deref().is_some_and(|c| DO_NOT_RETRY.contains(&c))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub id: String,
    pub plan: String,
    pub contacts: Vec<Contact>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Bumped by every change; the compare-and-swap guard of all writes.
    pub version: u64,
    pub balance: Micros,
    pub lifetime_added: Micros,
    pub lifetime_spent: Micros,
    /// The month `usage` counts (UTC `YYYY-MM`); another month means nothing used yet.
    pub usage_month: String,
    pub usage: BTreeMap<String, i64>,
    pub holds: BTreeMap<String, Hold>,
    pub auto_recharge: AutoRecharge,
    pub payment_method: Option<PaymentMethod>,
    /// The account's Stripe customer, created once (rules §4).
    #[serde(default)]
    pub stripe_customer_id: Option<String>,
    pub last_recharge_error: Option<RechargeError>,
    /// Credits taken back per refunded payment (PaymentIntent id): Stripe reports a charge's
    /// refunds as a running total, so a refund takes back only what this total adds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub refunded: BTreeMap<String, i64>,
    /// Disputes of this account's payments, by Stripe's dispute id: what each took back, and
    /// whether it is still open (auto-recharge is paused while one is).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub disputes: BTreeMap<String, Dispute>,
    /// Balance alert thresholds besides the low-balance one (rules §15), at most five.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<Micros>,
    /// The active grants (rules §15): the balance is the sum of their `remaining`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<Grant>,
    /// How the account is spread over items (rules §14; `parts::Parts`), stored as fields of
    /// the account's own.
    #[serde(flatten)]
    pub spread: crate::parts::Parts,
    /// The head of the account's audit chain (rules §19): advanced with the account's
    /// compare-and-swap by every change that records itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<crate::audit::AuditHead>,
    /// What the write being planned produced besides this state (expiry entries, grant moves,
    /// ended grants); the engine commits it. Never stored.
    #[serde(skip)]
    pub pending: Pending,
}

/// A dispute (chargeback) of one of the account's payments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispute {
    /// The disputed payment's PaymentIntent id.
    pub payment_id: String,
    /// Credits the dispute took back (a won dispute returns exactly these).
    pub taken: Micros,
    pub open: bool,
    /// Closed and won: what it took came back.
    #[serde(default)]
    pub won: bool,
}

impl Account {
    /// Whether a dispute of one of its payments is open: auto-recharge waits until it closes.
    pub fn dispute_open(&self) -> bool {
        self.disputes.values().any(|d| d.open)
    }

    /// Credits the disputes of one payment took back and keep (open or lost; a won one
    /// returned what it took).
    pub fn kept_by_disputes(&self, payment_id: &str) -> i64 {
        crate::money::total(
            self.disputes.values().filter(|d| d.payment_id == payment_id && !d.won).map(|d| d.taken.get()),
        )
    }

    /// A new account on `plan`, with auto-recharge off and the profile's defaults.
    pub fn new(profile: &Profile, id: &str, plan: &str, contacts: Vec<Contact>, now: i64) -> Account {
        let ar = &profile.auto_recharge;
        let month = clock::month_of(now);
        let monthly_max = profile.plan(plan).map_or(0, |p| ar.monthly_max_default.min(p.monthly_reload_limit));
        Account {
            id: id.to_string(),
            plan: plan.to_string(),
            contacts,
            created_at: now,
            updated_at: now,
            version: 0,
            balance: Micros::ZERO,
            lifetime_added: Micros::ZERO,
            lifetime_spent: Micros::ZERO,
            usage_month: month.clone(),
            usage: BTreeMap::new(),
            holds: BTreeMap::new(),
            auto_recharge: AutoRecharge {
                enabled: false,
                threshold: ar.default_threshold,
                amount: ar.default_amount,
                monthly_max,
                used_month: month,
                used_this_month: 0,
                in_flight: None,
                suspended: false,
                paused_notice_month: None,
                monthly_spend_max_cents: None,
                spent_this_month_cents: 0,
                episode_charged: false,
                low_without_usage: false,
                kept: vec![],
            },
            payment_method: None,
            stripe_customer_id: None,
            last_recharge_error: None,
            refunded: BTreeMap::new(),
            disputes: BTreeMap::new(),
            alerts: Vec::new(),
            grants: Vec::new(),
            spread: Default::default(),
            audit: None,
            pending: Pending::default(),
        }
    }

    /// Units of `consumable` used in `month`.
    pub fn used(&self, consumable: &str, month: &str) -> i64 {
        if self.usage_month == month {
            self.usage.get(consumable).copied().unwrap_or(0)
        } else {
            0
        }
    }

    /// Holds that have not expired at `now`. Expired ones reserve nothing: they release
    /// themselves, and the next write drops them.
    pub fn live_holds(&self, now: i64) -> impl Iterator<Item = (&String, &Hold)> {
        self.holds.iter().filter(move |(_, h)| h.expires_at > now)
    }

    /// Credits reserved by live holds.
    pub fn held(&self, now: i64) -> Micros {
        Micros::new(crate::money::total(self.live_holds(now).map(|(_, h)| h.micros.get())))
    }

    /// Allowance units of `consumable` reserved by live holds in `month`.
    pub fn held_allowance(&self, consumable: &str, month: &str, now: i64) -> i64 {
        self.live_holds(now)
            .filter(|(_, h)| h.consumable == consumable && h.month == month)
            .map(|(_, h)| h.allowance_units)
            .fold(0i64, i64::saturating_add)
    }

    /// What a debit may draw: the balance less what live holds reserve. Expired credits that
    /// holds still keep serve those holds first, and never a debit.
    pub fn available(&self, now: i64) -> Micros {
        Micros::new(self.balance.get() - self.held(now).get().max(self.expired_credits(now).get()))
    }

    /// The threshold that `low_balance` and `BalanceLow` use (rules §11).
    pub fn low_balance_threshold(&self, profile: &Profile) -> Micros {
        if self.auto_recharge.enabled {
            self.auto_recharge.threshold
        } else {
            profile.low_balance.default_threshold
        }
    }

    /// The state a write starts from at `now`: next version, month counters rolled over,
    /// expired holds dropped.
    pub fn next(&self, now: i64) -> Account {
        let mut next = self.clone();
        next.pending = Pending::default();
        next.ensure_grants();
        next.updated_at = now;
        let month = clock::month_of(now);
        if next.usage_month != month {
            next.usage_month = month.clone();
            next.usage.clear();
        }
        if next.auto_recharge.used_month != month {
            next.auto_recharge.used_month = month;
            next.auto_recharge.used_this_month = 0;
            next.auto_recharge.kept.clear();
            next.auto_recharge.spent_this_month_cents = 0;
        }
        next.holds.retain(|_, h| h.expires_at > now);
        // Grants past their instant expire first, each with its entry and version; used-up
        // grants an earlier write had no room to retire go now (rules §16).
        next.expire_grants(now);
        next.retire_used(now);
        next.version += 1;
        next
    }

    /// Whether the scheduled sweep visits the account: while auto-recharge is on. (The store
    /// keeps its listing in step with each write; how is the adapter's.)
    pub fn swept(&self) -> bool {
        self.auto_recharge.enabled
    }

    /// When the scheduled expiry run must visit the account: its soonest grant expiry, or when
    /// its spread over items is due a look (`Parts::review_due`: rules §21), whichever is
    /// sooner. Never on an item that is part of an account (`Account::is_part`).
    pub fn expiry_due(&self) -> Option<i64> {
        if self.is_part() {
            return None;
        }
        let grants = self.next_expiry().map(|(_, t)| t);
        match (grants, self.spread.review_due()) {
            (Some(g), Some(q)) => Some(g.min(q)),
            (g, q) => g.or(q),
        }
    }

    /// The console's lookup keys (rules §19): its first billing contact's email and its Stripe
    /// customer, each as `lookup_key` spells it. An item that is part of an account
    /// (`Account::is_part`) has none: it is found as its account.
    pub fn lookup_keys(&self) -> (Option<String>, Option<String>) {
        if self.is_part() {
            return (None, None);
        }
        let email = self.contacts.first().map(|c| lookup_key(&AccountLookup::Email(c.email.clone())));
        let customer = self.stripe_customer_id.as_ref().map(|c| lookup_key(&AccountLookup::Customer(c.clone())));
        (email, customer)
    }

    /// Whether `by` finds this account.
    pub fn found_by(&self, by: &AccountLookup) -> bool {
        let (email, customer) = self.lookup_keys();
        let key = Some(lookup_key(by));
        match by {
            AccountLookup::Email(_) => email == key,
            AccountLookup::Customer(_) => customer == key,
        }
    }
}

/// How the console finds an account besides its id (rules §19).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountLookup {
    /// The first billing contact's email (any case).
    Email(String),
    /// The Stripe customer.
    Customer(String),
}

/// The lookup index key of `by` (`gsi4pk` for an email, `gsi5pk` for a customer).
pub fn lookup_key(by: &AccountLookup) -> String {
    match by {
        AccountLookup::Email(e) => format!("EMAIL#{}", e.trim().to_lowercase()),
        AccountLookup::Customer(c) => format!("CUSTOMER#{}", c.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_email_is_one_address() {
        for ok in ["a@b.co", "first.last+tag@mail.example.com", "o'brien@x-y.io", "ü@exämple.de"] {
            assert!(valid_email(ok), "{ok}");
        }
        let long = format!("{}@{}.com", "a".repeat(64), "b".repeat(186));
        assert!(long.len() > 254 && !valid_email(&long));
        for bad in [
            "a@b.co,c@x.io",
            "Ann <a@b.co>",
            "<a@b.co>",
            "\"a\"@b.co",
            "a@b",
            "@b.co",
            "a@.co",
            "a@b..co",
            "a b@c.co",
            "a@b.co\n",
            "a@@b.co",
            "a@b@c.co",
            ".a@b.co",
            "a..b@c.co",
            "a@-b.co",
            "a;b@c.co",
            "a@b.co;c@d.co",
            "(x)a@b.co",
        ] {
            assert!(!valid_email(bad), "{bad:?}");
        }
    }

    #[test]
    fn networks_forbid_retrying_some_declines() {
        let e = |code: Option<&str>| RechargeError {
            code: "card_declined".into(),
            decline_code: code.map(String::from),
            message: String::new(),
            at: 0,
        };
        assert!(e(Some("stolen_card")).do_not_retry());
        assert!(e(Some("fraudulent")).do_not_retry());
        assert!(!e(Some("insufficient_funds")).do_not_retry());
        assert!(!e(None).do_not_retry());
    }
}
