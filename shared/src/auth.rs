//! Identity (rules §5, §16). Behind API Gateway the JWT authorizer has validated the token and
//! the claims arrive in the request context. Without an authorizer, a `Bearer` token signed HS256
//! with `TOPUP_LOCAL_JWT_SECRET` is accepted; without that secret, such a request is 401.
//!
//! The service (the product's backend) is known by its credential: a token of its own OAuth
//! client, whose client id (`client_id`, else `azp`) is the configured service client id. A
//! `role` claim never makes a caller the service: without that client id the token is a
//! person's, and `service` is no role a person may have (401).

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::error::ApiError;
use crate::profile::{Profile, PERSON_ROLES};
use crate::secret::Secret;

/// Who is calling, from verified claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: String,
    pub role: Role,
    /// The one account the caller may touch; `None` for the service or staff, who may touch any.
    pub account_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The product's backend, by its OAuth client id.
    Service,
    /// A person of one account (`owner`, `admin`, `member`, `editor`).
    Person(String),
    /// A person who works across accounts for the team that runs topup (rules §16).
    Staff(Staff),
}

/// Staff roles: people without an `account_id` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staff {
    /// Reads every account.
    Support,
    /// Reads every account, and the deployment's money (the revenue report).
    Finance,
}

impl Staff {
    fn parse(role: &str) -> Option<Staff> {
        match role {
            "support" => Some(Staff::Support),
            "finance" => Some(Staff::Finance),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Staff::Support => "support",
            Staff::Finance => "finance",
        }
    }
}

/// What staff may do besides reading (rules §19). Support: read everything, adjust up to the
/// configured limit (`TOPUP_SUPPORT_ADJUST_LIMIT`), redeliver webhooks. Finance: also refund,
/// void, pause or resume auto-recharge, the revenue report and the audit log. The deployment's
/// service may do all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Read every account, the webhook endpoints and their deliveries, reconciliation and the
    /// dead-letter queues.
    Read,
    /// Adjust an account's credits (support: up to the configured limit).
    Adjust,
    /// Redeliver a webhook delivery.
    Redeliver,
    /// Refund a payment at Stripe.
    Refund,
    /// Void a grant.
    Void,
    /// Pause or resume auto-recharge (its other settings stay the customer's).
    PauseRecharge,
    /// The revenue report.
    Revenue,
    /// Read the audit log.
    Audit,
}

impl Power {
    pub const ALL: [Power; 8] = [
        Power::Read,
        Power::Adjust,
        Power::Redeliver,
        Power::Refund,
        Power::Void,
        Power::PauseRecharge,
        Power::Revenue,
        Power::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Power::Read => "read",
            Power::Adjust => "adjust",
            Power::Redeliver => "redeliver",
            Power::Refund => "refund",
            Power::Void => "void",
            Power::PauseRecharge => "pause_recharge",
            Power::Revenue => "revenue",
            Power::Audit => "audit",
        }
    }
}

impl Staff {
    /// Whether this staff role holds `power`.
    pub fn may(self, power: Power) -> bool {
        match (self, power) {
            (_, Power::Read | Power::Adjust | Power::Redeliver) => true,
            (Staff::Finance, Power::Refund | Power::Void | Power::PauseRecharge | Power::Revenue | Power::Audit) => true,
            (Staff::Support, Power::Refund | Power::Void | Power::PauseRecharge | Power::Revenue | Power::Audit) => false,
        }
    }
}

/// What a route needs of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Service,
    View,
    Billing,
}

