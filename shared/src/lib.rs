//! topup's shared library: the domain (accounts, ledger, profiles), the ports to AWS (store,
//! events) and the HTTP edge every function uses. "Where is a debit applied?" — `service`.

pub mod account;
pub mod auth;
pub mod clock;
pub mod config;
pub mod dynamo;
pub mod error;
pub mod events;
pub mod http;
pub mod ledger;
pub mod money;
pub mod notify;
pub mod pricing;
pub mod profile;
pub mod purchase;
pub mod service;
pub mod store;

pub use config::Config;
pub use error::ApiError;

/// The production wiring: DynamoDB store and EventBridge bus.
pub type LiveCredits = service::Credits<dynamo::DynamoStore, events::EventBridgeBus>;

/// Builds the live service from configuration and one loaded AWS config (clients built once).
pub fn live(config: &Config, aws: &aws_config::SdkConfig) -> LiveCredits {
    let store = dynamo::DynamoStore::new(aws_sdk_dynamodb::Client::new(aws), config.table.clone());
    let bus = events::EventBridgeBus::new(aws_sdk_eventbridge::Client::new(aws), config.event_bus.clone());
    service::Credits::new(config.profile.clone(), store, bus)
}
