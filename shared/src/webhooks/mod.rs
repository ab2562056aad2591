//! Webhooks out (rules §15): the customer's own systems are told of every domain event they
//! subscribe to, by a signed HTTPS POST, at least once.
//!
//! - `api`: endpoints (register, list, delete, rotate the secret, enable) and deliveries (list,
//!   redeliver), for the service.
//! - `deliver`: the `webhooks-out` function's work: an event on the bus becomes one delivery
//!   per subscribed endpoint, attempted at once; a failed attempt is retried from an SQS
//!   message sent with a delay (no function ever sleeps), with backoff, for the retry window
//!   (72 hours); then the delivery is `failed` and kept for manual redelivery. An endpoint that
//!   has failed for three days is disabled and its owner told.
//! - `health`: an endpoint's failing streak, and disabling it (its owner told once).
//! - `url`: which URLs and addresses may be called (https; never private, link-local,
//!   unspecified, documentation or reserved; loopback, and any port, only where the
//!   configuration allows it).
//! - `store`: where endpoints and deliveries are kept (DynamoDB in `adapters::dynamo`, memory
//!   for unit tests).
//!
//! A delivery's body is fixed when the delivery is made, so every attempt sends the same bytes
//! and the same event `id`; each attempt signs them anew with its own time.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

pub mod api;
pub mod deliver;
pub mod health;
pub mod store;
pub mod url;

pub use store::{Created, MemoryWebhookStore, WebhookStore};

/// The event types an endpoint may subscribe to (rules §15), `*` meaning all of them.
pub const EVENT_TYPES: [&str; 12] = [
    "balance.low",
    "balance.depleted",
    "balance.alert",
    "purchase.succeeded",
    "purchase.failed",
    "auto_recharge.succeeded",
    "auto_recharge.failed",
    "refund.created",
    "dispute.created",
    "dispute.closed",
    "grant.expired",
    "entity.budget_alert",
];

/// The bus detail types `webhooks-out` is sent (the template's rule lists the same).
pub const DETAIL_TYPES: [&str; 12] = [
    "BalanceLow",
    "BalanceDepleted",
    "BalanceAlert",
    "CreditsAdded",
    "PurchaseFailed",
    "AutoRechargeSucceeded",
    "AutoRechargeFailed",
    "RefundCreated",
    "PaymentDisputed",
    "DisputeClosed",
    "GrantExpired",
    "EntityBudgetAlert",
];

/// The header a delivery is signed in.
pub const SIGNATURE_HEADER: &str = "Topup-Signature";

/// How long a rotated-out secret keeps signing beside the new one, so receivers can switch:
/// each for this long from its own rotation, however many rotations follow.
pub const ROTATION_OVERLAP_MS: i64 = 24 * 3_600_000;

/// At most this many rotated-out secrets sign beside the current one. Rotations are rare; past
/// this many within a day, the oldest stops signing early (a receiver still on it refuses
/// deliveries), so a rotation, which may be answering a leak, is never refused.
pub const MAX_PREVIOUS_SECRETS: usize = 10;

/// How long delivery records are kept (DynamoDB TTL): well past the retry window, for manual
/// redelivery and for reading what happened.
pub const DELIVERY_RETENTION_MS: i64 = 30 * 86_400_000;

/// The webhook type of a bus event, from its detail type and detail; `None` for events no
/// endpoint is sent (a purchase still processing, a paused recharge, a recharge's own credit,
/// which `auto_recharge.succeeded` announces).
pub fn webhook_type(detail_type: &str, detail: &Value) -> Option<&'static str> {
    Some(match detail_type {
        "BalanceLow" => "balance.low",
        "BalanceDepleted" => "balance.depleted",
        "BalanceAlert" => "balance.alert",
        "CreditsAdded" if detail["kind"] == "purchase" => "purchase.succeeded",
        "PurchaseFailed" => "purchase.failed",
        "AutoRechargeSucceeded" => "auto_recharge.succeeded",
        "AutoRechargeFailed" => "auto_recharge.failed",
        "RefundCreated" => "refund.created",
        "PaymentDisputed" => "dispute.created",
        "DisputeClosed" => "dispute.closed",
        "GrantExpired" => "grant.expired",
        "EntityBudgetAlert" => "entity.budget_alert",
        _ => return None,
    })
}

