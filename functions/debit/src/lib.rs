//! The `debit` function: usage draws the month's allowance, then credits (SPEC §6).
//!
//! - `POST /v1/accounts/{id}/usage` `{consumable, quantity, idempotency_key}`
//! - `POST /v1/accounts/{id}/usage/holds` `{consumable, quantity, idempotency_key, ttl_seconds?}`
//! - `POST /v1/accounts/{id}/usage/holds/{hold_id}/settle` `{quantity}`

use lambda_http::{Body, Request, Response};
use topup::auth::Access;
use topup::events::EventBus;
use topup::http::{check_id, identity, json_object, respond, segments};
use topup::service::{check_key, Credits};
use topup::store::Store;
use topup::{ApiError, Config};

/// Default hold lifetime (SPEC §11).
pub const DEFAULT_HOLD_TTL_SECONDS: i64 = 900;

pub async fn handle<S: Store, B: EventBus>(config: &Config, credits: &Credits<S, B>, req: Request) -> Response<Body> {
    let segs = segments(&req);
    let route = match segs.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["v1", "accounts", _, "usage"] => "usage",
        ["v1", "accounts", _, "usage", "holds"] => "holds",
        ["v1", "accounts", _, "usage", "holds", _, "settle"] => "settle",
        _ => return respond("unknown", Err(ApiError::NotFound("route_not_found", "No such route.".into()))),
    };
    respond(route, route_request(config, credits, &req, route, &segs).await)
}

async fn route_request<S: Store, B: EventBus>(
    config: &Config,
    credits: &Credits<S, B>,
    req: &Request,
    route: &str,
    segs: &[String],
) -> Result<(u16, serde_json::Value), ApiError> {
    let who = identity(req, config)?;
    if req.method() != "POST" {
        return Err(ApiError::MethodNotAllowed(req.method().to_string()));
    }
    let account_id = &segs[2];
    check_id("account_id", account_id)?;
    who.authorize(&config.profile, Access::Service, account_id)?;
    match route {
        "usage" => {
            let body = json_object(req, &["consumable", "quantity", "idempotency_key"])?;
            let consumable = body.str("consumable")?;
            let quantity = body.i64("quantity")?;
            let key = body.str("idempotency_key")?;
            check_key("idempotency_key", key)?;
            credits.debit(account_id, consumable, quantity, key).await
        }
        "holds" => {
            let body = json_object(req, &["consumable", "quantity", "idempotency_key", "ttl_seconds"])?;
            let consumable = body.str("consumable")?;
            let quantity = body.i64("quantity")?;
            let key = body.str("idempotency_key")?;
            check_key("idempotency_key", key)?;
            let ttl = body.opt_i64("ttl_seconds")?.unwrap_or(DEFAULT_HOLD_TTL_SECONDS);
            credits.reserve(account_id, consumable, quantity, ttl, key).await
        }
        _ => {
            let hold_id = &segs[5];
            check_id("hold_id", hold_id)?;
            let body = json_object(req, &["quantity"])?;
            let quantity = body.i64("quantity")?;
            credits.settle(account_id, hold_id, quantity).await
        }
    }
}
