//! The HTTP edge shared by every API function: identity, strict JSON bodies with errors that
//! name the field, path matching, and responses that never carry debug text.

use std::collections::HashMap;

use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::auth::{verify_hs256, Identity};
use crate::config::Config;
use crate::error::ApiError;

/// Longest id accepted in a path (account, hold).
pub const MAX_ID_LEN: usize = 64;

/// The caller's identity: API Gateway's JWT authorizer claims when present; otherwise a
/// `Bearer` token checked against `TOPUP_LOCAL_JWT_SECRET` when that is configured; else 401.
pub fn identity(req: &Request, config: &Config) -> Result<Identity, ApiError> {
    if let Some(RequestContext::ApiGatewayV2(ctx)) = req.request_context_ref() {
        if let Some(claims) = ctx.authorizer.as_ref().and_then(|a| a.jwt.as_ref()).map(|j| &j.claims) {
            if !claims.is_empty() {
                return Identity::from_claims(claims, config.service_client_id.as_deref());
            }
        }
    }
    let Some(secret) = &config.local_jwt_secret else { return Err(ApiError::Unauthenticated) };
    let header = req.headers().get("authorization").and_then(|v| v.to_str().ok()).ok_or(ApiError::Unauthenticated)?;
    let token =
        header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).ok_or(ApiError::Unauthenticated)?;
    let claims: HashMap<String, String> = verify_hs256(token.trim(), secret, crate::clock::now_ms() / 1000)?;
    Identity::from_claims(&claims, config.service_client_id.as_deref())
}

/// The id of this request: API Gateway's, else Lambda's, else a new one (a local call).
pub fn request_id(req: &Request) -> String {
    if let Some(RequestContext::ApiGatewayV2(ctx)) = req.request_context_ref() {
        if let Some(id) = ctx.request_id.as_ref().filter(|id| !id.is_empty()) {
            return id.clone();
        }
    }
    req.lambda_context_ref()
        .map(|c| c.request_id.clone())
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| crate::ledger::new_id("req"))
}

/// The longest `reason` a change may give (rules §19).
pub const MAX_REASON_CHARS: usize = 500;

/// Who is making the changes of this request, for the audit log (rules §19): the caller, the
/// request's id, and the body's `reason` when it has one (the route checks it).
pub fn audit_context(req: &Request, who: &Identity) -> crate::audit::Context {
    let bytes: &[u8] = match req.body() {
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    };
    let reason = serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.get("reason").and_then(Value::as_str).map(|r| r.trim().to_string()))
        .filter(|r| !r.is_empty() && r.chars().count() <= MAX_REASON_CHARS);
    crate::audit::Context { actor: who.actor(), request_id: request_id(req), reason }
}

/// An optional body: `None` when there is none, else `json_object`'s.
pub fn optional_json_object(req: &Request, allowed: &[&str]) -> Result<Option<Fields>, ApiError> {
    let empty = match req.body() {
        Body::Empty => true,
        Body::Text(t) => t.trim().is_empty(),
        Body::Binary(b) => b.is_empty(),
        _ => true,
    };
    if empty {
        return Ok(None);
    }
    json_object(req, allowed).map(Some)
}

/// The path's segments, without the stage: `/v1/accounts/a1/usage` → `["v1","accounts","a1","usage"]`.
pub fn segments(req: &Request) -> Vec<String> {
    let path = req.raw_http_path();
    let path = if path.is_empty() { req.uri().path() } else { path };
    path.split('/').filter(|s| !s.is_empty()).map(percent_decode).collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Entries a page lists unless `?limit=` says otherwise, and the most it may ask for.
pub const DEFAULT_PAGE: usize = 20;
pub const MAX_PAGE: usize = 100;

/// A page's `?limit=`: 1 to `MAX_PAGE`, `DEFAULT_PAGE` when absent; anything else is 400.
pub fn page_limit(req: &Request) -> Result<usize, ApiError> {
    match req.query_string_parameters().first("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| ApiError::invalid(format!("`limit` must be a whole number from 1 to {MAX_PAGE}."))),
    }
}

/// An id from the path: 1–64 of `[A-Za-z0-9_-]`, else 400.
pub fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ApiError::invalid(format!("`{what}` must be 1 to {MAX_ID_LEN} letters, digits, `_` or `-`.")));
    }
    Ok(())
}

/// The largest body a route reads, but for batches.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The largest batch body: 500 events with keys of up to 255 characters fit well inside.
pub const MAX_BATCH_BODY_BYTES: usize = 1024 * 1024;

