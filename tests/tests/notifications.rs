//! Notifications against the emulator (rules §8; seeds 000, 001, 004): a debit that crosses the
//! threshold emails each billing contact once, however often the event is delivered; reaching
//! zero sends the depleted notice, by SMS too to those who opted in. Read back from moto.

use std::time::Duration;

use serde_json::{json, Value};
use topup::events::sample_detail;
use topup_tests::*;

fn sent_to<'a>(data: &'a Value, to: &str) -> Vec<&'a Value> {
    data["ses"]["Message"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["destinations"]["ToAddresses"][0] == to).collect())
        .unwrap_or_default()
}

fn sms_to<'a>(data: &'a Value, phone: &str) -> Vec<&'a Value> {
    data["sns"]["SMS"].as_array().map(|m| m.iter().filter(|m| m["phone_number"] == phone).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossing_and_depleting_debits_notify_each_contact_once() {
    let w = World::new("usd-overage").await;
    let ses = aws_sdk_sesv2::Client::new(&w.aws);
    let _ = ses.create_email_identity().email_identity("example.com").send().await; // may exist
    let observer = w.observe_bus().await;
    let tag = unique("n");
    let (a, b, phone) = (format!("{tag}-a@acme.example"), format!("{tag}-b@acme.example"), unique_phone());
    let contacts = json!([{"email": a, "phone": phone, "sms_opt_in": true}, {"email": b}, {"email": "nobody"}]);
    let (s, body) =
        w.api(put("/v1/accounts/acme", &service(), json!({"plan": "free", "billing_contacts": contacts}))).await;
    assert_eq!(s, 422, "an unusable address is refused at the API: {body}");
    let contacts = json!([{"email": a, "phone": phone, "sms_opt_in": true}, {"email": b}]);
    let (s, body) =
        w.api(put("/v1/accounts/acme", &service(), json!({"plan": "free", "billing_contacts": contacts}))).await;
    assert_eq!(s, 201, "{body}");
    w.usage("acme", "api_calls", 1_000).await;
    w.grant("acme", 6 * C).await;
    w.usage("acme", "api_calls", 2_000).await; // $6 → $4: crosses $5
    w.usage("acme", "api_calls", 4_000).await; // → $0
    let events = observer.drain(Duration::from_secs(1)).await;
    assert_eq!(distinct(&events), 2, "{events:?}");

    let notifier = std::sync::Arc::new(topup::live_notifier(&w.config, &w.aws).expect("notifier"));
    for e in &events {
        // EventBridge delivers at least once: the same event 10 times at once.
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (n, e) = (notifier.clone(), e.clone());
            tasks.push(tokio::spawn(async move { notify::handle(&n, &topup_tests::bus_event(&e)).await.map(|_| ()) }));
        }
        for t in tasks {
            t.await.expect("task").expect("delivered");
        }
    }
    let data = moto_data().await;
    for to in [&a, &b] {
        let mails = sent_to(&data, to);
        let subjects: Vec<_> = mails.iter().filter_map(|m| m["subject"].as_str()).collect();
        assert_eq!(subjects.len(), 2, "{to}: {subjects:?}");
        assert!(subjects.contains(&"Your credit balance is low") && subjects.contains(&"You're out of credits"));
        let low = mails.iter().find(|m| m["subject"] == "Your credit balance is low").map(|m| m["body"].to_string());
        assert!(low.is_some_and(|b| b.contains("$4.00")
            && b.contains("$5.00")
            && b.contains("https://app.example.com/settings/billing")));
        assert!(mails.iter().all(|m| m["source"] == "billing@example.com"));
    }
    // usd-overage texts only when credits run out, and only to the contact who opted in.
    let texts = sms_to(&data, &phone);
    assert_eq!(texts.len(), 1, "{texts:?}");
    assert!(texts[0]["message"].as_str().unwrap_or_default().contains("have run out"));
    assert!(!texts[0]["message"].as_str().unwrap_or_default().contains("http"));

    // The in-app list: newest first, each with its channels and how they went.
    let (s, list) = w.api(get("/v1/accounts/acme/notifications", &person("admin", "acme"))).await;
    assert_eq!(s, 200, "{list}");
    let items = list["notifications"].as_array().cloned().unwrap_or_default();
    let types: Vec<_> = items.iter().filter_map(|n| n["type"].as_str()).collect();
    assert_eq!(types, ["credit_balance_depleted", "credit_balance_low"]);
    assert_eq!(items[0]["channels"].as_array().map(Vec::len), Some(3), "two emails and one SMS");
    assert!(items
        .iter()
        .flat_map(|n| n["channels"].as_array().cloned().unwrap_or_default())
        .all(|c| c["status"] == "sent"));
    let (s, _) = w.api(get("/v1/accounts/acme/notifications", &person("member", "acme"))).await;
    assert_eq!(s, 403, "usd-overage: owners and admins only");
}

