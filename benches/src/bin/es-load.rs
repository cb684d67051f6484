//! Load generator for the Elasticsearch sink: indexes generated shop events through the real
//! sink (documents, `_bulk` requests in flight, item results) into a running cluster and
//! reports documents indexed per second. Not a test: run it against a stand-in or a cluster.
//!
//! ```sh
//! .venv/lib/python3*/site-packages/osmem_server/bin/osmem-server -addr 127.0.0.1:9200 -no-stdin-watch &
//! cargo run --release -p tidewater-benches --bin es-load -- --url http://127.0.0.1:9200 --events 100000
//! ```

use std::time::Instant;

use clap::Parser;
use elasticsearch::http::transport::Transport;
use elasticsearch::{CountParts, Elasticsearch};
use serde_json::{json, Value};
use tidewater_benches::es::{events, shared};
use tidewater_processors::sink::Sink;
use tidewater_processors::sinks::elasticsearch::{ElasticsearchSink, ElasticsearchSinkConfig};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:9200")]
    url: String,
    /// Documents to index.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Events per bus record.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Bus records per delivery (the processor's round).
    #[arg(long, default_value_t = 20)]
    round: usize,
    /// `_bulk` requests in flight.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    #[arg(long, default_value_t = 5000)]
    max_actions: usize,
    /// Days the events are spread over (one index each).
    #[arg(long, default_value_t = 7)]
    days: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = ElasticsearchSinkConfig {
        enabled: true,
        url: args.url.clone(),
        replicas: 0,
        ..Default::default()
    };
    config.delivery.concurrency = args.concurrency;
    config.bulk.max_actions = args.max_actions;
    let dead_letters = std::env::temp_dir().join("tidewater-es-load");
    config.delivery.dead_letter_dir = dead_letters.clone();
    let sink = ElasticsearchSink::new(config.clone())?;

    let run = format!("load{}", chrono::Utc::now().timestamp_millis());
    let records: Vec<_> = (0..args.events.div_ceil(args.batch))
        .map(|b| {
            let n = args.batch.min(args.events - b * args.batch);
            events(&format!("{run}-{b}"), n, args.days)
        })
        .collect();
    let rounds: Vec<_> = shared(records)
        .chunks(args.round)
        .map(<[_]>::to_vec)
        .collect();

    let started = Instant::now();
    for round in &rounds {
        sink.deliver(round, &tokio_util::sync::CancellationToken::new())
            .await?;
    }
    let elapsed = started.elapsed();

    let client = Elasticsearch::new(Transport::single_node(&args.url)?);
    let index = format!("{}*", config.events_index);
    client
        .indices()
        .refresh(elasticsearch::indices::IndicesRefreshParts::Index(&[
            &index,
        ]))
        .send()
        .await?;
    let count: Value = client
        .count(CountParts::Index(&[&index]))
        .body(json!({"query": {"prefix": {"message_id": format!("{run}-")}}}))
        .send()
        .await?
        .json()
        .await?;
    let stored = count["count"].as_u64().unwrap_or(0);
    println!(
        "indexed {} events in {:.2} s: {:.0} documents/s ({} stored; {} in flight, {} per bulk, {} per delivery)",
        args.events,
        elapsed.as_secs_f64(),
        args.events as f64 / elapsed.as_secs_f64(),
        stored,
        args.concurrency,
        args.max_actions,
        args.batch * args.round,
    );
    anyhow::ensure!(
        stored == args.events as u64,
        "expected {} documents, the cluster holds {stored}",
        args.events
    );
    Ok(())
}
