//! `aws` block (per-span AWS SDK call fields and, for segments, the resource's
//! ECS/EKS/EC2/Elastic Beanstalk/SDK blocks) and `origin`.

use super::attrs::Attrs;
use super::segment::{Aws, Ec2, Ecs, Eks, ElasticBeanstalk, XraySdk};

/// AWS SDK span: `rpc.system = aws-api`, or the legacy `aws.service` attribute.
pub(crate) fn is_aws_sdk(a: &Attrs<'_>) -> bool {
    a.str("rpc.system") == Some("aws-api") || a.str("aws.service").is_some()
}

/// The AWS service called (e.g. `DynamoDB`), used as subsegment name.
pub(crate) fn service_name<'a>(a: &Attrs<'a>) -> Option<&'a str> {
    let name = if a.str("rpc.system") == Some("aws-api") {
        a.first_str(&["rpc.service", "aws.service"])
    } else {
        a.str("aws.service")
    }?;
    Some(
        name.strip_prefix("AWS.SDK.")
            .or_else(|| name.strip_prefix("AWS::"))
            .unwrap_or(name),
    )
}

/// Per-span fields. `resource` is only read (for the `cloud.region` fallback).
pub(crate) fn make_span_aws(a: &mut Attrs<'_>, resource: &Attrs<'_>, aws_sdk: bool) -> Aws {
    let mut aws = Aws::default();
    if aws_sdk {
        aws.operation = a.take_string(&["rpc.method", "aws.operation"]);
        for k in ["rpc.system", "rpc.service", "aws.service"] {
            a.consume(k);
        }
    } else {
        aws.operation = a.take_string(&["aws.operation"]);
    }
    let mut queue_keys = vec![
        "aws.sqs.queue.url",
        "aws.sqs.queue_url",
        "aws.queue_url",
        "aws.queue.url",
    ];
    if aws_sdk {
        queue_keys.push("messaging.url");
    }
    aws.queue_url = a.take_string(&queue_keys);
    aws.region = a
        .take_string(&["aws.region"])
        .or_else(|| aws_sdk.then(|| resource.string("cloud.region")).flatten());
    aws.request_id = a.take_string(&["aws.request_id", "aws.requestId"]);
    aws.account_id = a.take_string(&["aws.account_id"]);
    aws.table_name = table_name(a);
    aws
}

fn table_name(a: &mut Attrs<'_>) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Av;
    const NAMES: &str = "aws.dynamodb.table_names";
    let from_list = match a.get(NAMES) {
        Some(Av::ArrayValue(arr)) => {
            let first = arr.values.first().and_then(|v| match v.value.as_ref() {
                Some(Av::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            });
            // With several tables only the first fits `table_name`; keep the
            // full list in metadata then.
            if first.is_some() && arr.values.len() == 1 {
                a.consume(NAMES);
            }
            first
        }
        Some(Av::StringValue(s)) if !s.is_empty() => {
            let s = s.clone();
            a.consume(NAMES);
            Some(s)
        }
        _ => None,
    };
    let legacy = a.take_string(&["aws.table_name", "aws.table.name"]);
    from_list.or(legacy)
}

/// `origin` from `cloud.platform` (only when `cloud.provider` is absent or `aws`).
pub(crate) fn origin(r: &Attrs<'_>) -> Option<&'static str> {
    if r.str("cloud.provider").is_some_and(|p| p != "aws") {
        return None;
    }
    match r.str("cloud.platform")? {
        "aws_ecs" => Some("AWS::ECS::Container"),
        "aws_eks" => Some("AWS::EKS::Container"),
        "aws_ec2" => Some("AWS::EC2::Instance"),
        "aws_elastic_beanstalk" => Some("AWS::ElasticBeanstalk::Environment"),
        _ => None,
    }
}

fn some_if<T: Default + PartialEq>(v: T) -> Option<T> {
    (v != T::default()).then_some(v)
}

/// Adds the resource-derived blocks of a segment; copied resource attributes are
/// consumed (not repeated as `otel.resource.*` metadata).
pub(crate) fn add_resource_blocks(aws: &mut Aws, r: &mut Attrs<'_>) {
    match origin(r) {
        Some("AWS::ECS::Container") => {
            aws.ecs = some_if(Ecs {
                container: r.take_string(&["container.name"]),
                container_id: r.take_string(&["container.id"]),
                container_arn: r.take_string(&["aws.ecs.container.arn"]),
                task_arn: r.take_string(&["aws.ecs.task.arn"]),
                task_family: r.take_string(&["aws.ecs.task.family"]),
                cluster_arn: r.take_string(&["aws.ecs.cluster.arn"]),
                launch_type: r.take_string(&["aws.ecs.launchtype"]),
                availability_zone: r.take_string(&["cloud.availability_zone"]),
            });
        }
        Some("AWS::EKS::Container") => {
            aws.eks = some_if(Eks {
                pod: r.take_string(&["k8s.pod.name"]),
                cluster_name: r.take_string(&["k8s.cluster.name"]),
                container_id: r.take_string(&["container.id"]),
            });
        }
        Some("AWS::EC2::Instance") => {
            aws.ec2 = some_if(Ec2 {
                instance_id: r.take_string(&["host.id"]),
                availability_zone: r.take_string(&["cloud.availability_zone"]),
                instance_size: r.take_string(&["host.type"]),
                ami_id: r.take_string(&["host.image.id"]),
            });
        }
        Some("AWS::ElasticBeanstalk::Environment") => {
            let deployment_id = r.int("service.instance.id");
            if deployment_id.is_some() {
                r.consume("service.instance.id");
            }
            aws.elastic_beanstalk = some_if(ElasticBeanstalk {
                environment_name: r.take_string(&[
                    "service.namespace",
                    "deployment.environment.name",
                    "deployment.environment",
                ]),
                // Also reported as `service.version`; consumed there.
                version_label: r.string("service.version"),
                deployment_id,
            });
        }
        _ => {}
    }
    if let Some(lang) = r.str("telemetry.sdk.language") {
        aws.xray = Some(XraySdk {
            sdk: Some(format!("opentelemetry for {lang}")),
            sdk_version: r.take_string(&["telemetry.sdk.version"]),
            auto_instrumentation: Some(r.has("telemetry.auto.version")),
        });
    }
}