/// Every type each profile sends, read back from moto: the subject, and the amounts in the
/// profile's unit in the body.
#[tokio::test]
async fn each_type_of_each_profile_arrives_with_its_amounts() {
    let cases: [(&str, &str, Value, &str, &[&str]); 9] = [
        (
            "usd-overage",
            "BalanceLow",
            json!({"balance": 4_500_000, "threshold": 5 * C}),
            "Your credit balance is low",
            &["$4.50", "$5.00"],
        ),
        (
            "usd-overage",
            "AutoRechargeSucceeded",
            json!({"credits": 10 * C, "charge": {"amount": 1000, "currency": "usd"}, "balance": 12_500_000}),
            "We added $10.00 to your balance",
            &["$10.00", "$12.50"],
        ),
        (
            "usd-overage",
            "AutoRechargeFailed",
            json!({"message": "Your card was declined.", "balance": C}),
            "Your automatic top-up failed",
            &["Your card was declined.", "update your card and buy credits by hand"],
        ),
        (
            "usd-overage",
            "PurchaseFailed",
            json!({}),
            "Your credit purchase failed",
            &["We couldn&#39;t confirm your payment. Please try again."],
        ),
        (
            "request-packs",
            "CreditsAdded",
            json!({"settled_after_processing": true, "credits": 500 * C, "charge": {"amount": 2000, "currency": "usd"}, "balance": 512 * C}),
            "Your payment has completed",
            &["$20.00", "500 credits", "512 credits"],
        ),
        ("org-runs", "BalanceDepleted", json!({"balance": 0}), "You're out of credits", &["0 credits"]),
        (
            "org-runs",
            "AutoRechargePaused",
            json!({}),
            "Auto top-up is paused until next month",
            &["monthly auto-reload limit"],
        ),
        (
            "voice-minutes",
            "BalanceLow",
            json!({"balance": 9 * C, "threshold": 10 * C}),
            "Your credit balance is low",
            &["9 minutes", "10 minutes"],
        ),
        (
            "voice-minutes",
            "AutoRechargeSucceeded",
            json!({"credits": 100 * C, "charge": {"amount": 2000, "currency": "usd"}, "balance": 104 * C}),
            "We added 100 minutes to your balance",
            &["$20.00", "104 minutes"],
        ),
    ];
    for (i, (profile, detail_type, detail, subject, amounts)) in cases.into_iter().enumerate() {
        let w = World::new(profile).await;
        let ses = aws_sdk_sesv2::Client::new(&w.aws);
        let _ = ses.create_email_identity().email_identity("example.com").send().await;
        let to = format!("{}@acme.example", unique("t"));
        let (s, b) = w
            .api(put("/v1/accounts/acme", &service(), json!({"plan": "pro", "billing_contacts": [{"email": to}]})))
            .await;
        assert_eq!(s, 201, "{b}");
        let mut detail = sample_detail(detail_type, detail);
        detail["event_id"] = json!(format!("evt_case_{i}"));
        detail["account_id"] = json!("acme");
        detail["occurred_ms"] = json!(i);
        let notifier = topup::live_notifier(&w.config, &w.aws).expect("notifier");
        notify::handle(&notifier, &topup_tests::bus_event(&json!({"detail-type": detail_type, "detail": detail}))).await.expect("delivered");
        let data = moto_data().await;
        let mails = sent_to(&data, &to);
        assert_eq!(mails.len(), 1, "{profile} {detail_type}");
        let html = mails[0]["body"].as_str().unwrap_or_default();
        assert_eq!(mails[0]["subject"].as_str(), Some(subject), "{profile} {detail_type}");
        for a in amounts {
            assert!(html.contains(a), "{profile} {detail_type}: {a} not in {html}");
        }
    }
}

