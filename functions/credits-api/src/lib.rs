//! The `credits-api` function: accounts, the credits view, the ledger, adjustments (rules §4–§5).
//!
//! - `PUT /v1/accounts/{id}` (service) `{plan, billing_contacts}`
//! - `GET /v1/accounts/{id}/credits` (view roles)
//! - `GET /v1/accounts/{id}/credits/transactions?limit=&cursor=` (view roles)
//! - `POST /v1/accounts/{id}/credits/adjustments` (service) `{amount, reason, idempotency_key}`
//! - `PUT /v1/accounts/{id}/credits/auto-recharge` (billing roles) `{enabled, threshold?, amount?, monthly_max?, monthly_spend_max?}`
//! - `GET /v1/accounts/{id}/notifications?limit=` (view roles)
//! - `GET /v1/accounts/{id}/credits/grants` (view roles); `POST …/grants/{grant_id}/void` (service)
//! - `GET /v1/accounts/{id}/credits/transactions.csv` (view roles): the whole ledger as CSV
//! - `GET /v1/reports/revenue?month=YYYY-MM` (service): the revenue report
//! - `GET /v1/accounts/{id}/credits/check?consumable=&quantity=` (view roles): may it be used?
//! - `PUT /v1/accounts/{id}/credits/alerts` (billing roles) `{thresholds}`
//! - `PUT /v1/accounts/{id}/lanes` (service) `{lanes}`: spread a hot account's debits over 1–64 lanes
//! - `POST /v1/webhook-endpoints` `{url, events, description?, contact_email?}`, `GET` (all);
//!   `GET`/`DELETE /v1/webhook-endpoints/{id}`; `POST …/{id}/rotate-secret`, `POST …/{id}/enable`;
//!   `GET …/{id}/deliveries?limit=&cursor=`; `POST …/{id}/deliveries/{delivery_id}/redeliver`
//!   (service, not bound to an account): webhooks out (rules §15)
//! - `GET /billing`: the billing page (static; it signs in with the caller's token and reads
//!   everything through the routes above and the purchase function's)
//! - `GET /v1/accounts/{id}/payments` (view roles): the payments the account was credited for
//! - `GET /v1/audit?account_id=&actor=&action=&limit=&cursor=` (finance, the service): the audit
//!   log, newest first (rules §19)
//! - `GET /console`: the console for staff (static, like the billing page; rules §19)
//!
//! Staff (rules §19): support and finance read every account and the webhook endpoints;
//! support adjusts up to `TOPUP_SUPPORT_ADJUST_LIMIT` and redelivers; finance also voids,
//! pauses or resumes auto-recharge, and reads the revenue report and the audit log. Every change
//! runs inside `audit::scoped` with the caller, so the change records who made it.
//! - `GET /billing/topup-credits.js`: the `<topup-credits>` element (the Credits card for an
//!   app's own page; built from sdks/typescript/src/card.ts)

use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::Value;
use topup::account::Contact;
use topup::accounts::{AccountSaved, GrantTerms};
use topup::audit::{AuditChange, AuditLog, AuditQuery, Position};
use topup::account::AccountLookup;
use topup::auth::{Access, Identity, Power, Staff};
use topup::console::{QueueDepths, Search};
use topup::engine::Credits;
use topup::events::EventBus;
use topup::http::{audit_context, check_id, identity, json_object, optional_json_object, respond, segments, Reply};
use topup::ids::IdempotencyKey;
use topup::recharge::AutoRechargeInput;
use topup::store::Store;
use topup::webhooks::api::{NewEndpoint, WebhookAdmin};
use topup::webhooks::deliver::RetryQueue;
use topup::webhooks::WebhookStore;
use topup::http::page_limit;
use topup::{ApiError, Config};

/// The scheduled reconciliation's segments (the reconcile function's `SEGMENTS`): its run's
/// checkpoints, read by `GET /v1/reconciliation`.
pub const RECONCILE_SEGMENTS: u32 = 16;
pub const MAX_CONTACTS: usize = 10;

/// The function's routes; every one is matched by name below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Billing,
    /// `GET /console` (rules §19).
    Console,
    /// `GET /v1/audit` (rules §19).
    Audit,
    /// `GET /v1/accounts?account_id=|email=|customer=`: the console's search (rules §19).
    Search,
    /// `GET /v1/accounts/{id}/details`: holds, disputes, the recharge, lanes (rules §19).
    Details(String),
    /// `GET /v1/reconciliation?run=`: the last run's differences (rules §19).
    Reconciliation,
    /// `GET /v1/dead-letters`: the dead-letter queues' depths (rules §19).
    DeadLetters,
    /// `GET /billing/topup-credits.js`: the `<topup-credits>` element's script.
    CardScript,
    Account(String),
    Credits(String),
    Transactions(String),
    Adjustments(String),
    AutoRecharge(String),
    Notifications(String),
    Grants(String),
    VoidGrant(String, String),
    TransactionsCsv(String),
    Revenue,
    Check(String),
    Alerts(String),
    Lanes(String),
    /// `GET …/entities` (rules §17).
    Entities(String),
    /// `GET …/payments`: what the account was credited for, and what refunds took back.
    Payments(String),
    /// `GET` and `PUT …/entities/{entity}`.
    Entity(String, String),
    Webhooks(Hook),
}

/// The webhook endpoints' routes (rules §15), under `/v1/webhook-endpoints`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    Endpoints,
    Endpoint(String),
    Rotate(String),
    Enable(String),
    Deliveries(String),
    Redeliver(String, String),
}

