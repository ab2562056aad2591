//! Views: the credits view, the ledger page, notifications, and the cursors that page them.
//! Each is a typed answer; the function crates serialise it.

use serde::{Deserialize, Serialize};

use crate::account::{Account, PaymentMethod};
use crate::clock;
use crate::engine::{upstream, Credits};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::ledger::{EntryView, LedgerEntry};
use crate::money::Unit;
use crate::profile::{Profile, Purchase};
use crate::store::Store;

/// `GET /v1/accounts/{id}/credits` (rules §5, §11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditsView {
    pub account_id: String,
    pub plan: String,
    pub unit: Unit,
    pub balance: i64,
    pub available: i64,
    pub held: i64,
    pub low_balance: bool,
    pub low_balance_threshold: i64,
    pub lifetime_added: i64,
    pub lifetime_spent: i64,
    pub recent_transactions: Vec<EntryView>,
    pub allowances: Vec<Allowance>,
    pub auto_recharge: AutoRechargeView,
    pub payment_method: Option<PaymentMethodView>,
    pub last_recharge_error: Option<RechargeErrorView>,
    pub purchase_options: PurchaseOptions,
    /// The grant that expires next: how much, and when (rules §15); `null` when none expires.
    pub next_expiry: Option<NextExpiry>,
    /// The account's balance alerts (rules §15).
    pub alerts: crate::alerts::AlertsView,
}

/// The soonest expiry among the account's grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextExpiry {
    pub amount: i64,
    pub expires_at: String,
}

/// One consumable's monthly allowance and its use this month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    pub consumable: String,
    pub included: i64,
    pub used: i64,
}

/// The last recharge's error, as the credits view shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeErrorView {
    pub code: String,
    pub decline_code: Option<String>,
    pub do_not_retry: bool,
    pub message: String,
    pub time: String,
}

/// The auto-recharge part of the credits view, and the answer to its settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoRechargeView {
    pub enabled: bool,
    pub threshold: i64,
    /// Null where each recharge buys a fixed amount (one block).
    pub amount: Option<i64>,
    pub monthly_max: u32,
    pub used_this_month: u32,
    pub monthly_spend_max: Option<i64>,
    pub spent_this_month: i64,
    pub level: Level,
    pub paused: Option<Paused>,
    pub available_on_plan: bool,
    pub limits: AutoRechargeLimits,
}

/// How full the month's recharge count is (seed 004: warning above 50%, critical above 80%).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Warning,
    Critical,
}

/// Why auto-recharge is paused, with the sentence the customer sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    pub reason: String,
    pub message: String,
}

impl Paused {
    fn new(reason: &str, message: impl Into<String>) -> Option<Paused> {
        Some(Paused { reason: reason.to_string(), message: message.into() })
    }
}

/// The bounds a client draws the auto-recharge dialog with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoRechargeLimits {
    pub threshold_min: i64,
    pub threshold_max: Option<i64>,
    pub amount_min: i64,
    pub amount_max: i64,
    pub monthly_max_default: u32,
    pub monthly_max_limit: u32,
}

/// The saved card as the credits view shows it (rules §11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethodView {
    pub brand: String,
    pub last4: String,
    pub exp_month: u32,
    pub exp_year: u32,
}

impl PaymentMethodView {
    pub fn of(m: &PaymentMethod) -> PaymentMethodView {
        PaymentMethodView {
            brand: m.brand.clone(),
            last4: m.last4.clone(),
            exp_month: m.exp_month,
            exp_year: m.exp_year,
        }
    }
}

/// `purchase_options` of the credits view (rules §11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PurchaseOptions {
    Amount { default: i64, min: i64, max: i64, step: i64, currency: String },
    Packages { currency: String, packages: Vec<PackageOption>, custom: Option<CustomOption> },
    Blocks { currency: String, minutes_per_block: i64, min: i64, max: i64, price_per_block: Option<i64> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageOption {
    pub id: String,
    pub price: i64,
    pub credits: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomOption {
    pub min: i64,
    pub max: i64,
}

/// `GET .../credits/transactions`: one page of the ledger, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerPage {
    pub transactions: Vec<EntryView>,
    pub next_cursor: Option<String>,
}

/// `GET .../notifications`: recent notifications, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notifications {
    pub notifications: Vec<NotificationView>,
}

