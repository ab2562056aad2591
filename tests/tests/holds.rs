//! Holds against the emulator (rules §6, §11): reserve, settle, release, expiry, replays, and
//! the threshold checked at settle, never mid-session (seed 004).

use std::time::Duration;

use serde_json::{json, Value};
use topup_tests::*;

async fn hold(w: &World, account: &str, quantity: i64, ttl: Option<i64>, key: &str) -> (u16, Value) {
    let mut body = json!({"consumable": "voice_minutes", "quantity": quantity, "idempotency_key": key});
    if let Some(t) = ttl {
        body["ttl_seconds"] = json!(t);
    }
    w.debit(post(&format!("/v1/accounts/{account}/usage/holds"), &service(), body)).await
}

async fn settle(w: &World, account: &str, hold_id: &str, quantity: i64) -> (u16, Value) {
    w.debit(post(
        &format!("/v1/accounts/{account}/usage/holds/{hold_id}/settle"),
        &service(),
        json!({"quantity": quantity}),
    ))
    .await
}

#[tokio::test]
async fn a_call_reserves_minutes_and_settles_the_actual_use() {
    let w = World::new("voice-minutes").await;
    let observer = w.observe_bus().await;
    w.account("clinic", "free").await;
    w.usage("clinic", "voice_minutes", 30).await; // plan minutes used
    w.grant("clinic", 15 * C).await; // 15 credit minutes; low below 10

    let (s, h) = hold(&w, "clinic", 12, None, "call-1").await;
    assert_eq!(s, 201, "{h}");
    assert_eq!((h["reserved"].as_i64(), h["reserved_units"].as_i64()), (Some(12 * C), Some(12)));
    let hold_id = h["hold_id"].as_str().unwrap_or_default().to_string();
    // While the call runs, the reservation is set aside: other usage sees 3 minutes.
    let view = w.view("clinic").await;
    assert_eq!((view["balance"].as_i64(), view["available"].as_i64()), (Some(15 * C), Some(3 * C)));
    let (s, b) = w.usage("clinic", "voice_minutes", 4).await;
    assert_eq!((s, b["error"]["code"].as_str()), (402, Some("out_of_minutes")), "{b}");
    // Nothing crossed yet: the balance has not moved.
    assert!(observer.drain(Duration::from_millis(500)).await.is_empty());

    // The call used 8 minutes: 8 debited, 4 released; the balance crosses 10 at settle.
    let (s, r) = settle(&w, "clinic", &hold_id, 8).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        (r["from_hold"].as_i64(), r["from_credits"].as_i64(), r["unbilled"].as_i64()),
        (Some(8), Some(8 * C), Some(0))
    );
    assert_eq!(r["balance"], 7 * C);
    let events = observer.drain(Duration::from_secs(1)).await;
    assert_eq!(of_type(&events, "BalanceLow").len(), 1, "{events:?}");
    assert_eq!(w.view("clinic").await["available"], 7 * C);

    // Settling again with the same body returns the first result; another body is 409.
    assert_eq!(settle(&w, "clinic", &hold_id, 8).await, (200, r.clone()));
    let (s, b) = settle(&w, "clinic", &hold_id, 9).await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("idempotency_conflict")));
    w.assert_invariants("clinic").await;
}

#[tokio::test]
async fn a_call_that_runs_past_its_hold_completes_and_never_overdraws() {
    let w = World::new("voice-minutes").await;
    w.account("clinic", "free").await;
    w.usage("clinic", "voice_minutes", 30).await;
    w.grant("clinic", 5 * C).await;
    let (_, h) = hold(&w, "clinic", 3, None, "call").await;
    let hold_id = h["hold_id"].as_str().unwrap_or_default().to_string();
    let (s, r) = settle(&w, "clinic", &hold_id, 9).await;
    assert_eq!(s, 200, "{r}");
    // 3 from the hold, 2 more from what remained, 4 unbilled; never below zero.
    assert_eq!(
        (r["from_hold"].as_i64(), r["from_credits"].as_i64(), r["unbilled"].as_i64(), r["balance"].as_i64()),
        (Some(3), Some(5 * C), Some(4), Some(0))
    );
    w.assert_invariants("clinic").await;
}

#[tokio::test]
async fn an_unused_hold_settles_for_zero_and_releases_everything() {
    let w = World::new("voice-minutes").await;
    w.account("clinic", "free").await;
    w.grant("clinic", 20 * C).await;
    let (_, h) = hold(&w, "clinic", 40, None, "call").await; // 30 plan minutes + 10 credit
    assert_eq!((h["reserved"].as_i64(), h["reserved_allowance_units"].as_i64()), (Some(10 * C), Some(30)));
    let id = h["hold_id"].as_str().unwrap_or_default().to_string();
    let (s, r) = settle(&w, "clinic", &id, 0).await;
    assert_eq!((s, r["from_credits"].as_i64(), r["balance"].as_i64()), (200, Some(0), Some(20 * C)));
    let v = w.view("clinic").await;
    assert_eq!(v["available"], 20 * C);
    assert_eq!(v["allowances"][0]["used"], 0);
}

#[tokio::test]
async fn holds_replay_refuse_and_expire() {
    let w = World::new("voice-minutes").await.with_manual_clock(topup::clock::now_ms());
    w.account("clinic", "free").await;
    w.usage("clinic", "voice_minutes", 30).await;
    w.grant("clinic", 10 * C).await;

    // Larger than allowance and balance can cover: 402, nothing reserved.
    let (s, b) = hold(&w, "clinic", 11, None, "big").await;
    assert_eq!((s, b["error"]["code"].as_str()), (402, Some("out_of_minutes")));
    // A replayed reserve returns the same hold.
    let first = hold(&w, "clinic", 2, Some(1), "short").await;
    assert_eq!(first.0, 201);
    assert_eq!(hold(&w, "clinic", 2, Some(1), "short").await, first);
    let (s, b) = hold(&w, "clinic", 3, Some(1), "short").await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("idempotency_conflict")));
    // TTL bounds.
    for ttl in [0, 86_401, -5] {
        let (s, b) = hold(&w, "clinic", 1, Some(ttl), &unique("ttl")).await;
        assert_eq!((s, b["error"]["code"].as_str()), (422, Some("invalid_ttl")), "ttl {ttl}");
    }

    // After expiry the reservation is released by itself and settling is 409 hold_expired.
    w.advance(1_200);
    assert_eq!(w.view("clinic").await["available"], 10 * C);
    let id = first.1["hold_id"].as_str().unwrap_or_default().to_string();
    let before = w.snapshot("clinic").await;
    let (s, b) = settle(&w, "clinic", &id, 1).await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("hold_expired")), "{b}");
    assert_eq!(before, w.snapshot("clinic").await, "a refused settle changes nothing");
    // Still expired for another instance with a cold cache, and after a write dropped it.
    w.usage("clinic", "voice_minutes", 1).await;
    let other = w.another_instance();
    let req = post(&format!("/v1/accounts/clinic/usage/holds/{id}/settle"), &service(), json!({"quantity": 1}));
    let (s, b) = read(debit::handle(&w.config, &other, req).await);
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("hold_expired")));
    // Unknown hold: 404.
    let (s, b) = settle(&w, "clinic", "hold_doesnotexist", 1).await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("hold_not_found")));
    w.assert_invariants("clinic").await;
}
