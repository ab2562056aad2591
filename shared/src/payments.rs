//! Charging a saved card through Stripe (SPEC §7, §8), behind a small trait so the domain never
//! sees Stripe's types. Every call that creates something carries an idempotency key derived
//! from our own record (a recharge claim, an account), so a retry — or a recovery after the
//! caller died — gets the first result back instead of a second charge.

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;

use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_core::customer::CreateCustomer;
use stripe_core::payment_intent::{CreatePaymentIntent, CreatePaymentIntentOffSession};
use stripe_core::PaymentIntentStatus;

use crate::config::Secret;

/// How an off-session charge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Succeeded {
        payment_intent_id: String,
    },
    /// Settles later; `payment_intent.succeeded` or `.payment_failed` will tell.
    Processing {
        payment_intent_id: String,
    },
    /// A decline, `authentication_required`, or a PaymentIntent left needing the customer.
    Failed {
        payment_intent_id: Option<String>,
        code: String,
        decline_code: Option<String>,
        message: String,
    },
}

/// Stripe could not be reached or failed on its side: the same call may be retried (with the
/// same idempotency key).
#[derive(Debug, Clone, thiserror::Error)]
#[error("stripe unavailable: {0}")]
pub struct PaymentsUnavailable(pub String);

/// A charge of a saved card with nobody present.
#[derive(Debug, Clone)]
pub struct OffSessionCharge {
    pub customer_id: String,
    pub payment_method_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub idempotency_key: String,
    pub metadata: Vec<(String, String)>,
}

pub trait Payments: Send + Sync {
    /// Creates the Stripe customer of an account (idempotent per account).
    fn create_customer(
        &self,
        account_id: &str,
        email: Option<&str>,
    ) -> impl Future<Output = Result<String, PaymentsUnavailable>> + Send;
    fn charge_off_session(
        &self,
        charge: &OffSessionCharge,
    ) -> impl Future<Output = Result<ChargeOutcome, PaymentsUnavailable>> + Send;
}

pub struct StripePayments {
    client: Client,
}

impl StripePayments {
    /// `base_url` points the client at another Stripe API (the local emulator).
    pub fn new(secret: &Secret, base_url: Option<&str>) -> Result<Self, PaymentsUnavailable> {
        let mut b = ClientBuilder::new(secret.expose());
        if let Some(url) = base_url {
            b = b.url(url);
        }
        b.build().map(|client| StripePayments { client }).map_err(|e| PaymentsUnavailable(e.to_string()))
    }

    pub fn client(&self) -> &Client {
        &self.client
    }
}

fn idempotent(key: &str) -> Result<RequestStrategy, PaymentsUnavailable> {
    IdempotencyKey::new(key).map(RequestStrategy::Idempotent).map_err(|e| PaymentsUnavailable(e.to_string()))
}

/// A Stripe error: retryable (5xx, 429, network) or a final answer about this payment.
fn classify(e: StripeError) -> Result<ChargeOutcome, PaymentsUnavailable> {
    match e {
        StripeError::Stripe(api, status) if status != 429 && status < 500 => Ok(ChargeOutcome::Failed {
            payment_intent_id: api.payment_intent.as_ref().map(|pi| pi.id.to_string()),
            code: api.code.as_ref().map_or("card_error", |c| c.as_str()).to_string(),
            decline_code: api.decline_code.clone(),
            message: api.message.clone().unwrap_or_else(|| "The payment was declined.".into()),
        }),
        other => Err(PaymentsUnavailable(other.to_string())),
    }
}

impl Payments for StripePayments {
    async fn create_customer(&self, account_id: &str, email: Option<&str>) -> Result<String, PaymentsUnavailable> {
        let mut req =
            CreateCustomer::new().metadata(HashMap::from([("topup_account_id".to_string(), account_id.to_string())]));
        if let Some(e) = email {
            req = req.email(e);
        }
        let strategy = idempotent(&format!("topup-customer-{account_id}"))?;
        let customer = req
            .customize()
            .request_strategy(strategy)
            .send(&self.client)
            .await
            .map_err(|e| PaymentsUnavailable(e.to_string()))?;
        Ok(customer.id.to_string())
    }

    async fn charge_off_session(&self, c: &OffSessionCharge) -> Result<ChargeOutcome, PaymentsUnavailable> {
        let currency = stripe_types::Currency::from_str(&c.currency)
            .map_err(|_| PaymentsUnavailable(format!("unknown currency {}", c.currency)))?;
        let req = CreatePaymentIntent::new(c.amount_cents, currency)
            .customer(c.customer_id.clone())
            .payment_method(c.payment_method_id.clone())
            .confirm(true)
            .off_session(CreatePaymentIntentOffSession::Bool(true))
            .metadata(c.metadata.iter().cloned().collect::<HashMap<_, _>>());
        let strategy = idempotent(&c.idempotency_key)?;
        let pi = match req.customize().request_strategy(strategy).send(&self.client).await {
            Ok(pi) => pi,
            Err(e) => return classify(e),
        };
        let id = pi.id.to_string();
        Ok(match pi.status {
            PaymentIntentStatus::Succeeded => ChargeOutcome::Succeeded { payment_intent_id: id },
            PaymentIntentStatus::Processing => ChargeOutcome::Processing { payment_intent_id: id },
            PaymentIntentStatus::RequiresAction => ChargeOutcome::Failed {
                payment_intent_id: Some(id),
                code: "authentication_required".into(),
                decline_code: None,
                message: "Your bank asked to confirm this payment, which can't be done while you're away.".into(),
            },
            other => ChargeOutcome::Failed {
                payment_intent_id: Some(id),
                code: other.as_str().to_string(),
                decline_code: pi.last_payment_error.as_ref().and_then(|e| e.decline_code.clone()),
                message: pi
                    .last_payment_error
                    .as_ref()
                    .and_then(|e| e.message.clone())
                    .unwrap_or_else(|| "The payment did not go through.".into()),
            },
        })
    }
}
