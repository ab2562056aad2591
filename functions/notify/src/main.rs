use lambda_runtime::{run, service_fn, tracing, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let config = topup::Config::from_env()?;
    let aws = aws_config::load_from_env().await;
    let notifier = topup::live_notifier(&config, &aws)?;
    let notifier = &notifier;
    run(service_fn(move |event: LambdaEvent<notify::EventBridgeEvent<Value>>| async move {
        notify::handle(notifier, &event.payload).await.map_err(Error::from)
    }))
    .await
}
