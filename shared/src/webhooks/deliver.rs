//! Delivering events to endpoints, at least once, without sleeping.
//!
//! An attempt goes in three steps, in this order, so that a crash anywhere leaves nothing
//! stuck:
//! 1. the follow-up is put on the retry queue, delayed until the next attempt would be due
//!    (or, after the last attempt the window allows, a short watchdog delay);
//! 2. the attempt is claimed: the delivery's `attempts` advances by a write conditional on its
//!    version, so of two runners (a redelivered bus event, a duplicate queue message) one sends;
//! 3. the body is POSTed, signed, and the answer recorded.
//!
//! When the follow-up arrives it finds the delivery `succeeded` (and does nothing), `failed`,
//! or `pending` with the same attempt count: the attempt it follows failed (or its runner
//! died), so it makes the next one, or, once the window is spent, marks the delivery `failed`.
//! A follow-up whose attempt count no longer matches is stale and dropped. SQS delays are at
//! most 15 minutes; a longer wait is the same message sent on again until it is due.

use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{signature_header, Delivery, Endpoint, Outgoing, WebhookSettings, WebhookStore};
use crate::notify::Channels;
use crate::store::StoreError;

/// A receiver's answer, or why there was none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// No answer within the time allowed, a refused connection or address, a TLS failure.
    Failed(String),
}

/// How a delivery is POSTed. The live one (`adapters::http_out`) allows 10 seconds and
/// connects only to addresses `url::allowed` lets through.
pub trait Sender: Send + Sync {
    fn post(&self, url: &str, signature: &str, body: &str) -> impl Future<Output = Answer> + Send;
}

/// The follow-up of an attempt: "look at this delivery again, when it has had `attempt`
/// attempts".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowUp {
    pub endpoint_id: String,
    pub delivery_id: String,
    pub attempt: u32,
}

/// The queue follow-ups wait on (SQS with `DelaySeconds`, at most 900).
pub trait RetryQueue: Send + Sync {
    fn send(&self, f: &FollowUp, delay_s: u32) -> impl Future<Output = Result<(), String>> + Send;
}

/// SQS's longest delay.
pub const MAX_DELAY_S: i64 = 900;
/// The follow-up of a last attempt: only there to close a delivery whose runner died.
const WATCHDOG_S: i64 = 60;
const EXHAUSTED: &str = "Retries exhausted; redeliver by hand.";
const ENDPOINT_DELETED: &str = "The endpoint was deleted.";

/// Whole seconds from `now` until `due` (ms), rounded up.
fn seconds_until(due: i64, now: i64) -> i64 {
    (due - now + 999).div_euclid(1000)
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("webhook delivery incomplete, retry: {0}")]
pub struct DeliverError(pub String);

impl From<StoreError> for DeliverError {
    fn from(e: StoreError) -> Self {
        DeliverError(e.to_string())
    }
}

/// What handling one event or follow-up did, for the log and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Attempts made and how many were answered 2xx.
    pub attempted: usize,
    pub succeeded: usize,
    /// Deliveries closed as failed (window spent, endpoint disabled or deleted).
    pub closed: usize,
    /// Nothing to do: not an event for endpoints, no subscriber, already delivered, stale.
    pub skipped: usize,
    /// Follow-ups sent on because their attempt was not due yet.
    pub deferred: usize,
}

impl Report {
    fn add(&mut self, o: Report) {
        self.attempted += o.attempted;
        self.succeeded += o.succeeded;
        self.closed += o.closed;
        self.skipped += o.skipped;
        self.deferred += o.deferred;
    }
}

pub struct Dispatcher<W, H, Q, C> {
    pub store: W,
    pub sender: H,
    pub queue: Q,
    /// Tells an endpoint's owner that it was disabled.
    pub channels: C,
    pub settings: WebhookSettings,
    /// Who is told when an endpoint without a contact is disabled (the deployment's sender).
    pub operator_email: Option<String>,
}