/// What a receiver is sent about one event: `{"id","type","created","account_id","data"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub event_id: String,
    pub kind: &'static str,
    pub account_id: String,
    pub created_ms: i64,
    /// The exact body every attempt sends.
    pub body: String,
}

/// The fields `events::detail_json` puts beside an event's own detail on the bus.
const ENVELOPE: [&str; 4] = ["event_id", "account_id", "occurred_at", "occurred_ms"];

impl Outgoing {
    /// The delivery body of a bus event (`{"detail-type", "detail"}`): `None` when it is not an
    /// event receivers are sent; an error when it lacks what every event of ours carries.
    pub fn from_bus(event: &Value) -> Option<Result<Outgoing, String>> {
        Outgoing::from_detail(event["detail-type"].as_str().unwrap_or_default(), &event["detail"])
    }

    /// `from_bus` for an event already read: its `detail-type` and `detail`.
    pub fn from_detail(detail_type: &str, detail: &Value) -> Option<Result<Outgoing, String>> {
        let kind = webhook_type(detail_type, detail)?;
        Some(Outgoing::build(kind, detail))
    }

    fn build(kind: &'static str, detail: &Value) -> Result<Outgoing, String> {
        let event_id = detail["event_id"].as_str().filter(|s| !s.is_empty()).ok_or("the event has no event_id")?;
        let account_id = detail["account_id"].as_str().ok_or("the event has no account_id")?;
        let created_ms = detail["occurred_ms"].as_i64().ok_or("the event has no occurred_ms")?;
        let mut data = detail.as_object().cloned().ok_or("the event's detail is not an object")?;
        for k in ENVELOPE {
            data.remove(k);
        }
        let body = json!({
            "id": event_id,
            "type": kind,
            "created": created_ms.div_euclid(1000),
            "account_id": account_id,
            "data": data,
        })
        .to_string();
        Ok(Outgoing { event_id: event_id.to_string(), kind, account_id: account_id.to_string(), created_ms, body })
    }
}

/// `hex(HMAC-SHA256(secret, "<t>.<body>"))`, as Stripe signs its webhooks.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    // HMAC takes a key of any length: this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else { return String::new() };
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `Topup-Signature` value: `t=<unix seconds>,v1=<signature>`, with one `v1` per secret
/// that signs (the current one, and a rotated-out one during its overlap).
pub fn signature_header(secrets: &[&str], t: i64, body: &str) -> String {
    let mut h = format!("t={t}");
    for s in secrets {
        h.push_str(",v1=");
        h.push_str(&signature(s, t, body));
    }
    h
}

/// Whether `header` signs `body` with `secret` within `tolerance_s` of `now_s`: what a receiver
/// does (docs/api.md shows the same in Python, and the clients in sdks/ do it too). Constant-time comparison of each `v1`.
pub fn verify(secret: &str, header: &str, body: &str, now_s: i64, tolerance_s: i64) -> bool {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v.to_string()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    if now_s.abs_diff(t) > tolerance_s.unsigned_abs() {
        return false;
    }
    let expected = signature(secret, t, body);
    sigs.iter().any(|s| {
        s.len() == expected.len() && s.bytes().zip(expected.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    })
}

/// A new signing secret: `whsec_` and 244 random bits (two v4 UUIDs from the OS's generator).
pub fn new_secret() -> String {
    format!("whsec_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// Retries and disabling, from configuration (the deployed defaults are the rules'; the local
/// stack shortens them so a person can watch a whole retry run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// The SQS queue retries are sent to (`TOPUP_WEBHOOK_QUEUE_URL`).
    pub queue_url: Option<String>,
    /// Whether loopback addresses, and plain http to them, may be endpoints
    /// (`TOPUP_WEBHOOK_ALLOW_LOOPBACK`; the local stack's receivers run on 127.0.0.1).
    pub allow_loopback: bool,
    /// Seconds between attempts: after attempt n comes `schedule[n-1]`, the last repeating
    /// (`TOPUP_WEBHOOK_RETRY_SCHEDULE`).
    pub retry_schedule: Vec<i64>,
    /// How long after its first attempt a delivery is retried (`TOPUP_WEBHOOK_RETRY_WINDOW`, s).
    pub retry_window_s: i64,
    /// How long an endpoint may fail without a success before it is disabled
    /// (`TOPUP_WEBHOOK_DISABLE_AFTER`, s).
    pub disable_after_s: i64,
}

/// The deployed schedule: the first retry within a minute, then backing off to eight hours.
pub const DEFAULT_SCHEDULE: [i64; 9] = [30, 120, 600, 1_800, 3_600, 7_200, 14_400, 28_800, 28_800];
pub const DEFAULT_WINDOW_S: i64 = 72 * 3_600;

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            queue_url: None,
            allow_loopback: false,
            retry_schedule: DEFAULT_SCHEDULE.to_vec(),
            retry_window_s: DEFAULT_WINDOW_S,
            disable_after_s: DEFAULT_WINDOW_S,
        }
    }
}

