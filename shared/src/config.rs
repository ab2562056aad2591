//! Configuration from the environment, read once in each function's `main`.

use crate::payments::CheckoutUi;
use crate::profile::{Profile, ProfileError};
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {0} is invalid: {1}")]
    Invalid(&'static str, String),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A secret the configuration names cannot be read at start-up.
    #[error("{0}")]
    SecretUnreadable(String),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub profile: Profile,
    /// This deployment's name (`TOPUP_STACK`, the SAM stack's name; `topup` by default): Stripe
    /// idempotency keys and metadata carry it, so stacks sharing one Stripe account never
    /// collide, and the webhook ignores events for another stack.
    pub stack: String,
    /// DynamoDB table of accounts, ledger, holds and idempotency keys (`TOPUP_TABLE`).
    pub table: String,
    /// EventBridge bus for domain events (`TOPUP_EVENT_BUS`).
    pub event_bus: String,
    /// HS256 secret for `Authorization: Bearer` tokens when no API Gateway authorizer ran
    /// (`TOPUP_LOCAL_JWT_SECRET`). The SAM template never sets it.
    pub local_jwt_secret: Option<Secret>,
    /// The OAuth client id of the product's backend (`TOPUP_SERVICE_CLIENT_ID`, the template's
    /// `ServiceClientId`): a token whose `client_id` (else `azp`) is this is the service (rules
    /// §16). Unset, no token is the service.
    pub service_client_id: Option<String>,
    /// Sender of notification emails (`TOPUP_EMAIL_FROM`, a verified SES identity).
    pub email_from: Option<String>,
    /// The billing page notifications link to (`TOPUP_BILLING_URL`).
    pub billing_url: Option<String>,
    /// The Secrets Manager secret (name or ARN) holding the Stripe secret key and the webhook's
    /// signing secret (`TOPUP_STRIPE_SECRET_ID`); the values are read at init and cached
    /// (`adapters::secrets`), never put in the environment.
    pub stripe_secret_id: Option<String>,
    /// Another Stripe API base URL, for the local emulator (`TOPUP_STRIPE_API_BASE`).
    pub stripe_api_base: Option<String>,
    /// Stripe's publishable key for the billing page (`TOPUP_STRIPE_PUBLISHABLE_KEY`; public).
    pub stripe_publishable_key: Option<String>,
    /// How Checkout is shown (`TOPUP_CHECKOUT_UI`: `embedded`, the default, or `hosted`) and
    /// where it returns: `TOPUP_CHECKOUT_RETURN_URL` (embedded), `TOPUP_CHECKOUT_SUCCESS_URL`
    /// and `TOPUP_CHECKOUT_CANCEL_URL` (hosted), each defaulting to the billing page. `None`
    /// when neither those nor `TOPUP_BILLING_URL` are set.
    pub checkout_ui: Option<CheckoutUi>,
    /// Webhooks out: the retry queue, whether loopback endpoints are allowed, the retry
    /// schedule and window, when a failing endpoint is disabled (`TOPUP_WEBHOOK_*`).
    pub webhooks: crate::webhooks::WebhookSettings,
    /// The most credits (micro-credits) support may add or take back in one adjustment
    /// (`TOPUP_SUPPORT_ADJUST_LIMIT`, in credits; 100 by default; rules §19).
    pub support_adjust_limit: i64,
    /// The dead-letter queues the console shows the depth of (`TOPUP_DEAD_LETTER_QUEUES`: queue
    /// URLs, comma-separated).
    pub dead_letter_queues: Vec<String>,
}

/// Support's adjustment limit when none is configured: 100 credits.
pub const DEFAULT_SUPPORT_ADJUST_LIMIT: i64 = 100 * crate::money::MICROS_PER_CREDIT;

