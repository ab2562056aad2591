//! The SAM template: never the local-auth secret, and every HTTP route it declares is one
//! the named function serves (the local router reads the same routes).

use topup_tests::*;

fn template() -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/template.yaml");
    std::fs::read_to_string(path).expect("infra/template.yaml")
}

#[test]
fn the_template_never_sets_the_local_jwt_secret() {
    let t = template();
    assert!(!t.contains("TOPUP_LOCAL_JWT_SECRET"), "the deployed functions must only trust API Gateway's authorizer");
    assert!(t.contains("DefaultAuthorizer: Jwt"));
    // Outside the authorizer only Stripe's endpoint, which verifies signatures itself, and the
    // static billing page, card script and console, which carry no data.
    assert_eq!(t.matches("Authorizer: NONE").count(), 4);
    assert!(
        t.contains("TOPUP_STRIPE_SECRET_ID: !Ref StripeSecretName") && !t.contains("{{resolve:secretsmanager:"),
        "the Stripe secrets are read from Secrets Manager at init, never resolved into the template"
    );
    for must in [
        "provided.al2023",
        "arm64",
        "rust-cargolambda",
        "PointInTimeRecoveryEnabled: true",
        "AttributeName: ttl",
        "PAY_PER_REQUEST",
    ] {
        assert!(t.contains(must), "template lacks {must}");
    }
    assert!(
        !t.contains("Action: \"*\"") && !t.contains("Action: '*'") && !t.contains("- \"*\""),
        "no wildcard actions"
    );
}

/// Issue 6: every function has an errors and a throttles alarm; the four dead-letter queues
/// (three rules', webhooks-out's retries') and the four failure queues have a depth alarm; the
/// outbox, sweep and reconciliation metrics have theirs; every alarm notifies the topic.
#[test]
fn every_function_and_dead_letter_queue_is_watched() {
    let t = template();
    let lines: Vec<&str> = t.lines().collect();
    let functions: Vec<&str> = lines
        .windows(2)
        .filter(|w| w[1].trim() == "Type: AWS::Serverless::Function")
        .map(|w| w[0].trim().trim_end_matches(':'))
        .collect();
    assert_eq!(functions.len(), 8, "{functions:?}");
    for f in &functions {
        for metric in ["Errors", "Throttles"] {
            assert!(t.contains(&format!("  {f}{metric}Alarm:\n")), "{f} has no {metric} alarm");
        }
    }
    for q in [
        "AutoRechargeDeadLetters",
        "NotifyDeadLetters",
        "WebhooksOutDeadLetters",
        "WebhookRetryDeadLetters",
        "AutoRechargeFunctionFailures",
        "NotifyFunctionFailures",
        "ReconcileFunctionFailures",
        "WebhooksOutFunctionFailures",
    ] {
        assert!(t.contains(&format!("  {q}Alarm:\n")), "{q} has no depth alarm");
    }
    for metric in ["OutboxOldestAgeSeconds", "SweepFailedAccounts", "ReconcileUnreadableAccounts", "ReconcileProblems"]
    {
        assert!(t.contains(&format!("MetricName: {metric}\n")), "no alarm on {metric}");
    }
    let alarms = t.matches("Type: AWS::CloudWatch::Alarm").count();
    assert_eq!(
        alarms,
        8 * 2 + 4 + 4 + 4 + 1,
        "function alarms, dead-letter and failure-queue alarms, metric alarms, EventBridge failures"
    );
    assert_eq!(t.matches("AlarmActions: [!Ref AlarmTopic]").count(), alarms, "every alarm notifies");
}

/// (binary, method, path) for every HttpApi event in the template.
fn routes() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let (mut binary, mut path) = (String::new(), String::new());
    for line in template().lines() {
        let l = line.trim();
        if let Some(b) = l.strip_prefix("Binary: ") {
            binary = b.trim().to_string();
        } else if let Some(p) = l.strip_prefix("Path: ") {
            path = p.trim().to_string();
        } else if let Some(m) = l.strip_prefix("Method: ") {
            out.push((binary.clone(), m.trim().to_string(), path.clone()));
        }
    }
    out
}

