//! Balance alerts (rules §15): up to five thresholds per account besides the low-balance one.
//! A change that takes the balance from at or above a threshold to below it emits
//! `BalanceAlert` for that threshold (`ledger::crossing_events`), once a crossing, and notify
//! sends its message.

use serde::{Deserialize, Serialize};

use crate::engine::{Change, Credits, Plan};
use crate::error::ApiError;
use crate::events::EventBus;
use crate::money::Micros;
use crate::store::Store;

/// Thresholds an account may have.
pub const MAX_ALERTS: usize = 5;
/// The largest threshold: a trillion credits.
pub const MAX_THRESHOLD: i64 = 1_000_000_000_000_000_000;

/// `{"thresholds": [micro-credits, …]}`, highest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertsView {
    pub thresholds: Vec<i64>,
}

impl AlertsView {
    pub fn of(alerts: &[Micros]) -> AlertsView {
        AlertsView { thresholds: alerts.iter().map(|m| m.get()).collect() }
    }
}

impl<S: Store, B: EventBus> Credits<S, B> {
    /// `PUT /v1/accounts/{id}/credits/alerts`: replaces the thresholds (an empty list removes
    /// them). Setting one the balance is already below emits nothing: only a crossing does.
    pub async fn set_alerts(&self, id: &str, thresholds: &[i64]) -> Result<AlertsView, ApiError> {
        if thresholds.len() > MAX_ALERTS {
            return Err(ApiError::rule("too_many_alerts", format!("An account may have at most {MAX_ALERTS} alerts.")));
        }
        if let Some(t) = thresholds.iter().find(|t| !(1..=MAX_THRESHOLD).contains(*t)) {
            return Err(ApiError::rule(
                "invalid_threshold",
                format!("Alert thresholds must be positive micro-credits up to {MAX_THRESHOLD}; {t} is not."),
            ));
        }
        let mut sorted: Vec<i64> = thresholds.to_vec();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(ApiError::rule("invalid_threshold", "Alert thresholds must be distinct."));
        }
        let alerts: Vec<Micros> = sorted.into_iter().map(Micros::new).collect();
        self.apply(id, None, |a, now| {
            let view = AlertsView::of(&alerts);
            if a.alerts == alerts {
                return Ok(Plan::AlreadySo(view));
            }
            let mut next = a.next(now);
            next.alerts = alerts.clone();
            let list = |l: &[Micros]| serde_json::json!({"thresholds": l.iter().map(|m| m.get()).collect::<Vec<_>>()});
            let audit =
                crate::audit::AuditChange::new("alerts.update", format!("account:{id}"), Some(list(&a.alerts)), Some(list(&alerts)));
            Change::quiet(next, crate::cause::Cause::Alerts, view).with_audit(audit).write()
        })
        .await?
        .done()
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Accounts;
    use super::*;
    use crate::adapters::memory::memory_credits;

    /// A threshold is at most `MAX_THRESHOLD` (rules §16): the largest is kept, one more is 422
    /// `invalid_threshold` and changes nothing.
    #[tokio::test]
    async fn thresholds_are_bounded_at_their_edge() {
        let c = memory_credits("usd-overage");
        c.upsert_account("a", "free", vec![]).await.unwrap();
        let before = c.store.load_account("a").await.unwrap();
        let e = c.set_alerts("a", &[MAX_THRESHOLD + 1]).await.unwrap_err();
        assert_eq!(e.code(), "invalid_threshold");
        assert_eq!(c.store.load_account("a").await.unwrap(), before);
        let v = c.set_alerts("a", &[MAX_THRESHOLD, 1]).await.unwrap();
        assert_eq!(v.thresholds, vec![MAX_THRESHOLD, 1]);
    }
}
