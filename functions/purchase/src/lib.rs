//! The `purchase` function: buying credits through Stripe Checkout and saving a card for
//! auto-recharge (rules §5, §7). Billing roles only.
//!
//! - `POST /v1/accounts/{id}/credits/purchases` `{amount}` | `{package}` | `{blocks}` (or `{}` for
//!   the profile's default), optional `Idempotency-Key` header → 201 with the pending purchase
//!   and its Checkout Session (`client_secret` when embedded, `url` when hosted)
//! - `GET /v1/accounts/{id}/credits/purchases?limit=&cursor=` → purchases and auto-recharges,
//!   newest first, each with its receipt once paid (rules §20)
//! - `GET /v1/accounts/{id}/credits/purchases/{purchase_id}` → the purchase and its status (with
//!   the balance once it has succeeded), its subtotal, tax, total and receipt
//! - `POST /v1/accounts/{id}/payment-method/setup` → 201 a SetupIntent's `client_secret`
//! - `DELETE /v1/accounts/{id}/payment-method` → the default card removed
//! - `POST /v1/accounts/{id}/payments/{payment_id}/refund` `{amount?, reason, idempotency_key}`
//!   (finance, the service; rules §19) → 201 the refund made at Stripe; its credits are taken
//!   back when `charge.refunded` arrives

use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::json;
use topup::auth::{Access, Power};
use topup::engine::Credits;
use topup::events::EventBus;
use topup::http::{audit_context, check_id, identity, json_object, page_limit, respond, segments, Reply};
use topup::ids::{IdempotencyKey, PurchaseId};
use topup::payments::{CheckoutUi, Purchases};
use topup::pricing::PurchaseChoice;
use topup::purchases::PurchaseStarted;
use topup::receipts::ReceiptStore;
use topup::store::Store;
use topup::{ApiError, Config};

/// What the handler needs besides the service: Stripe and how Checkout is shown.
pub struct Checkout<'a, P> {
    pub payments: &'a P,
    pub ui: &'a CheckoutUi,
}

/// The function's routes; every one is matched by name below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Purchases { account: String },
    PurchaseStatus { account: String, purchase: String },
    CardSetup { account: String },
    PaymentMethod { account: String },
    Refund { account: String, payment: String },
}

impl Route {
    pub fn parse(segs: &[String]) -> Option<Route> {
        let a = |s: &str| s.to_string();
        Some(match segs.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["v1", "accounts", id, "credits", "purchases"] => Route::Purchases { account: a(id) },
            ["v1", "accounts", id, "credits", "purchases", p] => {
                Route::PurchaseStatus { account: a(id), purchase: a(p) }
            }
            ["v1", "accounts", id, "payment-method", "setup"] => Route::CardSetup { account: a(id) },
            ["v1", "accounts", id, "payment-method"] => Route::PaymentMethod { account: a(id) },
            ["v1", "accounts", id, "payments", p, "refund"] => Route::Refund { account: a(id), payment: a(p) },
            _ => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Route::Purchases { .. } => "purchases",
            Route::PurchaseStatus { .. } => "purchase_status",
            Route::CardSetup { .. } => "card_setup",
            Route::PaymentMethod { .. } => "payment_method",
            Route::Refund { .. } => "refund",
        }
    }

    fn methods(&self) -> &'static [&'static str] {
        match self {
            Route::PurchaseStatus { .. } => &["GET"],
            Route::PaymentMethod { .. } => &["DELETE"],
            Route::Purchases { .. } => &["GET", "POST"],
            Route::CardSetup { .. } | Route::Refund { .. } => &["POST"],
        }
    }

    fn account(&self) -> &str {
        match self {
            Route::Purchases { account }
            | Route::PurchaseStatus { account, .. }
            | Route::CardSetup { account }
            | Route::PaymentMethod { account }
            | Route::Refund { account, .. } => account,
        }
    }
}

pub async fn handle<S: Store + ReceiptStore, B: EventBus, P: Purchases>(
    config: &Config,
    credits: &Credits<S, B>,
    checkout: &Checkout<'_, P>,
    req: Request,
) -> Response<Body> {
    let Some(route) = Route::parse(&segments(&req)) else {
        return respond("unknown", Err(ApiError::NotFound("route_not_found", "No such route.".into())));
    };
    // A change this request makes is recorded as the caller's (rules §19).
    let context = match identity(&req, config) {
        Ok(who) => audit_context(&req, &who),
        Err(e) => return respond(route.name(), Err(e)),
    };
    // Boxed: the routes' futures are large, and a caller's stack need not hold them.
    let result = topup::audit::scoped(context, Box::pin(route_request(config, credits, checkout, &req, &route))).await;
    respond(route.name(), result)
}

