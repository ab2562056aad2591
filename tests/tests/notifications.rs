//! Notifications against the emulator (SPEC §8; seeds 000, 001, 004): a debit that crosses the
//! threshold emails each billing contact once, however often the event is delivered; reaching
//! zero sends the depleted notice, by SMS too to those who opted in. Read back from moto.

use std::time::Duration;

use serde_json::{json, Value};
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

#[tokio::test]
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
    assert_eq!(events.len(), 2, "{events:?}");

    let notifier = topup::live_notifier(&w.config, &w.aws).expect("notifier");
    for e in &events {
        // EventBridge delivers at least once: deliver each event three times.
        for _ in 0..3 {
            notify::handle(&notifier, e).await.expect("delivered");
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
