//! The live parts of webhooks out: the HTTPS client deliveries are POSTed with, and the SQS
//! queue follow-ups wait on.
//!
//! The client connects only to addresses `webhooks::url::allowed` lets through: a name is
//! resolved by our own resolver, which drops every other address (so a name that resolves to
//! 10.0.0.1 or 169.254.169.254 at delivery time reaches nothing), and a URL naming an address
//! is checked before the request. Redirects are not followed (a 3xx is a failed attempt, as
//! for Stripe's webhooks). No answer within 10 seconds is a failed attempt.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::webhooks::deliver::{Answer, FollowUp, RetryQueue, Sender};
use crate::webhooks::{url, SIGNATURE_HEADER};

/// How long a receiver has to answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(10);
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// Resolves names to the addresses a delivery may reach, and only those.
#[derive(Clone)]
pub struct CheckedResolver {
    allow_loopback: bool,
}

type Resolving = Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower_service::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_loopback = self.allow_loopback;
        Box::pin(async move {
            // The connector sets the URL's port on each address.
            let found: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let ok: Vec<SocketAddr> =
                found.iter().copied().filter(|a| url::allowed(a.ip(), allow_loopback).is_ok()).collect();
            if ok.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    "the host resolves to no address deliveries may reach",
                ));
            }
            Ok(ok.into_iter())
        })
    }
}

type Https = hyper_rustls::HttpsConnector<HttpConnector<CheckedResolver>>;

/// The live `Sender`.
pub struct HttpSender {
    client: Client<Https, Full<Bytes>>,
    allow_loopback: bool,
}

impl HttpSender {
    /// Trusts the system's root certificates (the Lambda runtime's).
    pub fn new(allow_loopback: bool) -> std::io::Result<HttpSender> {
        let mut http = HttpConnector::new_with_resolver(CheckedResolver { allow_loopback });
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_WITHIN));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(HttpSender { client: Client::builder(TokioExecutor::new()).build(https), allow_loopback })
    }
}

impl Sender for HttpSender {
    async fn post(&self, target: &str, signature: &str, body: &str) -> Answer {
        // The URL was checked when the endpoint was made; the configuration may have changed.
        if let Err(e) = url::parse(target, self.allow_loopback) {
            return Answer::Failed(e.to_string());
        }
        let req = hyper::Request::post(target)
            .header("content-type", "application/json")
            .header("user-agent", "topup-webhooks/1")
            .header(SIGNATURE_HEADER, signature)
            .body(Full::new(Bytes::from(body.to_string())));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Answer::Failed(format!("The request could not be made: {e}.")),
        };
        match tokio::time::timeout(ANSWER_WITHIN, self.client.request(req)).await {
            Err(_) => Answer::Failed(format!("No answer within {} seconds.", ANSWER_WITHIN.as_secs())),
            Ok(Err(e)) => {
                // The connection error's chain names the cause (refused, TLS, address not allowed).
                let mut why = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    why = format!("{why}: {s}");
                    source = s.source();
                }
                Answer::Failed(format!("No answer: {why}."))
            }
            Ok(Ok(resp)) => Answer::Status(resp.status().as_u16()),
        }
    }
}

/// The live `RetryQueue`: SQS, each follow-up a message delayed by `DelaySeconds`.
pub struct SqsRetryQueue {
    client: aws_sdk_sqs::Client,
    /// `None` when `TOPUP_WEBHOOK_QUEUE_URL` is not configured: every send then fails (and
    /// says why), so nothing pretends to be scheduled.
    url: Option<String>,
}

impl SqsRetryQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: Option<String>) -> Self {
        SqsRetryQueue { client, url }
    }
}

impl crate::console::QueueDepths for SqsRetryQueue {
    async fn depth(&self, url: &str) -> Result<u64, String> {
        use aws_sdk_sqs::types::QueueAttributeName as A;
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(A::ApproximateNumberOfMessages)
            .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| format!("GetQueueAttributes: {}", DisplayErrorContext(&e)))?;
        let count = |a: A| {
            out.attributes().and_then(|m| m.get(&a)).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        };
        Ok(count(A::ApproximateNumberOfMessages) + count(A::ApproximateNumberOfMessagesNotVisible))
    }
}

impl RetryQueue for SqsRetryQueue {
    async fn send(&self, f: &FollowUp, delay_s: u32) -> Result<(), String> {
        let url = self.url.as_ref().ok_or("TOPUP_WEBHOOK_QUEUE_URL is not configured")?;
        let body = serde_json::to_string(f).map_err(|e| e.to_string())?;
        self.client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .delay_seconds(i32::try_from(delay_s.min(900)).unwrap_or(900))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                let why = format!("SendMessage: {}", DisplayErrorContext(&e));
                tracing::warn!(error = %why, "webhook follow-up not queued");
                why
            })
    }
}
