//! `tidewater`: the collector sidecar, the processors, or both over an embedded bus.

mod admin;
#[cfg(target_os = "linux")]
mod alloc;
mod config;
#[cfg(test)]
mod fuzz;
mod healthcheck;
mod logging;
mod run;
mod self_metrics;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::run::Role;

#[derive(Parser)]
#[command(
    name = "tidewater",
    version,
    about = "OpenTelemetry and analytics-event pipeline for AWS"
)]
struct Cli {
    /// TOML configuration file; every key can also be set as TIDEWATER_<SECTION>__<KEY>.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline in one process: collector, embedded bus, processor.
    Up,
    /// The collector sidecar: receive, batch, publish to the bus.
    Collector,
    /// The processors: consume the bus, deliver to the sinks.
    Processor,
    /// Validate a configuration file and print what `up` would run.
    CheckConfig {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Ask a running Tidewater's admin listener whether it is ready: exit 0, or 1 with why.
    Healthcheck(healthcheck::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Healthcheck(args) = &cli.command {
        return healthcheck::main(args, cli.config.as_deref());
    }
    let (file, role) = match &cli.command {
        Command::Up => (cli.config.clone(), Role::Up),
        Command::Collector => (cli.config.clone(), Role::Collector),
        Command::Processor => (cli.config.clone(), Role::Processor),
        Command::CheckConfig { file } => (Some(file.clone()), Role::Up),
        Command::Healthcheck(_) => unreachable!("handled above"),
    };
    let config = match Config::load(file.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tidewater: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Command::CheckConfig { file } = &cli.command {
        println!("{}: ok", file.display());
        for line in run::describe(&config, role) {
            println!("{line}");
        }
        return ExitCode::SUCCESS;
    }
    let _telemetry = match logging::init(&config.log, &config.telemetry) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("tidewater: cannot set up telemetry: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tidewater: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(config, role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("tidewater: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// jemalloc for the processor, the C library's malloc for the rest: [`alloc`] says why.
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: alloc::ByRole = alloc::ByRole;
