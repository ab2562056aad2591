//! Debits against the emulator: each profile's allowance then overage, exhaustion codes,
//! concurrency (rules §6, §10.1, §10.3, §10.4), idempotency, and crossing events.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use topup_tests::*;

#[tokio::test]
async fn usd_overage_draws_the_allowance_then_credits_and_blocks_chat_when_out() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    w.grant("acme", C).await; // $1.00 of credit

    // Free includes 1,000 API calls: the allowance first, nothing from credits.
    let (s, b) = w.usage("acme", "api_calls", 1_000).await;
    assert_eq!((s, b["from_allowance"].as_i64(), b["from_credits"].as_i64()), (200, Some(1_000), Some(0)), "{b}");
    assert!(b["transaction_id"].is_null());
    // The next 250 calls at $0.001 each: $0.25.
    let (s, b) = w.usage("acme", "api_calls", 250).await;
    assert_eq!((s, b["from_allowance"].as_i64(), b["from_credits"].as_i64()), (200, Some(0), Some(250_000)), "{b}");
    assert_eq!(b["balance"], 750_000);

    // 100,000 free tokens, then $3 per million: 100,001 tokens cost 3 micro-credits.
    let (s, b) = w.usage("acme", "llm_tokens", 100_001).await;
    assert_eq!((s, b["from_allowance"].as_i64(), b["from_credits"].as_i64()), (200, Some(100_000), Some(3)), "{b}");

    // Spend the rest exactly, then both are exhausted.
    let rest = 750_000 - 3;
    let (s, b) = w.usage("acme", "llm_tokens", rest / 3).await;
    assert_eq!(s, 200, "{b}");
    let left = b["balance"].as_i64().unwrap_or(-1);
    assert_eq!(left, rest % 3);

    // Agent chat is refused with the out-of-credits code; other consumables with their own.
    let (s, b) = w.usage("acme", "llm_tokens", 1_000).await;
    assert_eq!((s, b["error"]["code"].as_str()), (402, Some("out_of_credits")), "{b}");
    assert_eq!(b["balance"], left);
    let (s, b) = w.usage("acme", "sms", 11).await;
    assert_eq!((s, b["error"]["code"].as_str()), (402, Some("usage_limit_reached")), "{b}");
    // Free accounts may buy credits to keep working: a grant lets the same request through.
    w.grant("acme", 5 * C).await;
    let (s, _) = w.usage("acme", "llm_tokens", 1_000).await;
    assert_eq!(s, 200);
    w.assert_invariants("acme").await;
}

#[tokio::test]
async fn usd_overage_pro_rounds_a_fractional_rate_up() {
    let w = World::new("usd-overage").await;
    w.account("acme", "pro").await;
    w.grant("acme", C).await;
    // Pro: 2,000,000 tokens included, then 2.5 micro-credits a token.
    let (_, b) = w.usage("acme", "llm_tokens", 2_000_000).await;
    assert_eq!(b["from_credits"], 0);
    let (_, b) = w.usage("acme", "llm_tokens", 3).await;
    assert_eq!(b["from_credits"], 8, "7.5 rounds up to 8: {b}");
    w.assert_invariants("acme").await;
}

#[tokio::test]
async fn request_packs_charge_per_feature_and_disable_at_zero() {
    let w = World::new("request-packs").await;
    w.account("team", "free").await;
    w.grant("team", 4 * C).await;
    // Free includes no requests: 1 credit per agent request, 3 per code generation.
    let (_, b) = w.usage("team", "agent_requests", 1).await;
    assert_eq!((b["from_credits"].as_i64(), b["balance"].as_i64()), (Some(C), Some(3 * C)), "{b}");
    let (_, b) = w.usage("team", "code_generations", 1).await;
    assert_eq!(b["balance"], 0, "{b}");
    let (s, b) = w.usage("team", "agent_requests", 1).await;
    assert_eq!((s, b["error"]["code"].as_str()), (402, Some("out_of_credits")));
    // Pro includes 500 requests a month.
    let (s, _) = w.api(put("/v1/accounts/team", &service(), json!({"plan": "pro", "billing_contacts": []}))).await;
    assert_eq!(s, 200);
    let (s, b) = w.usage("team", "agent_requests", 500).await;
    assert_eq!((s, b["from_allowance"].as_i64()), (200, Some(500)), "{b}");
    w.assert_invariants("team").await;
}

#[tokio::test]
async fn org_runs_continue_past_the_plan_at_one_credit_per_hundred_runs() {
    let w = World::new("org-runs").await;
    w.account("org", "free").await;
    w.grant("org", 2 * C).await;
    let (_, b) = w.usage("org", "runs", 1_000).await;
    assert_eq!(b["from_credits"], 0, "the plan's 1,000 runs first");
    let (_, b) = w.usage("org", "runs", 150).await;
    assert_eq!((b["from_credits"].as_i64(), b["balance"].as_i64()), (Some(1_500_000), Some(500_000)), "{b}");
    let (_, b) = w.usage("org", "runs", 50).await;
    assert_eq!(b["balance"], 0);
    let (s, b) = w.usage("org", "runs", 1).await;
    assert_eq!((s, b["error"]["code"].as_str()), (402, Some("out_of_credits")));
    w.assert_invariants("org").await;
}

