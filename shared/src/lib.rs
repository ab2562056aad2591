//! topup's shared library: the domain (accounts, ledger, profiles), the ports to AWS (store,
//! events) and the HTTP edge every function uses. "Where is a debit applied?" — `service`.

pub mod account;
pub mod accounts;
pub mod adapters;
pub mod alerts;
pub mod audit;
pub mod auth;
pub mod batch;
pub mod broken;
pub mod cause;
pub mod cards;
pub mod check;
pub mod clock;
pub mod config;
pub mod console;
pub mod crediting;
pub mod engine;
pub mod entities;
pub mod error;
pub mod events;
pub mod grants;
pub mod http;
pub mod ids;
pub mod lanes;
pub mod ledger;
pub mod metrics;
pub mod money;
pub mod notify;
pub mod payments;
pub mod pricing;
pub mod profile;
pub mod purchases;
pub mod receipts;
pub mod recharge;
pub mod reconcile;
pub mod refunds;
pub mod secret;
pub mod store;
pub mod sweep;
pub mod usage;
pub mod views;
pub mod webhooks;

pub use config::Config;
/// How an account may be held on several items, as the rest of the crate sees it (see there).
pub use lanes::parts;
pub use error::ApiError;

/// The production wiring: DynamoDB store and EventBridge bus.
pub type LiveCredits = engine::Credits<adapters::dynamo::DynamoStore, adapters::eventbridge::EventBridgeBus>;

/// Builds the live service from configuration and one loaded AWS config (clients built once).
pub fn live(config: &Config, aws: &aws_config::SdkConfig) -> LiveCredits {
    let store = adapters::dynamo::DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), config.table.clone());
    let bus =
        adapters::eventbridge::EventBridgeBus::new(aws_sdk_eventbridge::Client::new(aws), config.event_bus.clone());
    engine::Credits::new(config.profile.clone(), store, bus).for_stack(config.stack.clone())
}

/// The live Stripe client: its key (and the webhook's signing secret) from the Secrets Manager
/// secret `TOPUP_STRIPE_SECRET_ID`, read now (at init) and cached, at `TOPUP_STRIPE_API_BASE`
/// when set. The source is returned too, for the webhook's signing secret.
pub async fn live_stripe(
    config: &Config,
    aws: &aws_config::SdkConfig,
) -> Result<(adapters::stripe::StripePayments, std::sync::Arc<adapters::secrets::SecretSource>), config::ConfigError> {
    let id = config.stripe_secret_id.clone().ok_or(config::ConfigError::Missing("TOPUP_STRIPE_SECRET_ID"))?;
    let secrets =
        std::sync::Arc::new(adapters::secrets::SecretSource::new(aws_sdk_secretsmanager::Client::new(aws), id));
    secrets.get().await.map_err(|e| config::ConfigError::SecretUnreadable(e.to_string()))?;
    let payments = adapters::stripe::StripePayments::rotating(secrets.clone(), config.stripe_api_base.as_deref());
    Ok((payments, secrets))
}

/// The live notifier: DynamoDB for delivery claims, SES v2 and SNS to send. Needs
/// `TOPUP_EMAIL_FROM` and `TOPUP_BILLING_URL`.
pub fn live_notifier(
    config: &Config,
    aws: &aws_config::SdkConfig,
) -> Result<notify::Notifier<adapters::dynamo::DynamoStore, adapters::ses_sns::AwsChannels>, config::ConfigError> {
    let from = config.email_from.clone().ok_or(config::ConfigError::Missing("TOPUP_EMAIL_FROM"))?;
    let billing_url = config.billing_url.clone().ok_or(config::ConfigError::Missing("TOPUP_BILLING_URL"))?;
    Ok(notify::Notifier {
        profile: config.profile.clone(),
        store: adapters::dynamo::DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), config.table.clone()),
        channels: adapters::ses_sns::AwsChannels::new(
            aws_sdk_sesv2::Client::new(aws),
            aws_sdk_sns::Client::new(aws),
            from,
        ),
        billing_url,
    })
}

/// The live webhook deliverer of the `webhooks-out` function: DynamoDB for endpoints and
/// deliveries, the checked HTTPS client, SQS for follow-ups, SES to tell an endpoint's owner
/// it was disabled. Needs `TOPUP_WEBHOOK_QUEUE_URL`.
pub fn live_dispatcher(
    config: &Config,
    aws: &aws_config::SdkConfig,
) -> Result<
    webhooks::deliver::Dispatcher<
        adapters::dynamo::DynamoStore,
        adapters::webhooks_out::HttpSender,
        adapters::webhooks_out::SqsRetryQueue,
        adapters::ses_sns::AwsChannels,
    >,
    config::ConfigError,
> {
    let settings = config.webhooks.clone();
    let queue_url = settings.queue_url.clone().ok_or(config::ConfigError::Missing("TOPUP_WEBHOOK_QUEUE_URL"))?;
    let from = config.email_from.clone().ok_or(config::ConfigError::Missing("TOPUP_EMAIL_FROM"))?;
    let sender = adapters::webhooks_out::HttpSender::new(settings.allow_loopback)
        .map_err(|e| config::ConfigError::Invalid("TOPUP_WEBHOOK_ALLOW_LOOPBACK", format!("no TLS roots: {e}")))?;
    Ok(webhooks::deliver::Dispatcher {
        store: adapters::dynamo::DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), config.table.clone()),
        sender,
        queue: adapters::webhooks_out::SqsRetryQueue::new(aws_sdk_sqs::Client::new(aws), Some(queue_url)),
        channels: adapters::ses_sns::AwsChannels::new(
            aws_sdk_sesv2::Client::new(aws),
            aws_sdk_sns::Client::new(aws),
            from.clone(),
        ),
        settings,
        operator_email: Some(from),
    })
}

/// The endpoints' administration for `credits-api`: the same table, and the retry queue a
/// manual redelivery is put on (when `TOPUP_WEBHOOK_QUEUE_URL` is not set, redelivery answers
/// 503 and says so in the log).
pub fn live_webhook_admin(
    config: &Config,
    aws: &aws_config::SdkConfig,
) -> webhooks::api::WebhookAdmin<adapters::dynamo::DynamoStore, adapters::webhooks_out::SqsRetryQueue> {
    webhooks::api::WebhookAdmin {
        store: adapters::dynamo::DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), config.table.clone()),
        queue: adapters::webhooks_out::SqsRetryQueue::new(
            aws_sdk_sqs::Client::new(aws),
            config.webhooks.queue_url.clone(),
        ),
        settings: config.webhooks.clone(),
    }
}
