//! Accounts, the credits view, the ledger page and adjustments against the emulator
//! (rules §4, §5, §11), with the roles of each profile.

use topup::store::Accounts;
use serde_json::json;
use topup_tests::*;

#[tokio::test]
async fn the_credits_view_has_every_field_with_the_seed_numbers() {
    let w = World::new("usd-overage").await;
    let (s, a) = w
        .api(put(
            "/v1/accounts/acme",
            &service(),
            json!({"plan": "pro", "billing_contacts": [{"email": "a@b.co", "phone": "+15550100", "sms_opt_in": true}]}),
        ))
        .await;
    assert_eq!(s, 201, "{a}");
    assert_eq!(a["billing_contacts"][0]["phone"], "+15550100");
    w.grant("acme", 12 * C).await;
    w.usage("acme", "api_calls", 100_000).await; // the allowance
    w.usage("acme", "api_calls", 2_000).await; // $1.00
    let v = w.view("acme").await;
    assert_eq!(v["unit"], json!({"code": "usd", "symbol": "$", "micros_per_unit": 1_000_000}));
    assert_eq!(
        (v["balance"].as_i64(), v["lifetime_added"].as_i64(), v["lifetime_spent"].as_i64()),
        (Some(11 * C), Some(12 * C), Some(C))
    );
    assert_eq!((v["low_balance"].as_bool(), v["low_balance_threshold"].as_i64()), (Some(false), Some(5 * C)));
    assert_eq!(v["plan"], "pro");
    let recent = v["recent_transactions"].as_array().cloned().unwrap_or_default();
    assert_eq!(recent.len(), 2);
    assert_eq!(
        (recent[0]["kind"].as_str(), recent[0]["amount"].as_i64(), recent[0]["balance_after"].as_i64()),
        (Some("consumption"), Some(-C), Some(11 * C))
    );
    assert_eq!(recent[1]["kind"], "adjustment");
    assert!(recent[0]["created_at"].as_str().unwrap_or_default().ends_with('Z'));
    let api_calls = v["allowances"].as_array().and_then(|a| a.iter().find(|x| x["consumable"] == "api_calls").cloned());
    assert_eq!(api_calls, Some(json!({"consumable": "api_calls", "included": 100_000, "used": 100_000})));
    assert_eq!(v["allowances"].as_array().map(Vec::len), Some(7));
    let ar = &v["auto_recharge"];
    assert_eq!(
        (ar["enabled"].as_bool(), ar["threshold"].as_i64(), ar["amount"].as_i64()),
        (Some(false), Some(5 * C), Some(10 * C))
    );
    assert_eq!((ar["used_this_month"].as_i64(), ar["level"].as_str()), (Some(0), Some("ok")));
    assert!(ar["paused"].is_null());
    assert_eq!(ar["limits"]["amount_min"], 5 * C);
    assert_eq!(ar["limits"]["amount_max"], 100_000 * C);
    assert!(ar["limits"]["threshold_max"].is_null(), "up to the purchase amount");
    assert!(v["payment_method"].is_null() && v["last_recharge_error"].is_null());
    assert_eq!(v["purchase_options"]["kind"], "amount");
    assert_eq!(
        (
            v["purchase_options"]["default"].as_i64(),
            v["purchase_options"]["min"].as_i64(),
            v["purchase_options"]["max"].as_i64()
        ),
        (Some(1000), Some(500), Some(100_000))
    );

    // At the threshold is low (seed 001: "at or below").
    w.usage("acme", "api_calls", 12_000).await; // $6.00 → $5.00
    let v = w.view("acme").await;
    assert_eq!((v["balance"].as_i64(), v["low_balance"].as_bool()), (Some(5 * C), Some(true)));
    w.assert_invariants("acme").await;
}