impl Hook {
    fn parse(rest: &[&str]) -> Option<Hook> {
        let a = |s: &str| s.to_string();
        Some(match rest {
            [] => Hook::Endpoints,
            [id] => Hook::Endpoint(a(id)),
            [id, "rotate-secret"] => Hook::Rotate(a(id)),
            [id, "enable"] => Hook::Enable(a(id)),
            [id, "deliveries"] => Hook::Deliveries(a(id)),
            [id, "deliveries", d, "redeliver"] => Hook::Redeliver(a(id), a(d)),
            _ => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Hook::Endpoints => "webhook_endpoints",
            Hook::Endpoint(_) => "webhook_endpoint",
            Hook::Rotate(_) => "webhook_rotate_secret",
            Hook::Enable(_) => "webhook_enable",
            Hook::Deliveries(_) => "webhook_deliveries",
            Hook::Redeliver(..) => "webhook_redeliver",
        }
    }

    fn methods(&self) -> &'static [&'static str] {
        match self {
            Hook::Endpoints => &["GET", "POST"],
            Hook::Endpoint(_) => &["GET", "DELETE"],
            Hook::Rotate(_) | Hook::Enable(_) | Hook::Redeliver(..) => &["POST"],
            Hook::Deliveries(_) => &["GET"],
        }
    }

    /// The endpoint the route names, if it names one.
    fn endpoint_id(&self) -> Option<&str> {
        match self {
            Hook::Endpoints => None,
            Hook::Endpoint(id)
            | Hook::Rotate(id)
            | Hook::Enable(id)
            | Hook::Deliveries(id)
            | Hook::Redeliver(id, _) => Some(id),
        }
    }
}

impl Route {
    pub fn parse(segs: &[String]) -> Option<Route> {
        let a = |s: &str| s.to_string();
        Some(match segs.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["billing"] => Route::Billing,
            ["billing", "topup-credits.js"] => Route::CardScript,
            ["console"] => Route::Console,
            ["v1", "audit"] => Route::Audit,
            ["v1", "accounts"] => Route::Search,
            ["v1", "accounts", id, "details"] => Route::Details(a(id)),
            ["v1", "reconciliation"] => Route::Reconciliation,
            ["v1", "dead-letters"] => Route::DeadLetters,
            ["v1", "accounts", id] => Route::Account(a(id)),
            ["v1", "accounts", id, "credits"] => Route::Credits(a(id)),
            ["v1", "accounts", id, "credits", "transactions"] => Route::Transactions(a(id)),
            ["v1", "accounts", id, "credits", "adjustments"] => Route::Adjustments(a(id)),
            ["v1", "accounts", id, "credits", "auto-recharge"] => Route::AutoRecharge(a(id)),
            ["v1", "accounts", id, "notifications"] => Route::Notifications(a(id)),
            ["v1", "accounts", id, "credits", "grants"] => Route::Grants(a(id)),
            ["v1", "accounts", id, "credits", "grants", g, "void"] => Route::VoidGrant(a(id), a(g)),
            ["v1", "accounts", id, "credits", "transactions.csv"] => Route::TransactionsCsv(a(id)),
            ["v1", "reports", "revenue"] => Route::Revenue,
            ["v1", "accounts", id, "credits", "check"] => Route::Check(a(id)),
            ["v1", "accounts", id, "credits", "alerts"] => Route::Alerts(a(id)),
            ["v1", "accounts", id, "lanes"] => Route::Lanes(a(id)),
            ["v1", "accounts", id, "entities"] => Route::Entities(a(id)),
            ["v1", "accounts", id, "payments"] => Route::Payments(a(id)),
            ["v1", "accounts", id, "entities", e] => Route::Entity(a(id), a(e)),
            ["v1", "webhook-endpoints", rest @ ..] => Route::Webhooks(Hook::parse(rest)?),
            _ => return None,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Route::Billing => "billing",
            Route::Console => "console",
            Route::Audit => "audit",
            Route::Search => "search",
            Route::Details(_) => "details",
            Route::Reconciliation => "reconciliation",
            Route::DeadLetters => "dead_letters",
            Route::CardScript => "card_script",
            Route::Account(_) => "account",
            Route::Credits(_) => "credits",
            Route::Transactions(_) => "transactions",
            Route::Adjustments(_) => "adjustments",
            Route::AutoRecharge(_) => "auto_recharge",
            Route::Notifications(_) => "notifications",
            Route::Grants(_) => "grants",
            Route::VoidGrant(..) => "void_grant",
            Route::TransactionsCsv(_) => "transactions_csv",
            Route::Revenue => "revenue",
            Route::Check(_) => "check",
            Route::Alerts(_) => "alerts",
            Route::Lanes(_) => "lanes",
            Route::Entities(_) => "entities",
            Route::Payments(_) => "payments",
            Route::Entity(..) => "entity",
            Route::Webhooks(h) => h.name(),
        }
    }

    /// The account a route names and who may call it; the billing page names none.
    fn guard(&self) -> Option<(&str, Access)> {
        match self {
            Route::Billing
            | Route::CardScript
            | Route::Console
            | Route::Audit
            | Route::Search
            | Route::Reconciliation
            | Route::DeadLetters
            | Route::Revenue
            | Route::Webhooks(_) => None,
            Route::Account(id)
            | Route::Adjustments(id)
            | Route::VoidGrant(id, _)
            | Route::Lanes(id)
            | Route::Details(id) => {
                Some((id, Access::Service))
            }
            Route::Credits(id)
            | Route::Transactions(id)
            | Route::Notifications(id)
            | Route::Grants(id)
            | Route::TransactionsCsv(id)
            | Route::Check(id)
            | Route::Entities(id)
            | Route::Payments(id)
            // Reading one is a view; setting its limit (PUT) needs billing roles as well.
            | Route::Entity(id, _) => Some((id, Access::View)),
            Route::AutoRecharge(id) | Route::Alerts(id) => Some((id, Access::Billing)),
        }
    }