#[tokio::test]
async fn voice_minutes_draw_plan_minutes_then_credit_minutes() {
    let w = World::new("voice-minutes").await;
    w.account("clinic", "free").await;
    w.grant("clinic", 100 * C).await; // one block of 100 minutes
    let (_, b) = w.usage("clinic", "voice_minutes", 40).await;
    assert_eq!((b["from_allowance"].as_i64(), b["from_credits"].as_i64()), (Some(30), Some(10 * C)), "{b}");
    let (_, b) = w.usage("clinic", "voice_minutes", 90).await;
    assert_eq!(b["balance"], 0);
    let (s, b) = w.usage("clinic", "voice_minutes", 1).await;
    assert_eq!((s, b["error"]["code"].as_str()), (402, Some("out_of_minutes")));
    w.assert_invariants("clinic").await;
}

/// 50 debits at once whose sum exceeds the balance, from 5 "instances" with their own caches:
/// the balance never goes negative and what was accepted is exactly what left the balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_debits_never_overdraw() {
    let w = Arc::new(World::new("org-runs").await);
    w.account("org", "free").await;
    w.usage("org", "runs", 1_000).await; // use up the allowance
    w.grant("org", 10 * C).await; // 10 credits = 1,000 runs
    let instances: Vec<_> = (0..5).map(|_| Arc::new(w.another_instance())).collect();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let w = w.clone();
        let inst = instances[i % 5].clone();
        tasks.push(tokio::spawn(async move {
            // 30 runs each = 0.3 credits; 50 × 0.3 = 15 credits > 10.
            let req = post(
                "/v1/accounts/org/usage",
                &service(),
                json!({"consumable": "runs", "quantity": 30, "idempotency_key": format!("k{i}")}),
            );
            read(debit::handle(&w.config, &inst, req).await)
        }));
    }
    let mut accepted = 0;
    let mut refused = 0;
    for t in tasks {
        let (s, b) = t.await.expect("task");
        match s {
            200 => accepted += b["from_credits"].as_i64().unwrap_or(0),
            402 => refused += 1,
            other => panic!("unexpected {other}: {b}"),
        }
    }
    let view = w.view("org").await;
    assert_eq!(accepted, 10 * C - view["balance"].as_i64().unwrap_or(-1), "accepted = balance decrease");
    assert_eq!(refused, 50 - 33, "33 debits of 0.3 fit in 10 credits");
    assert_eq!(view["balance"], 100_000);
    w.assert_invariants("org").await;
}

/// The same idempotency key sent 20 times at once from several instances applies once and
/// every reply is the first result.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_replays_of_one_key_apply_once() {
    let w = Arc::new(World::new("usd-overage").await);
    w.account("acme", "free").await;
    w.grant("acme", 10 * C).await;
    w.usage("acme", "api_calls", 1_000).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let w = w.clone();
        let inst = Arc::new(w.another_instance());
        tasks.push(tokio::spawn(async move {
            let _ = i;
            let req = post(
                "/v1/accounts/acme/usage",
                &service(),
                json!({"consumable": "api_calls", "quantity": 100, "idempotency_key": "same"}),
            );
            read(debit::handle(&w.config, &inst, req).await)
        }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        let (s, b) = t.await.expect("task");
        assert_eq!(s, 200, "{b}");
        bodies.push(b);
    }
    assert!(bodies.windows(2).all(|p| p[0] == p[1]), "every replay returns the first result");
    assert_eq!(w.view("acme").await["balance"], 10 * C - 100_000);
    // Same key, another body: 409, nothing changes.
    let before = w.snapshot("acme").await;
    let (s, b) = w
        .debit(post(
            "/v1/accounts/acme/usage",
            &service(),
            json!({"consumable": "api_calls", "quantity": 101, "idempotency_key": "same"}),
        ))
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("idempotency_conflict")));
    assert_eq!(before, w.snapshot("acme").await);
    // A replay after the balance ran out still answers the first result, not a 402.
    w.usage("acme", "api_calls", 9_900).await;
    assert_eq!(w.view("acme").await["balance"], 0);
    let (s, b) = w
        .debit(post(
            "/v1/accounts/acme/usage",
            &service(),
            json!({"consumable": "api_calls", "quantity": 100, "idempotency_key": "same"}),
        ))
        .await;
    assert_eq!((s, &b), (200, &bodies[0]));
    w.assert_invariants("acme").await;
}