impl Identity {
    /// Builds an identity from claims; any claim missing or unusable is 401. `service_client`
    /// is the service's OAuth client id (configuration); a token whose `client_id` (else `azp`)
    /// is that is the service, and no other token is.
    pub fn from_claims(claims: &HashMap<String, String>, service_client: Option<&str>) -> Result<Identity, ApiError> {
        let sub = claims.get("sub").filter(|s| !s.is_empty()).ok_or(ApiError::Unauthenticated)?;
        let account = claims.get("account_id").map(String::as_str).filter(|s| !s.is_empty());
        let client = claims.get("client_id").or_else(|| claims.get("azp")).map(String::as_str).filter(|c| !c.is_empty());
        let is_service = matches!((client, service_client), (Some(c), Some(s)) if !s.is_empty() && c == s);
        let role = if is_service {
            Role::Service
        } else {
            let role = claims.get("role").ok_or(ApiError::Unauthenticated)?;
            match role.as_str() {
                r if PERSON_ROLES.contains(&r) => Role::Person(r.to_string()),
                r => Role::Staff(Staff::parse(r).ok_or(ApiError::Unauthenticated)?),
            }
        };
        let account_id = match (&role, account) {
            (Role::Service, None | Some("*")) => None,
            (Role::Service, Some(a)) => Some(a.to_string()),
            // rules §11: a person's token without `account_id`, or with `*`, is 401.
            (Role::Person(_), None | Some("*")) => return Err(ApiError::Unauthenticated),
            (Role::Person(_), Some(a)) => Some(a.to_string()),
            // Staff work across accounts: a staff role tied to one account is no role we know.
            (Role::Staff(_), None) => None,
            (Role::Staff(_), Some(_)) => return Err(ApiError::Unauthenticated),
        };
        Ok(Identity { sub: sub.clone(), role, account_id })
    }

    /// Is this the service with every account in reach?
    pub fn is_deployment_service(&self) -> bool {
        self.role == Role::Service && self.account_id.is_none()
    }

    /// May this caller use `power` (across accounts)? The deployment's service may use every
    /// one, staff theirs (rules §19), anyone else none: 403 otherwise.
    pub fn may(&self, power: Power) -> Result<(), ApiError> {
        let allowed = match &self.role {
            Role::Service => self.account_id.is_none(),
            Role::Staff(s) => s.may(power),
            Role::Person(_) => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }

    /// The staff role, if this is staff.
    pub fn staff(&self) -> Option<Staff> {
        match self.role {
            Role::Staff(s) => Some(s),
            _ => None,
        }
    }

    /// The role as the audit log records it: `service`, `support`, `finance`, or a person's.
    pub fn role_name(&self) -> &str {
        match &self.role {
            Role::Service => "service",
            Role::Staff(s) => s.as_str(),
            Role::Person(r) => r,
        }
    }

    /// The actor of the changes this caller makes (rules §19).
    pub fn actor(&self) -> crate::audit::Actor {
        crate::audit::Actor { sub: self.sub.clone(), role: self.role_name().to_string() }
    }

    /// May this caller do `access` on `account_id`? 403 for a wrong role or tenant.
    pub fn authorize(&self, profile: &Profile, access: Access, account_id: &str) -> Result<(), ApiError> {
        if let Some(own) = &self.account_id {
            if own != account_id {
                return Err(ApiError::Forbidden);
            }
        }
        let allowed = match (&self.role, access) {
            // The product's backend may act on every route of the accounts it may touch.
            (Role::Service, _) => true,
            (Role::Person(_), Access::Service) => false,
            (Role::Person(r), Access::View) => profile.can_view(r),
            (Role::Person(r), Access::Billing) => profile.can_bill(r),
            // Staff read every account; what else they may do is granted route by route.
            (Role::Staff(_), Access::View) => true,
            (Role::Staff(_), Access::Service | Access::Billing) => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    role: Option<String>,
    account_id: Option<String>,
    client_id: Option<String>,
    azp: Option<String>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// Verifies an HS256 JWT and returns its claims as strings; any defect is 401.
pub fn verify_hs256(token: &str, secret: &Secret, now_secs: i64) -> Result<HashMap<String, String>, ApiError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(ApiError::Unauthenticated);
    };
    let header: Header = decode_json(h)?;
    if header.alg != "HS256" {
        return Err(ApiError::Unauthenticated);
    }
    let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| ApiError::Unauthenticated)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).map_err(|_| ApiError::Unauthenticated)?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&sig).map_err(|_| ApiError::Unauthenticated)?;
    let claims: Claims = decode_json(p)?;
    if claims.exp.is_some_and(|exp| exp <= now_secs) || claims.nbf.is_some_and(|nbf| nbf > now_secs + 60) {
        return Err(ApiError::Unauthenticated);
    }
    let mut out = HashMap::new();
    let named = [
        ("sub", claims.sub),
        ("role", claims.role),
        ("account_id", claims.account_id),
        ("client_id", claims.client_id),
        ("azp", claims.azp),
    ];
    for (k, v) in named {
        if let Some(v) = v {
            out.insert(k.to_string(), v);
        }
    }
    Ok(out)
}