/// One notification: the event it was for and how each channel and recipient went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationView {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub time: String,
    pub channels: Vec<ChannelView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelView {
    pub channel: String,
    pub to: String,
    pub status: String,
    pub detail: Option<String>,
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// `GET /v1/accounts/{id}/credits`: the credits view (rules §5, §11).
    pub async fn view(&self, id: &str) -> Result<CreditsView, ApiError> {
        // The account, then its latest entries: a write between the two reads would show an
        // entry newer than the balance beside it, so the account is read again until the
        // page holds nothing it has not seen (an entry's `seq` is the version that wrote it).
        // An account held on parts as well is read as a whole at one instant, with its page
        // as of that instant (`whole_with_recent`).
        let (mut a, whole_recent) = self.whole_with_recent(id, 5).await?;
        if let Some(recent) = whole_recent {
            return Ok(self.credits_view(&a, &recent));
        }
        let (mut recent, _) = self.store.ledger_page(id, 5, None).await.map_err(upstream)?;
        for _ in 0..3 {
            if recent.first().is_none_or(|e| e.seq <= a.version) {
                break;
            }
            a = self.load(id).await?;
            (recent, _) = self.store.ledger_page(id, 5, None).await.map_err(upstream)?;
        }
        Ok(self.credits_view(&a, &recent))
    }

    fn credits_view(&self, a: &Account, recent: &[LedgerEntry]) -> CreditsView {
        let now = self.now();
        let p = &self.profile;
        let month = clock::month_of(now);
        let plan = p.plan(&a.plan);
        let allowances = p
            .consumables
            .keys()
            .map(|c| Allowance {
                consumable: c.clone(),
                included: plan.and_then(|pl| pl.consumables.get(c)).map_or(0, |pc| pc.included),
                used: a.used(c, &month),
            })
            .collect();
        let threshold = a.low_balance_threshold(p);
        CreditsView {
            account_id: a.id.clone(),
            plan: a.plan.clone(),
            unit: p.unit.clone(),
            balance: a.balance.get(),
            available: a.next(now).available(now).get(),
            held: a.held(now).get(),
            low_balance: a.balance <= threshold,
            low_balance_threshold: threshold.get(),
            lifetime_added: a.lifetime_added.get(),
            lifetime_spent: a.lifetime_spent.get(),
            recent_transactions: recent.iter().map(LedgerEntry::view).collect(),
            allowances,
            auto_recharge: auto_recharge_view(p, a, &month),
            payment_method: a.payment_method.as_ref().map(PaymentMethodView::of),
            last_recharge_error: a.last_recharge_error.as_ref().map(|e| RechargeErrorView {
                code: e.code.clone(),
                decline_code: e.decline_code.clone(),
                do_not_retry: e.do_not_retry(),
                message: e.message.clone(),
                time: clock::rfc3339(e.at),
            }),
            purchase_options: purchase_options(p, &a.plan),
            next_expiry: a
                .next_expiry()
                .map(|(amount, at)| NextExpiry { amount: amount.get(), expires_at: clock::rfc3339(at) }),
            alerts: crate::alerts::AlertsView::of(&a.alerts),
        }
    }

    /// `GET /v1/accounts/{id}/notifications`: recent notifications, newest first, each with its
    /// type, time, and how every channel and recipient went.
    pub async fn notifications(&self, id: &str, limit: usize) -> Result<Notifications, ApiError> {
        self.load(id).await?;
        let deliveries = self.store.recent_deliveries(id, limit.saturating_mul(8)).await.map_err(upstream)?;
        let mut out: Vec<NotificationView> = Vec::new();
        for d in deliveries {
            let channel = ChannelView { channel: d.channel, to: d.to, status: d.status, detail: d.detail };
            if let Some(n) = out.iter_mut().find(|n| n.event_id == d.event_id) {
                n.channels.push(channel);
                continue;
            }
            if out.len() < limit {
                out.push(NotificationView {
                    event_id: d.event_id,
                    kind: d.kind,
                    time: clock::rfc3339(d.occurred_ms),
                    channels: vec![channel],
                });
            }
        }
        Ok(Notifications { notifications: out })
    }

    /// `GET /v1/accounts/{id}/credits/transactions`: newest first, `cursor` from the last page.
    pub async fn transactions(&self, id: &str, limit: usize, cursor: Option<&str>) -> Result<LedgerPage, ApiError> {
        self.transactions_of(id, limit, cursor, None).await
    }

    /// The ledger page of `entity`'s entries only, if it names one (`?entity=`, rules §17):
    /// pages are read on until `limit` of its entries are found (or 32 pages were read), and the
    /// cursor goes on from the last entry read.
    pub async fn transactions_of(
        &self,
        id: &str,
        limit: usize,
        cursor: Option<&str>,
        entity: Option<&str>,
    ) -> Result<LedgerPage, ApiError> {
        self.transactions_where(id, limit, cursor, entity, None).await
    }

    /// The ledger page of the entries of `entity` and of `kind` (`?kind=`, the console's
    /// filter, rules §19), each when given: read on as `transactions_of` is.
    pub async fn transactions_where(
        &self,
        id: &str,
        limit: usize,
        cursor: Option<&str>,
        entity: Option<&str>,
        kind: Option<crate::ledger::EntryKind>,
    ) -> Result<LedgerPage, ApiError> {
        if let Some(name) = entity {
            crate::entities::check_entity(name)?;
        }
        let keep = |e: &LedgerEntry| {
            entity.is_none_or(|name| e.entity.as_deref() == Some(name)) && kind.is_none_or(|k| e.kind == k)
        };
        // An account held on parts as well: its page of the account as a whole.
        if let Some((page, next_cursor)) = self.whole_page(id, limit, cursor, &keep).await? {
            return Ok(LedgerPage { transactions: page.iter().map(LedgerEntry::view).collect(), next_cursor });
        }
        let mut cursor = cursor.map(decode_cursor).transpose()?;
        let mut shown: Vec<LedgerEntry> = Vec::with_capacity(limit);
        for _ in 0..32 {
            let (page, more) = self.store.ledger_page(id, limit, cursor).await.map_err(upstream)?;
            let total = page.len();
            for (i, e) in page.into_iter().enumerate() {
                cursor = Some(e.seq);
                if keep(&e) {
                    shown.push(e);
                }
                if shown.len() == limit {
                    let rest = i + 1 < total || more;
                    let next_cursor = rest.then(|| cursor.map(encode_cursor)).flatten();
                    return Ok(LedgerPage { transactions: shown.iter().map(LedgerEntry::view).collect(), next_cursor });
                }
            }
            if !more {
                return Ok(LedgerPage { transactions: shown.iter().map(LedgerEntry::view).collect(), next_cursor: None });
            }
        }
        Ok(LedgerPage {
            transactions: shown.iter().map(LedgerEntry::view).collect(),
            next_cursor: cursor.map(encode_cursor),
        })
    }
}

