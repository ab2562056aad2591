//! An endpoint's health: the failing streak an attempt's answer starts, extends or ends, and
//! disabling an endpoint that has failed for too long, telling its owner once.

use super::deliver::{DeliverError, Dispatcher, RetryQueue, Sender};
use super::store::{update_endpoint, Updated};
use super::{Endpoint, WebhookStore};
use crate::notify::{Channels, Rendered};

/// A streak of failures with no failure for this long starts over at the next one.
pub const STREAK_GAP_MS: i64 = 86_400_000;
/// How far an endpoint's latest failure may lag behind before it is written again.
const FAILURE_MARK_MS: i64 = 3_600_000;

impl<W: WebhookStore, H: Sender, Q: RetryQueue, C: Channels> Dispatcher<W, H, Q, C> {
    /// A success ends an endpoint's failing streak; a failure starts one (or starts it over
    /// after a day without failures) or extends it. The endpoint is disabled, and its owner
    /// told, once its streak has lasted `disable_after`, or has covered a whole retry window at
    /// least as long (`spent`: the window's start) of a delivery that failed every attempt.
    /// Once: the write that disables is conditional on the endpoint being enabled.
    ///
    /// The endpoint item is written only when something changes: a streak starting or ending,
    /// its latest failure moving by an hour or more (a day's gap is all it must detect), or
    /// disabling. A receiver that is down for a burst of events is not one write per attempt
    /// on one item.
    pub(super) async fn endpoint_health(
        &self,
        known: &Endpoint,
        ok: bool,
        spent: Option<i64>,
        now: i64,
    ) -> Result<(), DeliverError> {
        if self.health_change(known, ok, spent, now).is_none() {
            return Ok(());
        }
        match update_endpoint(&self.store, &known.id, |e| self.health_change(e, ok, spent, now)).await? {
            Updated::Changed { before, after } => {
                if after.status == "disabled" && before.status == "enabled" {
                    self.tell_owner(&after).await;
                }
                Ok(())
            }
            Updated::Unchanged => Ok(()),
            Updated::Contended => Err(DeliverError(format!("endpoint {} kept changing", known.id))),
        }
    }

    /// The endpoint after an attempt's outcome, when that changes what is stored.
    fn health_change(&self, e: &Endpoint, ok: bool, spent: Option<i64>, now: i64) -> Option<Endpoint> {
        let mut next = e.clone();
        if ok {
            if e.failing_since.is_none() && e.last_failure_at.is_none() {
                return None;
            }
            next.failing_since = None;
            next.last_failure_at = None;
            return Some(next);
        }
        let recent = e.last_failure_at.is_none_or(|l| now - l < STREAK_GAP_MS);
        let since = match e.failing_since {
            Some(s) if recent => s,
            _ => now,
        };
        let too_long = now - since >= self.settings.disable_after_s * 1000;
        // With the deployed settings (window and limit both 72 h) the last retry comes a
        // little before the limit: a streak covering the whole window counts as the limit.
        let whole_window =
            spent.is_some_and(|from| since <= from) && self.settings.retry_window_s >= self.settings.disable_after_s;
        let disable = e.status == "enabled" && (too_long || whole_window);
        let stale = e.last_failure_at.is_none_or(|l| now - l >= FAILURE_MARK_MS);
        if e.failing_since == Some(since) && !stale && !disable {
            return None;
        }
        next.failing_since = Some(since);
        next.last_failure_at = Some(now);
        if disable {
            next.status = "disabled".into();
            next.disabled_at = Some(now);
        }
        Some(next)
    }

    async fn tell_owner(&self, e: &Endpoint) {
        tracing::error!(endpoint_id = %e.id, host = %e.host(), "webhook endpoint disabled after failing for too long");
        let Some(to) = e.contact_email.as_ref().or(self.operator_email.as_ref()) else { return };
        let days = self.settings.disable_after_s as f64 / 86_400.0;
        let text = format!(
            "Deliveries to your webhook endpoint {} at {} have failed for {days:.1} days, so it has been disabled: \
             events are no longer sent to it, and those that happen while it is disabled are not kept for it. \
             Fix the endpoint and enable it again (POST /v1/webhook-endpoints/{}/enable); the deliveries that \
             failed before are in its deliveries list, and each can be sent again (…/redeliver).",
            e.id,
            e.host(),
            e.id
        );
        let m = Rendered {
            kind: "webhook_endpoint_disabled",
            subject: "Your webhook endpoint was disabled".into(),
            html: format!("<p>{}</p>", crate::notify::escape(&text)),
            text,
            sms: String::new(),
        };
        if let Err(err) = self.channels.email(to, &m).await {
            tracing::error!(endpoint_id = %e.id, error = ?err, "could not tell the owner of a disabled webhook endpoint");
        }
    }
}
