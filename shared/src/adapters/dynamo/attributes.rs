//! Between our records and DynamoDB's attributes: every record is its serde form, stored as
//! attributes beside the keys (`pk`, `sk`) and an optional `ttl`. Numbers are integers only
//! (rules §2).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Number, Value};

use crate::store::StoreError;

pub(crate) type Item = HashMap<String, AttributeValue>;

/// JSON → DynamoDB attribute.
pub fn to_attr(v: &Value) -> AttributeValue {
    match v {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(a) => AttributeValue::L(a.iter().map(to_attr).collect()),
        Value::Object(o) => AttributeValue::M(o.iter().map(|(k, v)| (k.clone(), to_attr(v))).collect()),
    }
}

/// DynamoDB attribute → JSON; a non-integer number or an unknown type is corrupt data.
pub fn from_attr(a: &AttributeValue) -> Result<Value, StoreError> {
    Ok(match a {
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::N(n) => {
            if let Ok(i) = n.parse::<i64>() {
                Value::Number(i.into())
            } else if let Ok(u) = n.parse::<u64>() {
                Value::Number(Number::from(u))
            } else {
                return Err(StoreError::Corrupt(format!("non-integer number {n}")));
            }
        }
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::L(l) => Value::Array(l.iter().map(from_attr).collect::<Result<_, _>>()?),
        AttributeValue::M(m) => Value::Object(
            m.iter().map(|(k, v)| Ok((k.clone(), from_attr(v)?))).collect::<Result<Map<_, _>, StoreError>>()?,
        ),
        _ => return Err(StoreError::Corrupt("unsupported attribute type".into())),
    })
}

pub(crate) fn to_item<T: Serialize>(
    value: &T,
    pk: String,
    sk: String,
    ttl_ms: Option<i64>,
) -> Result<Item, StoreError> {
    let json = serde_json::to_value(value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let Value::Object(fields) = json else { return Err(StoreError::Corrupt("item is not an object".into())) };
    let mut item: Item = fields.iter().map(|(k, v)| (k.clone(), to_attr(v))).collect();
    item.insert("pk".into(), AttributeValue::S(pk));
    item.insert("sk".into(), AttributeValue::S(sk));
    if let Some(ms) = ttl_ms {
        item.insert("ttl".into(), AttributeValue::N((ms / 1000).to_string()));
    }
    Ok(item)
}

pub(crate) fn from_item<T: DeserializeOwned>(item: &Item) -> Result<T, StoreError> {
    let mut obj = Map::new();
    for (k, v) in item {
        if k != "pk" && k != "sk" && k != "ttl" {
            obj.insert(k.clone(), from_attr(v)?);
        }
    }
    serde_json::from_value(Value::Object(obj)).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