#[tokio::test]
async fn every_template_route_is_served_by_its_function() {
    let w = World::new("usd-overage").await;
    w.account("acme", "free").await;
    let routes = routes();
    assert_eq!(routes.len(), 44, "{routes:?}");
    for (binary, method, path) in routes {
        let concrete = path
            .replace("{account_id}", "acme")
            .replace("{hold_id}", "hold_x")
            .replace("{purchase_id}", "pur_x")
            .replace("{endpoint_id}", "we_x")
            .replace("{delivery_id}", "wd_x")
            .replace("{entity}", "user:x")
            .replace("{payment_id}", "pi_x");
        let req = request(&method, &concrete, Some(&service()), Some("application/json"), Some("{}".into()));
        if path.starts_with("/billing") || path == "/console" || path.ends_with(".csv") {
            // The routes that answer HTML, JavaScript and CSV rather than JSON.
            let resp = credits_api::handle(&w.config, &w.webhooks, &w.credits, req).await;
            assert_eq!((binary.as_str(), resp.status().as_u16()), ("credits-api", 200));
            continue;
        }
        let (status, body) = match binary.as_str() {
            "debit" => w.debit(req).await,
            "credits-api" => w.api(req).await,
            "purchase" => w.buy(req).await,
            "webhook" => w.webhook(req).await,
            other => panic!("unknown binary {other}"),
        };
        assert_ne!(body["error"]["code"], "route_not_found", "{method} {path} → {binary}");
        assert_ne!(status, 405, "{method} {path} → {binary}");
    }
}

/// infra/openapi.yaml documents exactly the template's routes, with the same methods (the
/// served API is fuzzed against it by `./scripts/test`).
#[test]
fn the_openapi_document_lists_every_route_and_no_other() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/openapi.yaml");
    let doc = std::fs::read_to_string(path).expect("infra/openapi.yaml");
    let mut documented = std::collections::BTreeSet::new();
    let mut current = String::new();
    for line in doc.lines() {
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            current = format!("/{p}");
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if ["get", "put", "post", "delete", "patch"].contains(&m) && !current.is_empty() {
                documented.insert((m.to_uppercase(), current.clone()));
            }
        } else if !line.starts_with(' ') {
            current.clear();
        }
    }
    let served: std::collections::BTreeSet<_> = routes().into_iter().map(|(_, m, p)| (m, p)).collect();
    assert_eq!(documented, served);
}

/// A reader for the part of YAML the template is written in: block mappings and sequences, flow
/// `[...]` and `{...}` on one line, quoted and plain scalars, `>` and `|` block scalars, comments
/// and CloudFormation's short forms. A tagged scalar reads as one string (`!Ref Bus` is
/// "!Ref Bus", `!Sub "a${B}"` is "!Sub a${B}"), a tagged collection as a one-key object
/// (`!Select [1, x]` is {"!Select": [1, "x"]}). Anything else panics with its line number, so a
/// template this cannot read fails the tests rather than passing them unread.
mod yaml {
    use serde_json::{Map, Value};

    struct Line {
        no: usize,
        indent: usize,
        /// Without indentation, comment and trailing blanks.
        text: String,
        /// Without indentation (block scalars keep their `#`).
        raw: String,
    }

    pub fn parse(src: &str) -> Value {
        let mut lines: Vec<Line> = src
            .lines()
            .enumerate()
            .filter_map(|(no, raw)| {
                let stripped = strip_comment(raw);
                let text = stripped.trim_start();
                if text.trim().is_empty() {
                    return None;
                }
                let indent = stripped.len() - text.len();
                Some(Line { no: no + 1, indent, text: text.trim_end().into(), raw: raw[indent..].trim_end().into() })
            })
            .collect();
        let mut i = 0;
        let doc = block(&mut lines, &mut i, 0);
        assert!(i == lines.len(), "line {}: not read (indentation?)", lines[i].no);
        doc
    }

    fn strip_comment(line: &str) -> &str {
        // A quote opens a scalar only where one starts (not the apostrophe of "account's").
        let (mut quote, mut prev) = (None, ' ');
        for (at, c) in line.char_indices() {
            match (quote, c) {
                (None, '"' | '\'') if matches!(prev, ' ' | '[' | '{' | ',' | ':') => quote = Some(c),
                (Some(q), _) if c == q => quote = None,
                (None, '#') if prev == ' ' || prev == '\t' => return &line[..at],
                _ => {}
            }
            prev = c;
        }
        line
    }

    fn is_item(text: &str) -> bool {
        text == "-" || text.starts_with("- ")
    }