impl WebhookSettings {
    /// Seconds to wait after attempt `n` (1-based) failed.
    pub fn delay_after(&self, n: u32) -> i64 {
        let i = (n.max(1) - 1) as usize;
        self.retry_schedule.get(i).or(self.retry_schedule.last()).copied().unwrap_or(60).max(1)
    }

    /// When attempt `n + 1` is due after attempt `n` failed at `now`, if it still falls in the
    /// window that started at `from`.
    pub fn next_due(&self, n: u32, from: i64, now: i64) -> Option<i64> {
        let due = now + self.delay_after(n) * 1000;
        (due <= from + self.retry_window_s * 1000).then_some(due)
    }

    /// Reads the settings from the environment's lookup; a malformed value is an error.
    pub fn from_lookup(get: &impl Fn(&str) -> Option<String>) -> Result<WebhookSettings, (&'static str, String)> {
        let mut s = WebhookSettings {
            queue_url: get("TOPUP_WEBHOOK_QUEUE_URL").filter(|u| !u.is_empty()),
            ..WebhookSettings::default()
        };
        match get("TOPUP_WEBHOOK_ALLOW_LOOPBACK").as_deref().map(str::trim) {
            None | Some("") | Some("false") | Some("0") => {}
            Some("true") | Some("1") => s.allow_loopback = true,
            Some(_) => return Err(("TOPUP_WEBHOOK_ALLOW_LOOPBACK", "must be true or false".into())),
        }
        if let Some(v) = get("TOPUP_WEBHOOK_RETRY_SCHEDULE").filter(|v| !v.trim().is_empty()) {
            let parsed: Option<Vec<i64>> =
                v.split(',').map(|p| p.trim().parse::<i64>().ok().filter(|n| (1..=86_400).contains(n))).collect();
            s.retry_schedule = parsed
                .filter(|p| !p.is_empty())
                .ok_or(("TOPUP_WEBHOOK_RETRY_SCHEDULE", "must be seconds from 1 to 86400, comma-separated".into()))?;
        }
        let seconds = |name: &'static str, default: i64| -> Result<i64, (&'static str, String)> {
            match get(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|n| (1..=30 * 86_400).contains(n))
                    .ok_or((name, "must be seconds from 1 to 2592000".into())),
            }
        };
        s.retry_window_s = seconds("TOPUP_WEBHOOK_RETRY_WINDOW", DEFAULT_WINDOW_S)?;
        s.disable_after_s = seconds("TOPUP_WEBHOOK_DISABLE_AFTER", DEFAULT_WINDOW_S)?;
        Ok(s)
    }
}

/// A rotated-out secret, signing beside the current one until `until`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    pub secret: String,
    pub until: i64,
}