fn decode_json<T: for<'de> Deserialize<'de>>(segment: &str) -> Result<T, ApiError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| ApiError::Unauthenticated)?;
    serde_json::from_slice(&bytes).map_err(|_| ApiError::Unauthenticated)
}

/// Signs an HS256 JWT: for local use (`scripts/token`) and tests.
pub fn sign_hs256(claims: &serde_json::Value, secret: &Secret) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let sig = match Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()) {
        Ok(mut mac) => {
            mac.update(signing_input.as_bytes());
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    format!("{signing_input}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret() -> Secret {
        Secret::new("local-secret-0123456789")
    }

    #[test]
    fn a_signed_token_round_trips_and_a_tampered_one_does_not() {
        let t = sign_hs256(&json!({"sub":"u1","role":"owner","account_id":"acme","exp": 2_000_000_000}), &secret());
        let c = verify_hs256(&t, &secret(), 1_800_000_000).unwrap();
        assert_eq!(c["account_id"], "acme");
        let id = Identity::from_claims(&c, Some(SVC)).unwrap();
        assert_eq!(id.role, Role::Person("owner".into()));
        assert!(verify_hs256(&t, &Secret::new("another-secret-012345"), 1_800_000_000).is_err());
        let mut forged = t.clone();
        forged.replace_range(t.find('.').unwrap() + 2..t.find('.').unwrap() + 3, "A");
        assert!(verify_hs256(&forged, &secret(), 1_800_000_000).is_err());
        assert!(verify_hs256(&t, &secret(), 2_000_000_001).is_err(), "expired");
        assert!(verify_hs256("a.b", &secret(), 0).is_err());
    }

    #[test]
    fn alg_none_is_refused() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let p = URL_SAFE_NO_PAD.encode(br#"{"sub":"u","role":"service"}"#);
        assert!(verify_hs256(&format!("{h}.{p}."), &secret(), 0).is_err());
    }

    const SVC: &str = "topup-local-service";

    fn claims(role: &str, acct: Option<&str>) -> HashMap<String, String> {
        let mut m = HashMap::from([("sub".to_string(), "u".to_string()), ("role".to_string(), role.to_string())]);
        if let Some(a) = acct {
            m.insert("account_id".into(), a.into());
        }
        m
    }

    fn service(acct: Option<&str>) -> HashMap<String, String> {
        let mut m = claims("service", acct);
        m.insert("client_id".into(), SVC.into());
        m
    }

    #[test]
    fn roles_and_tenants() {
        let profile = Profile::load("voice-minutes").unwrap();
        let from = |c: &HashMap<String, String>| Identity::from_claims(c, Some(SVC));
        let editor = from(&claims("editor", Some("a1"))).unwrap();
        assert!(editor.authorize(&profile, Access::View, "a1").is_ok());
        assert_eq!(editor.authorize(&profile, Access::Billing, "a1"), Err(ApiError::Forbidden));
        assert_eq!(editor.authorize(&profile, Access::View, "a2"), Err(ApiError::Forbidden));
        assert_eq!(editor.authorize(&profile, Access::Service, "a1"), Err(ApiError::Forbidden));
        let member = from(&claims("member", Some("a1"))).unwrap();
        assert_eq!(member.authorize(&profile, Access::View, "a1"), Err(ApiError::Forbidden));
        let svc = from(&service(None)).unwrap();
        assert!(svc.is_deployment_service());
        assert!(svc.authorize(&profile, Access::Service, "anything").is_ok());
        let scoped = from(&service(Some("a1"))).unwrap();
        assert_eq!(scoped.authorize(&profile, Access::Service, "a2"), Err(ApiError::Forbidden));
        assert!(!scoped.is_deployment_service());
        assert_eq!(from(&claims("owner", None)), Err(ApiError::Unauthenticated));
        assert_eq!(from(&claims("owner", Some("*"))), Err(ApiError::Unauthenticated));
        assert_eq!(from(&claims("root", Some("a1"))), Err(ApiError::Unauthenticated));
    }

    /// rules §16: `role: service` is not a credential; the client id is.
    #[test]
    fn the_service_is_its_client_id_never_a_role_claim() {
        // A person's token claiming to be the service, with or without an account: 401.
        for acct in [None, Some("a1"), Some("*")] {
            assert_eq!(Identity::from_claims(&claims("service", acct), Some(SVC)), Err(ApiError::Unauthenticated));
        }
        // Another client's id, or a deployment with no service client configured: not the service.
        let mut other = service(None);
        other.insert("client_id".into(), "someone-else".into());
        assert_eq!(Identity::from_claims(&other, Some(SVC)), Err(ApiError::Unauthenticated));
        assert_eq!(Identity::from_claims(&service(None), None), Err(ApiError::Unauthenticated));
        assert_eq!(Identity::from_claims(&service(None), Some("")), Err(ApiError::Unauthenticated));
        // The service's own client: with `azp` (Auth0, Okta) as with `client_id` (Cognito), and
        // whatever (if any) role it carries.
        let mut azp = HashMap::from([("sub".to_string(), "svc@clients".to_string()), ("azp".to_string(), SVC.into())]);
        assert_eq!(Identity::from_claims(&azp, Some(SVC)).unwrap().role, Role::Service);
        azp.insert("role".into(), "member".into());
        assert_eq!(Identity::from_claims(&azp, Some(SVC)).unwrap().role, Role::Service);
        // A person keeps being a person even if their client is named like nothing we know.
        let mut owner = claims("owner", Some("a1"));
        owner.insert("client_id".into(), "web-app".into());
        assert_eq!(Identity::from_claims(&owner, Some(SVC)).unwrap().role, Role::Person("owner".into()));
    }

    /// The role matrix of rules §19: each power, for each caller.
    #[test]
    fn what_each_caller_may_do() {
        let from = |c: &HashMap<String, String>| Identity::from_claims(c, Some(SVC)).unwrap();
        let support = from(&claims("support", None));
        let finance = from(&claims("finance", None));
        let svc = from(&service(None));
        let scoped = from(&service(Some("a1")));
        let owner = from(&claims("owner", Some("a1")));
        for p in Power::ALL {
            let support_may = matches!(p, Power::Read | Power::Adjust | Power::Redeliver);
            assert_eq!(support.may(p).is_ok(), support_may, "support {}", p.as_str());
            assert!(finance.may(p).is_ok(), "finance {}", p.as_str());
            assert!(svc.may(p).is_ok(), "service {}", p.as_str());
            // A service token bound to one account and a person hold no power across accounts.
            assert_eq!(scoped.may(p), Err(ApiError::Forbidden), "scoped {}", p.as_str());
            assert_eq!(owner.may(p), Err(ApiError::Forbidden), "owner {}", p.as_str());
        }
        assert_eq!((support.actor().role.as_str(), svc.actor().role.as_str(), owner.actor().role.as_str()), ("support", "service", "owner"));
    }

    #[test]
    fn staff_read_every_account_and_nothing_more() {
        let profile = Profile::load("voice-minutes").unwrap();
        for (role, staff) in [("support", Staff::Support), ("finance", Staff::Finance)] {
            let who = Identity::from_claims(&claims(role, None), Some(SVC)).unwrap();
            assert_eq!(who.role, Role::Staff(staff));
            assert!(!who.is_deployment_service());
            assert!(who.authorize(&profile, Access::View, "a1").is_ok());
            assert!(who.authorize(&profile, Access::View, "a2").is_ok());
            assert_eq!(who.authorize(&profile, Access::Billing, "a1"), Err(ApiError::Forbidden));
            assert_eq!(who.authorize(&profile, Access::Service, "a1"), Err(ApiError::Forbidden));
            // Staff are not of one account.
            assert_eq!(Identity::from_claims(&claims(role, Some("a1")), Some(SVC)), Err(ApiError::Unauthenticated));
        }
    }
}
