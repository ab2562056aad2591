//! What the console reads that no other route shows (rules §19): finding an account by its
//! billing email or Stripe customer, an account's inner state (holds, disputes, its recharge,
//! how it is spread over items, the head of its audit chain), and reconciliation's last run.
//! Every read is one item, one index query or a run's checkpoints: never a scan.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::account::{Account, AccountLookup};
use crate::clock;
use crate::engine::{upstream, Credits};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::store::Store;

/// An account as the console's search lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSummary {
    pub account_id: String,
    pub plan: String,
    pub billing_contacts: Vec<crate::account::Contact>,
    pub stripe_customer_id: Option<String>,
    pub balance: i64,
    pub created_at: String,
}

impl AccountSummary {
    fn of(a: &Account) -> AccountSummary {
        AccountSummary {
            account_id: a.id.clone(),
            plan: a.plan.clone(),
            billing_contacts: a.contacts.clone(),
            stripe_customer_id: a.stripe_customer_id.clone(),
            balance: a.balance.get(),
            created_at: clock::rfc3339(a.created_at),
        }
    }
}

/// `GET /v1/accounts?…`: the accounts found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSearch {
    pub accounts: Vec<AccountSummary>,
}

/// How the console searches: an account id, an email, or a Stripe customer (`cus_…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Search {
    Id(String),
    By(AccountLookup),
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// The accounts `search` finds (none is an empty list, not an error).
    pub async fn search_accounts(&self, search: &Search) -> Result<AccountSearch, ApiError> {
        let ids = match search {
            Search::Id(id) => vec![id.clone()],
            Search::By(by) => self.store.find_accounts(by).await.map_err(upstream)?,
        };
        let mut accounts = Vec::new();
        for id in ids {
            if let Some(a) = self.store.load_account(&id).await.map_err(upstream)? {
                // The index is kept with each write; an account changed since answers as it is.
                if matches!(search, Search::Id(_)) || matches!(search, Search::By(by) if a.found_by(by)) {
                    accounts.push(AccountSummary::of(&a));
                }
            }
        }
        Ok(AccountSearch { accounts })
    }

    /// `GET …/details`: what the account item holds that the credits view does not show.
    pub async fn account_details(&self, id: &str) -> Result<Value, ApiError> {
        let a = self.load(id).await?;
        let now = self.now();
        let holds: Vec<Value> = a
            .live_holds(now)
            .map(|(hold_id, h)| {
                json!({
                    "hold_id": hold_id, "consumable": h.consumable, "units": h.units,
                    "allowance_units": h.allowance_units, "credits": h.micros.get(),
                    "expires_at": clock::rfc3339(h.expires_at), "entity": h.entity,
                })
            })
            .collect();
        let disputes: Vec<Value> = a
            .disputes
            .iter()
            .map(|(dispute_id, d)| {
                json!({"dispute_id": dispute_id, "payment_id": d.payment_id, "taken": d.taken.get(), "open": d.open, "won": d.won})
            })
            .collect();
        let ar = &a.auto_recharge;
        let recharge = json!({
            "enabled": ar.enabled,
            "suspended": ar.suspended,
            "month": ar.used_month,
            "used_this_month": ar.used_this_month,
            "monthly_max": ar.monthly_max,
            "spent_this_month": ar.spent_this_month_cents,
            "in_flight": ar.in_flight.as_ref().map(|c| json!({
                "recharge_id": c.recharge_id, "claimed_at": clock::rfc3339(c.claimed_at),
                "credits": c.credits.get(), "charge": c.charge_cents,
            })),
            "kept": ar.kept.iter().map(|k| json!({"recharge_id": k.recharge_id, "charge": k.charge_cents})).collect::<Vec<_>>(),
            "last_error": a.last_recharge_error.as_ref().map(|e| json!({
                "code": e.code, "decline_code": e.decline_code, "message": e.message, "at": clock::rfc3339(e.at),
            })),
        });
        let mut details = json!({
            "account_id": a.id,
            "plan": a.plan,
            "billing_contacts": a.contacts,
            "stripe_customer_id": a.stripe_customer_id,
            "created_at": clock::rfc3339(a.created_at),
            "updated_at": clock::rfc3339(a.updated_at),
            "version": a.version,
            "holds": holds,
            "disputes": disputes,
            "recharge": recharge,
            "audit_head": a.audit,
        });
        if let Some(fields) = details.as_object_mut() {
            fields.extend(a.spread.console_fields());
        }
        Ok(details)
    }

    /// `GET /v1/reconciliation?run=`: the differences a scheduled run (`segments` parts) found,
    /// from its checkpoints; without `run`, today's, else yesterday's.
    pub async fn reconciliation(&self, run: Option<&str>, segments: u32) -> Result<Value, ApiError> {
        let now = self.now();
        let candidates = match run {
            Some(r) => vec![r.to_string()],
            None => vec![clock::date_of(now), clock::date_of(now - 86_400_000)],
        };
        for r in candidates {
            if let Some(report) = self.saved_run(&r, segments).await? {
                let mut v = serde_json::to_value(&report).map_err(|_| ApiError::Upstream)?;
                v["run"] = json!(r);
                return Ok(v);
            }
        }
        Err(ApiError::NotFound("reconciliation_not_found", "No reconciliation run was found for that day.".into()))
    }
}

/// How many messages wait on a queue: the console's dead-letter depths (rules §19).
pub trait QueueDepths: Send + Sync {
    /// Messages on the queue at `url`, visible and in flight (SQS's approximate counts).
    fn depth(&self, url: &str) -> impl std::future::Future<Output = Result<u64, String>> + Send;
}

/// `GET /v1/dead-letters`: each configured dead-letter queue and how many messages wait on it
/// (`depth` null, with `error`, when it could not be read).
pub async fn dead_letter_depths<Q: QueueDepths>(queues: &Q, urls: &[String]) -> Value {
    let mut out = Vec::new();
    for url in urls {
        let name = url.rsplit('/').next().unwrap_or(url).to_string();
        match queues.depth(url).await {
            Ok(n) => out.push(json!({"queue": name, "url": url, "depth": n, "error": null})),
            Err(e) => {
                tracing::warn!(queue = %name, error = %e, "queue depth unreadable");
                out.push(json!({"queue": name, "url": url, "depth": null, "error": "The queue could not be read."}))
            }
        }
    }
    json!({"queues": out})
}