/// An endpoint: where to POST, which events, how to sign. Versioned: every change is a
/// conditional write on `version`. Its `Debug` leaves the secrets out. Read through
/// `StoredEndpoint`, so records from before `previous_secrets` read back.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredEndpoint")]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    /// Subscribed types, or `["*"]`.
    pub events: Vec<String>,
    /// `enabled`, `disabled` (failing too long, or by hand) or `deleted` (kept for its
    /// deliveries' sake, never listed or sent to).
    pub status: String,
    pub secret: String,
    /// Rotated-out secrets, oldest first, each signing beside `secret` until its own `until`
    /// (at most `MAX_PREVIOUS_SECRETS`).
    pub previous_secrets: Vec<PreviousSecret>,
    pub description: Option<String>,
    /// Who is told when the endpoint is disabled (else the deployment's sender address).
    pub contact_email: Option<String>,
    pub created_at: i64,
    /// Since when attempts to it have failed without a success in between, and the latest
    /// failure (a streak with no failure for a day starts over).
    pub failing_since: Option<i64>,
    pub last_failure_at: Option<i64>,
    pub disabled_at: Option<i64>,
    pub deleted_at: Option<i64>,
    pub version: u64,
}

/// An endpoint as stored by any version: before `previous_secrets` an endpoint kept one
/// rotated-out secret (`previous_secret`, `previous_until`), which reads back as a list of one.
/// Code from before the list reads a record written now with no previous secret (its fields
/// are optional), so rolling back loses only the overlap.
#[derive(Deserialize)]
struct StoredEndpoint {
    id: String,
    url: String,
    events: Vec<String>,
    status: String,
    secret: String,
    #[serde(default)]
    previous_secrets: Vec<PreviousSecret>,
    #[serde(default)]
    previous_secret: Option<String>,
    #[serde(default)]
    previous_until: Option<i64>,
    description: Option<String>,
    contact_email: Option<String>,
    created_at: i64,
    failing_since: Option<i64>,
    #[serde(default)]
    last_failure_at: Option<i64>,
    disabled_at: Option<i64>,
    #[serde(default)]
    deleted_at: Option<i64>,
    version: u64,
}