    /// (key, rest) of a `key: value` line.
    fn key_of(text: &str) -> Option<(String, &str)> {
        let (key, rest) = match text.chars().next()? {
            q @ ('"' | '\'') => {
                let end = text[1..].find(q)? + 1;
                (text[1..end].to_string(), &text[end + 1..])
            }
            '[' | '{' | '!' | '-' | '>' | '|' => return None,
            _ => {
                let end = text.find(": ").or_else(|| text.strip_suffix(':').map(|k| k.len()))?;
                (text[..end].to_string(), &text[end..])
            }
        };
        let rest = rest.strip_prefix(':')?;
        (rest.is_empty() || rest.starts_with(' ')).then(|| (key, rest.trim()))
    }

    fn block(lines: &mut [Line], i: &mut usize, indent: usize) -> Value {
        let line = &lines[*i];
        assert_eq!(line.indent, indent, "line {}: indentation", line.no);
        if is_item(&line.text) {
            sequence(lines, i, indent)
        } else if key_of(&line.text).is_some() {
            mapping(lines, i, indent)
        } else {
            let v = inline(&line.text, line.no);
            *i += 1;
            v
        }
    }

    fn sequence(lines: &mut [Line], i: &mut usize, indent: usize) -> Value {
        let mut out = Vec::new();
        while *i < lines.len() && lines[*i].indent == indent && is_item(&lines[*i].text) {
            let rest = lines[*i].text[1..].trim_start().to_string();
            if rest.is_empty() {
                *i += 1;
                let inner = lines.get(*i).map(|l| l.indent).filter(|&n| n > indent);
                out.push(match inner {
                    Some(n) => block(lines, i, n),
                    None => Value::Null,
                });
            } else {
                // `- key: value` opens a mapping whose keys line up with `key`.
                let inner = indent + lines[*i].text.len() - rest.len();
                lines[*i].indent = inner;
                lines[*i].raw = lines[*i].raw[lines[*i].text.len() - rest.len()..].to_string();
                lines[*i].text = rest;
                out.push(block(lines, i, inner));
            }
        }
        Value::Array(out)
    }

    fn mapping(lines: &mut [Line], i: &mut usize, indent: usize) -> Value {
        let mut out = Map::new();
        while *i < lines.len() && lines[*i].indent == indent && !is_item(&lines[*i].text) {
            let no = lines[*i].no;
            let text = lines[*i].text.clone();
            let (key, rest) = key_of(&text).unwrap_or_else(|| panic!("line {no}: expected `key: value`"));
            *i += 1;
            let value = match rest {
                "" => match lines.get(*i) {
                    Some(l) if l.indent > indent => {
                        let n = l.indent;
                        block(lines, i, n)
                    }
                    Some(l) if l.indent == indent && is_item(&l.text) => sequence(lines, i, indent),
                    _ => Value::Null,
                },
                ">" | ">-" | "|" | "|-" => {
                    let mut parts = Vec::new();
                    while *i < lines.len() && lines[*i].indent > indent {
                        parts.push(lines[*i].raw.clone());
                        *i += 1;
                    }
                    Value::String(parts.join(if rest.starts_with('>') { " " } else { "\n" }))
                }
                _ => inline(rest, no),
            };
            assert!(out.insert(key.clone(), value).is_none(), "line {no}: {key} twice");
        }
        if let Some(l) = lines.get(*i) {
            assert!(l.indent < indent || (l.indent == indent && is_item(&l.text)), "line {}: indentation", l.no);
        }
        Value::Object(out)
    }

    /// A value on one line: a flow collection, a quoted or tagged scalar, or a plain one (all of
    /// the rest of the line).
    fn inline(text: &str, no: usize) -> Value {
        let chars: Vec<char> = text.chars().collect();
        if !matches!(chars[0], '[' | '{' | '"' | '\'' | '!') {
            return plain(text);
        }
        let mut at = 0;
        let v = flow(&chars, &mut at, no, true);
        assert!(chars[at..].iter().all(|c| c.is_whitespace()), "line {no}: unexpected {:?}", &text[at..]);
        v
    }