async fn route_request<S: Store + ReceiptStore, B: EventBus, P: Purchases>(
    config: &Config,
    credits: &Credits<S, B>,
    checkout: &Checkout<'_, P>,
    req: &Request,
    route: &Route,
) -> Result<Reply, ApiError> {
    let who = identity(req, config)?;
    let method = req.method().as_str();
    if !route.methods().contains(&method) {
        return Err(ApiError::MethodNotAllowed(method.to_string()));
    }
    let account_id = route.account();
    check_id("account_id", account_id)?;
    match route {
        // Finance and the service (rules §19); no person of the account.
        Route::Refund { .. } => match (who.authorize(&config.profile, Access::Service, account_id), who.staff()) {
            (Err(ApiError::Forbidden), Some(_)) => who.may(Power::Refund)?,
            (result, _) => result?,
        },
        // Staff read every account (rules §19): its purchases and receipts too.
        Route::Purchases { .. } | Route::PurchaseStatus { .. } if method == "GET" && who.staff().is_some() => {
            who.authorize(&config.profile, Access::View, account_id)?
        }
        _ => who.authorize(&config.profile, Access::Billing, account_id)?,
    }
    match route {
        Route::Refund { payment, .. } => {
            if payment.is_empty() || payment.len() > 255 || !payment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ApiError::invalid("`payment_id` must be a Stripe PaymentIntent id."));
            }
            let body = json_object(req, &["amount", "reason", "idempotency_key"])?;
            let amount = body.opt_i64("amount")?;
            body.reason()?.ok_or_else(|| ApiError::invalid("Field `reason` is required."))?;
            let key = IdempotencyKey::parse("idempotency_key", body.str("idempotency_key")?)?;
            let refund = Box::pin(credits.refund_at_stripe(checkout.payments, account_id, payment, amount, &key)).await?;
            Reply::created(&refund)
        }
        Route::Purchases { .. } if method == "GET" => {
            let cursor = req.query_string_parameters().first("cursor").map(str::to_string);
            Reply::ok(&credits.purchases_page(account_id, page_limit(req)?, cursor.as_deref()).await?)
        }
        Route::Purchases { .. } => {
            // Only what to buy; a price, a number of credits or a currency is the server's to say.
            let body = json_object(req, &["amount", "package", "blocks"])?;
            let choice = PurchaseChoice {
                amount: body.opt_i64("amount")?,
                package: body.opt_str("package")?.map(str::to_string),
                blocks: body.opt_i64("blocks")?,
            };
            let key = idempotency_key(req)?;
            let started =
                credits.start_purchase(checkout.payments, account_id, &choice, key.as_ref(), checkout.ui).await?;
            // Listed from now on (rules §20); a retry under the key lists it again.
            let purchase_id = match &started {
                PurchaseStarted::Checkout { purchase, .. } | PurchaseStarted::Existing(purchase) => {
                    &purchase.purchase_id
                }
            };
            credits.list_purchase(account_id, purchase_id).await?;
            Reply::created(&started)
        }
        Route::PurchaseStatus { purchase, .. } => {
            check_id("purchase_id", purchase)?;
            // The list names auto-recharges too (rules §20): each id it gives reads here.
            if purchase.starts_with("rch_") {
                return Reply::ok(&credits.recharge_receipt(account_id, purchase).await?);
            }
            Reply::ok(&credits.purchase_receipt(account_id, &PurchaseId::new(purchase.as_str())).await?)
        }
        Route::CardSetup { .. } => {
            let key = idempotency_key(req)?;
            Reply::created(&credits.start_card_setup(checkout.payments, account_id, key.as_ref()).await?)
        }
        Route::PaymentMethod { .. } => {
            credits.forget_card(checkout.payments, account_id).await?;
            Reply::ok(&json!({"payment_method": null}))
        }
    }
}

/// The optional `Idempotency-Key` header: a retried request with it names the same purchase.
fn idempotency_key(req: &Request) -> Result<Option<IdempotencyKey>, ApiError> {
    match req.headers().get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let key = v.to_str().map_err(|_| ApiError::invalid("`Idempotency-Key` must be printable ASCII."))?;
            IdempotencyKey::parse("Idempotency-Key", key).map(Some)
        }
    }
}
