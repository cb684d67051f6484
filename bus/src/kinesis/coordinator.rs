//! The consumer's lease coordinator: renews this worker's leases, refreshes the shard list
//! (creating leases for new shards), and takes free, expired or surplus leases
//! ([`leases::plan`]), starting a reader for each. Runs every third of a lease duration.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::consumer::{lost, Held, Shared, BUS_LABEL};
use super::leases::{self, Checkpoint, Lease, Observations};
use super::reader::Reader;
use super::shards::list_shards;
use crate::backoff::jittered;
use crate::{BusError, Position};

/// Renews, syncs shards, takes leases; every third of a lease duration.
pub(super) async fn coordinate(shared: Arc<Shared>) {
    let c = &shared.config;
    let tick = (c.lease_duration / 3).max(Duration::from_millis(200));
    let mut observations = Observations::default();
    let mut next_sync = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = async {
            renew(&shared).await?;
            if Instant::now() >= next_sync {
                sync_shards(&shared).await?;
                next_sync = Instant::now() + c.shard_sync_interval;
            }
            take(&shared, &mut observations).await
        }
        .await;
        metrics::gauge!("tidewater_kinesis_leases_held").set(shared.held().len() as f64);
        match result {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => {
                tracing::warn!(bus = BUS_LABEL, error = %e, "lease coordination failed; retrying");
                backoff = (backoff * 2).min(tick);
            }
        }
        let wait = if backoff > Duration::from_millis(200) {
            jittered(backoff)
        } else {
            tick
        };
        tokio::select! {
            _ = shared.stop.cancelled() => {
                for (_, h) in shared.held().drain() {
                    h.stop.cancel();
                }
                return;
            }
            _ = shared.rescan.notified() => next_sync = Instant::now(),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn renew(shared: &Shared) -> Result<(), BusError> {
    let mine: Vec<(String, u64)> = shared
        .held()
        .iter()
        .map(|(s, h)| (s.clone(), h.counter))
        .collect();
    for (shard, counter) in mine {
        match shared.leases.renew(&shard, &shared.worker, counter).await? {
            Some(next) => {
                if let Some(h) = shared.held().get_mut(&shard) {
                    h.counter = next;
                }
            }
            None => lost(shared, &shard, "it was taken by another worker"),
        }
    }
    Ok(())
}

async fn sync_shards(shared: &Shared) -> Result<(), BusError> {
    for shard in list_shards(&shared.kinesis, &shared.config.stream).await? {
        if shared.leases.create_if_missing(&shard).await? {
            tracing::info!(bus = BUS_LABEL, shard = %shard.id, parents = ?shard.parents, "lease created for shard");
        }
    }
    Ok(())
}

async fn take(shared: &Arc<Shared>, observations: &mut Observations) -> Result<(), BusError> {
    let leases = shared.leases.list().await?;
    let now = Instant::now();
    observations.observe(&leases, now);
    let held: HashSet<String> = shared.held().keys().cloned().collect();
    let duration = shared.config.lease_duration;
    let wanted = leases::plan(&leases, &shared.worker, &held, |l| {
        observations.expired(l, now, duration)
    });
    for lease in wanted {
        if held.contains(&lease.shard) {
            continue;
        }
        let Some(counter) = shared.leases.take(&lease, &shared.worker).await? else {
            continue;
        };
        tracing::info!(bus = BUS_LABEL, shard = %lease.shard, from = ?lease.owner, checkpoint = ?lease.checkpoint, "shard lease taken");
        metrics::counter!("tidewater_kinesis_leases_taken_total").increment(1);
        start_reader(shared, &lease, counter);
    }
    Ok(())
}

fn start_reader(shared: &Arc<Shared>, lease: &Lease, counter: u64) {
    let generation = shared.generations.fetch_add(1, Ordering::Relaxed) + 1;
    let stop = shared.stop.child_token();
    let committed = match &lease.checkpoint {
        Checkpoint::At { sequence, sub } => Some(Position::Sequence {
            sequence: sequence.clone(),
            sub: *sub,
        }),
        _ => None,
    };
    shared.held().insert(
        lease.shard.clone(),
        Held {
            counter,
            generation,
            stop: stop.clone(),
            returned: committed.clone(),
            committed,
            buffered: 0,
            ended: false,
        },
    );
    let reader = Reader::new(shared.clone(), lease.shard.clone(), generation, stop);
    tokio::spawn(reader.run(lease.checkpoint.clone()));
}