    /// The methods a route answers; any other is 405.
    fn methods(&self) -> &'static [&'static str] {
        match self {
            Route::Account(_) | Route::AutoRecharge(_) | Route::Alerts(_) | Route::Lanes(_) => &["PUT"],
            Route::Adjustments(_) | Route::VoidGrant(..) => &["POST"],
            Route::Webhooks(h) => h.methods(),
            Route::Billing
            | Route::Console
            | Route::Audit
            | Route::Search
            | Route::Details(_)
            | Route::Reconciliation
            | Route::DeadLetters
            | Route::CardScript
            | Route::Credits(_)
            | Route::Transactions(_)
            | Route::Notifications(_)
            | Route::Grants(_)
            | Route::TransactionsCsv(_)
            | Route::Revenue
            | Route::Check(_)
            | Route::Entities(_)
            | Route::Payments(_) => &["GET"],
            Route::Entity(..) => &["GET", "PUT"],
        }
    }

    /// Routes that span every account (the service only, with a token not bound to one, and
    /// staff who hold the route's power).
    fn deployment_wide(&self) -> bool {
        matches!(
            self,
            Route::Revenue | Route::Audit | Route::Search | Route::Reconciliation | Route::DeadLetters | Route::Webhooks(_)
        )
    }

    /// The power that opens this route to staff beyond the view routes (rules §19), if any.
    pub fn staff_power(&self, method: &str) -> Option<Power> {
        match self {
            Route::Adjustments(_) => Some(Power::Adjust),
            Route::VoidGrant(..) => Some(Power::Void),
            Route::AutoRecharge(_) => Some(Power::PauseRecharge),
            Route::Revenue => Some(Power::Revenue),
            Route::Audit => Some(Power::Audit),
            Route::Search | Route::Details(_) | Route::Reconciliation | Route::DeadLetters => Some(Power::Read),
            Route::Webhooks(Hook::Endpoints | Hook::Endpoint(_)) if method == "GET" => Some(Power::Read),
            Route::Webhooks(Hook::Deliveries(_)) => Some(Power::Read),
            Route::Webhooks(Hook::Redeliver(..)) => Some(Power::Redeliver),
            _ => None,
        }
    }
}

pub async fn handle<S: Store + topup::receipts::ReceiptStore, B: EventBus, W: WebhookStore + AuditLog, Q: RetryQueue + QueueDepths>(
    config: &Config,
    webhooks: &WebhookAdmin<W, Q>,
    credits: &Credits<S, B>,
    req: Request,
) -> Response<Body> {
    let Some(route) = Route::parse(&segments(&req)) else {
        return respond("unknown", Err(ApiError::NotFound("route_not_found", "No such route.".into())));
    };
    if route == Route::Billing {
        return billing_page(config, &req);
    }
    if route == Route::CardScript {
        return card_script(&req);
    }
    if route == Route::Console {
        return console_page(config, &req);
    }
    // Every change this request makes is recorded as the caller's (rules §19).
    let context = match identity(&req, config) {
        Ok(who) => audit_context(&req, &who),
        Err(e) => return respond(route.name(), Err(e)),
    };
    // Boxed: the routes' futures are large, and a caller's stack need not hold them.
    topup::audit::scoped(context, Box::pin(handle_as(config, webhooks, credits, req, route))).await
}

async fn handle_as<S: Store + topup::receipts::ReceiptStore, B: EventBus, W: WebhookStore + AuditLog, Q: RetryQueue + QueueDepths>(
    config: &Config,
    webhooks: &WebhookAdmin<W, Q>,
    credits: &Credits<S, B>,
    req: Request,
    route: Route,
) -> Response<Body> {
    if let Route::TransactionsCsv(id) = &route {
        return match allowed(config, &req, &route).map(|_| id) {
            Ok(id) => match credits.transactions_csv(id).await {
                Ok(csv) => csv_response(id, csv),
                Err(e) => respond(route.name(), Err(e)),
            },
            Err(e) => respond(route.name(), Err(e)),
        };
    }
    if let Route::Webhooks(hook) = &route {
        return respond(route.name(), webhook_request(config, webhooks, credits, &req, &route, hook).await);
    }
    if route == Route::DeadLetters {
        let depths = match allowed(config, &req, &route) {
            Ok(_) => Reply::ok(&topup::console::dead_letter_depths(&webhooks.queue, &config.dead_letter_queues).await),
            Err(e) => Err(e),
        };
        return respond(route.name(), depths);
    }
    respond(route.name(), route_request(config, credits, &req, &route).await)
}

