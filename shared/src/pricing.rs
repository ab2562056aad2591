//! What a purchase costs and what it buys, computed on the server from the profile (rules §2,
//! §3, §10.8): a client names an amount of money, a package or a number of blocks, never a
//! price or a number of credits.

use crate::error::ApiError;
use crate::money::{Cents, Micros};
use crate::profile::{Profile, Purchase};

/// The largest charge, in minor units (rules §16): Stripe's own limit for one payment
/// ($999,999.99), whatever a profile allows. Also the most a paid adjustment may say it cost.
pub const MAX_CHARGE_CENTS: i64 = 99_999_999;

/// What the client asked for: exactly one of these, or nothing for the profile's default.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PurchaseChoice {
    pub amount: Option<i64>,
    pub package: Option<String>,
    pub blocks: Option<i64>,
}

/// The server's price: charge this much money, add these credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub charge: Cents,
    pub credits: Micros,
    /// A human description for the ledger and Stripe: "$10.00 of credits", "pack_20".
    pub description: String,
}

/// `1234` cents of `usd` → `$12.34`; other currencies → `12.34 EUR`.
pub fn format_money(cents: i64, currency: &str) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    let whole = (c / 100).to_string();
    let mut grouped = String::new();
    for (i, ch) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    match currency {
        "usd" => format!("{sign}${grouped}.{:02}", c % 100),
        other => format!("{sign}{grouped}.{:02} {}", c % 100, other.to_uppercase()),
    }
}

fn mul(a: i64, b: i64) -> Result<i64, ApiError> {
    a.checked_mul(b).ok_or_else(|| ApiError::rule("amount_out_of_range", "The purchase is too large."))
}

/// Prices a purchase for an account on `plan`; a charge past `MAX_CHARGE_CENTS` is 422
/// `amount_out_of_range`, whatever the profile allows.
pub fn quote(profile: &Profile, plan: &str, choice: &PurchaseChoice) -> Result<Quote, ApiError> {
    let q = quote_of(profile, plan, choice)?;
    if q.charge.get() > MAX_CHARGE_CENTS {
        return Err(too_large(&profile.currency));
    }
    Ok(q)
}

fn too_large(currency: &str) -> ApiError {
    ApiError::rule(
        "amount_out_of_range",
        format!("One payment can be at most {}.", format_money(MAX_CHARGE_CENTS, currency)),
    )
}

