//! deploy/ checked the way a platform engineer would rely on it: why it exists is that a
//! template that lints, grants only what the code calls, and actually configures a working
//! pipeline is what issue #12 promises. cfn-lint, checkov (`--skip-download`), hadolint and
//! kubernetes-validate run on every file (from .peers/deploy-venv, which scripts/setup-python
//! installs); every IAM policy in the templates is read and each action is matched to the
//! call in the source that needs it; and the stacks are created in moto's CloudFormation, what
//! moto built is read back, and `tidewater collector` + `tidewater processor` run with exactly
//! the environment of the task definitions moto holds, spans from the OpenTelemetry Python SDK
//! reaching X-Ray (moto). Their stdout is then held to the EMF specification, and every alarm
//! and dashboard widget to a metric (name, dimensions, values) they actually wrote.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::common::*;
use crate::self_metrics_emf::{emitted, Emitted};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> PathBuf {
    let p = root().join(".peers/deploy-venv/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: run ./scripts/test (scripts/setup-python installs the deploy checks)",
        p.display()
    );
    p
}

fn templates() -> Vec<PathBuf> {
    let mut t: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/cloudformation"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    t.sort();
    assert!(t.len() >= 2, "the pipeline and sidecar templates: {t:?}");
    t
}

fn run_ok(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn templates_dockerfile_and_manifests_pass_their_linters() {
    let mut cfn_lint = Command::new(tool("cfn-lint"));
    cfn_lint.args(templates());
    run_ok(cfn_lint, "cfn-lint");

    for t in templates() {
        let mut checkov = Command::new(tool("checkov"));
        checkov
            .args(["--skip-download", "--quiet", "--compact", "-f"])
            .arg(&t)
            .args(["--framework", "cloudformation"]);
        run_ok(checkov, &format!("checkov on {}", t.display()));
    }
    let mut checkov = Command::new(tool("checkov"));
    checkov
        .args(["--skip-download", "--quiet", "--compact", "-f"])
        .arg(root().join("deploy/Dockerfile"))
        .args(["--framework", "dockerfile"]);
    run_ok(checkov, "checkov on the Dockerfile");

    let mut hadolint = Command::new(tool("hadolint"));
    hadolint.arg(root().join("deploy/Dockerfile"));
    run_ok(hadolint, "hadolint");

    let mut kv = Command::new(tool("kubernetes-validate"));
    kv.args(["--strict", "--kubernetes-version", "1.33"])
        .arg(root().join("deploy/k8s/collector-sidecar.yaml"));
    run_ok(kv, "kubernetes-validate");
}

/// The template as JSON, its short-form tags (`!Ref`, `!If`) as the long form, by cfn-lint's
/// own decoder.
fn decode(path: &Path) -> Value {
    let out = Command::new(tool("python"))
        .args([
            "-c",
            "import json, sys\nfrom cfnlint.decode import decode\n\
             t, m = decode(sys.argv[1])\nassert not m, m\nprint(json.dumps(t))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Both branches of every `Fn::If`, `AWS::NoValue` dropped, lists flattened.
fn branches(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.iter().flat_map(branches).collect(),
        Value::Object(o) if o.len() == 1 && o.contains_key("Fn::If") => {
            let args = o["Fn::If"].as_array().unwrap();
            branches(&args[1])
                .into_iter()
                .chain(branches(&args[2]))
                .collect()
        }
        Value::Object(o) if o.get("Ref") == Some(&Value::from("AWS::NoValue")) => vec![],
        other => vec![other.clone()],
    }
}

/// (template, logical id, statement) for every permission policy (trust policies aside).
fn statements(template_path: &Path, template: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    let name = template_path.file_name().unwrap().to_string_lossy();
    for (id, r) in template["Resources"].as_object().unwrap() {
        let props = &r["Properties"];
        let docs: Vec<Value> = match r["Type"].as_str().unwrap() {
            "AWS::IAM::Role" => branches(&props["Policies"])
                .iter()
                .map(|p| p["PolicyDocument"].clone())
                .collect(),
            "AWS::IAM::Policy" | "AWS::IAM::ManagedPolicy" => {
                vec![props["PolicyDocument"].clone()]
            }
            t => {
                assert!(
                    !t.starts_with("AWS::IAM::") || t == "AWS::IAM::InstanceProfile",
                    "{name} {id}: {t} is not read by this test"
                );
                vec![]
            }
        };
        for doc in docs {
            for s in branches(&doc["Statement"]) {
                out.push((name.to_string(), id.clone(), s));
            }
        }
    }
    out
}

/// An `Action` or `Resource`: one value or a list, each maybe conditional.
fn strings(v: &Value) -> Vec<Value> {
    branches(v)
}

fn snake(op: &str) -> String {
    let mut s = String::new();
    for (i, c) in op.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            s.push('_');
        }
        s.push(c.to_ascii_lowercase());
    }
    s
}

/// All Rust source of the crates that talk to AWS, the way it is built into the binary.
fn source() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut s = String::new();
    for d in ["src", "bus/src", "collector/src", "processors/src"] {
        walk(&root().join(d), &mut s);
    }
    s
}