/// Every profile × every type it sends, on both channels: email to each contact, SMS only to
/// the one who opted in and only for the types the profile texts. Read back from moto.
#[tokio::test]
async fn every_profile_sends_exactly_the_types_it_lists() {
    use topup::events::Event;
    use topup::notify::render;
    let events: [(&str, Value); 6] = [
        ("BalanceLow", json!({"balance": 3 * C, "threshold": 5 * C})),
        ("BalanceDepleted", json!({"balance": 0})),
        (
            "AutoRechargeSucceeded",
            json!({"credits": 7 * C, "charge": {"amount": 700, "currency": "usd"}, "balance": 9 * C}),
        ),
        ("AutoRechargeFailed", json!({"message": "Declined.", "balance": 2 * C})),
        (
            "CreditsAdded",
            json!({"settled_after_processing": true, "credits": 7 * C, "charge": {"amount": 700, "currency": "usd"}, "balance": 9 * C}),
        ),
        ("AutoRechargePaused", json!({"balance": 3 * C})),
    ];
    for (profile, _) in topup::profile::SHIPPED {
        let w = World::new(profile).await;
        let ses = aws_sdk_sesv2::Client::new(&w.aws);
        let _ = ses.create_email_identity().email_identity("example.com").send().await;
        let tag = unique("all");
        let (texted, silent) = (format!("{tag}-t@acme.example"), format!("{tag}-s@acme.example"));
        let (p1, p2) = (unique_phone(), unique_phone());
        let contacts = json!([{"email": texted, "phone": p1, "sms_opt_in": true}, {"email": silent, "phone": p2}]);
        let (s, b) =
            w.api(put("/v1/accounts/acme", &service(), json!({"plan": "pro", "billing_contacts": contacts}))).await;
        assert_eq!(s, 201, "{b}");
        let notifier = topup::live_notifier(&w.config, &w.aws).expect("notifier");
        for (i, (detail_type, detail)) in events.iter().enumerate() {
            let mut detail = sample_detail(detail_type, detail.clone());
            detail["event_id"] = json!(format!("evt_{i}"));
            detail["account_id"] = json!("acme");
            detail["occurred_ms"] = json!(i);
            notify::handle(&notifier, &topup_tests::bus_event(&json!({"detail-type": detail_type, "detail": detail}))).await.expect("delivered");
        }
        let data = moto_data().await;
        let p = &w.config.profile;
        let mut want_subjects = Vec::new();
        let mut want_texts = Vec::new();
        for (detail_type, detail) in &events {
            let event =
                Event::read(detail_type, &sample_detail(detail_type, detail.clone())).expect("ours").expect("reads");
            let m = render(p, &event, "acme", "https://app.example.com/settings/billing").expect("a message");
            let kind = m.kind;
            if p.notifications.email.iter().any(|k| k == kind) {
                want_subjects.push(m.subject.clone());
            }
            if p.notifications.sms.iter().any(|k| k == kind) {
                want_texts.push(m.sms.clone());
            }
        }
        for to in [&texted, &silent] {
            let mut got: Vec<String> =
                sent_to(&data, to).iter().filter_map(|m| m["subject"].as_str().map(String::from)).collect();
            got.sort();
            let mut want = want_subjects.clone();
            want.sort();
            assert_eq!(got, want, "{profile}: emails to {to}");
        }
        let mut texts: Vec<String> =
            sms_to(&data, &p1).iter().filter_map(|m| m["message"].as_str().map(String::from)).collect();
        texts.sort();
        want_texts.sort();
        assert_eq!(texts, want_texts, "{profile}: SMS to the opted-in contact");
        assert!(sms_to(&data, &p2).is_empty(), "{profile}: no SMS without opt-in");
    }
}