fn quote_of(profile: &Profile, plan: &str, choice: &PurchaseChoice) -> Result<Quote, ApiError> {
    let cur = profile.currency.as_str();
    let given =
        [choice.amount.is_some(), choice.package.is_some(), choice.blocks.is_some()].iter().filter(|b| **b).count();
    if given > 1 {
        return Err(ApiError::invalid("Send one of `amount`, `package` or `blocks`."));
    }
    match &profile.purchase {
        Purchase::Amount { default_cents, min_cents, max_cents, step_cents, micros_per_cent } => {
            if choice.package.is_some() || choice.blocks.is_some() {
                return Err(ApiError::rule(
                    "invalid_purchase",
                    "This product sells credits by amount: send `amount` in cents.",
                ));
            }
            let amount = choice.amount.unwrap_or(*default_cents);
            if amount < *min_cents || amount > *max_cents {
                return Err(ApiError::rule(
                    "amount_out_of_range",
                    format!(
                        "The amount must be between {} and {}.",
                        format_money(*min_cents, cur),
                        format_money(*max_cents, cur)
                    ),
                ));
            }
            if amount % step_cents != 0 {
                return Err(ApiError::rule(
                    "invalid_amount",
                    format!("The amount must be a multiple of {}.", format_money(*step_cents, cur)),
                ));
            }
            Ok(Quote {
                charge: Cents::new(amount),
                credits: Micros::new(mul(amount, *micros_per_cent)?),
                description: format!("{} of credits", format_money(amount, cur)),
            })
        }
        Purchase::Packages { packages, custom, micros_per_cent } => {
            if choice.blocks.is_some() {
                return Err(ApiError::rule(
                    "invalid_purchase",
                    "This product sells packages: send `package` or a custom `amount`.",
                ));
            }
            if let Some(id) = &choice.package {
                let p = packages.iter().find(|p| &p.id == id).ok_or_else(|| {
                    ApiError::rule("unknown_package", format!("`{id}` is not a package of this product."))
                })?;
                return Ok(Quote {
                    charge: Cents::new(p.price_cents),
                    credits: p.credits,
                    description: format!("Package {}", p.id),
                });
            }
            let (Some(amount), Some(c)) = (choice.amount, custom) else {
                return Err(ApiError::invalid("Field `package` is required."));
            };
            if amount < c.min_cents || amount > c.max_cents {
                return Err(ApiError::rule(
                    "amount_out_of_range",
                    format!(
                        "A custom amount must be between {} and {}.",
                        format_money(c.min_cents, cur),
                        format_money(c.max_cents, cur)
                    ),
                ));
            }
            Ok(Quote {
                charge: Cents::new(amount),
                credits: Micros::new(mul(amount, *micros_per_cent)?),
                description: format!("{} of credits", format_money(amount, cur)),
            })
        }
        Purchase::Blocks { units_per_block, min_blocks, max_blocks } => {
            if choice.amount.is_some() || choice.package.is_some() {
                return Err(ApiError::rule("invalid_purchase", "This product sells blocks: send `blocks`."));
            }
            let blocks = choice.blocks.ok_or_else(|| ApiError::invalid("Field `blocks` is required."))?;
            if blocks < *min_blocks || blocks > *max_blocks {
                return Err(ApiError::rule(
                    "blocks_out_of_range",
                    format!("Choose {min_blocks} to {max_blocks} blocks."),
                ));
            }
            let price = profile
                .plan(plan)
                .and_then(|p| p.block_price_cents)
                .ok_or_else(|| ApiError::rule("unknown_plan", "The account's plan has no block price."))?;
            let units = mul(blocks, *units_per_block)?;
            Ok(Quote {
                charge: Cents::new(mul(blocks, price)?),
                credits: Micros::new(mul(units, profile.unit.micros_per_unit)?),
                description: format!("{blocks} × {units_per_block}-{} block", profile.unit.code),
            })
        }
    }
}

/// What one auto-recharge of `credits` costs on `plan`: at the purchase rate of the profile
/// (the block price for blocks; seed 004: "charged at the same per-minute rate as a manual
/// purchase"). A fraction of a cent is charged up; past `MAX_CHARGE_CENTS`, 422.
pub fn recharge_charge(profile: &Profile, plan: &str, credits: Micros) -> Result<Cents, ApiError> {
    let charge = recharge_charge_of(profile, plan, credits)?;
    if charge.get() > MAX_CHARGE_CENTS {
        return Err(too_large(&profile.currency));
    }
    Ok(charge)
}

fn recharge_charge_of(profile: &Profile, plan: &str, credits: Micros) -> Result<Cents, ApiError> {
    let per_cent = match &profile.purchase {
        Purchase::Amount { micros_per_cent, .. } | Purchase::Packages { micros_per_cent, .. } => *micros_per_cent,
        Purchase::Blocks { units_per_block, .. } => {
            let price = profile
                .plan(plan)
                .and_then(|p| p.block_price_cents)
                .ok_or_else(|| ApiError::rule("unknown_plan", "The account's plan has no block price."))?;
            let block_micros = mul(*units_per_block, profile.unit.micros_per_unit)?;
            let cents = i128::from(credits.get()) * i128::from(price);
            let per = i128::from(block_micros);
            return i64::try_from((cents + per - 1) / per)
                .map(Cents::new)
                .map_err(|_| ApiError::rule("amount_out_of_range", "Too large."));
        }
    };
    let cents = credits.get().checked_add(per_cent - 1).map(|c| c / per_cent.max(1));
    cents.map(Cents::new).ok_or_else(|| too_large(&profile.currency))
}

