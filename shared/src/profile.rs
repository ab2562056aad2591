//! Profiles (rules §3): one TOML file per billing model, embedded in every binary and chosen by
//! `TOPUP_PROFILE`. A profile is validated when it is loaded; a bad one is a start-up error
//! that names the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::money::{Micros, Rate, Unit};

/// The profiles that ship, by name.
pub const SHIPPED: [(&str, &str); 4] = [
    ("usd-overage", include_str!("../profiles/usd-overage.toml")),
    ("request-packs", include_str!("../profiles/request-packs.toml")),
    ("org-runs", include_str!("../profiles/org-runs.toml")),
    ("voice-minutes", include_str!("../profiles/voice-minutes.toml")),
];

/// The roles a person's token may carry (rules §5); `service` is the product's backend.
pub const PERSON_ROLES: [&str; 4] = ["owner", "admin", "member", "editor"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error(
        "unknown profile `{0}` (TOPUP_PROFILE); shipped profiles: usd-overage, request-packs, org-runs, voice-minutes"
    )]
    Unknown(String),
    #[error("profile `{profile}` does not parse: {message}")]
    Parse { profile: String, message: String },
    #[error("profile `{profile}`: field `{field}` {problem}")]
    Invalid { profile: String, field: String, problem: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    /// ISO currency of every charge, lower case (Stripe's spelling).
    pub currency: String,
    pub unit: Unit,
    pub low_balance: LowBalance,
    pub purchase: Purchase,
    pub auto_recharge: AutoRechargeRules,
    pub roles: Roles,
    pub notifications: Notifications,
    pub consumables: BTreeMap<String, Consumable>,
    pub plans: BTreeMap<String, Plan>,
    /// Expiry of granted credits (rules §15); the four shipped profiles set none: their seeds
    /// say credits never expire.
    #[serde(default)]
    pub grants: GrantRules,
}

/// How long grants last, in days; none: they never expire.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRules {
    /// Purchased credits (Checkout purchases; auto-recharges never expire).
    #[serde(default)]
    pub purchase_expiry_days: Option<i64>,
    /// An adjustment that sets no `expires_at` of its own.
    #[serde(default)]
    pub adjustment_expiry_days: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Low when the balance is strictly below the threshold (seeds 000, 002, 004).
    Below,
    /// Low when the balance is at or below the threshold (seed 003).
    AtOrBelow,
}

