//! The `webhook` function: Stripe's signed events (SPEC §7).
//!
//! `POST /stripe/webhook`. The `Stripe-Signature` header is checked on the raw body with
//! async-stripe's `Webhook` (HMAC-SHA256 over `t.payload`, any `v1` — so a rotated secret's
//! overlap works — and 300 s tolerance). Then only the fields acted on are read from the
//! verified body, so an event rendered at another API version than the SDK's is still handled.
//!
//! Bad signature, stale timestamp, missing header, malformed body: 400, nothing changes.
//! Unknown event types, and events for accounts or purchases that are not ours: 200, logged,
//! nothing credited. A failure on our side (DynamoDB, Stripe): 500, so Stripe retries; every
//! effect is idempotent, so retries and duplicates are harmless.

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use stripe_webhook::{Webhook, WebhookError};
use topup::account::{RechargeClaim, RechargeError};
use topup::clock;
use topup::config::Secret;
use topup::events::EventBus;
use topup::http::json_response;
use topup::money::Micros;
use topup::payments::Purchases;
use topup::service::Credits;
use topup::store::Store;
use topup::ApiError;

#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    type_: String,
    data: EnvelopeData,
}

#[derive(Deserialize)]
struct EnvelopeData {
    object: Value,
}

fn refuse(code: &str, message: &str) -> Response<Body> {
    json_response(400, &json!({"error": {"code": code, "message": message}}))
}

pub async fn handle<S: Store, B: EventBus, P: Purchases>(
    secret: &Secret,
    credits: &Credits<S, B>,
    payments: &P,
    req: Request,
) -> Response<Body> {
    if req.method() != "POST" {
        return topup::http::error_response(&ApiError::MethodNotAllowed(req.method().to_string()));
    }
    let Some(signature) = req.headers().get("stripe-signature").and_then(|v| v.to_str().ok()) else {
        return refuse("missing_signature", "The Stripe-Signature header is required.");
    };
    let payload = match req.body() {
        Body::Text(t) => t.as_str(),
        Body::Binary(b) => match std::str::from_utf8(b) {
            Ok(t) => t,
            Err(_) => return refuse("invalid_event", "The body is not UTF-8 JSON."),
        },
        Body::Empty => "",
        _ => return refuse("invalid_event", "The body is not UTF-8 JSON."),
    };
    match Webhook::construct_event(payload, signature, secret.expose()) {
        // The signature holds; `BadParse` only says the SDK's own types could not read it.
        Ok(_) | Err(WebhookError::BadParse(_)) => {}
        Err(WebhookError::BadTimestamp(t)) => {
            tracing::warn!(signed_at = t, "webhook signature outside the 300 s tolerance");
            return refuse("signature_expired", "The signature's timestamp is too old.");
        }
        Err(e) => {
            tracing::warn!(error = %e, "webhook signature refused");
            return refuse("invalid_signature", "The Stripe-Signature header does not match this body.");
        }
    }
    let event: Envelope = match serde_json::from_str(payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "signed webhook body is not an event");
            return refuse("invalid_event", "The body is not a Stripe event.");
        }
    };
    match dispatch(credits, payments, &event).await {
        Ok(result) => {
            tracing::info!(event_id = %event.id, event_type = %event.type_, result = %result, "webhook handled");
            json_response(200, &json!({"received": true, "result": result}))
        }
        // Not ours to act on (an unknown account or purchase, a rule the event breaks): Stripe
        // must not keep retrying it.
        Err(
            e @ (ApiError::NotFound(..)
            | ApiError::Rule(..)
            | ApiError::InvalidRequest(_)
            | ApiError::IdempotencyConflict),
        ) => {
            tracing::warn!(event_id = %event.id, event_type = %event.type_, code = e.code(), "webhook event not applied");
            json_response(200, &json!({"received": true, "result": "ignored", "reason": e.code()}))
        }
        // Needs another event handled first (a refund before its payment's credit): Stripe
        // delivers it again later.
        Err(e @ ApiError::OutOfOrder(..)) => {
            tracing::warn!(event_id = %event.id, event_type = %event.type_, code = e.code(), "webhook event early; Stripe will retry");
            json_response(409, &e.body())
        }
        Err(e) => {
            tracing::error!(event_id = %event.id, event_type = %event.type_, code = e.code(), "webhook failed; Stripe will retry");
            json_response(500, &json!({"error": {"code": e.code(), "message": e.to_string()}}))
        }
    }
}

fn text<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    v[field].as_str().filter(|s| !s.is_empty())
}

/// An id field that may come expanded (`{"id": ...}`) or not.
fn id_of<'a>(v: &'a Value, field: &str) -> Option<&'a str> {
    text(v, field).or_else(|| v[field]["id"].as_str())
}

