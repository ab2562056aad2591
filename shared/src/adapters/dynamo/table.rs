//! The table as the SAM template declares it, for the local stack and the tests.

use aws_sdk_dynamodb::Client;

use super::{unavailable, AUDIT_INDEX, EXPIRY_INDEX, SWEEP_INDEX};
use crate::store::StoreError;

/// Creates the table as the SAM template does (used by the local stack and tests).
pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType,
        ScalarAttributeType,
    };
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    };
    let key = |n: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    };
    let index = GlobalSecondaryIndex::builder()
        .index_name(SWEEP_INDEX)
        .key_schema(key("gsi1pk", KeyType::Hash)?)
        .key_schema(key("pk", KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
        .build()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let expiry = GlobalSecondaryIndex::builder()
        .index_name(EXPIRY_INDEX)
        .key_schema(key("gsi2pk", KeyType::Hash)?)
        .key_schema(key("gsi2sk", KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
        .build()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let audit = GlobalSecondaryIndex::builder()
        .index_name(AUDIT_INDEX)
        .key_schema(key("gsi3pk", KeyType::Hash)?)
        .key_schema(key("gsi3sk", KeyType::Range)?)
        .projection(Projection::builder().projection_type(ProjectionType::All).build())
        .build()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let lookup = |name: &str, attr: &str| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(attr, KeyType::Hash)?)
            .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
            .build()
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    };
    let res = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk")?)
        .attribute_definitions(attr("sk")?)
        .attribute_definitions(attr("gsi1pk")?)
        .attribute_definitions(attr("gsi2pk")?)
        .attribute_definitions(attr("gsi2sk")?)
        .attribute_definitions(attr("gsi3pk")?)
        .attribute_definitions(attr("gsi3sk")?)
        .attribute_definitions(attr("gsi4pk")?)
        .attribute_definitions(attr("gsi5pk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .global_secondary_indexes(index)
        .global_secondary_indexes(expiry)
        .global_secondary_indexes(audit)
        .global_secondary_indexes(lookup(super::EMAIL_INDEX, "gsi4pk")?)
        .global_secondary_indexes(lookup(super::CUSTOMER_INDEX, "gsi5pk")?)
        .send()
        .await;
    match res {
        Ok(_) => Ok(()),
        Err(e) => {
            let se = e.into_service_error();
            if se.is_resource_in_use_exception() {
                Ok(())
            } else {
                Err(unavailable("CreateTable", se))
            }
        }
    }
}