/// Why the code needs `action`, or why it does not.
fn justify(action: &str, logical_id: &str, source: &str) -> Result<String, String> {
    let (service, op) = action
        .split_once(':')
        .ok_or_else(|| format!("{action}: not service:Action"))?;
    let is_execution_role = logical_id.contains("Execution");
    match service {
        "kinesis" | "dynamodb" | "xray" | "logs" if !is_execution_role => {
            let call = format!(".{}(", snake(op));
            let crate_name = match service {
                "logs" => "aws_sdk_cloudwatchlogs",
                s => &format!("aws_sdk_{s}"),
            };
            if source.contains(&call) && source.contains(crate_name) {
                Ok(format!("the code calls {call}) with {crate_name}"))
            } else {
                Err(format!("{action}: no {call} call in the source"))
            }
        }
        "es" => {
            let method = op.strip_prefix("ESHttp").unwrap_or_default();
            let needle = format!("Method::{method},");
            let es = std::fs::read_to_string(
                root().join("processors/src/sinks/elasticsearch/service.rs"),
            )
            .unwrap();
            if !method.is_empty()
                && es.matches(&needle).count() > 0
                && source.contains("aws_service: \"es\"")
            {
                Ok(format!(
                    "the Elasticsearch sink sends {method} requests signed for \"es\""
                ))
            } else {
                Err(format!(
                    "{action}: the Elasticsearch sink sends no {method} request"
                ))
            }
        }
        // Kinesis calls KMS for the caller on a stream encrypted with a customer key.
        "kms" if op == "GenerateDataKey" && source.contains(".put_records(") => {
            Ok("PutRecords on a stream with a customer key".into())
        }
        "kms" if op == "Decrypt" && source.contains(".get_records(") => {
            Ok("GetRecords on a stream with a customer key".into())
        }
        // Called by the ECS agent for the task, never by Tidewater.
        "ecr" | "secretsmanager" | "ssm" | "logs" if is_execution_role => {
            let allowed = [
                "ecr:GetAuthorizationToken",
                "ecr:BatchGetImage",
                "ecr:GetDownloadUrlForLayer",
                "logs:CreateLogStream",
                "logs:PutLogEvents",
                "secretsmanager:GetSecretValue",
                "ssm:GetParameters",
            ];
            if allowed.contains(&action) {
                Ok("the ECS agent pulls the image, ships logs and injects secrets".into())
            } else {
                Err(format!("{action}: not something ECS calls for a task"))
            }
        }
        _ => Err(format!("{action}: nothing in the code calls it")),
    }
}

/// Actions that support no resource scoping: the only ones allowed `"Resource": "*"`.
const UNSCOPABLE: &[&str] = &["xray:PutTraceSegments", "ecr:GetAuthorizationToken"];

fn check_statement(file: &str, id: &str, s: &Value, source: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let at = format!("{file} {id} {}", s["Sid"].as_str().unwrap_or("(no Sid)"));
    if s["Effect"] != "Allow" {
        return problems;
    }
    if s.get("NotAction").is_some() || s.get("NotResource").is_some() {
        problems.push(format!("{at}: NotAction/NotResource grant too much"));
    }
    let actions: Vec<String> = strings(&s["Action"])
        .iter()
        .map(|a| a.as_str().unwrap_or("<intrinsic>").to_string())
        .collect();
    let star_resource = strings(&s["Resource"]).iter().any(|r| {
        r.as_str()
            .is_some_and(|r| r.contains('*') && !r.contains(':'))
    });
    for a in &actions {
        if a.contains('*') {
            problems.push(format!("{at}: wildcard action {a}"));
            continue;
        }
        if star_resource && !UNSCOPABLE.contains(&a.as_str()) {
            problems.push(format!("{at}: {a} on Resource \"*\""));
        }
        if let Err(e) = justify(a, id, source) {
            problems.push(format!("{at}: {e}"));
        }
    }
    problems
}