fn meta<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v["metadata"][key].as_str().filter(|s| !s.is_empty())
}

fn ignored(why: &str) -> Result<Value, ApiError> {
    Ok(json!(format!("ignored: {why}")))
}

async fn dispatch<S: Store, B: EventBus, P: Purchases>(
    credits: &Credits<S, B>,
    payments: &P,
    event: &Envelope,
) -> Result<Value, ApiError> {
    let o = &event.data.object;
    match event.type_.as_str() {
        t @ ("checkout.session.completed"
        | "checkout.session.async_payment_succeeded"
        | "checkout.session.async_payment_failed"
        | "checkout.session.expired") => {
            let (Some(account), Some(purchase)) =
                (meta(o, "topup_account_id"), meta(o, "topup_purchase_id").or_else(|| text(o, "client_reference_id")))
            else {
                return ignored("not a topup purchase");
            };
            // The PaymentIntent is the payment's id; a session paid without one is keyed by itself.
            let payment = id_of(o, "payment_intent").or_else(|| text(o, "id")).unwrap_or_default();
            let record = match t {
                "checkout.session.completed" => match text(o, "payment_status") {
                    Some("paid" | "no_payment_required") => credits.purchase_paid(account, purchase, payment).await?,
                    _ => credits.purchase_processing(account, purchase).await?,
                },
                "checkout.session.async_payment_succeeded" => credits.purchase_paid(account, purchase, payment).await?,
                "checkout.session.async_payment_failed" => credits.purchase_failed(account, purchase).await?,
                _ => credits.purchase_expired(account, purchase).await?,
            };
            Ok(json!(record.status.as_str()))
        }
        "payment_intent.succeeded" | "payment_intent.payment_failed" => {
            let (Some(account), Some(recharge)) = (meta(o, "topup_account_id"), meta(o, "topup_recharge_id")) else {
                // Purchases' PaymentIntents are settled by their Checkout Session's events.
                return ignored("not an auto-recharge");
            };
            let Some(pi) = text(o, "id") else { return ignored("no PaymentIntent id") };
            if event.type_ == "payment_intent.succeeded" {
                let a = credits.account(account).await?;
                let claim = match a.auto_recharge.in_flight.filter(|c| c.recharge_id == recharge) {
                    Some(claim) => claim,
                    // The claim is gone: completed already (the payment's claim makes this a
                    // no-op), or recorded as failed though the money came through after all. A
                    // paid payment credits exactly once either way (SPEC §10.2), for the credits
                    // its metadata names and the amount Stripe received.
                    None => match (
                        meta(o, "topup_credits").and_then(|c| c.parse::<i64>().ok()),
                        o["amount_received"].as_i64().or(o["amount"].as_i64()),
                    ) {
                        (Some(c), Some(cents)) if c > 0 => RechargeClaim {
                            recharge_id: recharge.to_string(),
                            claimed_at: 0,
                            credits: Micros(c),
                            charge_cents: cents,
                        },
                        _ => return ignored("recharge no longer in flight"),
                    },
                };
                Ok(credits.complete_recharge(account, &claim, pi).await?.1)
            } else {
                let err = &o["last_payment_error"];
                let failure = RechargeError {
                    code: text(err, "code").unwrap_or("payment_failed").to_string(),
                    decline_code: text(err, "decline_code").map(str::to_string),
                    message: text(err, "message").unwrap_or("The payment did not go through.").to_string(),
                    at: clock::now_ms(),
                };
                Ok(json!(if credits.fail_recharge(account, recharge, &failure).await? {
                    "failed"
                } else {
                    "unchanged"
                }))
            }
        }
        "setup_intent.succeeded" => {
            let (Some(account), Some(pm)) = (meta(o, "topup_account_id"), id_of(o, "payment_method")) else {
                return ignored("not a topup card setup");
            };
            credits.card_saved(payments, account, pm, id_of(o, "customer")).await
        }
        "charge.refunded" => {
            let Some(pi) = id_of(o, "payment_intent") else { return ignored("no PaymentIntent") };
            let account = match meta(o, "topup_account_id") {
                Some(a) => a.to_string(),
                None => {
                    // Charges do not always carry their PaymentIntent's metadata: ask Stripe.
                    let m = payments.payment_metadata(pi).await?;
                    match m.get("topup_account_id") {
                        Some(a) => a.clone(),
                        None => return ignored("not a topup payment"),
                    }
                }
            };
            let (Some(amount), Some(refunded)) = (o["amount"].as_i64(), o["amount_refunded"].as_i64()) else {
                return Err(ApiError::invalid("charge without amount or amount_refunded"));
            };
            Ok(credits.refund_payment(&account, pi, amount, refunded).await?.unwrap_or(json!("nothing to take back")))
        }
        other => ignored(&format!("event type {other}")),
    }
}
