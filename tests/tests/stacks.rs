//! One Stripe account, many deployments (rules §12): every Stripe object a stack makes carries
//! its name (`topup_stack`) and every idempotency key starts with it, so two stacks never
//! collide; the webhook acts only on its own stack's objects.

use serde_json::json;
use topup_tests::*;

#[tokio::test]
async fn objects_and_keys_carry_the_stack_and_another_stacks_events_move_nothing() {
    let w = World::new("usd-overage").await;
    let stack = w.config.stack.clone();
    w.account("acme", "free").await;
    let b = open_purchase(&w, "acme", json!({"amount": 1000})).await;
    let cs = b["checkout_session_id"].as_str().expect("session").to_string();
    let sess = session(&cs).await;
    assert_eq!(sess["metadata"]["topup_stack"], json!(stack), "{sess}");
    assert_eq!(w.credits.stripe_key("checkout", "pur_1"), format!("{stack}-checkout-pur_1"));

    // The same session paid, but delivered as another stack's: acknowledged, nothing credited.
    let mut paid = pay(&cs, &[]).await;
    let ours = paid.clone();
    paid["metadata"]["topup_stack"] = json!("someone-elses-stack");
    let (s, r) = w.deliver(&stripe_event("checkout.session.completed", paid)).await;
    assert_eq!((s, r["result"].as_str(), r["reason"].as_str()), (200, Some("ignored"), Some("another_stack")), "{r}");
    assert_eq!(w.view("acme").await["balance"], 0);

    // Ours credits.
    let (s, r) = w.deliver(&stripe_event("checkout.session.completed", ours)).await;
    assert_eq!((s, r["result"].as_str()), (200, Some("succeeded")), "{r}");
    assert_eq!(w.view("acme").await["balance"], 10 * C);
    w.assert_invariants("acme").await;
}