/// The webhook endpoints' routes (rules §15). Each change is recorded right after it succeeds
/// (rules §19): an endpoint's in the chain of no account, a redelivery in its event's account's.
async fn webhook_request<S: Store, B: EventBus, W: WebhookStore + AuditLog, Q: RetryQueue>(
    config: &Config,
    webhooks: &WebhookAdmin<W, Q>,
    credits: &Credits<S, B>,
    req: &Request,
    route: &Route,
    hook: &Hook,
) -> Result<Reply, ApiError> {
    allowed(config, req, route)?;
    if let Some(id) = hook.endpoint_id() {
        check_id("endpoint_id", id)?;
    }
    let now = topup::clock::now_ms();
    let method = req.method().as_str();
    let target = |id: &str| format!("webhook_endpoint:{id}");
    match hook {
        Hook::Endpoints if method == "POST" => {
            let body = json_object(req, &["url", "events", "description", "contact_email", "reason"])?;
            body.reason()?;
            let events = body
                .array("events")?
                .iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| ApiError::invalid("`events` must be strings.")))
                .collect::<Result<Vec<_>, _>>()?;
            let new = NewEndpoint {
                url: body.str("url")?.to_string(),
                events,
                description: body.opt_str("description")?.map(str::to_string),
                contact_email: body.opt_str("contact_email")?.map(str::to_string),
            };
            let made = webhooks.create(new, now).await?;
            let id = made["id"].as_str().unwrap_or_default().to_string();
            let change = AuditChange::new("webhook_endpoint.create", target(&id), None, Some(without_secrets(&made)));
            record_unbound(&webhooks.store, change, now).await;
            Reply::created(&made)
        }
        Hook::Endpoints => Reply::ok(&webhooks.list().await?),
        Hook::Endpoint(id) if method == "DELETE" => {
            reason_only(req)?;
            let before = webhooks.get(id).await?;
            let deleted = webhooks.delete(id).await?;
            let change = AuditChange::new(
                "webhook_endpoint.delete",
                target(id),
                Some(without_secrets(&before)),
                Some(serde_json::json!({"status": "deleted"})),
            );
            record_unbound(&webhooks.store, change, now).await;
            Reply::ok(&deleted)
        }
        Hook::Endpoint(id) => Reply::ok(&webhooks.get(id).await?),
        Hook::Rotate(id) => {
            reason_only(req)?;
            let rotated = webhooks.rotate(id, now).await?;
            // The secrets themselves are never recorded: only that one was rotated, and when.
            let change = AuditChange::new(
                "webhook_endpoint.rotate_secret",
                target(id),
                None,
                Some(serde_json::json!({"secret_rotated_at": topup::clock::rfc3339(now)})),
            );
            record_unbound(&webhooks.store, change, now).await;
            Reply::ok(&rotated)
        }
        Hook::Enable(id) => {
            reason_only(req)?;
            let before = webhooks.get(id).await?;
            let after = webhooks.enable(id).await?;
            let change = AuditChange::new(
                "webhook_endpoint.enable",
                target(id),
                Some(serde_json::json!({"status": before["status"]})),
                Some(serde_json::json!({"status": after["status"]})),
            );
            record_unbound(&webhooks.store, change, now).await;
            Reply::ok(&after)
        }
        Hook::Deliveries(id) => {
            let cursor = req.query_string_parameters().first("cursor").map(str::to_string);
            Reply::ok(&webhooks.deliveries(id, page_limit(req)?, cursor.as_deref()).await?)
        }
        Hook::Redeliver(id, delivery) => {
            check_id("delivery_id", delivery)?;
            reason_only(req)?;
            let before = webhooks.store.delivery(id, delivery).await.map_err(store_failed)?;
            let after = webhooks.redeliver(id, delivery, now).await?;
            let change = AuditChange::new(
                "webhook_delivery.redeliver",
                format!("webhook_delivery:{id}/{delivery}"),
                before.as_ref().map(|d| serde_json::json!({"status": d.status, "attempts": d.attempts})),
                Some(serde_json::json!({"status": after["status"], "attempts": after["attempts"], "redelivered_at": topup::clock::rfc3339(now)})),
            );
            // In the chain of the account whose event it is, when that account exists.
            let account = before.map(|d| d.account_id).filter(|a| !a.is_empty());
            match account {
                Some(a) => match credits.record_change(&a, change.clone()).await {
                    Ok(()) => {}
                    Err(ApiError::NotFound(..)) => record_unbound(&webhooks.store, change, now).await,
                    Err(e) => tracing::error!(
                        code = e.code(), action = change.action, target = %change.target,
                        "audit record not written after the change"
                    ),
                },
                None => record_unbound(&webhooks.store, change, now).await,
            }
            Reply::new(202, &after)
        }
    }
}

/// Appends a change of no account to the audit log, right after it succeeded. The change
/// stands either way: if the record cannot be written, the log says so with what it would
/// have held (never a secret), and the answer is the change's.
async fn record_unbound<W: AuditLog>(log: &W, change: AuditChange, now: i64) {
    if let Err(e) = topup::audit::append_unbound(log, change.clone(), now).await {
        tracing::error!(
            error = %e, action = change.action, target = %change.target,
            before = ?change.before, after = ?change.after,
            "audit record not written after the change"
        );
    }
}

/// An endpoint's view without its signing secrets (the audit log never holds one).
fn without_secrets(v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.remove("secret");
        m.remove("previous_secrets");
    }
    v
}

/// A body that may carry only `reason` (or be empty).
fn reason_only(req: &Request) -> Result<Option<String>, ApiError> {
    match optional_json_object(req, &["reason"])? {
        Some(body) => body.reason(),
        None => Ok(None),
    }
}

fn store_failed(e: topup::store::StoreError) -> ApiError {
    tracing::error!(error = %e, "store failure");
    ApiError::Upstream
}

