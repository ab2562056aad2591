//! The adapters: each real service behind the domain's small traits, and the in-memory ones
//! the unit tests use. The domain never sees an SDK type.

pub mod dynamo;
pub mod eventbridge;
pub mod memory;
pub mod secrets;
pub mod ses_sns;
pub mod stripe;
pub mod stripe_invoices;
pub mod webhooks_out;
