//! The `webhook` function: Stripe's signed events (rules §7).
//!
//! `POST /stripe/webhook`. The `Stripe-Signature` header is checked on the raw body with
//! async-stripe's `Webhook` (HMAC-SHA256 over `t.payload`, any `v1` — so a rotated secret's
//! overlap works — and 300 s tolerance). Then only the fields acted on are read from the
//! verified body into our own small types (`StripeObject`), so an event rendered at another
//! API version than the SDK's is still handled.
//!
//! Bad signature, stale timestamp, missing header, malformed body: 400, nothing changes.
//! Unknown event types, and events for accounts or purchases that are not ours: 200, logged,
//! nothing credited. A failure on our side (DynamoDB, Stripe): 500, so Stripe retries; every
//! effect is idempotent, so retries and duplicates are harmless.

use std::collections::HashMap;

use lambda_http::{Body, Request, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use stripe_webhook::{Webhook, WebhookError};
use topup::account::RechargeError;
use topup::crediting::DisputeOutcome;
use topup::engine::Credits;
use topup::events::EventBus;
use topup::http::{error_body, json_response};
use topup::ids::{PurchaseId, RechargeId};
use topup::ledger::EntryView;
use topup::payments::Purchases;
use topup::purchases::{CheckoutEvent, CheckoutEventKind, CheckoutOutcome, PurchaseStatus};
use topup::receipts::{Invoice, InvoiceOf, InvoiceRecorded, ReceiptStore};
use topup::recharge::RechargePaid;
use topup::secret::Secret;
use topup::store::Store;
use topup::views::PaymentMethodView;
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

/// An id that Stripe may send as a string or, expanded, as an object with an `id`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum IdOrObject {
    Id(String),
    Object { id: String },
}

impl IdOrObject {
    fn id(&self) -> Option<&str> {
        let id = match self {
            IdOrObject::Id(id) | IdOrObject::Object { id } => id.as_str(),
        };
        (!id.is_empty()).then_some(id)
    }
}

/// The fields of Stripe's objects that the webhook reads: a Checkout Session, a
/// PaymentIntent, a SetupIntent or a Charge. Every field is optional, so an object rendered at
/// another API version still reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct StripeObject {
    id: Option<String>,
    metadata: HashMap<String, String>,
    client_reference_id: Option<String>,
    payment_status: Option<String>,
    payment_intent: Option<IdOrObject>,
    payment_method: Option<IdOrObject>,
    customer: Option<IdOrObject>,
    amount: Option<i64>,
    amount_received: Option<i64>,
    amount_refunded: Option<i64>,
    amount_total: Option<i64>,
    amount_subtotal: Option<i64>,
    currency: Option<String>,
    status: Option<String>,
    last_payment_error: Option<PaymentError>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct PaymentError {
    code: Option<String>,
    decline_code: Option<String>,
    message: Option<String>,
}

impl StripeObject {
    fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str).filter(|s| !s.is_empty())
    }

    fn id(&self) -> Option<&str> {
        self.id.as_deref().filter(|s| !s.is_empty())
    }
}

/// What an event did, as the webhook's `result` says it.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum Handled {
    /// A Checkout event: the purchase's status after it.
    Purchase(PurchaseStatus),
    /// `invoice.paid`: the receipt kept (its invoice id).
    Receipt(String),
    /// A recharge credited, or a refund's entry.
    Entry(EntryView),
    /// The card saved as the default (null when the method is not a card).
    Card(Option<PaymentMethodView>),
    /// `failed`, `unchanged`, `nothing to take back`.
    Word(&'static str),
    /// Not ours to act on, and why (a stable snake_case reason).
    Ignored(&'static str),
}

fn refuse(code: &str, message: &str) -> Response<Body> {
    json_response(400, &json!({"error": {"code": code, "message": message}}))
}

pub async fn handle<S: Store + ReceiptStore, B: EventBus, P: Purchases>(
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
        Ok(Handled::Ignored(reason)) => {
            tracing::info!(event_id = %event.id, event_type = %event.type_, reason, "webhook event ignored");
            json_response(200, &json!({"received": true, "result": "ignored", "reason": reason}))
        }
        Ok(result) => {
            tracing::info!(event_id = %event.id, event_type = %event.type_, result = ?result, "webhook handled");
            json_response(200, &json!({"received": true, "result": result}))
        }
        // Not ours to act on (an unknown account or purchase, a rule the event breaks): Stripe
        // must not keep retrying it.
        Err(
            e @ (ApiError::NotFound(..)
            | ApiError::Rule(..)
            | ApiError::RequestRule(..)
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
            json_response(409, &error_body(&e))
        }
        Err(e) => {
            tracing::error!(event_id = %event.id, event_type = %event.type_, code = e.code(), "webhook failed; Stripe will retry");
            json_response(500, &json!({"error": {"code": e.code(), "message": e.to_string()}}))
        }
    }
}

/// The account a payment (PaymentIntent id) belongs to: our own index of credited payments,
/// else the PaymentIntent's metadata at Stripe (a payment not credited yet). `Err` with the
/// reason to ignore it when it is another stack's or not ours.
async fn payment_owner<S: Store, B: EventBus, P: Purchases>(
    credits: &Credits<S, B>,
    payments: &P,
    payment_intent_id: &str,
) -> Result<Result<String, &'static str>, ApiError> {
    if let Some(account) = credits.payment_account(payment_intent_id).await? {
        return Ok(Ok(account));
    }
    let m = payments.payment_metadata(payment_intent_id).await?;
    if m.get("topup_stack").is_some_and(|s| s != credits.stack()) {
        return Ok(Err("another_stack"));
    }
    Ok(m.get("topup_account_id").cloned().ok_or("not_ours"))
}

