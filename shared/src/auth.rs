//! Identity (rules §5). Behind API Gateway the JWT authorizer has validated the token and the
//! claims arrive in the request context. Without an authorizer, a `Bearer` token signed HS256
//! with `TOPUP_LOCAL_JWT_SECRET` is accepted; without that secret, such a request is 401.

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
    /// The one account the caller may touch; `None` for a service token that may touch any.
    pub account_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Service,
    Person(String),
}

/// What a route needs of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Service,
    View,
    Billing,
}

impl Identity {
    /// Builds an identity from claims; any claim missing or unusable is 401.
    pub fn from_claims(claims: &HashMap<String, String>) -> Result<Identity, ApiError> {
        let sub = claims.get("sub").filter(|s| !s.is_empty()).ok_or(ApiError::Unauthenticated)?;
        let role = claims.get("role").ok_or(ApiError::Unauthenticated)?;
        let account = claims.get("account_id").map(String::as_str).filter(|s| !s.is_empty());
        let role = match role.as_str() {
            "service" => Role::Service,
            r if PERSON_ROLES.contains(&r) => Role::Person(r.to_string()),
            _ => return Err(ApiError::Unauthenticated),
        };
        let account_id = match (&role, account) {
            (Role::Service, None | Some("*")) => None,
            (Role::Service, Some(a)) => Some(a.to_string()),
            // rules §11: a person's token without `account_id`, or with `*`, is 401.
            (Role::Person(_), None | Some("*")) => return Err(ApiError::Unauthenticated),
            (Role::Person(_), Some(a)) => Some(a.to_string()),
        };
        Ok(Identity { sub: sub.clone(), role, account_id })
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
    for (k, v) in [("sub", claims.sub), ("role", claims.role), ("account_id", claims.account_id)] {
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
        let id = Identity::from_claims(&c).unwrap();
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

    #[test]
    fn roles_and_tenants() {
        let profile = Profile::load("voice-minutes").unwrap();
        let claims = |role: &str, acct: Option<&str>| {
            let mut m = HashMap::from([("sub".to_string(), "u".to_string()), ("role".to_string(), role.to_string())]);
            if let Some(a) = acct {
                m.insert("account_id".into(), a.into());
            }
            m
        };
        let editor = Identity::from_claims(&claims("editor", Some("a1"))).unwrap();
        assert!(editor.authorize(&profile, Access::View, "a1").is_ok());
        assert_eq!(editor.authorize(&profile, Access::Billing, "a1"), Err(ApiError::Forbidden));
        assert_eq!(editor.authorize(&profile, Access::View, "a2"), Err(ApiError::Forbidden));
        assert_eq!(editor.authorize(&profile, Access::Service, "a1"), Err(ApiError::Forbidden));
        let member = Identity::from_claims(&claims("member", Some("a1"))).unwrap();
        assert_eq!(member.authorize(&profile, Access::View, "a1"), Err(ApiError::Forbidden));
        let svc = Identity::from_claims(&claims("service", None)).unwrap();
        assert!(svc.authorize(&profile, Access::Service, "anything").is_ok());
        let scoped = Identity::from_claims(&claims("service", Some("a1"))).unwrap();
        assert_eq!(scoped.authorize(&profile, Access::Service, "a2"), Err(ApiError::Forbidden));
        assert_eq!(Identity::from_claims(&claims("owner", None)), Err(ApiError::Unauthenticated));
        assert_eq!(Identity::from_claims(&claims("owner", Some("*"))), Err(ApiError::Unauthenticated));
        assert_eq!(Identity::from_claims(&claims("root", Some("a1"))), Err(ApiError::Unauthenticated));
    }
}