fn title(plan: &str) -> String {
    let mut c = plan.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// The auto-recharge part of the credits view (rules §5, §11; seed 004's counter and notices).
pub fn auto_recharge_view(p: &Profile, a: &Account, month: &str) -> AutoRechargeView {
    let plan = p.plan(&a.plan);
    let ar = &a.auto_recharge;
    let used = if ar.used_month == month { ar.used_this_month } else { 0 };
    // seed 004: the bar "turns yellow above 50% and red above 80%".
    let (u, m) = (u64::from(used) * 100, u64::from(ar.monthly_max));
    let level = if m > 0 && u > m * 80 {
        Level::Critical
    } else if m > 0 && u > m * 50 {
        Level::Warning
    } else {
        Level::Ok
    };
    let plan_allows = plan.is_some_and(|pl| pl.auto_recharge);
    let spent = if ar.used_month == month { ar.spent_this_month_cents } else { 0 };
    let next_charge = crate::pricing::recharge_charge(p, &a.plan, ar.amount).map_or(0, |c| c.get());
    let over_money = ar.monthly_spend_max_cents.is_some_and(|cap| spent.saturating_add(next_charge) > cap);
    let paused = if !plan_allows {
        Paused::new("plan", plan_unavailable_message(&a.plan))
    } else if ar.enabled && a.dispute_open() {
        Paused::new(
            "dispute",
            "Auto-recharge is paused while a payment is disputed. It resumes once the dispute is resolved.",
        )
    } else if ar.enabled && ar.suspended {
        Paused::new(
            "payment_failed",
            "Auto-recharge is paused because the last charge failed. Update your card or buy credits to restore it.",
        )
    } else if ar.enabled && ar.monthly_max > 0 && used >= ar.monthly_max {
        Paused::new(
            "monthly_limit",
            "You've reached your monthly auto-reload limit. Auto-reload is paused until next month.",
        )
    } else if ar.enabled && over_money {
        Paused::new(
            "monthly_spend_limit",
            "You've reached your monthly auto-reload spending limit. Auto-reload is paused until next month.",
        )
    } else {
        None
    };
    let rules = &p.auto_recharge;
    AutoRechargeView {
        enabled: ar.enabled,
        threshold: ar.threshold.get(),
        amount: (!rules.fixed_amount).then_some(ar.amount.get()),
        monthly_max: ar.monthly_max,
        used_this_month: used,
        monthly_spend_max: ar.monthly_spend_max_cents,
        spent_this_month: spent,
        level,
        paused,
        available_on_plan: plan_allows,
        limits: AutoRechargeLimits {
            threshold_min: rules.threshold_min.get(),
            threshold_max: rules.threshold_max.map(|m| m.get()),
            amount_min: rules.amount_min.get(),
            amount_max: rules.amount_max.get(),
            monthly_max_default: rules.monthly_max_default,
            monthly_max_limit: plan.map_or(0, |pl| pl.monthly_reload_limit),
        },
    }
}

/// seed 004: "Auto-reload not available on Free plan".
pub(crate) fn plan_unavailable_message(plan: &str) -> String {
    format!("Auto-reload not available on {} plan", title(plan))
}

/// `purchase_options` of the credits view (rules §11).
pub fn purchase_options(p: &Profile, plan: &str) -> PurchaseOptions {
    let currency = p.currency.clone();
    match &p.purchase {
        Purchase::Amount { default_cents, min_cents, max_cents, step_cents, .. } => PurchaseOptions::Amount {
            default: *default_cents,
            min: *min_cents,
            max: *max_cents,
            step: *step_cents,
            currency,
        },
        Purchase::Packages { packages, custom, .. } => PurchaseOptions::Packages {
            currency,
            packages: packages
                .iter()
                .map(|k| PackageOption { id: k.id.clone(), price: k.price_cents, credits: k.credits.get() })
                .collect(),
            custom: custom.as_ref().map(|c| CustomOption { min: c.min_cents, max: c.max_cents }),
        },
        Purchase::Blocks { units_per_block, min_blocks, max_blocks } => PurchaseOptions::Blocks {
            currency,
            minutes_per_block: *units_per_block,
            min: *min_blocks,
            max: *max_blocks,
            price_per_block: p.plan(plan).and_then(|pl| pl.block_price_cents),
        },
    }
}

/// Cursors are opaque to clients: `c` and the sequence in hex.
pub fn encode_cursor(seq: u64) -> String {
    format!("c{seq:x}")
}

pub fn decode_cursor(s: &str) -> Result<u64, ApiError> {
    s.strip_prefix('c')
        .filter(|h| !h.is_empty() && h.len() <= 16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or_else(|| ApiError::invalid("`cursor` is not a cursor this API returned."))
}