fn ignored(reason: &'static str) -> Result<Handled, ApiError> {
    Ok(Handled::Ignored(reason))
}

async fn dispatch<S: Store + ReceiptStore, B: EventBus, P: Purchases>(
    credits: &Credits<S, B>,
    payments: &P,
    event: &Envelope,
) -> Result<Handled, ApiError> {
    let Ok(o) = serde_json::from_value::<StripeObject>(event.data.object.clone()) else {
        return ignored("unreadable_object");
    };
    // Stacks sharing one Stripe account each get every event: act only on our own.
    if o.meta("topup_stack").is_some_and(|s| s != credits.stack()) {
        return ignored("another_stack");
    }
    match event.type_.as_str() {
        t @ ("checkout.session.completed"
        | "checkout.session.async_payment_succeeded"
        | "checkout.session.async_payment_failed"
        | "checkout.session.expired") => {
            let purchase = o.meta("topup_purchase_id").or(o.client_reference_id.as_deref().filter(|s| !s.is_empty()));
            let (Some(account), Some(purchase), Some(session_id)) = (o.meta("topup_account_id"), purchase, o.id())
            else {
                return ignored("not_ours");
            };
            let kind = match t {
                "checkout.session.completed" => CheckoutEventKind::Completed,
                "checkout.session.async_payment_succeeded" => CheckoutEventKind::AsyncSucceeded,
                "checkout.session.async_payment_failed" => CheckoutEventKind::AsyncFailed,
                _ => CheckoutEventKind::Expired,
            };
            let session = CheckoutEvent {
                kind,
                session_id: session_id.to_string(),
                payment_intent_id: o.payment_intent.as_ref().and_then(IdOrObject::id).map(str::to_string),
                payment_status: o.payment_status.clone(),
                amount_total: o.amount_total,
                amount_subtotal: o.amount_subtotal,
                currency: o.currency.clone(),
            };
            let purchase_id = PurchaseId::new(purchase);
            match credits.checkout_event(account, &purchase_id, &session).await? {
                CheckoutOutcome::Purchase(record) => {
                    // Listed (if the purchase function could not), its payment pointed at its
                    // receipt row (rules §20).
                    credits.list_purchase(account, &purchase_id).await?;
                    Ok(Handled::Purchase(record.status))
                }
                CheckoutOutcome::Ignored(reason) => {
                    tracing::warn!(event_id = %event.id, account_id = account, purchase_id = purchase, reason, "checkout event is not proof of this purchase's payment");
                    ignored(reason)
                }
            }
        }
        "payment_intent.succeeded" | "payment_intent.payment_failed" => {
            let (Some(account), Some(recharge)) = (o.meta("topup_account_id"), o.meta("topup_recharge_id")) else {
                // Purchases' PaymentIntents are settled by their Checkout Session's events.
                return ignored("not_ours");
            };
            let Some(pi) = o.id() else { return ignored("not_ours") };
            let recharge = &RechargeId::new(recharge);
            if event.type_ == "payment_intent.succeeded" {
                let received = o.amount_received.or(o.amount);
                match credits.recharge_paid(account, recharge, pi, received, o.currency.as_deref()).await? {
                    RechargePaid::Credited(entry) => Ok(Handled::Entry(entry)),
                    RechargePaid::Ignored(reason) => {
                        tracing::warn!(event_id = %event.id, account_id = account, payment_intent_id = pi, reason, "payment is not proof of a recharge we recorded");
                        ignored(reason)
                    }
                }
            } else {
                let err = o.last_payment_error.clone().unwrap_or_default();
                let failure = RechargeError {
                    code: err.code.filter(|c| !c.is_empty()).unwrap_or_else(|| "payment_failed".into()),
                    decline_code: err.decline_code.filter(|c| !c.is_empty()),
                    message: err
                        .message
                        .filter(|m| !m.is_empty())
                        .unwrap_or_else(|| "The payment did not go through.".into()),
                    at: credits.now(),
                };
                // Cancelled first, so this PaymentIntent can never succeed behind the cap's
                // back (rules §16); Stripe unreachable is a 5xx, and Stripe delivers again.
                let failed = credits.fail_charged_recharge(payments, account, recharge, Some(pi), &failure).await?;
                Ok(Handled::Word(if failed { "failed" } else { "unchanged" }))
            }
        }
        "invoice.paid" => {
            // Checkout's invoice of a purchase, or ours of a recharge (rules §20): its metadata
            // names the record; the invoice is kept only for that record's price.
            let of = match (o.meta("topup_purchase_id"), o.meta("topup_recharge_id")) {
                (Some(p), _) => InvoiceOf::Purchase(PurchaseId::new(p)),
                (None, Some(r)) => InvoiceOf::Recharge(RechargeId::new(r)),
                _ => return ignored("not_ours"),
            };
            let Some(account) = o.meta("topup_account_id") else { return ignored("not_ours") };
            let invoice = match Invoice::from_stripe(&event.data.object) {
                Ok(i) => i,
                Err(reason) => return ignored(reason),
            };
            match credits.record_invoice(account, &of, &invoice).await? {
                InvoiceRecorded::Recorded(_) => Ok(Handled::Receipt(invoice.invoice_id)),
                InvoiceRecorded::Ignored(reason) => ignored(reason),
            }
        }
        "setup_intent.succeeded" => {
            let pm = o.payment_method.as_ref().and_then(IdOrObject::id);
            let (Some(account), Some(pm)) = (o.meta("topup_account_id"), pm) else {
                return ignored("not_ours");
            };
            let customer = o.customer.as_ref().and_then(IdOrObject::id);
            let card = credits.card_saved(payments, account, pm, customer).await?;
            Ok(Handled::Card(card.as_ref().map(PaymentMethodView::of)))
        }
        "charge.refunded" => {
            let Some(pi) = o.payment_intent.as_ref().and_then(IdOrObject::id) else {
                return ignored("not_ours");
            };
            // Charges do not always carry their PaymentIntent's metadata.
            let account = match o.meta("topup_account_id") {
                Some(a) => a.to_string(),
                None => match payment_owner(credits, payments, pi).await? {
                    Ok(a) => a,
                    Err(reason) => return ignored(reason),
                },
            };
            let (Some(amount), Some(refunded)) = (o.amount, o.amount_refunded) else {
                return Err(ApiError::invalid("charge without amount or amount_refunded"));
            };
            Ok(match credits.refund_payment(&account, pi, amount, refunded).await? {
                Some(entry) => Handled::Entry(entry),
                None => Handled::Word("nothing to take back"),
            })
        }
        t @ ("charge.dispute.created" | "charge.dispute.closed") => {
            let (Some(dispute_id), Some(pi)) = (o.id(), o.payment_intent.as_ref().and_then(IdOrObject::id)) else {
                return ignored("not_ours");
            };
            // A dispute carries no metadata of ours; a payment not credited yet then waits for
            // its credit (409, delivered again).
            let account = match payment_owner(credits, payments, pi).await? {
                Ok(a) => a,
                Err(reason) => return ignored(reason),
            };
            let amount = o.amount.unwrap_or(0);
            let currency = o.currency.clone().unwrap_or_else(|| credits.profile.currency.clone());
            let outcome = if t == "charge.dispute.created" {
                // A taxed payment's dispute takes back the pre-tax share (rules §20).
                let total = credits.charged_total(&account, pi).await?;
                credits.dispute_opened_of(&account, dispute_id, pi, (amount, total), &currency).await?
            } else {
                // `won` returns what the dispute took; `lost` keeps it. An inquiry that closes
                // without a chargeback (`warning_closed`) took no money: it returns too.
                let returned = matches!(o.status.as_deref(), Some("won" | "warning_closed"));
                credits.dispute_closed(&account, dispute_id, returned, amount, &currency).await?
            };
            Ok(match outcome {
                DisputeOutcome::Applied(Some(entry)) => Handled::Entry(entry),
                DisputeOutcome::Applied(None) => Handled::Word("recorded"),
                DisputeOutcome::AlreadySo => Handled::Word("unchanged"),
            })
        }
        _ => ignored("unhandled_event_type"),
    }
}
