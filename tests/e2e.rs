//! Every end-to-end test, in one binary: each module is one area's tests against the real
//! `tidewater` binary and real peers. One binary, not one per area, because each test binary
//! links the AWS SDKs and the rest of the workspace, and that linking dominated CI's time.

mod common;
mod kinesis_support;

mod bad_input;
mod chaos;
mod cloudwatch_e2e;
mod deploy_stack;
mod elasticsearch_e2e;
mod elasticsearch_faults;
mod healthcheck;
mod kinesis_e2e;
mod kinesis_faults;
mod kinesis_kpl_compat;
mod kinesis_scale;
mod otlp_e2e;
mod pipeline_e2e;
mod redaction_e2e;
mod restart;
mod self_metrics_emf;
mod self_telemetry;
mod slow_sink_e2e;
mod tls_auth;
mod xray_e2e;