/// The body as a JSON object whose fields are all in `allowed`; 415 for another content
/// type (a body sent with none is read as JSON), 400 naming the problem otherwise.
pub fn json_object(req: &Request, allowed: &[&str]) -> Result<Fields, ApiError> {
    json_object_sized(req, allowed, MAX_BODY_BYTES)
}

/// `json_object` for a body of up to `max_bytes`.
pub fn json_object_sized(req: &Request, allowed: &[&str], max_bytes: usize) -> Result<Fields, ApiError> {
    // No content type at all is taken as JSON (what `curl -d` and many clients send without
    // one); a type that says something else is refused.
    let ct = req.headers().get("content-type").map(|v| v.to_str().unwrap_or("?"));
    let media = ct.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    if media.is_some_and(|m| m != "application/json") {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes: &[u8] = match req.body() {
        Body::Empty => b"",
        Body::Text(t) => t.as_bytes(),
        Body::Binary(b) => b,
        _ => b"",
    };
    if bytes.len() > max_bytes {
        return Err(ApiError::invalid("The request body is too large."));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(format!("The body is not valid JSON (line {}, column {}).", e.line(), e.column()))
    })?;
    Fields::of(value, allowed).map_err(|e| match e {
        ApiError::InvalidRequest(m) if m.starts_with("Must") => ApiError::invalid("The body must be a JSON object."),
        other => other,
    })
}

/// A JSON object's fields, read with errors that name the field (400 `invalid_request`).
pub struct Fields(pub Map<String, Value>);

impl Fields {
    /// A JSON value as an object whose fields are all in `allowed`.
    pub fn of(value: Value, allowed: &[&str]) -> Result<Fields, ApiError> {
        let Value::Object(map) = value else { return Err(ApiError::invalid("Must be a JSON object.")) };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::invalid(format!("Unknown field `{unknown}`.")));
        }
        Ok(Fields(map))
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn str(&self, name: &str) -> Result<&str, ApiError> {
        self.opt_str(name)?.ok_or_else(|| ApiError::invalid(format!("Field `{name}` is required.")))
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(format!("Field `{name}` must be a string."))),
        }
    }

    pub fn i64(&self, name: &str) -> Result<i64, ApiError> {
        self.opt_i64(name)?.ok_or_else(|| ApiError::invalid(format!("Field `{name}` is required.")))
    }

    /// An integer within i64; floats, strings and numbers beyond 64 bits are 400.
    pub fn opt_i64(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| {
                ApiError::invalid(format!("Field `{name}` must be an integer within the signed 64-bit range."))
            }),
            Some(_) => Err(ApiError::invalid(format!("Field `{name}` must be an integer."))),
        }
    }

    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ApiError::invalid(format!("Field `{name}` must be true or false."))),
        }
    }

    /// `reason`: 1 to `MAX_REASON_CHARS` characters once trimmed, when given.
    pub fn reason(&self) -> Result<Option<String>, ApiError> {
        match self.opt_str("reason")?.map(str::trim) {
            None => Ok(None),
            Some(r) if r.is_empty() || r.chars().count() > MAX_REASON_CHARS => {
                Err(ApiError::invalid(format!("`reason` must be 1 to {MAX_REASON_CHARS} characters.")))
            }
            Some(r) => Ok(Some(r.to_string())),
        }
    }

    pub fn array(&self, name: &str) -> Result<&Vec<Value>, ApiError> {
        match self.get(name) {
            Some(Value::Array(a)) => Ok(a),
            None => Err(ApiError::invalid(format!("Field `{name}` is required."))),
            Some(_) => Err(ApiError::invalid(format!("Field `{name}` must be an array."))),
        }
    }
}

pub fn json_response(status: u16, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Body::Text(body.to_string()));
    *resp.status_mut() =
        lambda_http::http::StatusCode::from_u16(status).unwrap_or(lambda_http::http::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert("content-type", lambda_http::http::HeaderValue::from_static("application/json"));
    resp
}