#[test]
fn every_iam_action_is_one_the_code_calls_on_scoped_resources() {
    let source = source();
    let mut seen = BTreeSet::new();
    let mut problems = Vec::new();
    for path in templates() {
        let t = decode(&path);
        for (file, id, s) in statements(&path, &t) {
            problems.extend(check_statement(&file, &id, &s, &source));
            for a in strings(&s["Action"]) {
                seen.insert(a.as_str().unwrap_or_default().to_string());
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // What the pipeline needs is all there (a policy that lost a statement fails here).
    for needed in [
        "kinesis:PutRecords",
        "kinesis:ListShards",
        "kinesis:GetShardIterator",
        "kinesis:GetRecords",
        "dynamodb:DescribeTable",
        "dynamodb:Scan",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "xray:PutTraceSegments",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "es:ESHttpPost",
    ] {
        assert!(seen.contains(needed), "no policy grants {needed}: {seen:?}");
    }

    // The checker itself catches what it must.
    let bad = serde_json::json!({"Effect": "Allow", "Action": ["kinesis:*", "dynamodb:DeleteTable", "kinesis:PutRecords"], "Resource": "*"});
    let found = check_statement("t", "ProcessorTaskRole", &bad, &source).join("\n");
    for expected in [
        "wildcard action kinesis:*",
        "dynamodb:DeleteTable: no .delete_table( call",
        "kinesis:PutRecords on Resource \"*\"",
    ] {
        assert!(found.contains(expected), "{expected:?} in:\n{found}");
    }
    let ok =
        serde_json::json!({"Effect": "Allow", "Action": "xray:PutTraceSegments", "Resource": "*"});
    assert!(check_statement("t", "ProcessorTaskRole", &ok, &source).is_empty());
}

/// AWS's own metrics the stack alarms on or graphs.
const AWS_METRICS: &[(&str, &str)] = &[
    ("AWS/Kinesis", "GetRecords.IteratorAgeMilliseconds"),
    ("AWS/Kinesis", "WriteProvisionedThroughputExceeded"),
    ("AWS/Kinesis", "IncomingRecords"),
    ("ECS/ContainerInsights", "RunningTaskCount"),
];

/// (namespace, name) of the metrics the stack's own metric filters make, each pattern checked
/// to name a message Tidewater logs.
fn filter_metrics(
    resources: &serde_json::Map<String, Value>,
    source: &str,
) -> HashSet<(String, String)> {
    let mut from_filters = HashSet::new();
    for (id, r) in resources {
        if r["Type"] != "AWS::Logs::MetricFilter" {
            continue;
        }
        let pattern = r["Properties"]["FilterPattern"].as_str().unwrap();
        let messages = filter_messages(pattern);
        assert!(!messages.is_empty(), "{id}: no $.message in {pattern}");
        for m in messages {
            let literal = m.trim_end_matches('*').replace("''", "'");
            assert!(
                source.contains(&format!("\"{literal}")),
                "{id}: Tidewater never logs {literal:?}"
            );
        }
        for tr in r["Properties"]["MetricTransformations"].as_array().unwrap() {
            from_filters.insert((
                tr["MetricNamespace"].as_str().unwrap().to_string(),
                tr["MetricName"].as_str().unwrap().to_string(),
            ));
        }
    }
    from_filters
}

/// The alarms read metrics that exist: AWS's own for the stream and the service, the stack's
/// metric filters (whose patterns name messages Tidewater logs), or Tidewater's EMF
/// self-metrics, scoped to this pipeline (`Pipeline` = the stream) and a role. That those are
/// really written, under exactly these names and dimensions, is checked against the running
/// collector's and processor's stdout in `stacks_create_in_moto_and_the_pipeline_runs_from_them`.
/// Every alarm is on the dashboard's alarm widget.
#[test]
fn every_alarm_reads_a_metric_that_is_emitted() {
    let source = source();
    let t = decode(&root().join("deploy/cloudformation/tidewater.yaml"));
    let resources = t["Resources"].as_object().unwrap();
    let from_filters = filter_metrics(resources, &source);
    let dashboard = resources["PipelineDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        .as_str()
        .expect("the dashboard body is one Fn::Sub")
        .to_string();
    let mut alarms = 0;
    for (id, r) in resources {
        if r["Type"] != "AWS::CloudWatch::Alarm" {
            continue;
        }
        alarms += 1;
        let p = &r["Properties"];
        let key = (
            p["Namespace"].as_str().unwrap().to_string(),
            p["MetricName"].as_str().unwrap().to_string(),
        );
        if key.0 == "Tidewater" && !from_filters.contains(&key) {
            let dims = alarm_dimensions(p, "<stream>");
            let role = dims.get("Role").map(String::as_str);
            assert!(
                dims.get("Pipeline").map(String::as_str) == Some("<stream>")
                    && matches!(role, Some("collector" | "processor"))
                    && dims.len() == 2,
                "{id}: an EMF self-metric alarm is scoped to Pipeline = the stream and a Role: {dims:?}"
            );
        } else {
            assert!(
                from_filters.contains(&key)
                    || AWS_METRICS.contains(&(key.0.as_str(), key.1.as_str())),
                "{id}: {key:?} is neither an AWS metric, one of the stack's metric filters, nor an EMF self-metric"
            );
        }
        assert!(
            p["AlarmActions"].to_string().contains("AlarmTopicArn"),
            "{id} notifies the topic"
        );
        let name = p["AlarmName"]["Fn::Sub"].as_str().expect("a named alarm");
        let suffix = name.strip_prefix("${AWS::StackName}").unwrap();
        assert!(
            dashboard.contains(&format!(":alarm:${{AWS::StackName}}{suffix}\"")),
            "{id} ({name}) is on the dashboard's alarm widget"
        );
    }
    assert!(alarms >= 10, "{alarms} alarms");
    assert_eq!(
        dashboard.matches(":alarm:").count(),
        alarms,
        "the alarm widget names exactly the stack's alarms"
    );
}

/// An alarm's dimensions, `{"Ref": "Stream"}` read as `stream`.
fn alarm_dimensions(props: &Value, stream: &str) -> BTreeMap<String, String> {
    props["Dimensions"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let value = match &d["Value"] {
                Value::String(v) => v.clone(),
                v if v["Ref"] == "Stream" => stream.to_string(),
                v => panic!("dimension value {v}"),
            };
            (d["Name"].as_str().unwrap().to_string(), value)
        })
        .collect()
}

/// Every alarm on Tidewater's EMF self-metrics, and every metric and SEARCH of the dashboard
/// (as CloudWatch holds it, `${...}` resolved), names a metric the collector and processor
/// wrote, with the same dimensions and values; the rest are AWS's own metrics of this stream.
fn check_alarms_and_dashboard(
    emitted: &BTreeMap<Emitted, Vec<f64>>,
    dashboard: &Value,
    stream: &str,
) {
    let t = decode(&root().join("deploy/cloudformation/tidewater.yaml"));
    let resources = t["Resources"].as_object().unwrap();
    let from_filters = filter_metrics(resources, &source());
    let written = |namespace: &str, name: &str, dims: &BTreeMap<String, String>| {
        emitted.contains_key(&Emitted {
            namespace: namespace.into(),
            name: name.into(),
            dimensions: dims.clone(),
        })
    };
    let names: Vec<String> = emitted
        .keys()
        .map(|k| format!("{} {:?}", k.name, k.dimensions))
        .collect();
    let mut checked = 0;
    for (id, r) in resources {
        let p = &r["Properties"];
        if r["Type"] != "AWS::CloudWatch::Alarm" || p["Namespace"] != "Tidewater" {
            continue;
        }
        let name = p["MetricName"].as_str().unwrap();
        if from_filters.contains(&("Tidewater".to_string(), name.to_string())) {
            continue;
        }
        let dims = alarm_dimensions(p, stream);
        assert!(
            written("Tidewater", name, &dims),
            "{id}: Tidewater wrote no {name} {dims:?}; it wrote:\n{}",
            names.join("\n")
        );
        checked += 1;
    }
    assert!(checked >= 8, "{checked} alarms on EMF self-metrics");

    let mut widgets = 0;
    for w in dashboard["widgets"].as_array().unwrap() {
        if w["type"] != "metric" {
            continue;
        }
        widgets += 1;
        let title = w["properties"]["title"].as_str().unwrap_or_default();
        let metrics = w["properties"]["metrics"].as_array().unwrap();
        assert!(!metrics.is_empty(), "{title}: no metrics");
        for m in metrics {
            let m = m.as_array().unwrap();
            if let Some(expression) = m[0]["expression"].as_str() {
                let (namespace, schema, filters) = parse_search(expression);
                let name = &filters["MetricName"];
                let matching = emitted.keys().any(|k| {
                    k.namespace == namespace
                        && k.name == *name
                        && k.dimensions.keys().cloned().collect::<BTreeSet<_>>() == schema
                        && filters
                            .iter()
                            .filter(|(f, _)| *f != "MetricName")
                            .all(|(f, v)| k.dimensions.get(f) == Some(v))
                });
                assert!(
                    matching,
                    "{title}: {expression} finds nothing Tidewater wrote:\n{}",
                    names.join("\n")
                );
                continue;
            }
            let strings: Vec<&str> = m.iter().filter_map(Value::as_str).collect();
            let (namespace, name) = (strings[0], strings[1]);
            let dims: BTreeMap<String, String> = strings[2..]
                .chunks(2)
                .map(|kv| (kv[0].to_string(), kv[1].to_string()))
                .collect();
            if namespace == "Tidewater" {
                assert!(
                    written(namespace, name, &dims),
                    "{title}: Tidewater wrote no {name} {dims:?}; it wrote:\n{}",
                    names.join("\n")
                );
            } else {
                assert!(
                    AWS_METRICS.contains(&(namespace, name)),
                    "{title}: {namespace} {name} is not a metric the stack knows"
                );
                assert_eq!(dims.get("StreamName").map(String::as_str), Some(stream));
            }
        }
    }
    assert!(widgets >= 8, "{widgets} metric widgets");
}

/// `SEARCH('{Namespace,Dim,...} Key="value" ...', 'Stat', period)` as (namespace, dimension
/// names, filters).
fn parse_search(expression: &str) -> (String, BTreeSet<String>, BTreeMap<String, String>) {
    let inner = expression
        .strip_prefix("SEARCH('{")
        .unwrap_or_else(|| panic!("not a SEARCH: {expression}"));
    let (schema, rest) = inner.split_once('}').unwrap();
    let mut schema = schema.split(',').map(str::to_string);
    let namespace = schema.next().unwrap();
    let query = rest.split('\'').next().unwrap();
    let filters = query
        .split_whitespace()
        .map(|f| {
            let (k, v) = f.split_once('=').unwrap();
            (k.to_string(), v.trim_matches('"').to_string())
        })
        .collect();
    (namespace, schema.collect(), filters)
}

/// The quoted values of `$.message = "..."` in a filter pattern.
fn filter_messages(pattern: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(i) = rest.find("$.message = \"") {
        rest = &rest[i + "$.message = \"".len()..];
        let end = rest.find('"').unwrap();
        out.push(rest[..end].to_string());
        rest = &rest[end..];
    }
    out
}

/// The task definition's container environment, with /var/lib/tidewater (the task's
/// volume) moved under `dir`.
fn container_env(task: &Value, container: &str, dir: &Path) -> Vec<(String, String)> {
    let c = task["containerDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("no container {container}"));
    c["environment"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let value = v["value"].as_str().unwrap_or_default();
            (
                v["name"].as_str().unwrap().to_string(),
                value.replace("/var/lib/tidewater", dir.to_str().unwrap()),
            )
        })
        .collect()
}

#[test]
fn stacks_create_in_moto_and_the_pipeline_runs_from_them() {
    let moto = peers::moto();
    let created = run_client(
        "cfn_stack.py",
        &[
            "--endpoint",
            &moto.endpoint(),
            "--root",
            root().to_str().unwrap(),
        ],
    );
    for stack in ["pipeline", "app"] {
        assert_eq!(created[stack]["status"], "CREATE_COMPLETE", "{created:#}");
    }
    let out = &created["pipeline"]["outputs"];

    // What moto built.
    assert_eq!(created["stream"]["name"], out["StreamName"]);
    assert_eq!(created["stream"]["status"], "ACTIVE");
    assert_eq!(created["table"]["name"], out["LeaseTableName"]);
    assert_eq!(
        created["table"]["key"],
        serde_json::json!([{"AttributeName": "leaseKey", "KeyType": "HASH"}]),
        "the key schema bus/src/kinesis/leases.rs uses"
    );
    assert_eq!(created["table"]["billing"], "PAY_PER_REQUEST");
    for group in [
        "/tidewater/processor",
        "/tidewater/collector",
        "/tidewater/metrics",
        "/ecs/shop",
    ] {
        assert_eq!(created["log_groups"][group], 30, "{group} with retention");
    }
    let role = created["processor_role"].to_string();
    for action in [
        "kinesis:GetRecords",
        "dynamodb:UpdateItem",
        "xray:PutTraceSegments",
        "logs:PutLogEvents",
    ] {
        assert!(role.contains(action), "{action} in {role}");
    }
    assert!(created["collector_policy"]
        .to_string()
        .contains("kinesis:PutRecords"));
    let processor = &created["processor_task"];
    let c = &processor["containerDefinitions"][0];
    assert_eq!(c["command"], serde_json::json!(["processor"]));
    assert_eq!(
        c["healthCheck"]["command"],
        serde_json::json!(["CMD", "/usr/local/bin/tidewater", "healthcheck"])
    );
    assert!(c["stopTimeout"].as_u64().unwrap() >= 30);
    let app = &created["app_task"]["containerDefinitions"];
    let app_container = app
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "app")
        .unwrap();
    assert_eq!(
        app_container["dependsOn"],
        serde_json::json!([{"containerName": "tidewater", "condition": "HEALTHY"}])
    );
    let app_env = app_container["environment"].to_string();
    assert!(
        app_env.contains("OTEL_EXPORTER_OTLP_ENDPOINT")
            && app_env.contains("AWS_XRAY_DAEMON_ADDRESS")
    );

    // The pipeline, configured only from what moto holds: each container's environment as
    // ECS would set it, the AWS endpoint being moto (for every service: Kinesis too).
    let processor_dir = tempfile::tempdir().unwrap();
    let mut env = container_env(processor, "processor", processor_dir.path());
    let collector_dir = tempfile::tempdir().unwrap();
    let mut collector_env = container_env(&created["app_task"], "tidewater", collector_dir.path());
    for e in [&mut env, &mut collector_env] {
        e.extend(
            peers::aws_env(&moto.endpoint())
                .into_iter()
                .map(|(k, v)| (k.to_string(), v)),
        );
        // Test pacing only: short lease and poll intervals.
        e.push(("TIDEWATER_BUS__KINESIS__LEASE_DURATION".into(), "3s".into()));
        e.push((
            "TIDEWATER_BUS__KINESIS__SHARD_SYNC_INTERVAL".into(),
            "1s".into(),
        ));
        e.push((
            "TIDEWATER_BUS__KINESIS__IDLE_POLL_INTERVAL".into(),
            "200ms".into(),
        ));
        e.push(("TIDEWATER_TELEMETRY__EMF__INTERVAL".into(), "1s".into()));
    }
    let mut processor_tw = Tidewater::run("processor", processor_dir.path(), &env);
    let mut collector = Tidewater::run("collector", collector_dir.path(), &collector_env);

    let sent = run_otel_app(
        "grpc",
        &collector.grpc_url(),
        &["--service", "shop", "--traces", "5", "--logs", "3"],
    );
    let expected: HashSet<String> = sent_span_ids(&sent).into_iter().collect();
    assert!(!expected.is_empty());

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Wide: an X-Ray trace id's time may lie up to 21 days before the span (README, X-Ray).
    let (start, end) = ((now - 30 * 86400).to_string(), (now + 3600).to_string());
    let found = wait_for(Duration::from_secs(60), || {
        let summaries = run_client(
            "xray_query.py",
            &[
                "--endpoint",
                &moto.endpoint(),
                "trace-summaries",
                "--start",
                &start,
                "--end",
                &end,
            ],
        );
        let ids: Vec<String> = summaries["TraceSummaries"]
            .as_array()?
            .iter()
            .filter_map(|s| s["Id"].as_str().map(str::to_string))
            .collect();
        if ids.is_empty() {
            return None;
        }
        let mut args = vec![
            "--endpoint".to_string(),
            moto.endpoint(),
            "batch-get-traces".into(),
        ];
        args.extend(ids);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let traces = run_client("xray_query.py", &args);
        let text = traces.to_string();
        expected
            .iter()
            .all(|id| text.contains(id.as_str()))
            .then_some(())
    });
    assert!(
        found.is_some(),
        "spans from the SDK never reached X-Ray\ncollector:\n{}\nprocessor:\n{}",
        collector.log(),
        processor_tw.log()
    );

    // Their own health, as the task definitions configure it: EMF on stdout. A refused
    // request gives the refusals-by-reason graph something to find; SIGTERM makes each write
    // its last report.
    let refused = post_protobuf(&collector.http_url("/v1/traces"), b"not OTLP".to_vec());
    assert_eq!(refused.status(), 400);
    collector.stop();
    processor_tw.stop();
    let stream = out["StreamName"].as_str().unwrap();
    let collector_emf = emitted(&collector.stdout());
    let processor_emf = emitted(&processor_tw.stdout());
    let scope = |k: &Emitted| {
        (
            k.dimensions["Pipeline"].clone(),
            k.dimensions["Role"].clone(),
        )
    };
    assert!(
        !collector_emf.is_empty()
            && collector_emf
                .keys()
                .all(|k| scope(k) == (stream.into(), "collector".into())),
        "the sidecar reports under its pipeline: {collector_emf:?}"
    );
    assert!(
        collector_emf
            .keys()
            .any(|k| k.dimensions.get("Service").map(String::as_str) == Some("shop")),
        "and under its app (Service): {collector_emf:?}"
    );
    assert!(
        !processor_emf.is_empty()
            && processor_emf
                .keys()
                .all(|k| scope(k) == (stream.into(), "processor".into())),
        "{processor_emf:?}"
    );
    let mut all = collector_emf;
    all.extend(processor_emf);
    let delivered: f64 = all
        .iter()
        .filter(|(k, _)| k.name == "DeliveredItems" && k.dimensions.len() == 2)
        .flat_map(|(_, v)| v)
        .sum();
    assert!(delivered > 0.0, "the reports count the delivery");
    check_alarms_and_dashboard(&all, &created["dashboard"], stream);
}

/// The sidecar examples publish to the shared Kinesis stream (a collector on the embedded bus
/// keeps data on the task's disk where nothing delivers it), start the app once the sidecar is
/// healthy or started, and stop it last.
#[test]
fn sidecar_examples_publish_to_kinesis_and_outlive_the_app() {
    let ecs: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/ecs/collector-sidecar.json")).unwrap(),
    )
    .unwrap();
    let env = container_env(&ecs, "tidewater", Path::new("/x"));
    assert!(
        env.contains(&("TIDEWATER_BUS__KIND".into(), "kinesis".into())),
        "{env:?}"
    );
    let containers = ecs["containerDefinitions"].as_array().unwrap();
    let app = containers.iter().find(|c| c["name"] == "app").unwrap();
    assert_eq!(app["dependsOn"][0]["condition"], "HEALTHY");
    let sidecar = containers
        .iter()
        .find(|c| c["name"] == "tidewater")
        .unwrap();
    assert_eq!(
        sidecar["healthCheck"]["command"][1],
        "/usr/local/bin/tidewater"
    );
    assert_eq!(sidecar["readonlyRootFilesystem"], true);

    let k8s = std::fs::read_to_string(root().join("deploy/k8s/collector-sidecar.yaml")).unwrap();
    assert!(k8s.contains("kind = \"kinesis\"") && !k8s.contains("kind = \"embedded\""));
    let init = k8s
        .split("initContainers:")
        .nth(1)
        .expect("a native sidecar");
    let init = init.split("\n      containers:").next().unwrap();
    for wanted in [
        "restartPolicy: Always",
        "readOnlyRootFilesystem: true",
        "drop: [ALL]",
        "allowPrivilegeEscalation: false",
        "startupProbe:",
    ] {
        assert!(init.contains(wanted), "{wanted} in the sidecar:\n{init}");
    }
    assert!(k8s.contains("runAsNonRoot: true"));
}