async fn route_request<S: Store + topup::receipts::ReceiptStore, B: EventBus>(
    config: &Config,
    credits: &Credits<S, B>,
    req: &Request,
    route: &Route,
) -> Result<Reply, ApiError> {
    let who = allowed(config, req, route)?;
    let method = req.method().as_str();
    match route {
        Route::Billing | Route::Console | Route::CardScript => Err(ApiError::MethodNotAllowed(method.to_string())),
        Route::Audit => {
            // A parameter given is checked, empty or not.
            let q = req.query_string_parameters();
            let account_id = q.first("account_id").map(str::to_string);
            if let Some(a) = &account_id {
                check_id("account_id", a)?;
            }
            let actor = q.first("actor").map(str::to_string);
            if actor.as_ref().is_some_and(|a| a.is_empty() || a.chars().count() > 256) {
                return Err(ApiError::invalid("`actor` must be 1 to 256 characters."));
            }
            let action = q.first("action").map(str::to_string);
            let action_name = |a: &str| {
                !a.is_empty() && a.len() <= 64 && a.bytes().all(|b| b.is_ascii_lowercase() || b == b'_' || b == b'.')
            };
            if action.as_ref().is_some_and(|a| !action_name(a)) {
                return Err(ApiError::invalid("`action` is an action's name, like `credits.adjust`."));
            }
            let after = match q.first("cursor") {
                None => None,
                Some(c) => Some(
                    Position::from_cursor(c).ok_or_else(|| ApiError::invalid("`cursor` is not a cursor this list gave."))?,
                ),
            };
            // A cursor goes on the list it came from: one account's goes on that account's.
            if let (Some(a), Some(p)) = (&account_id, &after) {
                if p.chain != *a {
                    return Err(ApiError::invalid("`cursor` is not a cursor this list gave."));
                }
            }
            let query = AuditQuery { account_id, actor, action };
            // The console pages with it: never more than a page of `MAX_PAGE`.
            Reply::ok(&credits.store.audit_page(&query, page_limit(req)?, after.as_ref()).await.map_err(store_failed)?)
        }
        // Answered by `webhook_request`.
        Route::Webhooks(_) => Err(ApiError::NotFound("route_not_found", "No such route.".into())),
        Route::Account(id) => {
            let body = json_object(req, &["plan", "billing_contacts", "reason"])?;
            body.reason()?;
            let plan = body.str("plan")?;
            let contacts = contacts(body.array("billing_contacts")?)?;
            match credits.upsert_account(id, plan, contacts).await? {
                AccountSaved::Created(a) => Reply::created(&a),
                AccountSaved::Updated(a) => Reply::ok(&a),
            }
        }
        Route::Credits(id) => Reply::ok(&credits.view(id).await?),
        Route::AutoRecharge(id) => {
            let body =
                json_object(req, &["enabled", "threshold", "amount", "monthly_max", "monthly_spend_max", "reason"])?;
            body.reason()?;
            // Staff pause or resume it; the rest of its settings are the customer's (rules §19).
            if who.staff().is_some() && body.0.keys().any(|k| k != "enabled" && k != "reason") {
                return Err(ApiError::Denied(
                    "staff_pause_only",
                    "Staff may only pause or resume auto-recharge (`enabled`); its other settings are the customer's.".into(),
                ));
            }
            let enabled = body.opt_bool("enabled")?.ok_or_else(|| ApiError::invalid("Field `enabled` is required."))?;
            let input = AutoRechargeInput {
                enabled,
                threshold: body.opt_i64("threshold")?,
                amount: body.opt_i64("amount")?,
                monthly_max: body.opt_i64("monthly_max")?,
                monthly_spend_max: body.opt_i64("monthly_spend_max")?,
            };
            Reply::ok(&credits.set_auto_recharge(id, &input).await?)
        }
        Route::Transactions(id) => {
            let q = req.query_string_parameters();
            let cursor = q.first("cursor").map(str::to_string);
            let entity = q.first("entity").map(str::to_string);
            let kind = match q.first("kind").filter(|k| !k.is_empty()) {
                None => None,
                Some(k) => Some(
                    serde_json::from_value::<topup::ledger::EntryKind>(Value::String(k.to_string()))
                        .ok()
                        .filter(|k| !k.is_lease())
                        .ok_or_else(|| ApiError::invalid("`kind` is an entry's kind, like `adjustment`."))?,
                ),
            };
            let page = credits.transactions_where(id, page_limit(req)?, cursor.as_deref(), entity.as_deref(), kind).await?;
            Reply::ok(&page)
        }
        Route::Entities(id) => Reply::ok(&credits.entities(id).await?),
        Route::Payments(id) => Reply::ok(&credits.payments(id).await?),
        Route::Search => {
            let q = req.query_string_parameters();
            let given: Vec<(&str, &str)> =
                ["account_id", "email", "customer"].into_iter().filter_map(|k| q.first(k).map(|v| (k, v))).collect();
            let search = match given.as_slice() {
                [("account_id", id)] => {
                    check_id("account_id", id)?;
                    Search::Id(id.to_string())
                }
                [("email", e)] if !e.trim().is_empty() && e.chars().count() <= 254 => {
                    Search::By(AccountLookup::Email(e.trim().to_string()))
                }
                [("customer", c)] if !c.trim().is_empty() && c.chars().count() <= 255 => {
                    Search::By(AccountLookup::Customer(c.trim().to_string()))
                }
                _ => return Err(ApiError::invalid("Search by one of `account_id`, `email` or `customer`, not empty.")),
            };
            Reply::ok(&credits.search_accounts(&search).await?)
        }
        Route::Details(id) => Reply::ok(&credits.account_details(id).await?),
        Route::Reconciliation => {
            let run = req.query_string_parameters().first("run").map(str::to_string);
            if let Some(r) = &run {
                if topup::clock::month_bounds(r.get(..7).unwrap_or("")).is_none() || r.len() != 10 {
                    return Err(ApiError::invalid("`run` is a day, `YYYY-MM-DD`."));
                }
            }
            Reply::ok(&credits.reconciliation(run.as_deref(), RECONCILE_SEGMENTS).await?)
        }
        Route::DeadLetters => Err(ApiError::MethodNotAllowed(method.to_string())),
        Route::Entity(id, entity) if method == "PUT" => {
            who.authorize(&config.profile, Access::Billing, id)?;
            let body = json_object(req, &["monthly_limit", "name", "reason"])?;
            body.reason()?;
            let monthly_limit = match body.0.get("monthly_limit") {
                None => None,
                Some(serde_json::Value::Null) => Some(None),
                // A wrong type (or a number past 64 bits) is a malformed body: 400 (rules §11);
                // a whole number out of range is the rule's 422, decided by `set_entity`.
                Some(v) => Some(Some(v.as_i64().ok_or_else(|| {
                    ApiError::invalid("`monthly_limit` must be a whole number of micro-credits, or null.")
                })?)),
            };
            let name = body.opt_str("name")?.map(str::to_string);
            let settings = topup::entities::EntitySettings { monthly_limit, name };
            Reply::ok(&credits.set_entity(id, entity, &settings).await?)
        }
        Route::Entity(id, entity) => Reply::ok(&credits.entity(id, entity).await?),
        Route::Notifications(id) => Reply::ok(&credits.notifications(id, page_limit(req)?).await?),
        Route::Grants(id) => Reply::ok(&credits.grants(id).await?),
        Route::VoidGrant(id, grant) => {
            check_id("grant_id", grant)?;
            reason_only(req)?;
            Reply::ok(&credits.void_grant(id, grant).await?)
        }
        Route::TransactionsCsv(_) => Err(ApiError::MethodNotAllowed(method.to_string())),
        Route::Check(id) => {
            let q = req.query_string_parameters();
            let consumable = q
                .first("consumable")
                .filter(|c| !c.is_empty())
                .ok_or_else(|| ApiError::invalid("`consumable` is required."))?
                .to_string();
            let quantity = q
                .first("quantity")
                .and_then(|v| v.parse::<i64>().ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| ApiError::invalid("`quantity` must be a positive whole number."))?;
            // Fails closed: whatever is not the caller's mistake is 503, never an answer.
            let entity = q.first("entity").map(str::to_string);
            let answer = credits.check_as(id, &consumable, quantity, entity.as_deref()).await.map_err(|e| match e {
                ApiError::InvalidRequest(_)
                | ApiError::NotFound(..)
                | ApiError::Rule("invalid_entity", _)
                | ApiError::RequestRule("invalid_quantity", _) => e,
                _ => ApiError::Undecided,
            })?;
            Reply::ok(&answer)
        }
        Route::Alerts(id) => {
            let body = json_object(req, &["thresholds", "reason"])?;
            body.reason()?;
            let thresholds = body
                .array("thresholds")?
                .iter()
                .map(|v| v.as_i64().ok_or_else(|| ApiError::invalid("`thresholds` must be integers (micro-credits).")))
                .collect::<Result<Vec<i64>, _>>()?;
            Reply::ok(&credits.set_alerts(id, &thresholds).await?)
        }
        Route::Lanes(id) => {
            let body = json_object(req, &["lanes", "min", "max", "reason"])?;
            body.reason()?;
            let max_lanes = topup::lanes::MAX_LANES;
            let count = |name: &str| -> Result<Option<u32>, ApiError> {
                // A field given as null is not a field left out: the counts are integers.
                if body.0.get(name).is_some_and(serde_json::Value::is_null) {
                    return Err(ApiError::invalid(format!("`{name}` must be an integer.")));
                }
                match body.opt_i64(name)? {
                    None => Ok(None),
                    Some(n) => u32::try_from(n).map(Some).map_err(|_| {
                        ApiError::request_rule("invalid_lanes", format!("Lanes must be between 1 and {max_lanes}."))
                    }),
                }
            };
            let view = match (count("lanes")?, count("min")?, count("max")?) {
                (Some(k), None, None) => credits.set_lanes(id, k).await?,
                (None, min, max) if min.is_some() || max.is_some() => {
                    credits
                        .set_lane_bounds(id, min.unwrap_or(1), max.unwrap_or(topup::lanes::spread::AUTO_MAX))
                        .await?
                }
                _ => {
                    return Err(ApiError::invalid(
                        "Give `lanes` (a fixed count), or `min` and `max` (the bounds the account spreads itself within).",
                    ))
                }
            };
            Reply::ok(&view)
        }
        Route::Revenue => {
            let month = req
                .query_string_parameters()
                .first("month")
                .map(str::to_string)
                .ok_or_else(|| ApiError::invalid("`month` is required, as `YYYY-MM`."))?;
            Reply::ok(&credits.revenue_report(&month).await?)
        }
        Route::Adjustments(id) => {
            let body = json_object(
                req,
                &["amount", "reason", "idempotency_key", "expires_at", "priority", "category", "charge"],
            )?;
            let amount = body.i64("amount")?;
            let reason = body.str("reason")?.trim();
            if reason.is_empty() || reason.chars().count() > 500 {
                return Err(ApiError::invalid("`reason` must be 1 to 500 characters."));
            }
            // Support adjusts up to the configured limit either way (rules §19).
            if who.staff() == Some(Staff::Support) && amount.unsigned_abs() > config.support_adjust_limit.unsigned_abs() {
                return Err(ApiError::Denied(
                    "adjustment_above_limit",
                    format!(
                        "Support may adjust by at most {} credits; ask finance or the service for more.",
                        credits_text(config.support_adjust_limit)
                    ),
                ));
            }
            let key = IdempotencyKey::parse("idempotency_key", body.str("idempotency_key")?)?;
            let terms = grant_terms(config, &body)?;
            Reply::created(&credits.adjust_with(id, amount, reason, &terms, &key).await?)
        }
    }
}