/// The HTTP status of an error.
pub fn status_of(e: &ApiError) -> u16 {
    match e {
        ApiError::InvalidRequest(_) => 400,
        ApiError::UnsupportedMediaType => 415,
        ApiError::Unauthenticated => 401,
        ApiError::Forbidden | ApiError::Denied(..) => 403,
        ApiError::NotFound(..) | ApiError::HoldNotFound => 404,
        ApiError::MethodNotAllowed(_) => 405,
        ApiError::IdempotencyConflict | ApiError::HoldExpired | ApiError::OutOfOrder(..) => 409,
        ApiError::OutOfCredits { .. } | ApiError::EntityBudgetExceeded { .. } => 402,
        ApiError::Rule(..) | ApiError::RequestRule(..) => 422,
        ApiError::Upstream => 502,
        ApiError::Busy | ApiError::PaymentsUnavailable | ApiError::Undecided | ApiError::Elsewhere => 503,
        ApiError::TooManyRequests { .. } => 429,
    }
}

/// `{"error":{"code","message"}}`, plus the balance for a 402.
pub fn error_body(e: &ApiError) -> Value {
    let mut body = json!({"error": {"code": e.code(), "message": e.to_string()}});
    if let ApiError::OutOfCredits { balance, consumable, .. } = e {
        body["balance"] = json!(balance);
        body["error"]["consumable"] = json!(consumable);
    }
    if let ApiError::EntityBudgetExceeded { entity, remaining } = e {
        body["entity"] = json!(entity);
        body["remaining_this_month"] = json!(remaining);
    }
    body
}

/// The error as a response; `Retry-After` when retrying later can succeed and we know when.
pub fn error_response(e: &ApiError) -> Response<Body> {
    let mut resp = json_response(status_of(e), &error_body(e));
    if let Some(secs) = e.retry_after() {
        if let Ok(v) = lambda_http::http::HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert("retry-after", v);
        }
    }
    resp
}

/// A successful answer: its status and the domain's typed outcome, serialised.
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn new(status: u16, outcome: &impl Serialize) -> Result<Reply, ApiError> {
        let body = serde_json::to_value(outcome).map_err(|_| ApiError::Upstream)?;
        Ok(Reply { status, body })
    }

    /// 200 with the outcome.
    pub fn ok(outcome: &impl Serialize) -> Result<Reply, ApiError> {
        Reply::new(200, outcome)
    }

    /// 201 with the outcome.
    pub fn created(outcome: &impl Serialize) -> Result<Reply, ApiError> {
        Reply::new(201, outcome)
    }
}

/// Turns a handler's result into a response, logging without secrets or bodies.
pub fn respond(route: &str, result: Result<Reply, ApiError>) -> Response<Body> {
    match result {
        Ok(Reply { status, body }) => {
            tracing::info!(route, status, "handled");
            json_response(status, &body)
        }
        Err(e) => {
            tracing::info!(route, status = status_of(&e), code = e.code(), "refused");
            error_response(&e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("account_id", "acme-1_x").is_ok());
        assert!(check_id("account_id", &"a".repeat(65)).is_err());
        assert!(check_id("account_id", "a b").is_err());
        assert!(check_id("account_id", "").is_err());
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn every_error_has_a_snake_case_code_and_no_debug_text() {
        let all = [
            ApiError::invalid("Field `quantity` must be an integer."),
            ApiError::UnsupportedMediaType,
            ApiError::Unauthenticated,
            ApiError::Forbidden,
            ApiError::Denied("adjustment_above_limit", "Support may adjust by at most 100 credits.".into()),
            ApiError::account_not_found(),
            ApiError::MethodNotAllowed("DELETE".into()),
            ApiError::IdempotencyConflict,
            ApiError::HoldExpired,
            ApiError::HoldNotFound,
            ApiError::OutOfCredits {
                code: "out_of_credits".into(),
                message: "Out.".into(),
                balance: 0,
                consumable: "llm_tokens".into(),
            },
            ApiError::request_rule("invalid_quantity", "Quantity must be positive."),
            ApiError::Upstream,
            ApiError::PaymentsUnavailable,
            ApiError::Busy,
            ApiError::TooManyRequests { retry_after: 12 },
            ApiError::OutOfOrder("payment_not_credited_yet", "Not yet.".into()),
        ];
        for e in all {
            let code = e.code();
            assert!(!code.is_empty() && code.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{code}");
            assert!((400..600).contains(&status_of(&e)));
            let body = error_body(&e);
            assert_eq!(body["error"]["code"], code);
            let msg = body["error"]["message"].as_str().unwrap_or_default();
            assert!(!msg.contains("Error") && !msg.contains('{'), "{msg}");
            // A sentence for a person, never the code again.
            assert!(msg != code && msg.ends_with('.'), "{code}: {msg}");
        }
    }
}
