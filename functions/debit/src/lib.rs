//! The `debit` function: usage draws the month's allowance, then credits (rules §6).
//!
//! - `POST /v1/accounts/{id}/usage` `{consumable, quantity, idempotency_key}`
//! - `POST /v1/accounts/{id}/usage/holds` `{consumable, quantity, idempotency_key, ttl_seconds?}`
//! - `POST /v1/accounts/{id}/usage/holds/{hold_id}/settle` `{quantity}`

use lambda_http::{Body, Request, Response};
use topup::auth::Access;
use topup::engine::Credits;
use topup::events::EventBus;
use topup::http::{check_id, identity, json_object, respond, segments, Reply};
use topup::ids::IdempotencyKey;
use topup::store::Store;
use topup::{ApiError, Config};

/// Default hold lifetime (rules §11).
pub const DEFAULT_HOLD_TTL_SECONDS: i64 = 900;

/// The function's routes; every one is matched by name below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Usage { account: String },
    Hold { account: String },
    Settle { account: String, hold: String },
}

impl Route {
    pub fn parse(segs: &[String]) -> Option<Route> {
        match segs.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["v1", "accounts", a, "usage"] => Some(Route::Usage { account: a.to_string() }),
            ["v1", "accounts", a, "usage", "holds"] => Some(Route::Hold { account: a.to_string() }),
            ["v1", "accounts", a, "usage", "holds", h, "settle"] => {
                Some(Route::Settle { account: a.to_string(), hold: h.to_string() })
            }
            _ => None,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Route::Usage { .. } => "usage",
            Route::Hold { .. } => "holds",
            Route::Settle { .. } => "settle",
        }
    }

    fn account(&self) -> &str {
        match self {
            Route::Usage { account } | Route::Hold { account } | Route::Settle { account, .. } => account,
        }
    }
}

pub async fn handle<S: Store, B: EventBus>(config: &Config, credits: &Credits<S, B>, req: Request) -> Response<Body> {
    let Some(route) = Route::parse(&segments(&req)) else {
        return respond("unknown", Err(ApiError::NotFound("route_not_found", "No such route.".into())));
    };
    respond(route.name(), route_request(config, credits, &req, &route).await)
}

async fn route_request<S: Store, B: EventBus>(
    config: &Config,
    credits: &Credits<S, B>,
    req: &Request,
    route: &Route,
) -> Result<Reply, ApiError> {
    let who = identity(req, config)?;
    if req.method() != "POST" {
        return Err(ApiError::MethodNotAllowed(req.method().to_string()));
    }
    let account_id = route.account();
    check_id("account_id", account_id)?;
    who.authorize(&config.profile, Access::Service, account_id)?;
    match route {
        Route::Usage { .. } => {
            let body = json_object(req, &["consumable", "quantity", "idempotency_key"])?;
            let consumable = body.str("consumable")?;
            let quantity = body.i64("quantity")?;
            let key = IdempotencyKey::parse("idempotency_key", body.str("idempotency_key")?)?;
            Reply::ok(&credits.debit(account_id, consumable, quantity, &key).await?)
        }
        Route::Hold { .. } => {
            let body = json_object(req, &["consumable", "quantity", "idempotency_key", "ttl_seconds"])?;
            let consumable = body.str("consumable")?;
            let quantity = body.i64("quantity")?;
            let key = IdempotencyKey::parse("idempotency_key", body.str("idempotency_key")?)?;
            let ttl = body.opt_i64("ttl_seconds")?.unwrap_or(DEFAULT_HOLD_TTL_SECONDS);
            Reply::created(&credits.reserve(account_id, consumable, quantity, ttl, &key).await?)
        }
        Route::Settle { hold, .. } => {
            check_id("hold_id", hold)?;
            let body = json_object(req, &["quantity"])?;
            let quantity = body.i64("quantity")?;
            Reply::ok(&credits.settle(account_id, hold, quantity).await?)
        }
    }
}
