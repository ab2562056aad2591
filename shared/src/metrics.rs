//! Figures for CloudWatch alarms, written as Embedded Metric Format log lines: CloudWatch
//! turns each line into metrics of namespace `topup` with the dimension `Stack`, with no API
//! call and no client. The template's alarms watch them (outbox age, sweep failures,
//! reconciliation problems and unreadable accounts).

use serde_json::{json, Map, Value};

/// The metric namespace the template's alarms read.
pub const NAMESPACE: &str = "topup";

/// One EMF line for `stack` with `metrics` (name, value, unit such as `Count` or `Seconds`).
pub fn emf_line(stack: &str, now_ms: i64, metrics: &[(&str, f64, &str)]) -> Value {
    let mut line = Map::new();
    line.insert(
        "_aws".into(),
        json!({
            "Timestamp": now_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [["Stack"]],
                "Metrics": metrics.iter().map(|(n, _, u)| json!({"Name": n, "Unit": u})).collect::<Vec<_>>(),
            }],
        }),
    );
    line.insert("Stack".into(), json!(stack));
    for (name, value, _) in metrics {
        line.insert((*name).into(), json!(value));
    }
    Value::Object(line)
}

/// Writes the line to standard output, where the Lambda runtime hands it to CloudWatch Logs.
pub fn emit(stack: &str, metrics: &[(&str, f64, &str)]) {
    println!("{}", emf_line(stack, crate::clock::now_ms(), metrics));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_each_metric_and_carries_its_value() {
        let line =
            emf_line("prod", 5, &[("OutboxOldestAgeSeconds", 12.0, "Seconds"), ("SweepFailedAccounts", 1.0, "Count")]);
        let m = &line["_aws"]["CloudWatchMetrics"][0];
        assert_eq!((m["Namespace"].as_str(), line["Stack"].as_str()), (Some("topup"), Some("prod")));
        assert_eq!(m["Dimensions"], json!([["Stack"]]));
        assert_eq!(m["Metrics"][0], json!({"Name": "OutboxOldestAgeSeconds", "Unit": "Seconds"}));
        assert_eq!(
            (line["OutboxOldestAgeSeconds"].as_f64(), line["SweepFailedAccounts"].as_f64()),
            (Some(12.0), Some(1.0))
        );
    }
}
