//! The `purchase` function: buying credits through Stripe Checkout and saving a card for
//! auto-recharge (SPEC §5, §7). Billing roles only.
//!
//! - `POST /v1/accounts/{id}/credits/purchases` `{amount}` | `{package}` | `{blocks}` (or `{}` for
//!   the profile's default), optional `Idempotency-Key` header → 201 with the pending purchase
//!   and its Checkout Session (`client_secret` when embedded, `url` when hosted)
//! - `GET /v1/accounts/{id}/credits/purchases/{purchase_id}` → the purchase and its status (with
//!   the balance once it has succeeded)
//! - `POST /v1/accounts/{id}/payment-method/setup` → 201 a SetupIntent's `client_secret`
//! - `DELETE /v1/accounts/{id}/payment-method` → the default card removed

use lambda_http::{Body, Request, Response};
use serde_json::Value;
use topup::auth::Access;
use topup::events::EventBus;
use topup::http::{check_id, identity, json_object, respond, segments};
use topup::payments::{CheckoutUi, Purchases};
use topup::pricing::PurchaseChoice;
use topup::purchase::PurchaseStatus;
use topup::service::{check_key, Credits};
use topup::store::Store;
use topup::{ApiError, Config};

/// What the handler needs besides the service: Stripe and how Checkout is shown.
pub struct Checkout<'a, P> {
    pub payments: &'a P,
    pub ui: &'a CheckoutUi,
}

pub async fn handle<S: Store, B: EventBus, P: Purchases>(
    config: &Config,
    credits: &Credits<S, B>,
    checkout: &Checkout<'_, P>,
    req: Request,
) -> Response<Body> {
    let segs = segments(&req);
    let route = match segs.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["v1", "accounts", _, "credits", "purchases"] => "purchases",
        ["v1", "accounts", _, "credits", "purchases", _] => "purchase_status",
        ["v1", "accounts", _, "payment-method", "setup"] => "card_setup",
        ["v1", "accounts", _, "payment-method"] => "payment_method",
        _ => return respond("unknown", Err(ApiError::NotFound("route_not_found", "No such route.".into()))),
    };
    respond(route, route_request(config, credits, checkout, &req, route, &segs).await)
}

async fn route_request<S: Store, B: EventBus, P: Purchases>(
    config: &Config,
    credits: &Credits<S, B>,
    checkout: &Checkout<'_, P>,
    req: &Request,
    route: &str,
    segs: &[String],
) -> Result<(u16, Value), ApiError> {
    let who = identity(req, config)?;
    let method = req.method().as_str();
    let expected = match route {
        "purchase_status" => "GET",
        "payment_method" => "DELETE",
        _ => "POST",
    };
    if method != expected {
        return Err(ApiError::MethodNotAllowed(method.to_string()));
    }
    let account_id = &segs[2];
    check_id("account_id", account_id)?;
    who.authorize(&config.profile, Access::Billing, account_id)?;
    match route {
        "purchases" => {
            // Only what to buy; a price, a number of credits or a currency is the server's to say.
            let body = json_object(req, &["amount", "package", "blocks"])?;
            let choice = PurchaseChoice {
                amount: body.opt_i64("amount")?,
                package: body.opt_str("package")?.map(str::to_string),
                blocks: body.opt_i64("blocks")?,
            };
            let key = idempotency_key(req)?;
            credits.start_purchase(checkout.payments, account_id, &choice, key.as_deref(), checkout.ui).await
        }
        "purchase_status" => {
            let purchase_id = &segs[5];
            check_id("purchase_id", purchase_id)?;
            let record = credits.purchase(account_id, purchase_id).await?;
            let mut body = record.to_json();
            if record.status == PurchaseStatus::Succeeded {
                body["balance"] = serde_json::json!(credits.account(account_id).await?.balance.0);
            }
            Ok((200, body))
        }
        "card_setup" => {
            let key = idempotency_key(req)?;
            credits.start_card_setup(checkout.payments, account_id, key.as_deref()).await
        }
        _ => credits.forget_card(checkout.payments, account_id).await,
    }
}

/// The optional `Idempotency-Key` header: a retried request with it names the same purchase.
fn idempotency_key(req: &Request) -> Result<Option<String>, ApiError> {
    match req.headers().get("idempotency-key") {
        None => Ok(None),
        Some(v) => {
            let key = v.to_str().map_err(|_| ApiError::invalid("`Idempotency-Key` must be printable ASCII."))?;
            check_key("Idempotency-Key", key)?;
            Ok(Some(key.to_string()))
        }
    }
}