/// Credits in the profile's unit for a person: `$12.50`, `100 minutes`, `12 credits`.
pub fn format_credits(p: &Profile, micros: Micros) -> String {
    let per = p.unit.micros_per_unit.max(1);
    if p.unit.code == p.currency {
        return format_money(micros.get() / (per / 100).max(1), &p.currency);
    }
    let whole = micros.get() / per;
    let frac = (micros.get() % per).abs();
    let digits = per.to_string().len() - 1;
    let n = if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:0digits$}").trim_end_matches('0').to_string()
    };
    let unit = if n == "1" { p.unit.code.clone() } else { format!("{}s", p.unit.code) };
    format!("{n} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::MICROS_PER_CREDIT as C;

    fn q(profile: &str, plan: &str, choice: PurchaseChoice) -> Result<Quote, ApiError> {
        quote(&Profile::load(profile).unwrap(), plan, &choice)
    }

    fn amount(a: i64) -> PurchaseChoice {
        PurchaseChoice { amount: Some(a), ..Default::default() }
    }

    #[test]
    fn recharges_cost_what_a_purchase_of_the_same_credits_costs() {
        let p = |name: &str| Profile::load(name).unwrap();
        assert_eq!(recharge_charge(&p("usd-overage"), "free", Micros::new(10 * C)).unwrap(), Cents::new(1000));
        assert_eq!(recharge_charge(&p("request-packs"), "free", Micros::new(500 * C)).unwrap(), Cents::new(2000));
        assert_eq!(recharge_charge(&p("org-runs"), "pro", Micros::new(20 * C)).unwrap(), Cents::new(2000));
        assert_eq!(
            recharge_charge(&p("voice-minutes"), "pro", Micros::new(100 * C)).unwrap(),
            Cents::new(2000),
            "one block on Pro"
        );
        assert_eq!(recharge_charge(&p("usd-overage"), "free", Micros::new(1)).unwrap(), Cents::new(1), "rounded up");
    }

    /// Whatever a profile allows, one charge is at most Stripe's limit: the largest is quoted,
    /// a cent more is 422 `amount_out_of_range`.
    #[test]
    fn a_charge_is_at_most_stripes_limit() {
        let mut p = Profile::load("usd-overage").unwrap();
        if let Purchase::Amount { max_cents, .. } = &mut p.purchase {
            *max_cents = 10 * MAX_CHARGE_CENTS;
        }
        let q = |a: i64| quote(&p, "free", &amount(a));
        assert_eq!(q(MAX_CHARGE_CENTS).unwrap().charge, Cents::new(MAX_CHARGE_CENTS));
        assert_eq!(q(MAX_CHARGE_CENTS + 1).unwrap_err().code(), "amount_out_of_range");
        // usd-overage: a cent buys 10,000 micro-credits.
        let most = Micros::new(MAX_CHARGE_CENTS * 10_000);
        assert_eq!(recharge_charge(&p, "free", most).unwrap(), Cents::new(MAX_CHARGE_CENTS));
        let more = Micros::new(most.get() + 1);
        assert_eq!(recharge_charge(&p, "free", more).unwrap_err().code(), "amount_out_of_range", "a cent more");
        assert_eq!(recharge_charge(&p, "free", Micros::new(i64::MAX)).unwrap_err().code(), "amount_out_of_range");
    }

    #[test]
    fn money_formats_like_the_seeds() {
        assert_eq!(format_money(1000, "usd"), "$10.00");
        assert_eq!(format_money(10_000_000, "usd"), "$100,000.00");
        assert_eq!(format_money(1250, "eur"), "12.50 EUR");
    }

    #[test]
    fn usd_overage_default_min_max() {
        let d = q("usd-overage", "free", PurchaseChoice::default()).unwrap();
        assert_eq!((d.charge, d.credits), (Cents::new(1000), Micros::new(10 * C)), "default $10");
        assert_eq!(q("usd-overage", "free", amount(500)).unwrap().credits, Micros::new(5 * C));
        assert_eq!(q("usd-overage", "free", amount(100_000)).unwrap().credits, Micros::new(1000 * C));
        let e = q("usd-overage", "free", amount(499)).unwrap_err();
        assert_eq!(
            (e.code(), e.to_string().as_str()),
            ("amount_out_of_range", "The amount must be between $5.00 and $1,000.00.")
        );
        assert_eq!(q("usd-overage", "free", amount(100_001)).unwrap_err().code(), "amount_out_of_range");
        assert_eq!(q("usd-overage", "free", amount(-1)).unwrap_err().code(), "amount_out_of_range");
        assert_eq!(
            q("usd-overage", "free", PurchaseChoice { blocks: Some(1), ..Default::default() }).unwrap_err().code(),
            "invalid_purchase"
        );
    }

    #[test]
    fn request_packs_packages_and_custom_amounts_at_the_same_rate() {
        let p =
            |id: &str| q("request-packs", "free", PurchaseChoice { package: Some(id.into()), ..Default::default() });
        assert_eq!(p("pack_20").unwrap().credits, Micros::new(500 * C));
        assert_eq!(p("pack_100").unwrap().charge, Cents::new(10_000));
        assert_eq!(p("pack_500").unwrap().credits, Micros::new(12_500 * C));
        assert_eq!(p("pack_7").unwrap_err().code(), "unknown_package");
        assert_eq!(
            q("request-packs", "free", amount(2000)).unwrap().credits,
            Micros::new(500 * C),
            "$20 custom = pack_20's rate"
        );
        assert_eq!(q("request-packs", "free", amount(499)).unwrap_err().code(), "amount_out_of_range");
        assert_eq!(q("request-packs", "free", PurchaseChoice::default()).unwrap_err().code(), "invalid_request");
    }

    #[test]
    fn org_runs_whole_dollars_buy_whole_credits() {
        let r = q("org-runs", "pro", amount(500)).unwrap();
        assert_eq!((r.charge, r.credits), (Cents::new(500), Micros::new(5 * C)), "credits added = dollars charged");
        assert_eq!(q("org-runs", "pro", amount(400)).unwrap_err().code(), "amount_out_of_range", "minimum $5");
        assert_eq!(q("org-runs", "pro", amount(550)).unwrap_err().code(), "invalid_amount");
    }

    #[test]
    fn voice_minutes_blocks_at_the_plans_rate() {
        let b = |plan: &str, n: i64| q("voice-minutes", plan, PurchaseChoice { blocks: Some(n), ..Default::default() });
        let one = b("free", 1).unwrap();
        assert_eq!((one.charge, one.credits), (Cents::new(2800), Micros::new(100 * C)), "$0.28/min on Free");
        assert_eq!(b("free", 100).unwrap().charge, Cents::new(280_000));
        assert_eq!(b("pro", 2).unwrap().charge, Cents::new(4000));
        assert_eq!(b("free", 0).unwrap_err().code(), "blocks_out_of_range");
        assert_eq!(b("free", 101).unwrap_err().code(), "blocks_out_of_range");
        assert_eq!(q("voice-minutes", "free", amount(2800)).unwrap_err().code(), "invalid_purchase");
    }

    #[test]
    fn credits_read_in_the_profiles_unit() {
        let usd = Profile::load("usd-overage").unwrap();
        assert_eq!(format_credits(&usd, Micros::new(12_500_000)), "$12.50");
        assert_eq!(format_credits(&usd, Micros::new(100_000 * crate::money::MICROS_PER_CREDIT)), "$100,000.00");
        let voice = Profile::load("voice-minutes").unwrap();
        assert_eq!(format_credits(&voice, Micros::new(100 * crate::money::MICROS_PER_CREDIT)), "100 minutes");
        assert_eq!(format_credits(&voice, Micros::new(crate::money::MICROS_PER_CREDIT)), "1 minute");
        let runs = Profile::load("org-runs").unwrap();
        assert_eq!(format_credits(&runs, Micros::new(1_500_000)), "1.5 credits");
    }
}
