//! The dispatcher, the endpoints' administration and endpoint health, over the memory store
//! with a scripted receiver, a recording queue and a recording mailbox.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde_json::json;

use super::*;
use crate::error::ApiError;
use crate::notify::{Rendered, SendError};
use crate::store::StoreError;
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
    assert_eq!(w.admin().redeliver(&ep, &f.delivery_id, now).await.unwrap_err().code(), "webhook_endpoint_disabled");
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
async fn a_second_rotation_within_a_day_keeps_the_first_secret_signing_until_its_own_day_ends() {
    let w = World::new();
    let (ep, first) = w.endpoint(&["*"]).await;
    let h = 3_600_000;
    let second = w.admin().rotate(&ep, 0).await.unwrap()["secret"].as_str().unwrap().to_string();
    let third = w.admin().rotate(&ep, 2 * h).await.unwrap()["secret"].as_str().unwrap().to_string();
    let d = w.dispatcher();
    let signed_by = |at: i64| {
        let (_, sig, body) = w.posts().pop().unwrap();
        [&first, &second, &third].map(|s| verify(s, &sig, &body, at / 1000, 300))
    };
    d.on_event(&low("evt_r1"), 3 * h).await.unwrap();
    assert_eq!(signed_by(3 * h), [true, true, true], "every previous secret still verifies");
    d.on_event(&low("evt_r2"), 24 * h + 1_000).await.unwrap();
    assert_eq!(signed_by(24 * h + 1_000), [false, true, true], "the first's day is over, the second's is not");
    d.on_event(&low("evt_r3"), 26 * h + 1_000).await.unwrap();
    assert_eq!(signed_by(26 * h + 1_000), [false, false, true]);
}

/// The memory store, pausing before every call, as a remote store does: concurrent creates
/// interleave between their reads and writes.
struct Remote<'a>(&'a MemoryWebhookStore);

impl crate::webhooks::WebhookStore for Remote<'_> {
    async fn put_endpoint(&self, e: &Endpoint, expected: Option<u64>) -> Result<bool, StoreError> {
        tokio::task::yield_now().await;
        self.0.put_endpoint(e, expected).await
    }
    async fn create_endpoint(&self, e: &Endpoint, max: usize) -> Result<crate::webhooks::Created, StoreError> {
        tokio::task::yield_now().await;
        self.0.create_endpoint(e, max).await
    }
    async fn retire_endpoint(&self, e: &Endpoint, expected: u64) -> Result<bool, StoreError> {
        tokio::task::yield_now().await;
        self.0.retire_endpoint(e, expected).await
    }
    async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        tokio::task::yield_now().await;
        self.0.endpoint(id).await
    }
    async fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        tokio::task::yield_now().await;
        self.0.endpoints().await
    }
    async fn put_delivery(&self, d: &Delivery, expected: Option<u64>) -> Result<bool, StoreError> {
        self.0.put_delivery(d, expected).await
    }
    async fn delivery(&self, endpoint_id: &str, delivery_id: &str) -> Result<Option<Delivery>, StoreError> {
        self.0.delivery(endpoint_id, delivery_id).await
    }
    async fn deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
        after: Option<&str>,
    ) -> Result<(Vec<Delivery>, Option<String>), StoreError> {
        self.0.deliveries(endpoint_id, limit, after).await
    }
}

#[tokio::test]
async fn the_endpoint_limit_holds_under_concurrent_creates_and_a_delete_frees_a_place() {
    use crate::webhooks::api::MAX_ENDPOINTS;
    let w = World::new();
    let admin = WebhookAdmin { store: Remote(&w.store), queue: &w.queue, settings: w.settings.clone() };
    let make = |i: usize| NewEndpoint {
        url: format!("http://127.0.0.1:9/hook/{i}"),
        events: vec!["*".into()],
        ..NewEndpoint::default()
    };
    let all = futures_util::future::join_all((0..MAX_ENDPOINTS + 30).map(|i| admin.create(make(i), 0))).await;
    let made: Vec<&str> = all.iter().filter_map(|r| r.as_ref().ok()).filter_map(|v| v["id"].as_str()).collect();
    assert_eq!(made.len(), MAX_ENDPOINTS);
    for r in &all {
        if let Err(e) = r {
            assert!(matches!(e, ApiError::Rule("too_many_endpoints", _)), "the limit's own error: {e:?}");
        }
    }
    assert_eq!(w.store.endpoints().await.unwrap().len(), MAX_ENDPOINTS);
    // A delete frees one place, once; a deleted endpoint never counts.
    let again = futures_util::future::join_all([admin.delete(made[0]), admin.delete(made[0])]).await;
    assert_eq!(again.iter().filter(|r| r.is_ok()).count(), 1);
    let two = futures_util::future::join_all([admin.create(make(1_000), 0), admin.create(make(1_001), 0)]).await;
    assert_eq!(two.iter().filter(|r| r.is_ok()).count(), 1);
    assert_eq!(admin.list().await.unwrap()["webhook_endpoints"].as_array().map(Vec::len), Some(MAX_ENDPOINTS));
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