    fn plain(s: &str) -> Value {
        let s = s.trim();
        match s {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            "null" | "~" => Value::Null,
            _ => s.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(s.into())),
        }
    }

    fn skip(c: &[char], at: &mut usize) {
        while *at < c.len() && c[*at].is_whitespace() {
            *at += 1;
        }
    }

    /// One flow value from `c[at..]`; `top`: a plain scalar runs to the end of the line.
    fn flow(c: &[char], at: &mut usize, no: usize, top: bool) -> Value {
        skip(c, at);
        let Some(&first) = c.get(*at) else { panic!("line {no}: value expected") };
        match first {
            '[' => {
                *at += 1;
                let mut out = Vec::new();
                loop {
                    skip(c, at);
                    match c.get(*at) {
                        Some(']') => {
                            *at += 1;
                            return Value::Array(out);
                        }
                        Some(_) => out.push(flow(c, at, no, false)),
                        None => panic!("line {no}: unclosed ["),
                    }
                    skip(c, at);
                    if c.get(*at) == Some(&',') {
                        *at += 1;
                    }
                }
            }
            '{' => {
                *at += 1;
                let mut out = Map::new();
                loop {
                    skip(c, at);
                    match c.get(*at) {
                        Some('}') => {
                            *at += 1;
                            return Value::Object(out);
                        }
                        Some(_) => {
                            let start = *at;
                            while *at < c.len() && c[*at] != ':' {
                                *at += 1;
                            }
                            assert!(*at < c.len(), "line {no}: `key: value` expected in {{}}");
                            let key: String = c[start..*at].iter().collect();
                            *at += 1;
                            out.insert(key.trim().trim_matches('"').into(), flow(c, at, no, false));
                        }
                        None => panic!("line {no}: unclosed {{"),
                    }
                    skip(c, at);
                    if c.get(*at) == Some(&',') {
                        *at += 1;
                    }
                }
            }
            '"' | '\'' => {
                *at += 1;
                let mut s = String::new();
                loop {
                    match c.get(*at) {
                        None => panic!("line {no}: unclosed quote"),
                        Some('\\') if first == '"' => {
                            s.push(*c.get(*at + 1).unwrap_or(&'\\'));
                            *at += 2;
                        }
                        Some('\'') if first == '\'' && c.get(*at + 1) == Some(&'\'') => {
                            s.push('\'');
                            *at += 2;
                        }
                        Some(&q) if q == first => {
                            *at += 1;
                            return Value::String(s);
                        }
                        Some(&ch) => {
                            s.push(ch);
                            *at += 1;
                        }
                    }
                }
            }
            '!' => {
                let start = *at;
                while *at < c.len() && !c[*at].is_whitespace() {
                    *at += 1;
                }
                let tag: String = c[start..*at].iter().collect();
                skip(c, at);
                match c.get(*at) {
                    Some('[' | '{') => {
                        let mut m = Map::new();
                        m.insert(tag, flow(c, at, no, false));
                        Value::Object(m)
                    }
                    _ => {
                        let v = flow(c, at, no, top);
                        let s = match v {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        Value::String(format!("{tag} {s}"))
                    }
                }
            }
            _ => {
                let start = *at;
                while *at < c.len() && (top || !matches!(c[*at], ',' | ']' | '}')) {
                    *at += 1;
                }
                plain(&c[start..*at].iter().collect::<String>())
            }
        }
    }
}

use serde_json::Value;

fn template_doc() -> Value {
    yaml::parse(&template())
}

fn resources(doc: &Value) -> &serde_json::Map<String, Value> {
    doc["Resources"].as_object().expect("Resources")
}

/// (logical id, properties) of every AWS::Serverless::Function.
fn functions(doc: &Value) -> Vec<(&str, &Value)> {
    resources(doc)
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::Serverless::Function")
        .map(|(id, r)| (id.as_str(), &r["Properties"]))
        .collect()
}

/// A string or a list of strings, as a list.
fn strings(v: &Value) -> Vec<&str> {
    match v {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

/// The logical id `!GetAtt X.<attribute>` names.
fn get_att<'a>(v: &'a Value, attribute: &str) -> Option<&'a str> {
    v.as_str()?.strip_prefix("!GetAtt ")?.strip_suffix(&format!(".{attribute}") as &str)
}

#[test]
fn the_template_reader_reads_the_template() {
    let doc = template_doc();
    assert_eq!(doc["Transform"], "AWS::Serverless-2016-10-31");
    assert_eq!(functions(&doc).len(), 8);
    let r = resources(&doc);
    assert_eq!(r["Bus"]["Properties"]["Name"], "!Sub topup-${AWS::StackName}");
    assert_eq!(r["DebitFunction"]["Metadata"]["BuildProperties"]["Binary"], "debit");
    assert_eq!(
        r["EventDeliveryFailedAlarm"]["Properties"]["Metrics"][0]["MetricStat"]["Metric"]["Dimensions"][1]["Value"]
            ["!Select"][1]["!Split"][1],
        "!Ref AutoRechargeFunctionLowBalance"
    );
    assert_eq!(r["Table"]["Properties"]["KeySchema"][1]["KeyType"], "RANGE");
    assert_eq!(doc["Conditions"]["HasAlarmEmail"]["!Not"][0]["!Equals"][1], "");
}