/// Who may call `route`: the caller's identity, the method, and the account it names. Staff
/// pass where their role holds the route's power (rules §19).
fn allowed(config: &Config, req: &Request, route: &Route) -> Result<Identity, ApiError> {
    let who = identity(req, config)?;
    let method = req.method().as_str();
    if !route.methods().contains(&method) {
        return Err(ApiError::MethodNotAllowed(method.to_string()));
    }
    let power = route.staff_power(method);
    match route.guard() {
        Some((id, access)) => {
            check_id("account_id", id)?;
            match (who.authorize(&config.profile, access, id), who.staff(), power) {
                (Err(ApiError::Forbidden), Some(_), Some(p)) => who.may(p)?,
                (result, ..) => result?,
            }
        }
        // The revenue report, the audit log and webhook endpoints span every account: the
        // service, and staff with the power.
        None if route.deployment_wide() => match power {
            Some(p) => who.may(p)?,
            None if who.is_deployment_service() => {}
            None => return Err(ApiError::Forbidden),
        },
        None => {}
    }
    Ok(who)
}

/// An adjustment's grant terms: `expires_at` (RFC 3339), `priority` (0–100), `category`
/// (`promotional`, the default, or `paid` with `charge: {amount, currency}`).
fn grant_terms(config: &Config, body: &topup::http::Fields) -> Result<GrantTerms, ApiError> {
    let expires_at = match body.opt_str("expires_at")? {
        None => None,
        Some(t) => Some(
            topup::clock::parse_rfc3339(t)
                .ok_or_else(|| ApiError::invalid("`expires_at` must be an RFC 3339 timestamp."))?,
        ),
    };
    let priority = match body.opt_i64("priority")? {
        None => None,
        Some(p) => Some(
            u8::try_from(p)
                .ok()
                .filter(|p| *p <= topup::grants::MAX_PRIORITY)
                .ok_or_else(|| ApiError::rule("invalid_priority", "`priority` must be between 0 and 100."))?,
        ),
    };
    let charge = body.0.get("charge").filter(|v| !v.is_null());
    let cost_cents = match (body.opt_str("category")?, charge) {
        (None | Some("promotional"), None) => None,
        (None | Some("promotional"), Some(_)) => {
            return Err(ApiError::rule("invalid_grant_terms", "`charge` is for `category: paid` only."))
        }
        (Some("paid"), None) => {
            return Err(ApiError::rule("invalid_grant_terms", "A paid grant needs `charge: {amount, currency}`."))
        }
        (Some("paid"), Some(Value::Object(c))) => {
            let f = topup::http::Fields::of(Value::Object(c.clone()), &["amount", "currency"])
                .map_err(|e| ApiError::invalid(format!("`charge`: {e}")))?;
            let amount = f.i64("amount").map_err(|e| ApiError::invalid(format!("`charge`: {e}")))?;
            let currency = f.str("currency").map_err(|e| ApiError::invalid(format!("`charge`: {e}")))?;
            if !currency.eq_ignore_ascii_case(&config.profile.currency) {
                return Err(ApiError::rule(
                    "invalid_currency",
                    format!("`charge.currency` must be {}.", config.profile.currency),
                ));
            }
            if amount < 0 {
                return Err(ApiError::rule("invalid_amount", "`charge.amount` may not be negative."));
            }
            // At most what one payment can be (rules §16).
            if amount > topup::pricing::MAX_CHARGE_CENTS {
                return Err(ApiError::rule(
                    "invalid_amount",
                    format!("`charge.amount` may be at most {} (minor units).", topup::pricing::MAX_CHARGE_CENTS),
                ));
            }
            Some(amount)
        }
        (Some("paid"), Some(_)) => return Err(ApiError::invalid("`charge` must be an object.")),
        (Some(_), _) => return Err(ApiError::rule("invalid_category", "`category` is `promotional` or `paid`.")),
    };
    Ok(GrantTerms { expires_at, priority, cost_cents })
}