impl<W: WebhookStore, H: Sender, Q: RetryQueue, C: Channels> Dispatcher<W, H, Q, C> {
    /// A bus event (`{"detail-type", "detail"}`): one delivery per subscribed endpoint, each
    /// attempted now. Fails (so the bus delivers the event again) only when a delivery could
    /// not be recorded or its follow-up not queued; what was done is not done twice.
    pub async fn on_event(&self, event: &Value, now: i64) -> Result<Report, DeliverError> {
        self.on_bus_event(event["detail-type"].as_str().unwrap_or_default(), &event["detail"], now).await
    }

    /// `on_event` for an event already read: its `detail-type` and `detail`.
    pub async fn on_bus_event(&self, detail_type: &str, detail: &Value, now: i64) -> Result<Report, DeliverError> {
        let out = match Outgoing::from_detail(detail_type, detail) {
            None => return Ok(Report { skipped: 1, ..Report::default() }),
            Some(Err(why)) => {
                // Ours always carry these: a malformed event is logged, not retried forever.
                tracing::error!(reason = %why, "event not delivered to webhook endpoints");
                return Ok(Report { skipped: 1, ..Report::default() });
            }
            Some(Ok(out)) => out,
        };
        let endpoints: Vec<Endpoint> =
            self.store.endpoints().await?.into_iter().filter(|e| e.subscribes(out.kind)).collect();
        let runs = endpoints.iter().map(|e| self.start(e, &out, now));
        let mut report = Report::default();
        let mut failed = None;
        for r in futures_util::future::join_all(runs).await {
            match r {
                Ok(r) => report.add(r),
                Err(e) => failed = Some(e),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// The first attempt of `out` to `endpoint`, unless an earlier delivery of the same event
    /// already made it.
    async fn start(&self, endpoint: &Endpoint, out: &Outgoing, now: i64) -> Result<Report, DeliverError> {
        let fresh = Delivery::new(&endpoint.id, out, now);
        match self.attempt(endpoint, fresh, None, now).await? {
            Some(r) => Ok(r),
            // The delivery exists (its first attempt was claimed by an earlier run, which also
            // queued its follow-up): nothing more to do here.
            None => Ok(Report { skipped: 1, ..Report::default() }),
        }
    }

    /// A follow-up from the retry queue.
    pub async fn on_follow_up(&self, f: &FollowUp, now: i64) -> Result<Report, DeliverError> {
        let skipped = Report { skipped: 1, ..Report::default() };
        let Some(d) = self.store.delivery(&f.endpoint_id, &f.delivery_id).await? else { return Ok(skipped) };
        if d.status != "pending" || d.attempts != f.attempt {
            return Ok(skipped);
        }
        if let Some(due) = d.next_attempt_at {
            let wait_s = seconds_until(due, now);
            if wait_s > 1 {
                // Not due yet (the queue delays at most 15 minutes): sent on.
                self.queue.send(f, wait_s.min(MAX_DELAY_S) as u32).await.map_err(DeliverError)?;
                return Ok(Report { deferred: 1, ..Report::default() });
            }
        }
        let v = d.version;
        if d.next_attempt_at.is_none() {
            // The last attempt's runner died before recording its answer: nothing is left to
            // try in the window; the delivery is closed for manual redelivery.
            return self.close(d, v, EXHAUSTED).await;
        }
        match self.store.endpoint(&f.endpoint_id).await? {
            Some(e) => Ok(self.attempt(&e, d, Some(v), now).await?.unwrap_or_default()),
            None => self.close(d, v, ENDPOINT_DELETED).await,
        }
    }

    /// Marks a pending delivery failed, keeping it for manual redelivery.
    async fn close(&self, mut d: Delivery, v: u64, why: &str) -> Result<Report, DeliverError> {
        d.status = "failed".into();
        d.next_attempt_at = None;
        d.last_error = Some(why.to_string());
        d.version = v + 1;
        let closed = self.store.put_delivery(&d, Some(v)).await?;
        Ok(Report { closed: usize::from(closed), skipped: usize::from(!closed), ..Report::default() })
    }

    /// One attempt of `d` (stored at version `expected`; `None`: not stored yet, and this
    /// attempt creates it). `None` when the claim found the delivery changed (another runner
    /// has it, or it exists already).
    async fn attempt(
        &self,
        endpoint: &Endpoint,
        d: Delivery,
        expected: Option<u64>,
        now: i64,
    ) -> Result<Option<Report>, DeliverError> {
        if endpoint.status != "enabled" {
            let why = if endpoint.status == "deleted" { ENDPOINT_DELETED } else { "The endpoint is disabled." };
            return match expected {
                Some(v) => self.close(d, v, why).await.map(Some),
                None => Ok(Some(Report { skipped: 1, ..Report::default() })),
            };
        }
        let n = d.attempts + 1;
        // The schedule counts the attempts of this window (a redelivery starts it over).
        let next_due = self.settings.next_due(n - d.retry_base.min(d.attempts), d.retry_from, now);
        // 1. The follow-up first: whatever happens next, the delivery is looked at again.
        let delay = next_due.map_or(WATCHDOG_S, |due| seconds_until(due, now).clamp(0, MAX_DELAY_S));
        let follow = FollowUp { endpoint_id: endpoint.id.clone(), delivery_id: d.id.clone(), attempt: n };
        self.queue.send(&follow, delay as u32).await.map_err(DeliverError)?;
        // 2. The claim.
        let mut claimed = Delivery {
            attempts: n,
            last_attempt_at: Some(now),
            next_attempt_at: next_due,
            version: expected.map_or(0, |v| v + 1),
            ..d
        };
        if !self.store.put_delivery(&claimed, expected).await? && !crate::broken::on(crate::broken::Bug::DeliverTwice) {
            return Ok(None);
        }
        // 3. The POST, signed now.
        let header = signature_header(&endpoint.signing_secrets(now), now.div_euclid(1000), &claimed.body);
        let answer = self.sender.post(&endpoint.url, &header, &claimed.body).await;
        let ok = matches!(answer, Answer::Status(s) if (200..300).contains(&s));
        let v = claimed.version;
        claimed.version = v + 1;
        match &answer {
            Answer::Status(code) => {
                claimed.last_response_code = Some(*code);
                claimed.last_error = (!ok).then(|| format!("The endpoint answered {code}."));
            }
            Answer::Failed(why) => {
                claimed.last_response_code = None;
                claimed.last_error = Some(why.clone());
            }
        }
        if ok {
            claimed.status = "succeeded".into();
            claimed.next_attempt_at = None;
        } else if next_due.is_none() {
            claimed.status = "failed".into();
            claimed.last_error = claimed.last_error.map(|e| format!("{e} {EXHAUSTED}"));
        }
        tracing::info!(
            endpoint_id = %endpoint.id,
            host = %endpoint.host(),
            delivery_id = %claimed.id,
            event_id = %claimed.event_id,
            attempt = n,
            status = %claimed.status,
            response_code = claimed.last_response_code,
            "webhook attempt"
        );
        // A manual redelivery in between wins: its own attempt records its answer.
        self.store.put_delivery(&claimed, Some(v)).await?;
        // A whole window of failures: its first attempt is when the endpoint's streak started
        // at the latest.
        let spent = (!ok && next_due.is_none()).then_some(claimed.retry_from);
        self.endpoint_health(endpoint, ok, spent, now).await?;
        let closed = usize::from(claimed.status == "failed");
        Ok(Some(Report { attempted: 1, succeeded: usize::from(ok), closed, ..Report::default() }))
    }
}

#[cfg(test)]
#[path = "deliver_tests.rs"]
mod tests;