/// SPEC §13: every function EventBridge invokes (rules and schedules) has its retries and an
/// on-failure destination for function errors: an encrypted SQS queue with a depth alarm.
#[test]
fn every_function_eventbridge_invokes_has_an_encrypted_alarmed_failure_queue() {
    let doc = template_doc();
    let r = resources(&doc);
    let mut checked = 0;
    for (id, props) in functions(&doc) {
        let events = props["Events"].as_object().cloned().unwrap_or_default();
        if !events.values().any(|e| {
            matches!(e["Type"].as_str(), Some("EventBridgeRule" | "Schedule" | "ScheduleV2" | "CloudWatchEvent"))
        }) {
            continue;
        }
        checked += 1;
        let config = &props["EventInvokeConfig"];
        assert!(
            config["MaximumRetryAttempts"].as_i64().is_some_and(|n| (0..=2).contains(&n)),
            "{id}: MaximumRetryAttempts"
        );
        let on_failure = &config["DestinationConfig"]["OnFailure"];
        assert_eq!(on_failure["Type"], "SQS", "{id}: no SQS on-failure destination");
        let queue =
            get_att(&on_failure["Destination"], "Arn").unwrap_or_else(|| panic!("{id}: destination not !GetAtt X.Arn"));
        let q = &r[queue];
        assert_eq!(q["Type"], "AWS::SQS::Queue", "{id}: {queue}");
        assert!(
            q["Properties"]["SqsManagedSseEnabled"] == true || !q["Properties"]["KmsMasterKeyId"].is_null(),
            "{queue} is not encrypted"
        );
        let alarmed = r.values().any(|a| {
            let p = &a["Properties"];
            a["Type"] == "AWS::CloudWatch::Alarm"
                && p["Namespace"] == "AWS/SQS"
                && p["MetricName"] == "ApproximateNumberOfMessagesVisible"
                && p["Dimensions"].as_array().is_some_and(|d| {
                    d.iter().any(|d| d["Name"] == "QueueName" && get_att(&d["Value"], "QueueName") == Some(queue))
                })
                && p["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
                && p["Threshold"] == 1
                && !strings(&p["AlarmActions"]).is_empty()
        });
        assert!(alarmed, "{queue} has no depth alarm");
    }
    assert_eq!(checked, 4, "auto-recharge, notify, reconcile and webhooks-out");
}

/// The outbox-age alarm (rules §13): the sweep reports `OutboxOldestAgeSeconds` (in seconds,
/// the stack as its dimension) every 5 minutes; the alarm fires when the oldest event has waited
/// more than 15 minutes, or when no sweep has reported for two periods.
#[test]
fn the_outbox_alarm_fires_when_an_event_has_waited_over_fifteen_minutes() {
    let doc = template_doc();
    let r = resources(&doc);
    let alarms: Vec<&Value> = r
        .values()
        .filter(|a| a["Type"] == "AWS::CloudWatch::Alarm" && a["Properties"]["MetricName"] == "OutboxOldestAgeSeconds")
        .map(|a| &a["Properties"])
        .collect();
    assert_eq!(alarms.len(), 1, "one alarm on the outbox's age");
    let a = alarms[0];
    assert_eq!(a["Namespace"], "topup", "the namespace the functions' metrics are in");
    assert_eq!(a["Dimensions"], serde_json::json!([{"Name": "Stack", "Value": "!Ref AWS::StackName"}]));
    assert_eq!(
        (a["Statistic"].as_str(), a["ComparisonOperator"].as_str()),
        (Some("Maximum"), Some("GreaterThanThreshold"))
    );
    assert_eq!(a["Threshold"].as_i64(), Some(15 * 60), "15 minutes, in the metric's seconds");
    assert_eq!(a["TreatMissingData"], "breaching", "a sweep that stops reporting alarms too");
    // Periods of the sweep's interval; one period without a report is tolerated.
    let sweep = &r["AutoRechargeFunction"]["Properties"]["Events"]["Sweep"];
    assert_eq!(
        (sweep["Type"].as_str(), sweep["Properties"]["Schedule"].as_str()),
        (Some("Schedule"), Some("rate(5 minutes)"))
    );
    assert_eq!(
        (a["Period"].as_i64(), a["EvaluationPeriods"].as_i64(), a["DatapointsToAlarm"].as_i64()),
        (Some(300), Some(2), Some(1))
    );
}

/// SPEC §13: route throttles for every route, a default for the API, reserved concurrency for
/// every function.
#[test]
fn every_route_is_throttled_and_every_function_has_reserved_concurrency() {
    let doc = template_doc();
    let api = &resources(&doc)["Api"]["Properties"];
    let throttled =
        |s: &Value| s["ThrottlingBurstLimit"].as_i64().is_some() && s["ThrottlingRateLimit"].as_i64().is_some();
    assert!(throttled(&api["DefaultRouteSettings"]), "the API has no DefaultRouteSettings throttle");
    let settings = api["RouteSettings"].as_object().expect("the API has no RouteSettings");
    let mut routes = std::collections::BTreeSet::new();
    for (id, props) in functions(&doc) {
        for e in props["Events"].as_object().into_iter().flat_map(|m| m.values()) {
            if e["Type"] == "HttpApi" {
                let key = format!(
                    "{} {}",
                    e["Properties"]["Method"].as_str().unwrap().to_uppercase(),
                    e["Properties"]["Path"].as_str().unwrap()
                );
                assert!(
                    settings.get(&key).is_some_and(throttled),
                    "{id}: route {key} has no throttle in RouteSettings"
                );
                routes.insert(key);
            }
        }
        let reserved = props["ReservedConcurrentExecutions"].as_i64();
        assert!(reserved.is_some_and(|n| n >= 1), "{id} has no ReservedConcurrentExecutions");
    }
    // A key for a route that does not exist fails the deployment.
    let keys: std::collections::BTreeSet<_> = settings.keys().cloned().collect();
    assert_eq!(keys, routes, "RouteSettings keys are exactly the routes");
}

/// SPEC §13: secrets come from Secrets Manager at init, never through environment variables.
#[test]
fn no_secret_is_in_an_environment_variable() {
    let t = template();
    assert!(!t.contains("resolve:secretsmanager"), "a dynamic reference puts the secret in the environment");
    let doc = template_doc();
    let globals = doc["Globals"]["Function"]["Environment"]["Variables"].as_object().cloned().unwrap_or_default();
    for (id, props) in functions(&doc) {
        let mut vars = globals.clone();
        vars.extend(props["Environment"]["Variables"].as_object().cloned().unwrap_or_default());
        for (name, value) in &vars {
            assert!(
                !name.ends_with("SECRET_KEY") && !name.ends_with("WEBHOOK_SECRET"),
                "{id}: {name} is a secret in the environment"
            );
            assert!(!value.to_string().contains("resolve:secretsmanager"), "{id}: {name}");
        }
        if vars.contains_key("TOPUP_STRIPE_SECRET_ID") {
            assert_eq!(vars["TOPUP_STRIPE_SECRET_ID"], "!Ref StripeSecretName", "{id}");
            let statements = statements(props);
            let reads = statements.iter().any(|s| {
                strings(&s["Action"]) == ["secretsmanager:GetSecretValue"]
                    && strings(&s["Resource"]).iter().all(|r| r.ends_with(":secret:${StripeSecretName}-*"))
            });
            assert!(reads, "{id}: no GetSecretValue on the Stripe secret alone");
        }
    }
    let stripe: Vec<_> = functions(&doc)
        .into_iter()
        .filter(|(_, p)| !p["Environment"]["Variables"]["TOPUP_STRIPE_SECRET_ID"].is_null())
        .map(|(id, _)| id)
        .collect();
    assert_eq!(stripe.len(), 4, "purchase, webhook, auto-recharge and reconcile: {stripe:?}");
}

/// Every IAM statement of a function's inline policies.
fn statements(props: &Value) -> Vec<&Value> {
    props["Policies"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["Statement"].as_array().into_iter().flatten())
        .collect()
}

/// Least privilege: deletes only of outbox items, no function deletes that does not write
/// balances, checkpoints only for reconcile, SMS only (no topic) for notify.
#[test]
fn deletes_only_touch_the_outbox_and_sms_never_publishes_to_a_topic() {
    let doc = template_doc();
    let mut deleters = Vec::new();
    let mut publishers = Vec::new();
    for (id, props) in functions(&doc) {
        for s in statements(props) {
            let actions = strings(&s["Action"]);
            let grants = |a: &str| {
                actions
                    .iter()
                    .any(|x| *x == a || *x == "*" || (x.ends_with('*') && a.starts_with(x.trim_end_matches('*'))))
            };
            assert!(s["NotAction"].is_null(), "{id}: NotAction");
            let leading = &s["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"];
            if grants("dynamodb:DeleteItem") {
                assert_eq!(actions, ["dynamodb:DeleteItem"], "{id}: DeleteItem in its own statement");
                assert_eq!(*leading, serde_json::json!(["OUTBOX#*"]), "{id}: DeleteItem beyond the outbox");
                deleters.push(id);
            }
            if id == "ReconcileFunction" && grants("dynamodb:PutItem") {
                assert_eq!(*leading, serde_json::json!(["RECONCILE#*"]), "reconcile writes beyond its checkpoints");
            }
            if grants("sns:Publish") {
                // SMS to a phone number has no ARN: Publish on everything that is not a topic.
                assert_eq!(actions, ["sns:Publish"], "{id}: sns:Publish in its own statement");
                assert!(s["Resource"].is_null(), "{id}: sns:Publish with a Resource ({})", s["Resource"]);
                assert_eq!(s["NotResource"], "arn:aws:sns:*:*:*", "{id}: sns:Publish must exclude every topic");
                publishers.push(id);
            }
        }
    }
    assert_eq!(publishers, ["NotifyFunction"], "only notify sends SMS");
    deleters.sort();
    assert_eq!(
        deleters,
        ["AutoRechargeFunction", "CreditsApiFunction", "DebitFunction", "PurchaseFunction", "WebhookFunction"],
        "only the functions that write balances clear the outbox"
    );
}

/// Every SQS event source (webhooks-out's retry queue) as AWS advises: the queue's visibility
/// timeout at least six times its function's timeout, so a message is not handed out again while
/// a batch runs; encrypted; partial batch responses, so one failed message does not bring its
/// batch back; and a dead-letter queue (encrypted, depth-alarmed) after a few receives.
#[test]
fn every_sqs_event_source_outlasts_its_function_and_dead_letters_into_an_alarmed_queue() {
    let doc = template_doc();
    let r = resources(&doc);
    let default_timeout = doc["Globals"]["Function"]["Timeout"].as_i64().expect("Globals Timeout");
    let encrypted =
        |q: &Value| q["Properties"]["SqsManagedSseEnabled"] == true || !q["Properties"]["KmsMasterKeyId"].is_null();
    let alarmed = |queue: &str| {
        r.values().any(|a| {
            let p = &a["Properties"];
            a["Type"] == "AWS::CloudWatch::Alarm"
                && p["MetricName"] == "ApproximateNumberOfMessagesVisible"
                && p["Dimensions"].as_array().is_some_and(|d| {
                    d.iter().any(|d| d["Name"] == "QueueName" && get_att(&d["Value"], "QueueName") == Some(queue))
                })
                && p["Threshold"] == 1
                && !strings(&p["AlarmActions"]).is_empty()
        })
    };
    let mut sources = Vec::new();
    for (id, props) in functions(&doc) {
        let timeout = props["Timeout"].as_i64().unwrap_or(default_timeout);
        for e in props["Events"].as_object().into_iter().flat_map(|m| m.values()) {
            if e["Type"] != "SQS" {
                continue;
            }
            let p = &e["Properties"];
            let queue = get_att(&p["Queue"], "Arn").unwrap_or_else(|| panic!("{id}: Queue not !GetAtt X.Arn"));
            let q = &r[queue];
            assert_eq!(q["Type"], "AWS::SQS::Queue", "{id}: {queue}");
            assert!(encrypted(q), "{queue} is not encrypted");
            let visibility = q["Properties"]["VisibilityTimeout"].as_i64().unwrap_or(30);
            assert!(
                visibility >= 6 * timeout,
                "{queue}: VisibilityTimeout {visibility} < 6 × {id}'s Timeout {timeout}"
            );
            assert_eq!(
                strings(&p["FunctionResponseTypes"]),
                ["ReportBatchItemFailures"],
                "{id}: partial batch responses"
            );
            assert!(p["BatchSize"].as_i64().is_some_and(|n| (1..=10).contains(&n)), "{id}: BatchSize");
            let concurrency = p["ScalingConfig"]["MaximumConcurrency"].as_i64();
            assert!(
                concurrency.is_some_and(|n| n < props["ReservedConcurrentExecutions"].as_i64().unwrap_or(0)),
                "{id}: the poller's MaximumConcurrency must stay below the reserved concurrency (never throttled)"
            );
            let redrive = &q["Properties"]["RedrivePolicy"];
            let dlq =
                get_att(&redrive["deadLetterTargetArn"], "Arn").unwrap_or_else(|| panic!("{queue}: no RedrivePolicy"));
            assert!(
                redrive["maxReceiveCount"].as_i64().is_some_and(|n| (1..=10).contains(&n)),
                "{queue}: maxReceiveCount"
            );
            assert_eq!(r[dlq]["Type"], "AWS::SQS::Queue", "{queue}: {dlq}");
            assert!(encrypted(&r[dlq]), "{dlq} is not encrypted");
            assert!(alarmed(dlq), "{dlq} has no depth alarm");
            sources.push((id, queue));
        }
    }
    assert_eq!(sources, [("WebhooksOutFunction", "WebhookRetryQueue")]);
}

/// Webhooks out: the functions that enqueue a delivery's next attempt (webhooks-out itself and
/// credits-api's manual redelivery) are told the retry queue and may send to it alone; the
/// deployed template never lets an endpoint be http:// or loopback (the local stack's switch);
/// the retry queue keeps a message past the 3-day retry window.
#[test]
fn webhook_retries_go_to_their_queue_and_endpoints_are_never_loopback() {
    let t = template();
    assert!(!t.contains("TOPUP_WEBHOOK_ALLOW_LOOPBACK"), "only the local stack allows http:// and loopback endpoints");
    let doc = template_doc();
    let r = resources(&doc);
    assert_eq!(r["WebhooksOutFunction"]["Metadata"]["BuildProperties"]["Binary"], "webhooks-out");
    let retention = r["WebhookRetryQueue"]["Properties"]["MessageRetentionPeriod"].as_i64().unwrap_or(345_600);
    assert!(retention > 259_200, "the retry queue drops messages inside the retry window");
    let mut senders = Vec::new();
    for (id, props) in functions(&doc) {
        let sends = statements(props)
            .into_iter()
            .filter(|s| strings(&s["Action"]).iter().any(|a| a.starts_with("sqs:")))
            .collect::<Vec<_>>();
        let told = &props["Environment"]["Variables"]["TOPUP_WEBHOOK_QUEUE_URL"];
        if sends.is_empty() {
            assert!(told.is_null(), "{id}: told the retry queue but may not send to it");
            continue;
        }
        assert_eq!(*told, "!Ref WebhookRetryQueue", "{id}");
        for s in sends {
            // The console's dead-letter depths (rules §19): counts read, never a message.
            if strings(&s["Action"]) == ["sqs:GetQueueAttributes"] {
                assert_eq!(id, "CreditsApiFunction");
                assert!(strings(&s["Resource"]).iter().all(|q| q.ends_with("DeadLetters.Arn") || q.ends_with("Failures.Arn")));
                continue;
            }
            assert_eq!(strings(&s["Action"]), ["sqs:SendMessage"], "{id}: only SendMessage");
            assert_eq!(strings(&s["Resource"]), ["!GetAtt WebhookRetryQueue.Arn"], "{id}: only the retry queue");
        }
        senders.push(id);
    }
    senders.sort();
    assert_eq!(senders, ["CreditsApiFunction", "WebhooksOutFunction"]);
}

/// SPEC §18: the API answers CORS for the `AllowedOrigins` parameter only, none by default
/// (the `<topup-credits>` card on an app's page); never for any origin.
#[test]
fn cors_is_for_the_allowed_origins_only_and_none_by_default() {
    let doc = template_doc();
    let param = &doc["Parameters"]["AllowedOrigins"];
    assert_eq!(param["Type"], "String");
    assert_eq!(param["Default"], "");
    assert_eq!(doc["Conditions"]["HasAllowedOrigins"]["!Not"][0]["!Equals"], serde_json::json!(["!Ref AllowedOrigins", ""]));
    let cors = &resources(&doc)["Api"]["Properties"]["CorsConfiguration"]["Fn::If"];
    assert_eq!(cors[0], "HasAllowedOrigins");
    assert_eq!(cors[1]["AllowOrigins"]["!Split"], serde_json::json!([",", "!Ref AllowedOrigins"]));
    assert_eq!(cors[2], "!Ref AWS::NoValue", "without origins, no CORS at all");
    assert!(strings(&cors[1]["AllowHeaders"]).contains(&"authorization"));
    assert!(!cors[1].to_string().contains('*'), "no wildcard: {}", cors[1]);
    assert_eq!(cors[1].get("AllowCredentials"), None, "tokens go in a header, never cookies");
    let r = resources(&doc);
    let card = &r["CreditsApiFunction"]["Properties"]["Events"]["CreditsCardScript"]["Properties"];
    assert_eq!((card["Path"].as_str(), card["Method"].as_str()), (Some("/billing/topup-credits.js"), Some("GET")));
}