impl From<StoredEndpoint> for Endpoint {
    fn from(r: StoredEndpoint) -> Endpoint {
        let mut previous_secrets = r.previous_secrets;
        if let (Some(secret), Some(until)) = (r.previous_secret, r.previous_until) {
            if !previous_secrets.iter().any(|p| p.secret == secret) {
                previous_secrets.insert(0, PreviousSecret { secret, until });
            }
        }
        Endpoint {
            id: r.id,
            url: r.url,
            events: r.events,
            status: r.status,
            secret: r.secret,
            previous_secrets,
            description: r.description,
            contact_email: r.contact_email,
            created_at: r.created_at,
            failing_since: r.failing_since,
            last_failure_at: r.last_failure_at,
            disabled_at: r.disabled_at,
            deleted_at: r.deleted_at,
            version: r.version,
        }
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("status", &self.status)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// The URL's host, for logs (a path or query may carry the receiver's own token).
    pub fn host(&self) -> String {
        ::url::Url::parse(&self.url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default()
    }

    pub fn subscribes(&self, kind: &str) -> bool {
        self.status == "enabled" && self.events.iter().any(|e| e == "*" || e == kind)
    }

    /// The secrets that sign at `now`: the current one, and every rotated-out one in its own
    /// overlap, newest first.
    pub fn signing_secrets(&self, now: i64) -> Vec<&str> {
        let mut v = vec![self.secret.as_str()];
        v.extend(self.previous_secrets.iter().rev().filter(|p| now < p.until).map(|p| p.secret.as_str()));
        v
    }

    /// Makes `secret` the current one at `now`: the one it replaces signs beside it for
    /// `ROTATION_OVERLAP_MS`, as every earlier one still does until its own end; those past
    /// their end go, and past `MAX_PREVIOUS_SECRETS` the oldest goes early.
    pub fn rotate(&mut self, secret: String, now: i64) {
        let old = std::mem::replace(&mut self.secret, secret);
        self.previous_secrets.retain(|p| now < p.until);
        self.previous_secrets.push(PreviousSecret { secret: old, until: now + ROTATION_OVERLAP_MS });
        let extra = self.previous_secrets.len().saturating_sub(MAX_PREVIOUS_SECRETS);
        self.previous_secrets.drain(..extra);
    }

    /// What the API shows of it: never the secret (but when it is made or rotated).
    pub fn view(&self) -> Value {
        let t = |ms: Option<i64>| ms.map(crate::clock::rfc3339);
        json!({
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "status": self.status,
            "description": self.description,
            "contact_email": self.contact_email,
            "created_at": crate::clock::rfc3339(self.created_at),
            "disabled_at": t(self.disabled_at),
            "failing_since": t(self.failing_since),
        })
    }

    /// The view with the secret: the answer to making the endpoint or rotating its secret.
    pub fn view_with_secret(&self) -> Value {
        let mut v = self.view();
        v["secret"] = json!(self.secret);
        v
    }
}

/// One event's delivery to one endpoint, across all its attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub endpoint_id: String,
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub account_id: String,
    /// `pending`, `succeeded` or `failed` (retries exhausted, or its endpoint disabled).
    pub status: String,
    pub attempts: u32,
    pub last_response_code: Option<u16>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<i64>,
    /// When the next attempt is due, while one is scheduled.
    pub next_attempt_at: Option<i64>,
    /// The event's time (the record's sort key) and when this delivery's retry window began
    /// (its first attempt, or its last manual redelivery).
    pub created_at: i64,
    pub retry_from: i64,
    /// Attempts made before the current window began (a redelivery starts the schedule over).
    #[serde(default)]
    pub retry_base: u32,
    /// The exact body every attempt sends.
    pub body: String,
    pub version: u64,
}

impl Delivery {
    /// The delivery of `out` to `endpoint_id`, before any attempt. Its id names the event's
    /// time and id, so the same event always makes the same delivery.
    pub fn new(endpoint_id: &str, out: &Outgoing, now: i64) -> Delivery {
        Delivery {
            id: delivery_id(out.created_ms, &out.event_id),
            endpoint_id: endpoint_id.to_string(),
            event_id: out.event_id.clone(),
            kind: out.kind.to_string(),
            account_id: out.account_id.clone(),
            status: "pending".into(),
            attempts: 0,
            last_response_code: None,
            last_error: None,
            last_attempt_at: None,
            next_attempt_at: None,
            created_at: out.created_ms,
            retry_from: now,
            retry_base: 0,
            body: out.body.clone(),
            version: 0,
        }
    }

