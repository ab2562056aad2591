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
use crate::notify::{Channels, Rendered};
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
/// How far an endpoint's latest failure may lag behind before it is written again.
const FAILURE_MARK_MS: i64 = 3_600_000;

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
        let out = match Outgoing::from_bus(event) {
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
            let wait_s = (due - now + 999) / 1000;
            if wait_s > 1 {
                // Not due yet (the queue delays at most 15 minutes): sent on.
                self.queue.send(f, wait_s.min(MAX_DELAY_S) as u32).await.map_err(DeliverError)?;
                return Ok(Report { deferred: 1, ..Report::default() });
            }
        }
        let endpoint = self.store.endpoint(&f.endpoint_id).await?;
        let v = d.version;
        if d.attempts > 0 && d.next_attempt_at.is_none() {
            // The last attempt's runner died before recording its answer: nothing is left to
            // try in the window; the delivery is closed for manual redelivery.
            return self.close(d, v, "Retries exhausted; redeliver by hand.").await;
        }
        match endpoint {
            Some(e) => Ok(self.attempt(&e, d, Some(v), now).await?.unwrap_or_default()),
            None => self.close(d, v, "The endpoint was deleted.").await,
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
            let why =
                if endpoint.status == "deleted" { "The endpoint was deleted." } else { "The endpoint is disabled." };
            return match expected {
                Some(v) => self.close(d, v, why).await.map(Some),
                None => Ok(Some(Report { skipped: 1, ..Report::default() })),
            };
        }
        let n = d.attempts + 1;
        // The schedule counts the attempts of this window (a redelivery starts it over).
        let next_due = self.settings.next_due(n - d.retry_base.min(d.attempts), d.retry_from, now);
        // 1. The follow-up first: whatever happens next, the delivery is looked at again.
        let delay = next_due.map_or(WATCHDOG_S, |due| ((due - now + 999) / 1000).clamp(0, MAX_DELAY_S));
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
        if !self.store.put_delivery(&claimed, expected).await? {
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
            claimed.last_error = claimed.last_error.map(|e| format!("{e} Retries exhausted; redeliver by hand."));
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
    async fn endpoint_health(
        &self,
        known: &Endpoint,
        ok: bool,
        spent: Option<i64>,
        now: i64,
    ) -> Result<(), DeliverError> {
        if self.health_change(known, ok, spent, now).is_none() {
            return Ok(());
        }
        for _ in 0..5 {
            let Some(e) = self.store.endpoint(&known.id).await? else { return Ok(()) };
            let Some(mut next) = self.health_change(&e, ok, spent, now) else { return Ok(()) };
            next.version = e.version + 1;
            if self.store.put_endpoint(&next, Some(e.version)).await? {
                if next.status == "disabled" && e.status == "enabled" {
                    self.tell_owner(&next).await;
                }
                return Ok(());
            }
        }
        Err(DeliverError(format!("endpoint {} kept changing", known.id)))
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
        let recent = e.last_failure_at.is_none_or(|l| now - l < super::STREAK_GAP_MS);
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

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use serde_json::json;

    use super::*;
    use crate::notify::SendError;
    use crate::webhooks::api::{NewEndpoint, WebhookAdmin};
    use crate::webhooks::{verify, MemoryWebhookStore};

    #[derive(Default)]
    struct Receiver {
        script: Mutex<VecDeque<Answer>>,
        got: Mutex<Vec<(String, String, String)>>,
    }
    impl Sender for &Receiver {
        async fn post(&self, url: &str, signature: &str, body: &str) -> Answer {
            self.got.lock().unwrap().push((url.into(), signature.into(), body.into()));
            self.script.lock().unwrap().pop_front().unwrap_or(Answer::Status(200))
        }
    }

    #[derive(Default)]
    struct Queue {
        sent: Mutex<Vec<(FollowUp, u32)>>,
    }
    impl RetryQueue for &Queue {
        async fn send(&self, f: &FollowUp, delay_s: u32) -> Result<(), String> {
            self.sent.lock().unwrap().push((f.clone(), delay_s));
            Ok(())
        }
    }

    #[derive(Default)]
    struct Mail {
        sent: Mutex<Vec<(String, String)>>,
    }
    impl Channels for &Mail {
        async fn email(&self, to: &str, m: &Rendered) -> Result<(), SendError> {
            self.sent.lock().unwrap().push((to.into(), m.text.clone()));
            Ok(())
        }
        async fn sms(&self, _: &str, _: &str) -> Result<(), SendError> {
            Ok(())
        }
    }

    struct World {
        store: MemoryWebhookStore,
        receiver: Receiver,
        queue: Queue,
        mail: Mail,
        settings: WebhookSettings,
    }

    impl World {
        fn new() -> World {
            World {
                store: MemoryWebhookStore::default(),
                receiver: Receiver::default(),
                queue: Queue::default(),
                mail: Mail::default(),
                settings: WebhookSettings {
                    allow_loopback: true,
                    retry_schedule: vec![10, 20, 40],
                    retry_window_s: 100,
                    disable_after_s: 1_000,
                    ..WebhookSettings::default()
                },
            }
        }
        fn dispatcher(&self) -> Dispatcher<&MemoryWebhookStore, &Receiver, &Queue, &Mail> {
            Dispatcher {
                store: &self.store,
                sender: &self.receiver,
                queue: &self.queue,
                channels: &self.mail,
                settings: self.settings.clone(),
                operator_email: Some("ops@example.com".into()),
            }
        }
        fn admin(&self) -> WebhookAdmin<&MemoryWebhookStore, &Queue> {
            WebhookAdmin { store: &self.store, queue: &self.queue, settings: self.settings.clone() }
        }
        async fn endpoint(&self, events: &[&str]) -> (String, String) {
            let e = self
                .admin()
                .create(
                    NewEndpoint {
                        url: "http://127.0.0.1:9/hook".into(),
                        events: events.iter().map(|s| s.to_string()).collect(),
                        ..NewEndpoint::default()
                    },
                    0,
                )
                .await
                .expect("made");
            (e["id"].as_str().unwrap().to_string(), e["secret"].as_str().unwrap().to_string())
        }
        fn script(&self, answers: &[Answer]) {
            self.receiver.script.lock().unwrap().extend(answers.iter().cloned());
        }
        fn posts(&self) -> Vec<(String, String, String)> {
            self.receiver.got.lock().unwrap().clone()
        }
        fn last_follow_up(&self) -> (FollowUp, u32) {
            self.queue.sent.lock().unwrap().last().cloned().expect("a follow-up")
        }
    }

    fn low(event_id: &str) -> Value {
        json!({"detail-type": "BalanceLow", "detail": {"balance": 1, "previous_balance": 9, "threshold": 5,
            "plan": "free", "auto_recharge_enabled": false, "cause": "usage", "version": 2, "kind": "BalanceLow",
            "event_id": event_id, "account_id": "acme", "occurred_at": "x", "occurred_ms": 1_000}})
    }

    #[tokio::test]
    async fn an_event_goes_once_to_each_subscribed_endpoint_signed_with_its_secret() {
        let w = World::new();
        let (all, all_secret) = w.endpoint(&["*"]).await;
        let (_alerts, _) = w.endpoint(&["balance.alert"]).await;
        let (low_only, low_secret) = w.endpoint(&["balance.low", "balance.depleted"]).await;
        let d = w.dispatcher();
        let r = d.on_event(&low("evt_1"), 5_000).await.expect("delivered");
        assert_eq!((r.attempted, r.succeeded), (2, 2));
        // The same event again (the bus delivers at least once): nothing is sent twice.
        let r = d.on_event(&low("evt_1"), 6_000).await.expect("delivered");
        assert_eq!((r.attempted, r.skipped), (0, 2));
        let posts = w.posts();
        assert_eq!(posts.len(), 2);
        assert_eq!(posts[0].2, posts[1].2, "one body for every endpoint");
        let body: Value = serde_json::from_str(&posts[0].2).unwrap();
        assert_eq!((body["id"].as_str(), body["type"].as_str()), (Some("evt_1"), Some("balance.low")));
        let secrets = [all_secret, low_secret];
        for (_, sig, body) in &posts {
            assert!(secrets.iter().any(|s| verify(s, sig, body, 5, 300)), "signed with one of theirs");
            assert_eq!(secrets.iter().filter(|s| verify(s, sig, body, 5, 300)).count(), 1, "and not the other's");
        }
        for id in [&all, &low_only] {
            let d = w.store.delivery(id, &crate::webhooks::delivery_id(1_000, "evt_1")).await.unwrap().unwrap();
            assert_eq!((d.status.as_str(), d.attempts, d.last_response_code), ("succeeded", 1, Some(200)));
        }
        // A purchase still processing is not an event for endpoints.
        let r = d.on_event(&json!({"detail-type": "PurchaseProcessing", "detail": {}}), 7_000).await.unwrap();
        assert_eq!(r.skipped, 1);
    }

    #[tokio::test]
    async fn failures_are_retried_by_delayed_follow_ups_with_the_same_id_until_one_succeeds() {
        let w = World::new();
        let (ep, _) = w.endpoint(&["balance.low"]).await;
        w.script(&[Answer::Status(500), Answer::Status(500), Answer::Failed("No answer within 10 seconds.".into())]);
        let d = w.dispatcher();
        let mut now = 0;
        d.on_event(&low("evt_2"), now).await.unwrap();
        let mut delays = Vec::new();
        for _ in 0..3 {
            let (f, delay) = w.last_follow_up();
            delays.push(delay);
            // Early (a duplicate message): deferred, not sent.
            if delay > 2 {
                let r = d.on_follow_up(&f, now + 1_000).await.unwrap();
                assert_eq!(r.deferred, 1);
            }
            now += i64::from(delay) * 1000;
            let r = d.on_follow_up(&f, now).await.unwrap();
            assert_eq!(r.attempted, 1);
            // The same follow-up again: stale, nothing sent.
            assert_eq!(d.on_follow_up(&f, now).await.unwrap().skipped, 1);
        }
        assert_eq!(delays, vec![10, 20, 40], "the schedule's backoff");
        let posts = w.posts();
        assert_eq!(posts.len(), 4, "500, 500, no answer, 200");
        assert!(posts.iter().all(|p| p.2 == posts[0].2), "every attempt sends the same body and id");
        let del = w.store.delivery(&ep, &crate::webhooks::delivery_id(1_000, "evt_2")).await.unwrap().unwrap();
        assert_eq!((del.status.as_str(), del.attempts, del.last_response_code), ("succeeded", 4, Some(200)));
        let e = w.store.endpoint(&ep).await.unwrap().unwrap();
        assert_eq!(e.failing_since, None, "the success ended the failing streak");
        // The last attempt's own follow-up finds it succeeded.
        let (f, _) = w.last_follow_up();
        assert_eq!(d.on_follow_up(&f, now + 60_000).await.unwrap().skipped, 1);
    }

    #[tokio::test]
    async fn past_the_window_a_delivery_is_failed_and_kept_for_manual_redelivery() {
        let w = World::new();
        let (ep, _) = w.endpoint(&["*"]).await;
        w.script(&vec![Answer::Status(503); 4]);
        let d = w.dispatcher();
        let mut now = 0;
        d.on_event(&low("evt_3"), now).await.unwrap();
        // 0, +10, +20 (at 30), +40 (at 70); the next (+40, at 110) would pass the 100 s window.
        for _ in 0..3 {
            let (f, delay) = w.last_follow_up();
            now += i64::from(delay) * 1000;
            d.on_follow_up(&f, now).await.unwrap();
        }
        let id = crate::webhooks::delivery_id(1_000, "evt_3");
        let del = w.store.delivery(&ep, &id).await.unwrap().unwrap();
        assert_eq!((del.status.as_str(), del.attempts, del.last_response_code), ("failed", 4, Some(503)));
        assert!(del.last_error.as_deref().unwrap_or("").contains("redeliver"));
        // Manual redelivery: pending again, one attempt from a follow-up due now.
        let view = w.admin().redeliver(&ep, &id, now).await.expect("queued");
        assert_eq!(view["status"], "pending");
        let (f, delay) = w.last_follow_up();
        assert_eq!((delay, f.attempt), (0, 4));
        let r = d.on_follow_up(&f, now).await.unwrap();
        assert_eq!((r.attempted, r.succeeded), (1, 1));
        assert_eq!(w.posts().len(), 5);
        assert_eq!(w.last_follow_up().1, 10, "a redelivery starts the schedule over");
        let page = w.admin().deliveries(&ep, 10, None).await.unwrap();
        assert_eq!(page["deliveries"][0]["status"], "succeeded");
        assert_eq!(page["deliveries"][0]["attempts"], 5);
    }

    #[tokio::test]
    async fn a_duplicate_event_sends_nothing_and_a_lost_last_attempt_is_closed() {
        let w = World::new();
        let (ep, _) = w.endpoint(&["*"]).await;
        let d = w.dispatcher();
        assert_eq!(d.on_event(&low("evt_4"), 1_000).await.unwrap().attempted, 1);
        assert_eq!(d.on_event(&low("evt_4"), 1_500).await.unwrap().skipped, 1);
        let id = crate::webhooks::delivery_id(1_000, "evt_4");
        // A last attempt whose runner died after claiming (next attempt none, still pending).
        let mut lost = w.store.delivery(&ep, &id).await.unwrap().unwrap();
        let v = lost.version;
        lost.status = "pending".into();
        lost.next_attempt_at = None;
        lost.version = v + 1;
        assert!(w.store.put_delivery(&lost, Some(v)).await.unwrap());
        let f = FollowUp { endpoint_id: ep.clone(), delivery_id: id.clone(), attempt: lost.attempts };
        assert_eq!(d.on_follow_up(&f, 70_000).await.unwrap().closed, 1);
        assert_eq!(w.store.delivery(&ep, &id).await.unwrap().unwrap().status, "failed");
        assert_eq!(w.posts().len(), 1);
    }

    #[tokio::test]
    async fn an_endpoint_failing_past_its_limit_is_disabled_its_owner_told_once_and_nothing_more_sent() {
        let mut w = World::new();
        w.settings.disable_after_s = 25;
        let (ep, _) = w.endpoint(&["*"]).await;
        w.script(&vec![Answer::Status(500); 10]);
        let d = w.dispatcher();
        let mut now = 0;
        d.on_event(&low("evt_5"), now).await.unwrap();
        assert_eq!(w.store.endpoint(&ep).await.unwrap().unwrap().failing_since, Some(0));
        for _ in 0..2 {
            let (f, delay) = w.last_follow_up();
            now += i64::from(delay) * 1000;
            d.on_follow_up(&f, now).await.unwrap();
        }
        let e = w.store.endpoint(&ep).await.unwrap().unwrap();
        assert_eq!((e.status.as_str(), e.disabled_at), ("disabled", Some(30_000)));
        let mail = w.mail.sent.lock().unwrap().clone();
        assert_eq!(mail.len(), 1);
        assert_eq!(mail[0].0, "ops@example.com");
        // The pending delivery's next follow-up closes it; new events are not sent.
        let (f, delay) = w.last_follow_up();
        now += i64::from(delay) * 1000;
        assert_eq!(d.on_follow_up(&f, now).await.unwrap().closed, 1);
        assert_eq!(d.on_event(&low("evt_6"), now).await.unwrap().attempted, 0);
        assert_eq!(w.posts().len(), 3);
        assert_eq!(
            w.admin().redeliver(&ep, &f.delivery_id, now).await.unwrap_err().code(),
            "webhook_endpoint_disabled"
        );
        // Enabled again: the streak starts over and redelivery works.
        assert_eq!(w.admin().enable(&ep).await.unwrap()["status"], "enabled");
        w.admin().redeliver(&ep, &f.delivery_id, now).await.expect("queued");
    }

    #[tokio::test]
    async fn a_failure_after_a_quiet_day_starts_the_streak_over() {
        let mut w = World::new();
        w.settings.disable_after_s = 2 * 86_400;
        let (ep, _) = w.endpoint(&["*"]).await;
        w.script(&[Answer::Status(500), Answer::Status(200), Answer::Status(500), Answer::Status(500)]);
        let d = w.dispatcher();
        d.on_event(&low("evt_a"), 0).await.unwrap();
        assert_eq!(w.store.endpoint(&ep).await.unwrap().unwrap().failing_since, Some(0));
        // Days later, failures again (the success in between ended the first streak anyway).
        let day = 86_400_000;
        d.on_event(&low("evt_b"), day).await.unwrap();
        assert_eq!(w.store.endpoint(&ep).await.unwrap().unwrap().failing_since, None);
        d.on_event(&low("evt_c"), 2 * day).await.unwrap();
        // A single failure three days after that: the streak starts over, no disabling.
        d.on_event(&low("evt_d"), 5 * day).await.unwrap();
        let e = w.store.endpoint(&ep).await.unwrap().unwrap();
        assert_eq!((e.status.as_str(), e.failing_since), ("enabled", Some(5 * day)));
        assert!(w.mail.sent.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_rotated_secret_signs_beside_the_new_one_for_a_day() {
        let w = World::new();
        let (ep, old) = w.endpoint(&["*"]).await;
        let rotated = w.admin().rotate(&ep, 0).await.unwrap();
        let new = rotated["secret"].as_str().unwrap().to_string();
        assert_ne!(new, old);
        let d = w.dispatcher();
        d.on_event(&low("evt_7"), 1_000).await.unwrap();
        let (_, sig, body) = w.posts().pop().unwrap();
        assert!(verify(&new, &sig, &body, 1, 300) && verify(&old, &sig, &body, 1, 300));
        d.on_event(&low("evt_8"), crate::webhooks::ROTATION_OVERLAP_MS + 1_000).await.unwrap();
        let (_, sig, body) = w.posts().pop().unwrap();
        let t = (crate::webhooks::ROTATION_OVERLAP_MS + 1_000) / 1000;
        assert!(verify(&new, &sig, &body, t, 300) && !verify(&old, &sig, &body, t, 300));
        assert!(w.admin().list().await.unwrap()["webhook_endpoints"][0].get("secret").is_none());
    }

    #[tokio::test]
    async fn endpoints_are_checked_when_made_and_deleted_ones_get_nothing() {
        let w = World::new();
        let admin = w.admin();
        let make = |url: &str, events: &[&str]| NewEndpoint {
            url: url.into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            ..NewEndpoint::default()
        };
        for (url, events, code) in [
            ("https://10.1.2.3/h", &["*"][..], "invalid_url"),
            ("https://169.254.169.254/h", &["*"][..], "invalid_url"),
            ("http://example.com/h", &["*"][..], "invalid_url"),
            ("https://example.com/h", &["balance.everything"][..], "invalid_event_type"),
            ("https://example.com/h", &[][..], "invalid_event_type"),
        ] {
            assert_eq!(admin.create(make(url, events), 0).await.unwrap_err().code(), code, "{url} {events:?}");
        }
        let e = admin.create(make("https://example.com/h", &["balance.low", "*"]), 0).await.unwrap();
        assert_eq!(e["events"], json!(["*"]));
        let id = e["id"].as_str().unwrap();
        assert_eq!(admin.delete(id).await.unwrap()["deleted"], true);
        assert_eq!(admin.get(id).await.unwrap_err().code(), "webhook_endpoint_not_found");
        assert_eq!(admin.delete(id).await.unwrap_err().code(), "webhook_endpoint_not_found");
        assert_eq!(w.dispatcher().on_event(&low("evt_9"), 0).await.unwrap().attempted, 0);
        assert_eq!(admin.list().await.unwrap()["webhook_endpoints"], json!([]));
    }
}
