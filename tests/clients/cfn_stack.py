"""Creates deploy/cloudformation's stacks in moto's CloudFormation and prints, as JSON, what moto
built: why it exists is that tests/deploy_stack.rs checks the real resources a stack creates and
then runs Tidewater configured only from them. boto3 (in .venv with moto) rather than a Rust SDK,
so the e2e binary links no CloudFormation client.

    python cfn_stack.py --endpoint URL --root REPO
"""

import argparse
import json
import pathlib

import boto3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--root", required=True)
    args = ap.parse_args()
    kw = dict(endpoint_url=args.endpoint, region_name="us-east-1",
              aws_access_key_id="testing", aws_secret_access_key="testing")
    c = lambda name: boto3.client(name, **kw)  # noqa: E731
    cfn = c("cloudformation")
    templates = pathlib.Path(args.root) / "deploy/cloudformation"

    ec2 = c("ec2")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"] if s["VpcId"] == vpc][:2]
    topic = c("sns").create_topic(Name="tidewater-alarms")["TopicArn"]

    def create(name, template, params):
        cfn.create_stack(
            StackName=name,
            TemplateBody=(templates / template).read_text(),
            Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        )
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        resources = {
            r["LogicalResourceId"]: {"type": r["ResourceType"], "id": r.get("PhysicalResourceId", "")}
            for r in cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
        }
        return {"status": stack["StackStatus"], "outputs": outputs, "resources": resources}

    pipeline = create("tidewater", "tidewater.yaml", {
        "TidewaterImage": "tidewater:test",
        "VpcId": vpc,
        "SubnetIds": ",".join(subnets),
        "AlarmTopicArn": topic,
    })
    out = pipeline["outputs"]
    app = create("shop", "collector-sidecar.yaml", {
        "AppName": "shop",
        "AppImage": "shop:test",
        "TidewaterImage": "tidewater:test",
        "StreamName": out["StreamName"],
        "CollectorPolicyArn": out["CollectorPolicyArn"],
        "CollectorLogGroupName": out["CollectorLogGroupName"],
    })

    # What moto created, read back through the services' own APIs.
    kinesis = c("kinesis").describe_stream_summary(StreamName=out["StreamName"])["StreamDescriptionSummary"]
    table = c("dynamodb").describe_table(TableName=out["LeaseTableName"])["Table"]
    iam = c("iam")

    def role(arn_or_name):
        name = arn_or_name.split("/")[-1]
        inline = {p: iam.get_role_policy(RoleName=name, PolicyName=p)["PolicyDocument"]
                  for p in iam.list_role_policies(RoleName=name)["PolicyNames"]}
        attached = [p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]]
        return {"name": name, "inline": inline, "attached": attached}

    logs = c("logs").describe_log_groups(logGroupNamePrefix="/")["logGroups"]
    ecs = c("ecs")
    task = lambda arn: ecs.describe_task_definition(taskDefinition=arn)["taskDefinition"]  # noqa: E731
    policy_arn = out["CollectorPolicyArn"]
    version = iam.get_policy(PolicyArn=policy_arn)["Policy"]["DefaultVersionId"]
    collector_policy = iam.get_policy_version(PolicyArn=policy_arn, VersionId=version)["PolicyVersion"]["Document"]
    services = ecs.describe_services(cluster=out["ClusterName"], services=[out["ProcessorServiceName"]])["services"]
    # The dashboard as CloudWatch holds it: every ${...} of the template resolved.
    dashboard = c("cloudwatch").get_dashboard(DashboardName=out["DashboardName"])["DashboardBody"]
    print(json.dumps({
        "pipeline": pipeline,
        "app": app,
        "stream": {"name": kinesis["StreamName"], "status": kinesis["StreamStatus"],
                   "shards": kinesis.get("OpenShardCount")},
        "table": {"name": table["TableName"], "key": table["KeySchema"],
                  "billing": table.get("BillingModeSummary", {}).get("BillingMode")},
        "processor_role": role(out["ProcessorTaskRoleArn"]),
        "app_role": role(app["outputs"]["TaskRoleArn"]),
        "collector_policy": collector_policy,
        "log_groups": {g["logGroupName"]: g.get("retentionInDays") for g in logs},
        "processor_task": task(pipeline["resources"]["ProcessorTaskDefinition"]["id"]),
        "app_task": task(app["outputs"]["TaskDefinitionArn"]),
        "service": services[0] if services else None,
        "dashboard": json.loads(dashboard),
    }, default=str))


if __name__ == "__main__":
    main()
