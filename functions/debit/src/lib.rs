//! The `debit` function: usage draws the month's allowance, then credits (rules §6).
//!
//! - `POST /v1/accounts/{id}/usage` `{consumable, quantity, idempotency_key}`
//! - `POST /v1/accounts/{id}/usage/batch` `{events: [{consumable, quantity, idempotency_key}, …]}`
//! - `POST /v1/accounts/{id}/usage/holds` `{consumable, quantity, idempotency_key, ttl_seconds?}`
//! - `POST /v1/accounts/{id}/usage/holds/{hold_id}/settle` `{quantity}`

use lambda_http::{Body, Request, Response};
use topup::auth::Access;
use topup::batch::{UsageEvent, MAX_BATCH_EVENTS};
use topup::engine::Credits;
use topup::events::EventBus;
use topup::http::{
    check_id, identity, json_object, json_object_sized, respond, segments, Fields, Reply, MAX_BATCH_BODY_BYTES,
};
use topup::ids::IdempotencyKey;
use topup::store::Store;
use topup::{ApiError, Config};

/// Default hold lifetime (rules §11).
pub const DEFAULT_HOLD_TTL_SECONDS: i64 = 900;

/// The function's routes; every one is matched by name below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Usage { account: String },
    Batch { account: String },
    Hold { account: String },
    Settle { account: String, hold: String },
}

impl Route {
    pub fn parse(segs: &[String]) -> Option<Route> {
        match segs.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["v1", "accounts", a, "usage"] => Some(Route::Usage { account: a.to_string() }),
            ["v1", "accounts", a, "usage", "batch"] => Some(Route::Batch { account: a.to_string() }),
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
            Route::Batch { .. } => "usage_batch",
            Route::Hold { .. } => "holds",
            Route::Settle { .. } => "settle",
        }
    }

    fn account(&self) -> &str {
        match self {
            Route::Usage { account }
            | Route::Batch { account }
            | Route::Hold { account }
            | Route::Settle { account, .. } => account,
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
            let body = json_object(req, &["consumable", "quantity", "idempotency_key", "entity"])?;
            let consumable = body.str("consumable")?;
            let quantity = body.i64("quantity")?;
            let key = IdempotencyKey::parse("idempotency_key", body.str("idempotency_key")?)?;
            let entity = body.opt_str("entity")?;
            Reply::ok(&credits.debit_as(account_id, consumable, quantity, &key, entity).await?)
        }
        Route::Batch { .. } => {
            let body = json_object_sized(req, &["events"], MAX_BATCH_BODY_BYTES)?;
            let events = batch_events(body.array("events")?)?;
            Reply::ok(&credits.debit_batch(account_id, &events).await?)
        }
        Route::Hold { .. } => {
            let body = json_object(req, &["consumable", "quantity", "idempotency_key", "ttl_seconds", "entity"])?;
            let consumable = body.str("consumable")?;
            let quantity = body.i64("quantity")?;
            let key = IdempotencyKey::parse("idempotency_key", body.str("idempotency_key")?)?;
            let ttl = body.opt_i64("ttl_seconds")?.unwrap_or(DEFAULT_HOLD_TTL_SECONDS);
            let entity = body.opt_str("entity")?;
            Reply::created(&credits.reserve_as(account_id, consumable, quantity, ttl, &key, entity).await?)
        }
        Route::Settle { hold, .. } => {
            check_id("hold_id", hold)?;
            let body = json_object(req, &["quantity"])?;
            let quantity = body.i64("quantity")?;
            Reply::ok(&credits.settle(account_id, hold, quantity).await?)
        }
    }
}

/// A batch's events, each read as the single debit reads its body; any malformed event makes
/// the batch 400 and nothing is applied (rules §14).
fn batch_events(values: &[serde_json::Value]) -> Result<Vec<UsageEvent>, ApiError> {
    if values.is_empty() || values.len() > MAX_BATCH_EVENTS {
        return Err(ApiError::invalid(format!("`events` must hold 1 to {MAX_BATCH_EVENTS} events.")));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let at = |e: ApiError| ApiError::invalid(format!("`events[{i}]`: {e}"));
            let f = Fields::of(v.clone(), &["consumable", "quantity", "idempotency_key", "entity"]).map_err(at)?;
            Ok(UsageEvent {
                consumable: f.str("consumable").map_err(at)?.to_string(),
                quantity: f.i64("quantity").map_err(at)?,
                key: IdempotencyKey::parse("idempotency_key", f.str("idempotency_key").map_err(at)?).map_err(at)?,
                // Checked with the event (422 `invalid_entity` is its result, not the batch's).
                entity: f.opt_str("entity").map_err(at)?.map(str::to_string),
            })
        })
        .collect()
}
