//! The SES v2 and SNS adapter of `Channels`: email and SMS.

use crate::notify::{Channels, Rendered, SendError};

pub struct AwsChannels {
    ses: aws_sdk_sesv2::Client,
    sns: aws_sdk_sns::Client,
    from: String,
}

impl AwsChannels {
    pub fn new(ses: aws_sdk_sesv2::Client, sns: aws_sdk_sns::Client, from: impl Into<String>) -> Self {
        AwsChannels { ses, sns, from: from.into() }
    }
}

impl Channels for AwsChannels {
    async fn email(&self, to: &str, m: &Rendered) -> Result<(), SendError> {
        use aws_sdk_sesv2::error::ProvideErrorMetadata;
        use aws_sdk_sesv2::types::{Body, Content, Destination, EmailContent, Message};
        let content = |data: &str| {
            Content::builder().data(data).charset("UTF-8").build().map_err(|e| SendError::Rejected(e.to_string()))
        };
        let message = Message::builder()
            .subject(content(&m.subject)?)
            .body(Body::builder().text(content(&m.text)?).html(content(&m.html)?).build())
            .build();
        let res = self
            .ses
            .send_email()
            .from_email_address(&self.from)
            .destination(Destination::builder().to_addresses(to).build())
            .content(EmailContent::builder().simple(message).build())
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = e.into_service_error();
                let text = aws_sdk_sesv2::error::DisplayErrorContext(&e).to_string();
                if e.is_too_many_requests_exception() || e.is_limit_exceeded_exception() || e.code().is_none() {
                    Err(SendError::Retryable(text))
                } else {
                    Err(SendError::Rejected(text))
                }
            }
        }
    }

    async fn sms(&self, phone: &str, text: &str) -> Result<(), SendError> {
        use aws_sdk_sns::error::ProvideErrorMetadata;
        match self.sns.publish().phone_number(phone).message(text).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = e.into_service_error();
                let detail = aws_sdk_sns::error::DisplayErrorContext(&e).to_string();
                if e.code() == Some("Throttling") || e.is_internal_error_exception() || e.code().is_none() {
                    Err(SendError::Retryable(detail))
                } else {
                    Err(SendError::Rejected(detail))
                }
            }
        }
    }
}
