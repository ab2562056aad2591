use lambda_runtime::{run, service_fn, tracing, Error, LambdaEvent};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let config = topup::Config::from_env()?;
    let aws = aws_config::load_from_env().await;
    let dispatcher = topup::live_dispatcher(&config, &aws)?;
    let dispatcher = &dispatcher;
    run(service_fn(move |event: LambdaEvent<webhooks_out::Invocation>| async move {
        webhooks_out::handle(dispatcher, &event.payload, topup::clock::now_ms).await.map_err(Error::from)
    }))
    .await
}