/// A number of credits (`12`, `12.5`, at most six decimals) as micro-credits.
pub fn parse_credits(s: &str) -> Option<i64> {
    let s = s.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let frac: i64 = if frac.is_empty() { 0 } else { format!("{frac:0<6}").parse().ok()? };
    whole.checked_mul(crate::money::MICROS_PER_CREDIT)?.checked_add(frac)
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let profile_name = get("TOPUP_PROFILE").ok_or(ConfigError::Missing("TOPUP_PROFILE"))?;
        let mut profile = Profile::load(profile_name.trim())?;
        // The deployment may tax where the profile does not, or stop taxing (rules §20).
        if let Some(t) = get("TOPUP_TAX").filter(|s| !s.trim().is_empty()) {
            profile.tax = crate::profile::Tax::parse(&t)
                .ok_or_else(|| ConfigError::Invalid("TOPUP_TAX", "must be `none` or `stripe_automatic`".into()))?;
        }
        let stack = get("TOPUP_STACK").filter(|s| !s.is_empty()).unwrap_or_else(|| "topup".into());
        if stack.len() > 64 || !stack.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ConfigError::Invalid("TOPUP_STACK", "must be 1 to 64 letters, digits or hyphens".into()));
        }
        let table = get("TOPUP_TABLE").unwrap_or_else(|| "topup".into());
        let event_bus = get("TOPUP_EVENT_BUS").unwrap_or_else(|| "topup".into());
        let local_jwt_secret = match get("TOPUP_LOCAL_JWT_SECRET") {
            None => None,
            Some(s) if s.len() < 16 => {
                return Err(ConfigError::Invalid("TOPUP_LOCAL_JWT_SECRET", "must be at least 16 bytes".into()))
            }
            Some(s) => Some(Secret::new(s)),
        };
        let service_client_id = get("TOPUP_SERVICE_CLIENT_ID").map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let email_from = get("TOPUP_EMAIL_FROM").filter(|s| !s.is_empty());
        if let Some(f) = &email_from {
            if !crate::account::valid_email(f) {
                return Err(ConfigError::Invalid("TOPUP_EMAIL_FROM", "must be an email address".into()));
            }
        }
        // An http(s) URL from `name`, else `default`; empty counts as unset.
        let url = |name: &'static str, default: Option<String>| -> Result<Option<String>, ConfigError> {
            match get(name).filter(|s| !s.is_empty()).or(default) {
                Some(u) if !u.starts_with("https://") && !u.starts_with("http://") => {
                    Err(ConfigError::Invalid(name, "must be an http(s) URL".into()))
                }
                other => Ok(other),
            }
        };
        let billing_url = url("TOPUP_BILLING_URL", None)?;
        let stripe_secret_id = get("TOPUP_STRIPE_SECRET_ID").filter(|s| !s.is_empty());
        let stripe_api_base = get("TOPUP_STRIPE_API_BASE").filter(|s| !s.is_empty());
        let stripe_publishable_key = get("TOPUP_STRIPE_PUBLISHABLE_KEY").filter(|s| !s.is_empty());
        if let Some(k) = &stripe_publishable_key {
            if !k.starts_with("pk_") {
                return Err(ConfigError::Invalid(
                    "TOPUP_STRIPE_PUBLISHABLE_KEY",
                    "must be a publishable key (pk_...)".into(),
                ));
            }
        }
        // Stripe replaces `{CHECKOUT_SESSION_ID}` in return URLs with the session's id.
        let back = billing_url.as_ref().map(|b| {
            let sep = if b.contains('?') { '&' } else { '?' };
            format!("{b}{sep}checkout_session={{CHECKOUT_SESSION_ID}}")
        });
        let checkout_ui = match get("TOPUP_CHECKOUT_UI").as_deref().map(str::trim) {
            None | Some("") | Some("embedded") => {
                url("TOPUP_CHECKOUT_RETURN_URL", back)?.map(|return_url| CheckoutUi::Embedded { return_url })
            }
            Some("hosted") => {
                match (url("TOPUP_CHECKOUT_SUCCESS_URL", back)?, url("TOPUP_CHECKOUT_CANCEL_URL", billing_url.clone())?)
                {
                    (Some(success_url), Some(cancel_url)) => Some(CheckoutUi::Hosted { success_url, cancel_url }),
                    _ => None,
                }
            }
            Some(_) => return Err(ConfigError::Invalid("TOPUP_CHECKOUT_UI", "must be `embedded` or `hosted`".into())),
        };
        let webhooks = crate::webhooks::WebhookSettings::from_lookup(&get)
            .map_err(|(name, why)| ConfigError::Invalid(name, why))?;
        let support_adjust_limit = match get("TOPUP_SUPPORT_ADJUST_LIMIT").filter(|s| !s.trim().is_empty()) {
            None => DEFAULT_SUPPORT_ADJUST_LIMIT,
            Some(v) => parse_credits(&v).filter(|m| *m <= crate::accounts::MAX_ADJUSTMENT).ok_or_else(|| {
                ConfigError::Invalid("TOPUP_SUPPORT_ADJUST_LIMIT", "must be a number of credits, like 100 or 12.5".into())
            })?,
        };
        let dead_letter_queues = get("TOPUP_DEAD_LETTER_QUEUES")
            .map(|v| v.split(',').map(|q| q.trim().to_string()).filter(|q| !q.is_empty()).collect())
            .unwrap_or_default();
        Ok(Config {
            profile,
            stack,
            table,
            event_bus,
            local_jwt_secret,
            service_client_id,
            email_from,
            billing_url,
            stripe_secret_id,
            stripe_api_base,
            stripe_publishable_key,
            checkout_ui,
            webhooks,
            support_adjust_limit,
            dead_letter_queues,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supports_adjustment_limit_is_credits() {
        assert_eq!(parse_credits("100"), Some(100_000_000));
        assert_eq!(parse_credits("12.5"), Some(12_500_000));
        assert_eq!(parse_credits("0.000001"), Some(1));
        for bad in ["", "-1", "1.0000001", "1e3", "abc", ".5", "99999999999999999999"] {
            assert_eq!(parse_credits(bad), None, "{bad}");
        }
        let env = |v: &'static str| move |k: &str| match k {
            "TOPUP_PROFILE" => Some("usd-overage".to_string()),
            "TOPUP_SUPPORT_ADJUST_LIMIT" => Some(v.to_string()),
            _ => None,
        };
        assert_eq!(Config::from_lookup(env("25")).unwrap().support_adjust_limit, 25_000_000);
        assert_eq!(Config::from_lookup(env("")).unwrap().support_adjust_limit, DEFAULT_SUPPORT_ADJUST_LIMIT);
        assert!(Config::from_lookup(env("lots")).unwrap_err().to_string().contains("TOPUP_SUPPORT_ADJUST_LIMIT"));
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("sk_live_123");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
    }

    #[test]
    fn profile_is_required_and_validated() {
        let e = Config::from_lookup(|_| None).unwrap_err();
        assert!(e.to_string().contains("TOPUP_PROFILE"));
        let e = Config::from_lookup(|k| (k == "TOPUP_PROFILE").then(|| "gold".to_string())).unwrap_err();
        assert!(e.to_string().contains("unknown profile `gold`"));
        let c = Config::from_lookup(|k| (k == "TOPUP_PROFILE").then(|| "org-runs".to_string())).unwrap();
        assert_eq!((c.profile.name.as_str(), c.table.as_str()), ("org-runs", "topup"));
        assert_eq!(c.checkout_ui, None, "no billing page, no return URL");
        assert_eq!(c.profile.tax, crate::profile::Tax::None, "no tax unless configured");
    }

    #[test]
    fn the_deployment_chooses_the_tax() {
        let env = |tax: &'static str| {
            move |k: &str| match k {
                "TOPUP_PROFILE" => Some("usd-overage".to_string()),
                "TOPUP_TAX" => Some(tax.to_string()),
                _ => None,
            }
        };
        let c = Config::from_lookup(env("stripe_automatic")).unwrap();
        assert_eq!(c.profile.tax, crate::profile::Tax::StripeAutomatic);
        assert_eq!(Config::from_lookup(env("none")).unwrap().profile.tax, crate::profile::Tax::None);
        let e = Config::from_lookup(env("vat")).unwrap_err();
        assert!(e.to_string().contains("TOPUP_TAX"), "{e}");
    }

    #[test]
    fn checkout_returns_to_the_billing_page_unless_told_otherwise() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                std::iter::once(("TOPUP_PROFILE", "usd-overage"))
                    .chain(pairs.iter().copied())
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = Config::from_lookup(env(&[("TOPUP_BILLING_URL", "https://app.example.com/billing")])).unwrap();
        assert_eq!(
            c.checkout_ui,
            Some(CheckoutUi::Embedded {
                return_url: "https://app.example.com/billing?checkout_session={CHECKOUT_SESSION_ID}".into()
            })
        );
        let c = Config::from_lookup(env(&[
            ("TOPUP_BILLING_URL", "https://app.example.com/billing?tab=credits"),
            ("TOPUP_CHECKOUT_UI", "hosted"),
            ("TOPUP_CHECKOUT_CANCEL_URL", "https://app.example.com/cancelled"),
        ]))
        .unwrap();
        assert_eq!(
            c.checkout_ui,
            Some(CheckoutUi::Hosted {
                success_url: "https://app.example.com/billing?tab=credits&checkout_session={CHECKOUT_SESSION_ID}"
                    .into(),
                cancel_url: "https://app.example.com/cancelled".into(),
            })
        );
        let e = Config::from_lookup(env(&[("TOPUP_CHECKOUT_UI", "popup")])).unwrap_err();
        assert!(e.to_string().contains("TOPUP_CHECKOUT_UI"));
        let e = Config::from_lookup(env(&[("TOPUP_CHECKOUT_RETURN_URL", "ftp://x")])).unwrap_err();
        assert!(e.to_string().contains("TOPUP_CHECKOUT_RETURN_URL"));
    }
}