    pub fn view(&self) -> Value {
        let t = |ms: Option<i64>| ms.map(crate::clock::rfc3339);
        json!({
            "id": self.id,
            "endpoint_id": self.endpoint_id,
            "event_id": self.event_id,
            "type": self.kind,
            "account_id": self.account_id,
            "status": self.status,
            "attempts": self.attempts,
            "last_response_code": self.last_response_code,
            "last_error": self.last_error,
            "last_attempt_at": t(self.last_attempt_at),
            "next_attempt_at": t(self.next_attempt_at),
            "created_at": crate::clock::rfc3339(self.created_at),
        })
    }
}

/// `wd_{event ms:013}_{event id}`: readable back into the record's sort key.
pub fn delivery_id(created_ms: i64, event_id: &str) -> String {
    format!("wd_{:013}_{event_id}", created_ms.max(0))
}

/// The event time and event id a delivery id names.
pub fn parse_delivery_id(id: &str) -> Option<(i64, &str)> {
    let (ms, event) = id.strip_prefix("wd_")?.split_once('_')?;
    (ms.len() == 13 && !event.is_empty()).then_some(())?;
    Some((ms.parse().ok()?, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_stripes_scheme_and_verifies_only_with_its_secret_body_and_time() {
        // HMAC-SHA256("whsec_test", "1700000000.{}") computed independently (Python's hmac).
        let sig = signature("whsec_test", 1_700_000_000, "{}");
        assert_eq!(sig, "35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91");
        let h = signature_header(&["whsec_test"], 1_700_000_000, "{}");
        assert_eq!(h, format!("t=1700000000,v1={sig}"));
        assert!(verify("whsec_test", &h, "{}", 1_700_000_100, 300));
        assert!(!verify("whsec_other", &h, "{}", 1_700_000_100, 300));
        assert!(!verify("whsec_test", &h, "{ }", 1_700_000_100, 300));
        assert!(!verify("whsec_test", &h, "{}", 1_700_000_400, 300), "too old");
        let both = signature_header(&["whsec_new", "whsec_test"], 1_700_000_000, "{}");
        assert!(
            verify("whsec_test", &both, "{}", 1_700_000_000, 300)
                && verify("whsec_new", &both, "{}", 1_700_000_000, 300)
        );
    }

    #[test]
    fn an_entity_budget_alert_goes_out_as_entity_budget_alert() {
        let detail = json!({"entity": "user:ann", "percent": 80, "spent": 8, "monthly_limit": 10, "balance": 40,
            "event_id": "evt_2", "account_id": "acme", "occurred_at": "x", "occurred_ms": 1_796_083_200_123i64});
        let out = Outgoing::from_bus(&json!({"detail-type": "EntityBudgetAlert", "detail": detail}))
            .expect("sent")
            .expect("reads");
        let body: Value = serde_json::from_str(&out.body).expect("json");
        assert_eq!(body["type"], "entity.budget_alert");
        assert_eq!(body["data"]["entity"], "user:ann");
        assert_eq!(body["data"]["percent"], 80);
        assert!(EVENT_TYPES.contains(&"entity.budget_alert") && DETAIL_TYPES.contains(&"EntityBudgetAlert"));
    }

    #[test]
    fn events_map_to_the_types_receivers_subscribe_to_and_the_body_is_the_rules_shape() {
        let detail = json!({"threshold": 5, "balance": 4, "previous_balance": 6, "cause": "usage", "version": 3,
            "event_id": "evt_1", "account_id": "acme", "occurred_at": "x", "occurred_ms": 1_796_083_200_123i64});
        let out = Outgoing::from_bus(&json!({"detail-type": "BalanceAlert", "detail": detail}))
            .expect("sent")
            .expect("reads");
        let body: Value = serde_json::from_str(&out.body).expect("json");
        assert_eq!(body["id"], "evt_1");
        assert_eq!(body["type"], "balance.alert");
        assert_eq!(body["created"], 1_796_083_200);
        assert_eq!(body["account_id"], "acme");
        assert_eq!(
            body["data"],
            json!({"threshold": 5, "balance": 4, "previous_balance": 6, "cause": "usage", "version": 3})
        );
        assert_eq!(webhook_type("CreditsAdded", &json!({"kind": "purchase"})), Some("purchase.succeeded"));
        assert_eq!(webhook_type("CreditsAdded", &json!({"kind": "auto_recharge"})), None);
        assert_eq!(webhook_type("PurchaseProcessing", &json!({})), None);
        let mapped: Vec<_> =
            DETAIL_TYPES.iter().filter_map(|d| webhook_type(d, &json!({"kind": "purchase"}))).collect();
        assert_eq!(mapped, EVENT_TYPES.to_vec(), "every detail type sent maps to one webhook type, in order");
        assert!(Outgoing::from_bus(&json!({"detail-type": "BalanceLow", "detail": {"balance": 1}}))
            .expect("ours")
            .is_err());
    }

    #[test]
    fn retries_back_off_inside_the_window_and_the_settings_read_from_the_environment() {
        let s = WebhookSettings::default();
        assert!(s.delay_after(1) <= 60, "the first retry comes within a minute");
        assert!((1..9).all(|n| s.delay_after(n + 1) >= s.delay_after(n)));
        let mut at = 0;
        let mut n = 1;
        while let Some(due) = s.next_due(n, 0, at) {
            at = due;
            n += 1;
        }
        assert!(at <= 72 * 3_600_000 && at > 64 * 3_600_000, "retries run to near the 72 h window: {at}");
        let env = |k: &str| match k {
            "TOPUP_WEBHOOK_RETRY_SCHEDULE" => Some("1, 2,4".to_string()),
            "TOPUP_WEBHOOK_ALLOW_LOOPBACK" => Some("true".to_string()),
            "TOPUP_WEBHOOK_RETRY_WINDOW" => Some("300".to_string()),
            _ => None,
        };
        let s = WebhookSettings::from_lookup(&env).expect("reads");
        assert_eq!((s.retry_schedule.clone(), s.allow_loopback, s.retry_window_s), (vec![1, 2, 4], true, 300));
        assert_eq!(s.delay_after(7), 4);
        let bad = |k: &str| (k == "TOPUP_WEBHOOK_RETRY_SCHEDULE").then(|| "1,0".to_string());
        assert!(WebhookSettings::from_lookup(&bad).is_err());
    }

    fn endpoint() -> Endpoint {
        serde_json::from_value(json!({"id": "we_1", "url": "https://example.com/h", "events": ["*"],
            "status": "enabled", "secret": "whsec_0", "description": null, "contact_email": null,
            "created_at": 0, "failing_since": null, "disabled_at": null, "version": 1}))
        .expect("reads")
    }

    #[test]
    fn every_rotated_out_secret_signs_for_a_day_from_its_own_rotation_at_most_ten() {
        let h = 3_600_000;
        let mut e = endpoint();
        e.rotate("whsec_1".into(), 0);
        e.rotate("whsec_2".into(), h);
        assert_eq!(e.signing_secrets(2 * h), ["whsec_2", "whsec_1", "whsec_0"], "a second rotation keeps the first");
        assert_eq!(e.signing_secrets(24 * h - 1), ["whsec_2", "whsec_1", "whsec_0"]);
        assert_eq!(e.signing_secrets(24 * h), ["whsec_2", "whsec_1"], "each ends a day after its own rotation");
        assert_eq!(e.signing_secrets(25 * h), ["whsec_2"]);
        // A rotation drops the ones past their end.
        e.rotate("whsec_3".into(), 24 * h + 1);
        let kept: Vec<&str> = e.previous_secrets.iter().map(|p| p.secret.as_str()).collect();
        assert_eq!(kept, ["whsec_1", "whsec_2"]);
        // Past ten within a day, the oldest goes early.
        for i in 4..=20 {
            e.rotate(format!("whsec_{i}"), 25 * h + i);
        }
        assert_eq!(e.previous_secrets.len(), MAX_PREVIOUS_SECRETS);
        assert_eq!(e.signing_secrets(26 * h).len(), MAX_PREVIOUS_SECRETS + 1);
        assert_eq!(e.previous_secrets[0].secret, "whsec_10");
        assert_eq!(e.signing_secrets(26 * h)[..2], ["whsec_20", "whsec_19"]);
    }

    #[test]
    fn an_endpoint_stored_with_one_previous_secret_reads_back_with_it() {
        let mut old = serde_json::to_value(endpoint()).expect("json");
        let map = old.as_object_mut().expect("object");
        map.remove("previous_secrets");
        map.insert("previous_secret".into(), json!("whsec_old"));
        map.insert("previous_until".into(), json!(5_000));
        let e: Endpoint = serde_json::from_value(old).expect("an old record reads");
        assert_eq!(e.signing_secrets(4_999), ["whsec_0", "whsec_old"]);
        assert_eq!(e.signing_secrets(5_000), ["whsec_0"]);
        // Written back, it is the list (and code from before the list reads it, without one).
        let written = serde_json::to_value(&e).expect("json");
        assert_eq!(written["previous_secrets"], json!([{"secret": "whsec_old", "until": 5_000}]));
        assert!(written.get("previous_secret").is_none());
        let again: Endpoint = serde_json::from_value(written).expect("reads");
        assert!(again == e);
    }

    #[test]
    fn a_delivery_id_names_its_event() {
        let id = delivery_id(1_796_083_200_123, "evt_abc");
        assert_eq!(id, "wd_1796083200123_evt_abc");
        assert_eq!(parse_delivery_id(&id), Some((1_796_083_200_123, "evt_abc")));
        assert_eq!(parse_delivery_id("wd_12_evt"), None);
        assert!(id.len() <= crate::http::MAX_ID_LEN);
    }
}