impl Trigger {
    pub fn is_low(self, balance: Micros, threshold: Micros) -> bool {
        match self {
            Trigger::Below => balance < threshold,
            Trigger::AtOrBelow => balance <= threshold,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LowBalance {
    /// Threshold when auto-recharge is off, micro-credits.
    pub default_threshold: Micros,
    /// How a balance is compared with a threshold for `BalanceLow` and recharges.
    pub trigger: Trigger,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Purchase {
    /// A free-form amount of money; credits = cents × `micros_per_cent`.
    Amount {
        default_cents: i64,
        min_cents: i64,
        max_cents: i64,
        /// Amounts must be a multiple of this (100 = whole dollars).
        #[serde(default = "one")]
        step_cents: i64,
        micros_per_cent: i64,
    },
    /// Fixed packages, and optionally a custom amount at `micros_per_cent`.
    Packages { packages: Vec<Package>, custom: Option<CustomAmount>, micros_per_cent: i64 },
    /// Blocks of units at the plan's `block_price_cents`.
    Blocks { units_per_block: i64, min_blocks: i64, max_blocks: i64 },
}

fn one() -> i64 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub id: String,
    pub price_cents: i64,
    pub credits: Micros,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomAmount {
    pub min_cents: i64,
    pub max_cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoRechargeRules {
    pub default_threshold: Micros,
    pub default_amount: Micros,
    pub threshold_min: Micros,
    /// `None`: the threshold may go up to the recharge amount.
    pub threshold_max: Option<Micros>,
    pub amount_min: Micros,
    pub amount_max: Micros,
    /// The amount is fixed (one block) and not a setting.
    #[serde(default)]
    pub fixed_amount: bool,
    pub monthly_max_default: u32,
    /// Whether reaching the monthly cap sends an email (seed 004: no).
    pub notify_on_pause: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    pub view: Vec<String>,
    pub billing: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notifications {
    pub email: Vec<String>,
    pub sms: Vec<String>,
}

/// The notification types a profile may send (rules §8).
pub const NOTIFICATION_TYPES: [&str; 9] = [
    "credit_balance_low",
    "credit_balance_alert",
    "credit_balance_depleted",
    "credit_auto_recharge_triggered",
    "credit_purchase_failed",
    "credit_purchase_settled",
    "credit_auto_recharge_paused",
    "credit_payment_disputed",
    "credit_entity_budget",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consumable {
    /// The 402 code when allowance and credits are both used up.
    pub exhausted_code: String,
    pub exhausted_message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub auto_recharge: bool,
    /// The most recharges a month this plan permits.
    pub monthly_reload_limit: u32,
    /// Price of one block (blocks purchases), in cents.
    pub block_price_cents: Option<i64>,
    pub consumables: BTreeMap<String, PlanConsumable>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConsumable {
    /// Units included each calendar month (UTC).
    pub included: i64,
    /// Overage rate once the allowance is used.
    pub rate: Rate,
}

impl Profile {
    /// The shipped profile named `name`, parsed and validated.
    pub fn load(name: &str) -> Result<Profile, ProfileError> {
        let text = SHIPPED
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| ProfileError::Unknown(name.to_string()))?;
        Profile::from_toml(name, text)
    }

    pub fn from_toml(name: &str, text: &str) -> Result<Profile, ProfileError> {
        let profile: Profile = toml::from_str(text)
            .map_err(|e| ProfileError::Parse { profile: name.to_string(), message: e.to_string() })?;
        profile.validate()?;
        Ok(profile)
    }

    pub fn plan(&self, plan: &str) -> Option<&Plan> {
        self.plans.get(plan)
    }

    pub fn can_view(&self, role: &str) -> bool {
        self.roles.view.iter().any(|r| r == role)
    }

    pub fn can_bill(&self, role: &str) -> bool {
        self.roles.billing.iter().any(|r| r == role)
    }

    fn invalid(&self, field: impl Into<String>, problem: impl Into<String>) -> ProfileError {
        ProfileError::Invalid { profile: self.name.clone(), field: field.into(), problem: problem.into() }
    }

    fn validate(&self) -> Result<(), ProfileError> {
        let positive = |field: &str, v: i64| {
            if v > 0 {
                Ok(())
            } else {
                Err(self.invalid(field, format!("must be positive, is {v}")))
            }
        };
        let ordered = |field: &str, lo: i64, hi: i64| {
            if lo <= hi {
                Ok(())
            } else {
                Err(self.invalid(field, format!("range is empty: {lo} > {hi}")))
            }
        };
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_lowercase()) {
            return Err(self.invalid("currency", "must be a lower-case ISO 4217 code"));
        }
        positive("unit.micros_per_unit", self.unit.micros_per_unit)?;
        if self.low_balance.default_threshold.get() < 0 {
            return Err(self.invalid("low_balance.default_threshold", "must not be negative"));
        }
        match &self.purchase {
            Purchase::Amount { default_cents, min_cents, max_cents, step_cents, micros_per_cent } => {
                positive("purchase.min_cents", *min_cents)?;
                positive("purchase.step_cents", *step_cents)?;
                positive("purchase.micros_per_cent", *micros_per_cent)?;
                ordered("purchase.min_cents", *min_cents, *default_cents)?;
                ordered("purchase.default_cents", *default_cents, *max_cents)?;
                if default_cents % step_cents != 0 || min_cents % step_cents != 0 {
                    return Err(self.invalid("purchase.step_cents", "must divide min_cents and default_cents"));
                }
            }
            Purchase::Packages { packages, custom, micros_per_cent } => {
                positive("purchase.micros_per_cent", *micros_per_cent)?;
                if packages.is_empty() {
                    return Err(self.invalid("purchase.packages", "must list at least one package"));
                }
                for (i, p) in packages.iter().enumerate() {
                    positive(&format!("purchase.packages[{i}].price_cents"), p.price_cents)?;
                    positive(&format!("purchase.packages[{i}].credits"), p.credits.get())?;
                }
                if let Some(c) = custom {
                    positive("purchase.custom.min_cents", c.min_cents)?;
                    ordered("purchase.custom.min_cents", c.min_cents, c.max_cents)?;
                }
            }
            Purchase::Blocks { units_per_block, min_blocks, max_blocks } => {
                positive("purchase.units_per_block", *units_per_block)?;
                positive("purchase.min_blocks", *min_blocks)?;
                ordered("purchase.min_blocks", *min_blocks, *max_blocks)?;
                for (name, plan) in &self.plans {
                    match plan.block_price_cents {
                        Some(p) if p > 0 => {}
                        _ => {
                            return Err(self.invalid(
                                format!("plans.{name}.block_price_cents"),
                                "must be set and positive for a blocks profile",
                            ))
                        }
                    }
                }
            }
        }
        let ar = &self.auto_recharge;
        ordered("auto_recharge.threshold_min", ar.threshold_min.get(), ar.default_threshold.get())?;
        if ar.threshold_min.get() < 0 {
            return Err(self.invalid("auto_recharge.threshold_min", "must not be negative"));
        }
        if let Some(max) = ar.threshold_max {
            ordered("auto_recharge.default_threshold", ar.default_threshold.get(), max.get())?;
        }
        positive("auto_recharge.amount_min", ar.amount_min.get())?;
        ordered("auto_recharge.amount_min", ar.amount_min.get(), ar.default_amount.get())?;
        ordered("auto_recharge.default_amount", ar.default_amount.get(), ar.amount_max.get())?;
        for (field, roles) in [("roles.view", &self.roles.view), ("roles.billing", &self.roles.billing)] {
            if roles.is_empty() {
                return Err(self.invalid(field, "must name at least one role"));
            }
            if let Some(r) = roles.iter().find(|r| !PERSON_ROLES.contains(&r.as_str())) {
                return Err(self.invalid(field, format!("names unknown role `{r}`")));
            }
        }
        if let Some(r) = self.roles.billing.iter().find(|r| !self.roles.view.contains(r)) {
            return Err(self.invalid("roles.billing", format!("role `{r}` may bill but not view")));
        }
        for (field, types) in
            [("notifications.email", &self.notifications.email), ("notifications.sms", &self.notifications.sms)]
        {
            if let Some(t) = types.iter().find(|t| !NOTIFICATION_TYPES.contains(&t.as_str())) {
                return Err(self.invalid(field, format!("names unknown notification `{t}`")));
            }
        }
        if self.consumables.is_empty() {
            return Err(self.invalid("consumables", "must define at least one consumable"));
        }
        for (name, c) in &self.consumables {
            if !is_snake(&c.exhausted_code) {
                return Err(self.invalid(format!("consumables.{name}.exhausted_code"), "must be snake_case"));
            }
        }
        for required in ["free", "pro"] {
            if !self.plans.contains_key(required) {
                return Err(self.invalid(format!("plans.{required}"), "is required (rules §11)"));
            }
        }
        for (plan_name, plan) in &self.plans {
            if plan.auto_recharge && plan.monthly_reload_limit == 0 {
                return Err(self.invalid(
                    format!("plans.{plan_name}.monthly_reload_limit"),
                    "must be positive when auto_recharge is allowed",
                ));
            }
            for name in self.consumables.keys() {
                let Some(pc) = plan.consumables.get(name) else {
                    return Err(self.invalid(format!("plans.{plan_name}.consumables.{name}"), "is missing"));
                };
                let field = format!("plans.{plan_name}.consumables.{name}");
                if pc.included < 0 {
                    return Err(self.invalid(format!("{field}.included"), "must not be negative"));
                }
                if pc.rate.micros < 0 || pc.rate.per <= 0 {
                    return Err(self.invalid(format!("{field}.rate"), "needs micros >= 0 and per > 0"));
                }
            }
            if let Some(extra) = plan.consumables.keys().find(|k| !self.consumables.contains_key(*k)) {
                return Err(self
                    .invalid(format!("plans.{plan_name}.consumables.{extra}"), "is not a consumable of this profile"));
            }
        }
        Ok(())
    }
}

fn is_snake(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::MICROS_PER_CREDIT as C;

    #[test]
    fn every_shipped_profile_loads() {
        for (name, _) in SHIPPED {
            let p = Profile::load(name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.name, name);
        }
    }

    #[test]
    fn unknown_profile_is_a_clear_error() {
        let e = Profile::load("nope").unwrap_err();
        assert!(e.to_string().contains("unknown profile `nope`"));
    }

    #[test]
    fn a_bad_field_is_named() {
        let text = SHIPPED[0].1.replace("min_cents = 500", "min_cents = 5000");
        let e = Profile::from_toml("usd-overage", &text).unwrap_err().to_string();
        assert!(e.contains("purchase.min_cents"), "{e}");
        let text = SHIPPED[0].1.replace("[plans.pro.consumables.sms]", "[plans.pro.consumables.smss]");
        let e = Profile::from_toml("usd-overage", &text).unwrap_err().to_string();
        assert!(e.contains("plans.pro.consumables.sms"), "{e}");
        let text = SHIPPED[0].1.replace("micros_per_unit", "micros_per_unti");
        let e = Profile::from_toml("usd-overage", &text).unwrap_err().to_string();
        assert!(e.contains("micros_per_unti"), "{e}");
    }

    #[test]
    fn seed_numbers_are_in_the_profiles() {
        let usd = Profile::load("usd-overage").unwrap();
        let Purchase::Amount { default_cents, min_cents, max_cents, .. } = usd.purchase else { panic!() };
        assert_eq!((default_cents, min_cents, max_cents), (1000, 500, 100_000));
        assert_eq!(usd.auto_recharge.amount_min.get(), 5 * C);
        assert_eq!(usd.auto_recharge.amount_max.get(), 100_000 * C);
        assert_eq!(usd.auto_recharge.threshold_min.get(), 0);
        assert_eq!(usd.auto_recharge.threshold_max, None);
        assert_eq!(usd.roles.view, ["owner", "admin"]);
        assert_eq!(usd.low_balance.default_threshold.get(), 5 * C);
        assert_eq!(usd.consumables.len(), 7);

        let packs = Profile::load("request-packs").unwrap();
        let Purchase::Packages { packages, .. } = &packs.purchase else { panic!() };
        let got: Vec<_> = packages.iter().map(|p| (p.id.as_str(), p.price_cents, p.credits.get() / C)).collect();
        assert_eq!(got, [("pack_20", 2000, 500), ("pack_100", 10_000, 2500), ("pack_500", 50_000, 12_500)]);

        let runs = Profile::load("org-runs").unwrap();
        assert_eq!(runs.low_balance.trigger, Trigger::AtOrBelow);
        let rate = runs.plans["free"].consumables["runs"].rate;
        assert_eq!(rate.cost(100), Some(Micros::new(C)), "1 credit covers 100 runs");

        let voice = Profile::load("voice-minutes").unwrap();
        let Purchase::Blocks { units_per_block, min_blocks, max_blocks } = voice.purchase else { panic!() };
        assert_eq!((units_per_block, min_blocks, max_blocks), (100, 1, 100));
        assert_eq!(voice.plans["free"].block_price_cents, Some(2800), "$0.28/min on Free");
        assert!(!voice.plans["free"].auto_recharge);
        assert_eq!(voice.auto_recharge.default_threshold.get(), 10 * C);
        assert_eq!(voice.auto_recharge.threshold_max, Some(Micros::new(100 * C)));
        assert_eq!(voice.auto_recharge.monthly_max_default, 10);
        assert!(!voice.auto_recharge.notify_on_pause);
        assert!(voice.can_view("editor") && !voice.can_bill("editor"));
    }
}