#[tokio::test]
async fn the_ledger_pages_newest_first_with_a_cursor() {
    let w = World::new("org-runs").await;
    w.account("org", "free").await;
    w.usage("org", "runs", 1_000).await;
    w.grant("org", 10 * C).await;
    for _ in 0..6 {
        w.usage("org", "runs", 100).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/accounts/org/credits/transactions?limit=3&cursor={c}"),
            None => "/v1/accounts/org/credits/transactions?limit=3".to_string(),
        };
        let (s, b) = w.api(get(&path, &person("member", "org"))).await;
        assert_eq!(s, 200, "{b}");
        pages += 1;
        let txs = b["transactions"].as_array().cloned().unwrap_or_default();
        assert!(txs.len() <= 3);
        seen.extend(txs);
        match b["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (7, 3));
    let balances: Vec<i64> = seen.iter().filter_map(|t| t["balance_after"].as_i64()).collect();
    assert_eq!(balances, [4 * C, 5 * C, 6 * C, 7 * C, 8 * C, 9 * C, 10 * C], "newest first");
    let ledger = w.ledger("org").await;
    let ids: Vec<_> = ledger.iter().rev().map(|e| json!(e.id)).collect();
    assert_eq!(seen.iter().map(|t| t["id"].clone()).collect::<Vec<_>>(), ids);
}

#[tokio::test]
async fn adjustments_are_idempotent_and_never_take_the_balance_below_zero() {
    let w = World::new("request-packs").await;
    w.account("team", "free").await;
    let grant = || {
        post(
            "/v1/accounts/team/credits/adjustments",
            &service(),
            json!({"amount": 25 * C, "reason": "Goodwill credit", "idempotency_key": "goodwill-1"}),
        )
    };
    let (s, first) = w.api(grant()).await;
    assert_eq!(s, 201, "{first}");
    assert_eq!(
        (first["kind"].as_str(), first["amount"].as_i64(), first["balance_after"].as_i64()),
        (Some("adjustment"), Some(25 * C), Some(25 * C))
    );
    assert_eq!(first["description"], "Goodwill credit");
    assert_eq!(w.api(grant()).await, (201, first.clone()), "a replay returns the first entry");
    let (s, b) = w
        .api(post(
            "/v1/accounts/team/credits/adjustments",
            &service(),
            json!({"amount": 1, "reason": "other", "idempotency_key": "goodwill-1"}),
        ))
        .await;
    assert_eq!((s, b["error"]["code"].as_str()), (409, Some("idempotency_conflict")));
    let (s, b) = w
        .api(post(
            "/v1/accounts/team/credits/adjustments",
            &service(),
            json!({"amount": -25 * C, "reason": "Correction", "idempotency_key": "fix-1"}),
        ))
        .await;
    assert_eq!((s, b["balance_after"].as_i64()), (201, Some(0)));
    let v = w.view("team").await;
    assert_eq!(
        (v["balance"].as_i64(), v["lifetime_added"].as_i64()),
        (Some(0), Some(25 * C)),
        "negative adjustments are not in lifetime totals"
    );
    w.assert_invariants("team").await;
}

#[tokio::test]
async fn roles_follow_each_profile() {
    for (profile, viewer_ok, viewer_refused) in [
        ("usd-overage", vec!["owner", "admin"], vec!["member", "editor"]),
        ("request-packs", vec!["owner", "admin", "member"], vec!["editor"]),
        ("org-runs", vec!["owner", "admin", "member"], vec!["editor"]),
        ("voice-minutes", vec!["owner", "admin", "editor"], vec!["member"]),
    ] {
        let w = World::new(profile).await;
        w.account("a1", "pro").await;
        for r in viewer_ok {
            let (s, b) = w.api(get("/v1/accounts/a1/credits", &person(r, "a1"))).await;
            assert_eq!(s, 200, "{profile} {r}: {b}");
            // Another tenant's account: 403.
            let (s, _) = w.api(get("/v1/accounts/a2/credits", &person(r, "a2x"))).await;
            assert_eq!(s, 403, "{profile} {r} on another account");
        }
        for r in viewer_refused {
            let (s, b) = w.api(get("/v1/accounts/a1/credits", &person(r, "a1"))).await;
            assert_eq!((s, b["error"]["code"].as_str()), (403, Some("forbidden")), "{profile} {r}");
        }
        // A person's token without an account, or with `*`: 401.
        let (s, _) = w.api(get("/v1/accounts/a1/credits", &token(json!({"sub": "u", "role": "owner"})))).await;
        assert_eq!(s, 401);
        let (s, _) = w
            .api(get("/v1/accounts/a1/credits", &token(json!({"sub": "u", "role": "owner", "account_id": "*"}))))
            .await;
        assert_eq!(s, 401);
    }
}

#[tokio::test]
async fn voice_minutes_free_shows_the_seed_notice_and_a_downgrade_turns_auto_reload_off() {
    let w = World::new("voice-minutes").await;
    w.account("clinic", "pro").await;
    w.grant("clinic", 300 * C).await;
    // Auto-reload on with 9 of 10 used this month (a count only recharges make): set directly.
    w.edit_account("clinic", |a| {
        a.auto_recharge.enabled = true;
        a.auto_recharge.used_this_month = 9; // above 80%
    })
    .await;
    let a = w.credits.store.load_account("clinic").await.expect("load").expect("exists");
    let other = w.another_instance();
    let (_, v) =
        read(credits_api::handle(&w.config, &w.webhooks, &other, get("/v1/accounts/clinic/credits", &service())).await);
    assert_eq!(
        (v["auto_recharge"]["enabled"].as_bool(), v["auto_recharge"]["level"].as_str()),
        (Some(true), Some("critical"))
    );
    assert!(v["auto_recharge"]["amount"].is_null(), "voice-minutes reloads exactly one block");
    assert_eq!(
        v["purchase_options"],
        json!({"kind": "blocks", "currency": "usd", "minutes_per_block": 100, "min": 1, "max": 100, "price_per_block": 2000})
    );

    // Downgrade to Free: credits survive, auto-reload turns off, the seed's notice shows.
    let (s, b) = read(
        credits_api::handle(
            &w.config,
            &w.webhooks,
            &other,
            put("/v1/accounts/clinic", &service(), json!({"plan": "free", "billing_contacts": []})),
        )
        .await,
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["created_at"], topup::clock::rfc3339(a.created_at));
    let v = w.view("clinic").await;
    assert_eq!(v["balance"], 300 * C);
    assert_eq!(v["auto_recharge"]["enabled"], false);
    assert_eq!(v["auto_recharge"]["paused"]["message"], "Auto-reload not available on Free plan");
    assert_eq!(v["purchase_options"]["price_per_block"], 2800, "$0.28/min on Free");
    assert_eq!(v["low_balance_threshold"], 10 * C);
}
