//! The Stripe secrets from AWS Secrets Manager (rules §13): read at init, kept in memory, and
//! read again once they are older than `REFRESH`, so a rotated key or webhook secret is picked
//! up without a redeploy. They never sit in an environment variable and never reach a log.
//!
//! The secret (`TOPUP_STRIPE_SECRET_ID`, a name or an ARN) is JSON with `secret_key` (the
//! Stripe secret key) and `webhook_secret` (the webhook endpoint's signing secret, `whsec_…`).

use std::time::{Duration, Instant};

use aws_sdk_secretsmanager::error::DisplayErrorContext;
use serde::Deserialize;

use crate::secret::Secret;

/// How long a value read from Secrets Manager is used before it is read again.
pub const REFRESH: Duration = Duration::from_secs(300);

/// The Stripe secrets of a deployment.
#[derive(Debug, Clone)]
pub struct StripeSecrets {
    pub secret_key: Secret,
    pub webhook_secret: Option<Secret>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SecretsUnavailable(pub String);

#[derive(Deserialize)]
struct Stored {
    secret_key: String,
    #[serde(default)]
    webhook_secret: Option<String>,
}

/// One secret, cached: `get` answers from memory while it is fresh, and reads it again after
/// `refresh`. When a read fails and a value is cached, the cached value is used (and the read
/// is tried again on the next call): a Secrets Manager outage does not stop payments.
pub struct SecretSource {
    client: aws_sdk_secretsmanager::Client,
    id: String,
    refresh: Duration,
    cached: tokio::sync::RwLock<Option<(Instant, StripeSecrets)>>,
}

impl SecretSource {
    pub fn new(client: aws_sdk_secretsmanager::Client, id: impl Into<String>) -> Self {
        SecretSource { client, id: id.into(), refresh: REFRESH, cached: tokio::sync::RwLock::new(None) }
    }

    /// The same source with another refresh interval.
    pub fn refreshing_every(mut self, refresh: Duration) -> Self {
        self.refresh = refresh;
        self
    }

    /// The secrets, from memory while fresh.
    pub async fn get(&self) -> Result<StripeSecrets, SecretsUnavailable> {
        if let Some((at, s)) = self.cached.read().await.as_ref() {
            if at.elapsed() < self.refresh {
                return Ok(s.clone());
            }
        }
        let mut cached = self.cached.write().await;
        if let Some((at, s)) = cached.as_ref() {
            if at.elapsed() < self.refresh {
                return Ok(s.clone());
            }
        }
        match self.read().await {
            Ok(s) => {
                *cached = Some((Instant::now(), s.clone()));
                Ok(s)
            }
            Err(e) => match cached.as_ref() {
                Some((_, s)) => {
                    tracing::warn!(error = %e, "secret not refreshed; using the value read before");
                    Ok(s.clone())
                }
                None => Err(e),
            },
        }
    }

    async fn read(&self) -> Result<StripeSecrets, SecretsUnavailable> {
        let out = self
            .client
            .get_secret_value()
            .secret_id(&self.id)
            .send()
            .await
            .map_err(|e| SecretsUnavailable(format!("GetSecretValue({}): {}", self.id, DisplayErrorContext(&e))))?;
        let text = out.secret_string().ok_or_else(|| SecretsUnavailable(format!("{} has no string value", self.id)))?;
        // Never echo the value: only say which part was wrong.
        let stored: Stored = serde_json::from_str(text).map_err(|_| {
            SecretsUnavailable(format!("{} must be JSON with `secret_key` and `webhook_secret`", self.id))
        })?;
        Ok(StripeSecrets {
            secret_key: Secret::new(stored.secret_key),
            webhook_secret: stored.webhook_secret.filter(|s| !s.is_empty()).map(Secret::new),
        })
    }
}