/// Micro-credits as credits: `100`, `12.5`.
fn credits_text(micros: i64) -> String {
    let c = topup::money::MICROS_PER_CREDIT;
    let (whole, frac) = (micros / c, (micros % c).abs());
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{}", format!("{frac:06}").trim_end_matches('0'))
    }
}

fn csv_response(id: &str, csv: String) -> Response<Body> {
    use lambda_http::http::HeaderValue;
    let mut resp = Response::new(Body::Text(csv));
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{id}-transactions.csv\"")) {
        h.insert("content-disposition", v);
    }
    tracing::info!(route = "transactions_csv", status = 200, "handled");
    resp
}

/// Billing contacts: an email each, optionally an E.164 phone with `sms_opt_in`.
fn contacts(list: &[Value]) -> Result<Vec<Contact>, ApiError> {
    if list.len() > MAX_CONTACTS {
        return Err(ApiError::rule("too_many_contacts", format!("At most {MAX_CONTACTS} billing contacts.")));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| {
            let Value::Object(o) = v else {
                return Err(ApiError::invalid(format!("`billing_contacts[{i}]` must be an object.")));
            };
            let fields = topup::http::Fields(o.clone());
            if let Some(k) = o.keys().find(|k| !["email", "phone", "sms_opt_in"].contains(&k.as_str())) {
                return Err(ApiError::invalid(format!("Unknown field `billing_contacts[{i}].{k}`.")));
            }
            let email = fields.str("email").map_err(|_| {
                ApiError::invalid(format!("`billing_contacts[{i}].email` is required and must be a string."))
            })?;
            if !topup::account::valid_email(email) {
                return Err(ApiError::rule(
                    "invalid_email",
                    format!("`billing_contacts[{i}].email` is not an email address."),
                ));
            }
            let phone = fields
                .opt_str("phone")
                .map_err(|_| ApiError::invalid(format!("`billing_contacts[{i}].phone` must be a string.")))?;
            if let Some(p) = phone {
                if !valid_e164(p) {
                    return Err(ApiError::rule(
                        "invalid_phone",
                        format!("`billing_contacts[{i}].phone` must be in E.164 form, like +15550100."),
                    ));
                }
            }
            let sms_opt_in = fields
                .opt_bool("sms_opt_in")
                .map_err(|_| ApiError::invalid(format!("`billing_contacts[{i}].sms_opt_in` must be true or false.")))?
                .unwrap_or(false);
            if sms_opt_in && phone.is_none() {
                return Err(ApiError::rule(
                    "invalid_phone",
                    format!("`billing_contacts[{i}]` opts in to SMS without a phone."),
                ));
            }
            Ok(Contact { email: email.to_string(), phone: phone.map(str::to_string), sms_opt_in })
        })
        .collect()
}

