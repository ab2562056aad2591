//! Off-session charges through the real async-stripe client against localstripe (the local
//! stack's Stripe; `tests/support/localstripe_local.py`): a saved card that pays, one declined
//! when charged, one that needs authentication, and idempotency keys that never charge twice.

use topup::payments::{CancelOutcome, ChargeOutcome, OffSessionCharge, Payments};
use topup_tests::*;

fn charge(customer: &str, pm: &str, key: &str) -> OffSessionCharge {
    OffSessionCharge {
        customer_id: customer.into(),
        payment_method_id: pm.into(),
        amount_cents: 1000,
        currency: "usd".into(),
        idempotency_key: key.into(),
        metadata: vec![("topup_account_id".into(), "acme".into()), ("topup_recharge_id".into(), key.into())],
    }
}

/// The customer of `account` as the product makes it: one idempotency key per account.
fn new_customer(account: &str, email: Option<&str>) -> topup::payments::NewCustomer {
    topup::payments::NewCustomer {
        email: email.map(str::to_string),
        idempotency_key: format!("topup-customer-{account}"),
        metadata: vec![("topup_account_id".into(), account.into())],
    }
}

#[tokio::test]
async fn a_saved_card_pays_off_session_and_a_repeated_key_never_charges_twice() {
    let p = stripe_payments();
    let account = unique("acct");
    let customer = p.create_customer(&new_customer(&account, Some("billing@acme.example"))).await.expect("customer");
    assert_eq!(
        p.create_customer(&new_customer(&account, Some("billing@acme.example"))).await.expect("again"),
        customer,
        "one customer per account"
    );
    let pm = stripe_card(&p, &customer, "4242424242424242").await;
    let key = unique("rch");
    let first = p.charge_off_session(&charge(&customer, &pm, &key)).await.expect("charge");
    let ChargeOutcome::Succeeded { payment_intent_id } = &first else { panic!("{first:?}") };
    assert!(payment_intent_id.starts_with("pi_"));
    // A recovery after the caller died repeats the call with the same key: the same PaymentIntent.
    assert_eq!(p.charge_off_session(&charge(&customer, &pm, &key)).await.expect("replay"), first);
    // Another key is another charge.
    let other = p.charge_off_session(&charge(&customer, &pm, &unique("rch"))).await.expect("charge");
    assert_ne!(other, first);
}

#[tokio::test]
async fn declines_and_authentication_are_failures_with_their_codes() {
    let p = stripe_payments();
    let customer = p.create_customer(&new_customer(&unique("acct"), None)).await.expect("customer");
    let declined = stripe_card(&p, &customer, "4000000000000341").await;
    match p.charge_off_session(&charge(&customer, &declined, &unique("rch"))).await.expect("answered") {
        ChargeOutcome::Failed { code, .. } => assert_eq!(code, "card_declined"),
        other => panic!("expected a decline, got {other:?}"),
    }
    let needs_auth = stripe_card(&p, &customer, "4000002760003184").await;
    match p.charge_off_session(&charge(&customer, &needs_auth, &unique("rch"))).await.expect("answered") {
        ChargeOutcome::Failed { code, payment_intent_id, .. } => {
            assert_eq!(code, "authentication_required");
            assert!(payment_intent_id.is_some());
        }
        other => panic!("expected authentication_required, got {other:?}"),
    }
}

/// rules §16: a failed recharge's PaymentIntent is cancelled so it can never succeed later; one
/// that succeeded is past cancelling, and says so.
#[tokio::test]
async fn a_failed_payment_intent_is_cancelled_and_a_succeeded_one_is_not() {
    let p = stripe_payments();
    let customer = p.create_customer(&new_customer(&unique("acct"), None)).await.expect("customer");
    let needs_auth = stripe_card(&p, &customer, "4000002760003184").await;
    let ChargeOutcome::Failed { payment_intent_id: Some(pi), .. } =
        p.charge_off_session(&charge(&customer, &needs_auth, &unique("rch"))).await.expect("answered")
    else {
        panic!("expected a PaymentIntent needing authentication")
    };
    let key = unique("cancel");
    assert_eq!(p.cancel_payment(&pi, &key).await.expect("cancel"), CancelOutcome::Canceled);
    let (_, read) = local_stripe("GET", &format!("/v1/payment_intents/{pi}"), &[]).await;
    assert_eq!(read["status"], "canceled", "{read}");
    // Again (a retry, or a redelivered webhook): still cancelled, with or without the same key.
    assert_eq!(p.cancel_payment(&pi, &key).await.expect("again"), CancelOutcome::Canceled);
    assert_eq!(p.cancel_payment(&pi, &unique("cancel")).await.expect("another key"), CancelOutcome::Canceled);
    let card = stripe_card(&p, &customer, "4242424242424242").await;
    let ChargeOutcome::Succeeded { payment_intent_id: paid } =
        p.charge_off_session(&charge(&customer, &card, &unique("rch"))).await.expect("charge")
    else {
        panic!("expected a payment")
    };
    assert_eq!(p.cancel_payment(&paid, &unique("cancel")).await.expect("answered"), CancelOutcome::Succeeded);
    // A PaymentIntent Stripe does not know is no answer to act on: an error, tried again.
    assert!(p.cancel_payment("pi_unknown_to_stripe", &unique("cancel")).await.is_err());
}
