//! Auto-recharge settings (rules §5, §8; seeds 000, 001, 004): off by default, enabling needs a
//! saved card and a plan that allows it, every bound of the profile is a 422 with its own code,
//! and a refused change changes nothing.

use serde_json::{json, Value};
use topup_tests::*;

async fn set(w: &World, account: &str, token: &str, body: Value) -> (u16, Value) {
    w.api(put(&format!("/v1/accounts/{account}/credits/auto-recharge"), token, body)).await
}

#[tokio::test]
async fn usd_overage_threshold_up_to_the_amount_and_five_dollars_to_a_hundred_thousand() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let admin = person("admin", "acme");
    let (s, b) = set(&w, "acme", &admin, json!({"enabled": true, "threshold": 5 * C, "amount": 10 * C})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (422, Some("payment_method_required")), "{b}");
    w.save_card("acme").await;

    let refused = [
        (json!({"enabled": true, "threshold": 11 * C, "amount": 10 * C}), "threshold_above_amount"),
        (json!({"enabled": true, "threshold": C, "amount": 4_990_000}), "amount_out_of_range"),
        (json!({"enabled": true, "threshold": C, "amount": 100_000 * C + 1}), "amount_out_of_range"),
        (json!({"enabled": true, "threshold": -1, "amount": 10 * C}), "threshold_out_of_range"),
        (json!({"enabled": true, "monthly_max": 0}), "invalid_monthly_max"),
        (json!({"enabled": true, "monthly_max": 51}), "monthly_max_above_limit"),
    ];
    for (body, code) in refused {
        let before = w.snapshot("acme").await;
        let (s, b) = set(&w, "acme", &admin, body.clone()).await;
        assert_eq!((s, b["error"]["code"].as_str()), (422, Some(code)), "{body}: {b}");
        assert_eq!(before, w.snapshot("acme").await, "{body} changed state");
    }
    let (s, b) = set(&w, "acme", &admin, json!({"enabled": true, "threshold": 0})).await;
    assert_eq!(s, 200, "threshold $0 is allowed: {b}");
    let (s, b) = set(
        &w,
        "acme",
        &admin,
        json!({"enabled": true, "threshold": 100_000 * C, "amount": 100_000 * C, "monthly_max": 50}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) =
        set(&w, "acme", &admin, json!({"enabled": true, "threshold": 20 * C, "amount": 50 * C, "monthly_max": 5}))
            .await;
    assert_eq!(
        (s, b["enabled"].as_bool(), b["threshold"].as_i64(), b["amount"].as_i64()),
        (200, Some(true), Some(20 * C), Some(50 * C))
    );
    let v = w.view("acme").await;
    assert_eq!(v["auto_recharge"]["monthly_max"], 5);
    assert_eq!(v["low_balance_threshold"], 20 * C, "the auto-recharge threshold when it is on");
    assert_eq!(v["payment_method"], json!({"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030}));
    // Turning it off keeps the settings and goes back to the default threshold.
    let (s, _) = set(&w, "acme", &admin, json!({"enabled": false})).await;
    assert_eq!(s, 200);
    let v = w.view("acme").await;
    assert_eq!(
        (v["auto_recharge"]["enabled"].as_bool(), v["auto_recharge"]["threshold"].as_i64()),
        (Some(false), Some(20 * C))
    );
    assert_eq!(v["low_balance_threshold"], 5 * C);
}

#[tokio::test]
async fn only_billing_roles_of_the_account_may_change_it() {
    let w = World::new("org-runs").await;
    w.account("org", "pro").await;
    w.save_card("org").await;
    let body = json!({"enabled": true});
    for (token, status) in [
        (person("member", "org"), 403),
        (person("admin", "other"), 403),
        (token(json!({"sub": "u", "role": "owner"})), 401),
        (person("owner", "org"), 200),
    ] {
        let (s, b) = set(&w, "org", &token, body.clone()).await;
        assert_eq!(s, status, "{b}");
    }
    let (s, b) = set(&w, "org", &person("owner", "org"), json!({"threshold": C})).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_request")), "`enabled` is required");
}

#[tokio::test]
async fn voice_minutes_reloads_one_block_up_to_the_plans_limit_and_not_on_free() {
    let w = World::new("voice-minutes").await;
    w.account("clinic", "free").await;
    w.save_card("clinic").await;
    let admin = person("admin", "clinic");
    let (s, b) = set(&w, "clinic", &admin, json!({"enabled": true})).await;
    assert_eq!(
        (s, b["error"]["code"].as_str(), b["error"]["message"].as_str()),
        (422, Some("auto_recharge_unavailable"), Some("Auto-reload not available on Free plan"))
    );
    let (s, _) = set(&w, "clinic", &person("editor", "clinic"), json!({"enabled": true})).await;
    assert_eq!(s, 403, "editors can see but not change auto-reload");

    w.api(put("/v1/accounts/clinic", &service(), json!({"plan": "pro", "billing_contacts": []}))).await;
    for (body, code) in [
        (json!({"enabled": true, "threshold": 101 * C}), "threshold_out_of_range"),
        (json!({"enabled": true, "threshold": 0}), "threshold_out_of_range"),
        (json!({"enabled": true, "amount": 200 * C}), "amount_not_configurable"),
        (json!({"enabled": true, "monthly_max": 31}), "monthly_max_above_limit"),
    ] {
        let (s, b) = set(&w, "clinic", &admin, body.clone()).await;
        assert_eq!((s, b["error"]["code"].as_str()), (422, Some(code)), "{body}: {b}");
    }
    // Defaults: 10 minutes, one block, 10 reloads a month; raised to the plan's 30.
    let (s, b) = set(&w, "clinic", &admin, json!({"enabled": true})).await;
    assert_eq!((s, b["threshold"].as_i64(), b["monthly_max"].as_i64()), (200, Some(10 * C), Some(10)), "{b}");
    assert!(b["amount"].is_null());
    let (s, b) = set(&w, "clinic", &admin, json!({"enabled": true, "threshold": 100 * C, "monthly_max": 30})).await;
    assert_eq!((s, b["threshold"].as_i64(), b["monthly_max"].as_i64()), (200, Some(100 * C), Some(30)));
    assert_eq!(b["used_this_month"], 0);
    assert_eq!(b["level"], "ok");
    // Downgrading to Free turns it off (seed 004).
    w.api(put("/v1/accounts/clinic", &service(), json!({"plan": "free", "billing_contacts": []}))).await;
    assert_eq!(w.view("clinic").await["auto_recharge"]["enabled"], false);
}