/// Many concurrent debits cross the low threshold: exactly one `BalanceLow` reaches the bus,
/// and exactly one `BalanceDepleted` when the balance reaches zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_one_balance_low_for_concurrent_crossing_debits() {
    let w = Arc::new(World::new("usd-overage").await);
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    w.usage("acme", "api_calls", 1_000).await;
    w.grant("acme", 8 * C).await; // $8, threshold $5 (strictly below)
    let instances: Vec<_> = (0..8).map(|_| Arc::new(w.another_instance())).collect();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let w = w.clone();
        let inst = instances[i % 8].clone();
        tasks.push(tokio::spawn(async move {
            // 200 calls = $0.20 each; 40 of them = $8.
            let req = post(
                "/v1/accounts/acme/usage",
                &service(),
                json!({"consumable": "api_calls", "quantity": 200, "idempotency_key": format!("c{i}")}),
            );
            read(debit::handle(&w.config, &inst, req).await)
        }));
    }
    for t in tasks {
        let (s, b) = t.await.expect("task");
        assert_eq!(s, 200, "{b}");
    }
    let events = observer.drain(Duration::from_secs(2)).await;
    let low = of_type(&events, "BalanceLow");
    assert_eq!(low.len(), 1, "{events:?}");
    assert_eq!(low[0]["detail"]["threshold"], 5 * C);
    assert!(low[0]["detail"]["balance"].as_i64().unwrap_or(i64::MAX) < 5 * C);
    assert!(low[0]["detail"]["previous_balance"].as_i64().unwrap_or(0) >= 5 * C);
    assert_eq!(of_type(&events, "BalanceDepleted").len(), 1);
    assert_eq!(distinct(&events), 2, "debits that cross nothing emit nothing");
    // Nothing is left in the outbox: every event went out.
    assert!(topup::events::pending_events(&w.credits.store, 100).await.expect("outbox").is_empty());
    w.assert_invariants("acme").await;
}

/// Debits that stay above the threshold emit nothing.
#[tokio::test]
async fn debits_that_cross_nothing_emit_nothing() {
    let w = World::new("usd-overage").await;
    let observer = w.observe_bus().await;
    w.account("acme", "free").await;
    w.usage("acme", "api_calls", 1_000).await;
    w.grant("acme", 20 * C).await;
    for _ in 0..5 {
        assert_eq!(w.usage("acme", "api_calls", 1_000).await.0, 200);
    }
    assert!(observer.drain(Duration::from_secs(1)).await.is_empty());
}

/// Rules §13: a balance write that cannot commit within its budget answers 503 `account_busy`
/// with `Retry-After` and writes nothing, on the emulator. The contention is real and certain:
/// an instance holding the account in its cache plans on that version after another instance
/// wrote the account, so its compare-and-swap loses on the emulator; with no budget left to
/// read again and retry, it gives up. The client's retry of the same key then applies once.
#[tokio::test]
async fn a_write_that_cannot_commit_within_its_budget_answers_account_busy() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    w.grant("acme", 10 * C).await;
    w.usage("acme", "api_calls", 1_000).await; // use up the allowance
    let debit = |k: &str| {
        post(
            "/v1/accounts/acme/usage",
            &service(),
            json!({"consumable": "api_calls", "quantity": 100, "idempotency_key": k}),
        )
    };
    // No time to retry: it commits when it wins its race and gives up when it loses one.
    let hurried = w.another_instance().with_write_budget(Duration::ZERO);
    let (s, first) = read(debit::handle(&w.config, &hurried, debit("first")).await);
    assert_eq!(s, 200, "uncontended, it wins: {first}");
    // Another instance writes the account: the hurried one's cached version is now stale.
    let (s, second) = w.debit(debit("between")).await;
    assert_eq!(s, 200, "{second}");
    let per_debit = first["balance"].as_i64().expect("balance") - second["balance"].as_i64().expect("balance");
    assert!(per_debit > 0, "{first} {second}");
    let before = w.snapshot("acme").await;

    let resp = debit::handle(&w.config, &hurried, debit("busy")).await;
    assert_eq!(resp.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let (s, b) = read(resp);
    assert_eq!((s, b["error"]["code"].as_str()), (503, Some("account_busy")), "{b}");
    assert_eq!(w.snapshot("acme").await, before, "a write that gave up wrote nothing");

    // Retried, the same key applies once; retried again, it answers the same.
    let (s, applied) = w.debit(debit("busy")).await;
    assert_eq!((s, applied["balance"].as_i64()), (200, Some(second["balance"].as_i64().expect("balance") - per_debit)));
    let (s, again) = w.debit(debit("busy")).await;
    assert_eq!((s, &again), (200, &applied));
    assert_eq!(w.view("acme").await["balance"], applied["balance"]);
    w.assert_invariants("acme").await;
}
