use lambda_http::{run, service_fn, tracing, Error, Request};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing::init_default_subscriber();
    let config = topup::Config::from_env()?;
    let aws = aws_config::load_from_env().await;
    let credits = topup::live(&config, &aws);
    let webhooks = topup::live_webhook_admin(&config, &aws);
    run(service_fn(|req: Request| async {
        Ok::<_, Error>(credits_api::handle(&config, &webhooks, &credits, req).await)
    }))
    .await
}