fn valid_e164(p: &str) -> bool {
    p.strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()) && !d.starts_with('0'))
}

/// The billing page: one static document, assets inline, nothing fetched from a CDN
/// but Stripe.js when a publishable key is configured. Its configuration (no secrets) is
/// injected as JSON.
const BILLING_HTML: &str = include_str!("billing.html");

fn billing_page(config: &Config, req: &Request) -> Response<Body> {
    use lambda_http::http::{HeaderValue, StatusCode};
    if req.method() != "GET" {
        return topup::http::error_response(&ApiError::MethodNotAllowed(req.method().to_string()));
    }
    // A Stripe API other than Stripe's is the local emulator: the page offers its test steps.
    let emulator = config.stripe_api_base.as_deref().filter(|b| !b.starts_with("https://api.stripe.com"));
    let page_config = serde_json::json!({
        "stripe_publishable_key": config.stripe_publishable_key,
        "stripe_emulator": emulator,
        "upgrade_url": config.billing_url,
    });
    // `<` escaped so nothing in the JSON can close the script element.
    let html = BILLING_HTML.replace("__TOPUP_PAGE_CONFIG__", &page_config.to_string().replace('<', "\\u003c"));
    let connect = emulator.map(|e| format!(" {e}")).unwrap_or_default();
    let csp = format!(
        "default-src 'self'; script-src 'self' 'unsafe-inline' https://js.stripe.com; style-src 'self' 'unsafe-inline'; \
         connect-src 'self' https://api.stripe.com{connect}; frame-src https://js.stripe.com https://checkout.stripe.com \
         https://hooks.stripe.com; img-src 'self' data: https://*.stripe.com; base-uri 'none'; form-action 'self'"
    );
    let mut resp = Response::new(Body::Text(html));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert("content-security-policy", v);
    }
    tracing::info!(route = "billing_page", status = 200, "handled");
    resp
}

/// The `<topup-credits>` element: sdks/typescript's `dist/card.js`, copied here by its
/// `npm run build` (whose tests check the copy), so this build never needs node.
const CARD_SCRIPT: &str = include_str!("topup-credits.js");

/// `GET /billing/topup-credits.js`: a static ES module with no imports and nothing secret. Which
/// pages may load it (and call the API) is the API's CORS configuration (`AllowedOrigins`).
fn card_script(req: &Request) -> Response<Body> {
    use lambda_http::http::{HeaderValue, StatusCode};
    if req.method() != "GET" {
        return topup::http::error_response(&ApiError::MethodNotAllowed(req.method().to_string()));
    }
    let mut resp = Response::new(Body::Text(CARD_SCRIPT.to_string()));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/javascript; charset=utf-8"));
    h.insert("cache-control", HeaderValue::from_static("public, max-age=300"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    tracing::info!(route = "card_script", status = 200, "handled");
    resp
}

/// The console for staff (rules §19): one static document like the billing page, assets inline,
/// nothing fetched from anywhere but this API. It signs in with the caller's token and does
/// everything through the JSON routes, so each route's roles apply to it.
const CONSOLE_HTML: &str = include_str!("console.html");

fn console_page(config: &Config, req: &Request) -> Response<Body> {
    use lambda_http::http::{HeaderValue, StatusCode};
    if req.method() != "GET" {
        return topup::http::error_response(&ApiError::MethodNotAllowed(req.method().to_string()));
    }
    let page_config = serde_json::json!({
        "currency": config.profile.currency,
        "unit": config.profile.unit,
        "support_adjust_limit": config.support_adjust_limit,
    });
    let html = CONSOLE_HTML.replace("__TOPUP_CONSOLE_CONFIG__", &page_config.to_string().replace('<', "\\u003c"));
    let mut resp = Response::new(Body::Text(html));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    tracing::info!(route = "console_page", status = 200, "handled");
    resp
}
