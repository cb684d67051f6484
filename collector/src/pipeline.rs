//! Batches parts per (signal, partition) and publishes them to the bus.
//!
//! Each partition of each signal has its own lane: a task that gathers parts until the batch is
//! full or old enough, then puts the parts' bytes one after another (they are already encoded
//! as the bus carries them), compresses and publishes them, and only then acknowledges every
//! request that contributed. A lane has at most one publish in flight, so batches of a
//! partition reach the bus in the order they were received; while it publishes, new parts wait
//! in its queue and go out together in the next batch, so batches grow as the bus slows.
//!
//! Memory is bounded by [`crate::memory`]: a request arrives holding what its body took, and
//! keeps exactly its parts' bytes until they are durable; a request that does not fit is
//! refused at once (the client retries later) rather than queued.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::try_join_all;
use prost::Message;
use tidewater_bus::{PartitionKey, Producer};
use tidewater_proto::{Compression, Encoding, Envelope, Signal};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::CollectorConfig;
use crate::error::IngestError;
use crate::memory::{Held, Memory};
use crate::partition::Part;
use crate::split::BusBatch;

/// The signals the collector batches, in lane order.
pub const SIGNALS: [Signal; 5] = [
    Signal::Traces,
    Signal::Metrics,
    Signal::Logs,
    Signal::Events,
    Signal::XraySegments,
];

type AckResult = Result<(), Arc<str>>;

struct Submission {
    part: Part,
    ack: oneshot::Sender<AckResult>,
    /// Released when the part is durable (or failed): that frees its share of the memory bound.
    _held: Held,
}

pub struct Pipeline {
    /// `lanes[signal index][partition]`.
    lanes: Vec<Vec<mpsc::UnboundedSender<Submission>>>,
    memory: Arc<Memory>,
    ack_timeout: Duration,
    retry_after: Duration,
    stop: CancellationToken,
    tasks: std::sync::Mutex<JoinSet<()>>,
}

impl Pipeline {
    pub fn start(
        config: &CollectorConfig,
        producer: Arc<dyn Producer>,
        producer_name: String,
    ) -> Arc<Self> {
        let memory = Memory::new(config.memory_limit.as_u64(), config.retry_after);
        let partitions = producer.partitions().max(1);
        let mut tasks = JoinSet::new();
        let stop = CancellationToken::new();
        let lanes = SIGNALS
            .iter()
            .map(|&signal| {
                (0..partitions)
                    .map(|partition| {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let lane = Lane {
                            signal,
                            key: PartitionKey::for_partition(partition, partitions),
                            partition,
                            max_items: config.batch.max_items.max(1),
                            max_bytes: config.batch.max_size.as_u64() as usize,
                            timeout: config.batch.timeout,
                            zstd_level: config.batch.zstd_level,
                            producer: producer.clone(),
                            producer_name: producer_name.clone(),
                        };
                        tasks.spawn(lane.run(rx, stop.clone()));
                        tx
                    })
                    .collect()
            })
            .collect();
        Arc::new(Pipeline {
            lanes,
            memory,
            ack_timeout: config.ack_timeout,
            retry_after: config.retry_after,
            stop,
            tasks: std::sync::Mutex::new(tasks),
        })
    }

    /// The bound receivers count request bodies against before handing them here.
    pub fn memory(&self) -> &Arc<Memory> {
        &self.memory
    }

    pub fn partitions(&self) -> u32 {
        self.lanes[0].len() as u32
    }

    /// Hands `parts` to their lanes and waits until all of them are durable on the bus. `held`
    /// is what the request already counts against the memory bound (its body); it becomes
    /// exactly the parts' bytes, each part holding its share until it is durable.
    pub async fn submit(
        &self,
        signal: Signal,
        parts: Vec<Part>,
        mut held: Held,
    ) -> Result<(), IngestError> {
        if parts.is_empty() {
            return Ok(());
        }
        let signal_index = SIGNALS
            .iter()
            .position(|s| *s == signal)
            .expect("batched signal");
        // Every part holds at least one permit so that an empty-looking part still counts.
        let total: usize = parts.iter().map(|p| p.bytes().max(1)).sum();
        self.memory.resize(&mut held, total, signal.label())?;
        let items: u64 = parts.iter().map(|p| p.items as u64).sum();
        let label = signal.label();
        metrics::gauge!("tidewater_collector_queued_items", "signal" => label)
            .increment(items as f64);
        metrics::gauge!("tidewater_collector_queued_bytes", "signal" => label)
            .increment(total as f64);
        let mut acks = Vec::with_capacity(parts.len());
        for part in parts {
            let share = held.split(part.bytes().max(1));
            let (ack, done) = oneshot::channel();
            let lane = &self.lanes[signal_index][part.partition as usize];
            lane.send(Submission {
                part,
                ack,
                _held: share,
            })
            .map_err(|_| self.shutting_down())?;
            acks.push(done);
        }
        let outcome = tokio::time::timeout(self.ack_timeout, try_join_all(acks)).await;
        match outcome {
            Err(_) => Err(IngestError::Unavailable {
                reason: format!(
                    "data was not durable on the bus within {:?}",
                    self.ack_timeout
                ),
                retry_after: self.retry_after,
            }),
            Ok(Err(_)) => Err(self.shutting_down()),
            Ok(Ok(results)) => match results.into_iter().find_map(Result::err) {
                Some(reason) => Err(IngestError::Unavailable {
                    reason: format!("publishing to the bus failed: {reason}"),
                    retry_after: self.retry_after,
                }),
                None => Ok(()),
            },
        }
    }

    fn shutting_down(&self) -> IngestError {
        IngestError::Unavailable {
            reason: "collector is shutting down".into(),
            retry_after: self.retry_after,
        }
    }

    /// Stops taking parts, publishes what the lanes hold, and waits for them.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        let mut tasks = std::mem::take(&mut *self.tasks.lock().expect("not poisoned"));
        while tasks.join_next().await.is_some() {}
    }
}

struct Lane {
    signal: Signal,
    key: PartitionKey,
    partition: u32,
    max_items: usize,
    max_bytes: usize,
    timeout: Duration,
    zstd_level: i32,
    producer: Arc<dyn Producer>,
    producer_name: String,
}

#[derive(Default)]
struct Batch {
    parts: Vec<Part>,
    acks: Vec<oneshot::Sender<AckResult>>,
    held: Vec<Held>,
    items: usize,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, s: Submission) {
        self.items += s.part.items as usize;
        self.bytes += s.part.bytes();
        self.parts.push(s.part);
        self.acks.push(s.ack);
        self.held.push(s._held);
    }
}

impl Lane {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Submission>, stop: CancellationToken) {
        let mut closing = false;
        loop {
            let mut batch = Batch::default();
            match next(&mut rx, &stop, &mut closing).await {
                Some(s) => batch.push(s),
                None => return,
            }
            let deadline = Instant::now() + self.timeout;
            let mut closed = false;
            while batch.items < self.max_items && batch.bytes < self.max_bytes {
                tokio::select! {
                    s = next(&mut rx, &stop, &mut closing) => match s {
                        Some(s) => batch.push(s),
                        None => { closed = true; break; }
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            self.publish(batch).await;
            if closed {
                return;
            }
        }
    }

    #[tracing::instrument(level = "debug", name = "publish", skip_all, fields(signal = self.signal.label(), partition = self.partition, items = batch.items, bytes = batch.bytes))]
    async fn publish(&self, batch: Batch) {
        let Batch {
            parts,
            acks,
            held,
            items,
            bytes,
        } = batch;
        let result = match self.records(parts, items) {
            Ok(records) => {
                let size: usize = records.iter().map(Bytes::len).sum();
                match self.producer.publish(&self.key, records).await {
                    Ok(_) => {
                        let signal = self.signal.label();
                        metrics::counter!("tidewater_collector_batches_published_total", "signal" => signal).increment(1);
                        metrics::counter!("tidewater_collector_published_items_total", "signal" => signal).increment(items as u64);
                        metrics::counter!("tidewater_collector_published_bytes_total", "signal" => signal).increment(size as u64);
                        metrics::counter!("tidewater_collector_batched_bytes_total", "signal" => signal).increment(bytes as u64);
                        Ok(())
                    }
                    Err(e) => {
                        tracing::warn!(signal = self.signal.label(), partition = self.partition, error = %e, "publish failed");
                        metrics::counter!("tidewater_collector_publish_failures_total", "signal" => self.signal.label()).increment(1);
                        Err(Arc::<str>::from(e.to_string()))
                    }
                }
            }
            Err(e) => Err(Arc::<str>::from(e)),
        };
        let held_bytes: usize = held.iter().map(Held::bytes).sum();
        drop(held);
        metrics::gauge!("tidewater_collector_queued_items", "signal" => self.signal.label())
            .decrement(items as f64);
        metrics::gauge!("tidewater_collector_queued_bytes", "signal" => self.signal.label())
            .decrement(held_bytes as f64);
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }

    /// The batch as bus records: one envelope, or several under the same key when the bus
    /// has a record limit the batch does not fit in (split by size before compression, then
    /// halved until each compressed envelope fits).
    fn records(&self, parts: Vec<Part>, items: usize) -> Result<Vec<Bytes>, String> {
        let Some(limit) = self.producer.max_record_size() else {
            let envelope = self.envelope(&concat(parts), items)?;
            return Ok(vec![Bytes::from(envelope.encode_to_vec())]);
        };
        // The partition key counts against the record limit too.
        let room = limit.saturating_sub(self.key.key.len());
        let mut records = Vec::new();
        for (chunk, items) in chunk_parts(parts, Some(room)) {
            // A stack, so halves go out in order.
            let mut todo = vec![(concat(chunk), items)];
            while let Some((body, items)) = todo.pop() {
                let record = self.envelope(&body, items)?.encode_to_vec();
                if record.len() <= room {
                    records.push(Bytes::from(record));
                    continue;
                }
                // Rare (one request's share over a record), so this is the one place the
                // collector decodes what it batches.
                let size = record.len();
                let batch = BusBatch::decode(self.signal, &body)?;
                match batch.split() {
                    Ok((first, second)) => {
                        todo.push((second.encode_to_vec(), second.items()));
                        todo.push((first.encode_to_vec(), first.items()));
                    }
                    Err(_) => {
                        metrics::counter!("tidewater_collector_oversized_items_total", "signal" => self.signal.label()).increment(1);
                        return Err(format!(
                            "a single {} item encodes to {size} bytes, over the bus's record limit of {limit} bytes",
                            self.signal.label()
                        ));
                    }
                }
            }
        }
        Ok(records)
    }

    fn envelope(&self, payload: &[u8], items: usize) -> Result<Envelope, String> {
        let uncompressed_size = payload.len() as u64;
        let compressed =
            zstd::bulk::compress(payload, self.zstd_level).map_err(|e| format!("zstd: {e}"))?;
        Ok(Envelope {
            signal: self.signal as i32,
            encoding: encoding(self.signal) as i32,
            compression: Compression::Zstd as i32,
            payload: compressed,
            produced_at_unix_nano: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0),
            record_id: uuid::Uuid::now_v7().as_bytes().to_vec(),
            item_count: items as u32,
            uncompressed_size,
            producer: self.producer_name.clone(),
        })
    }
}

/// Splits a batch into runs of parts that each encode within the bus's record limit, so a
/// batch larger than one record travels as several records under the same key. Sizes are
/// counted before compression (compressed output is never much larger), less a margin for the
/// envelope's own fields and the partition key; a part larger than that goes alone and the
/// bus refuses it if it still does not fit once compressed.
fn chunk_parts(parts: Vec<Part>, limit: Option<usize>) -> Vec<(Vec<Part>, usize)> {
    let Some(limit) = limit else {
        let items = parts.iter().map(|p| p.items as usize).sum();
        return vec![(parts, items)];
    };
    let budget = limit.saturating_sub(limit / 256 + 1024).max(1);
    let mut chunks: Vec<(Vec<Part>, usize)> = Vec::new();
    let mut bytes = 0;
    for part in parts {
        match chunks.last_mut() {
            Some((run, items)) if bytes + part.bytes() <= budget => {
                bytes += part.bytes();
                *items += part.items as usize;
                run.push(part);
            }
            _ => {
                bytes = part.bytes();
                let items = part.items as usize;
                chunks.push((vec![part], items));
            }
        }
    }
    chunks
}

/// The next submission; once `stop` fires the queue is closed, so what it holds is still
/// returned and then `None`.
async fn next(
    rx: &mut mpsc::UnboundedReceiver<Submission>,
    stop: &CancellationToken,
    closing: &mut bool,
) -> Option<Submission> {
    loop {
        tokio::select! {
            s = rx.recv() => return s,
            _ = stop.cancelled(), if !*closing => {
                *closing = true;
                rx.close();
            }
        }
    }
}

/// The parts of one signal as the payload that travels on the bus: their bodies, one after
/// the other (see [`Part::body`]).
pub fn encode(signal: Signal, parts: Vec<Part>) -> (Encoding, Vec<u8>) {
    (encoding(signal), concat(parts))
}

fn concat(parts: Vec<Part>) -> Vec<u8> {
    let mut body = Vec::with_capacity(parts.iter().map(Part::bytes).sum());
    for part in parts {
        body.extend_from_slice(&part.body);
    }
    body
}

fn encoding(signal: Signal) -> Encoding {
    match signal {
        Signal::Events => Encoding::EventsProto,
        Signal::XraySegments => Encoding::XrayJson,
        _ => Encoding::OtlpProto,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use tidewater_bus::{Ack, BusError, Position};

    use super::*;

    /// Records what is published; fails or stalls on demand.
    #[derive(Default)]
    struct FakeBus {
        published: Mutex<Vec<(PartitionKey, Envelope)>>,
        fail: bool,
        stall: bool,
    }

    #[async_trait]
    impl Producer for FakeBus {
        fn partitions(&self) -> u32 {
            2
        }
        async fn publish(&self, key: &PartitionKey, records: Vec<Bytes>) -> Result<Ack, BusError> {
            if self.stall {
                std::future::pending::<()>().await;
            }
            if self.fail {
                return Err(BusError::Unavailable("disk on fire".into()));
            }
            let mut published = self.published.lock().unwrap();
            for r in records {
                published.push((key.clone(), Envelope::decode(r).unwrap()));
            }
            Ok(Ack {
                partition: "0".into(),
                first: Position::Offset(0),
            })
        }
    }

    fn config(timeout_ms: u64) -> CollectorConfig {
        let mut c = CollectorConfig::default();
        c.batch.timeout = Duration::from_millis(timeout_ms);
        c.ack_timeout = Duration::from_millis(500);
        c
    }

    fn part(partition: u32, name: &str) -> Part {
        let rs = ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    name: name.into(),
                    trace_id: vec![1; 16],
                    span_id: vec![1; 8],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        Part {
            partition,
            body: ExportTraceServiceRequest {
                resource_spans: vec![rs],
            }
            .encode_to_vec(),
            items: 1,
        }
    }

    fn names(envelope: &Envelope) -> Vec<String> {
        let payload =
            zstd::bulk::decompress(&envelope.payload, envelope.uncompressed_size as usize).unwrap();
        let req = ExportTraceServiceRequest::decode(&payload[..]).unwrap();
        req.resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.clone())
            .collect()
    }

    #[tokio::test]
    async fn acknowledges_after_publishing_one_batch_per_partition_in_order() {
        let bus = Arc::new(FakeBus::default());
        let pipeline = Pipeline::start(&config(50), bus.clone(), "test".into());
        let (a, b) = tokio::join!(
            pipeline.submit(
                Signal::Traces,
                vec![part(0, "a1"), part(1, "b1")],
                Held::none()
            ),
            pipeline.submit(Signal::Traces, vec![part(0, "a2")], Held::none()),
        );
        a.unwrap();
        b.unwrap();
        let published = bus.published.lock().unwrap();
        assert_eq!(published.len(), 2, "one batch per partition");
        let lane0 = published
            .iter()
            .find(|(k, _)| k == &PartitionKey::for_partition(0, 2))
            .unwrap();
        assert_eq!(names(&lane0.1), ["a1", "a2"]);
        assert_eq!(lane0.1.item_count, 2);
        assert_eq!(lane0.1.signal, Signal::Traces as i32);
        assert_eq!(lane0.1.record_id.len(), 16);
    }

    #[tokio::test]
    async fn a_failed_publish_is_a_retryable_refusal() {
        let bus = Arc::new(FakeBus {
            fail: true,
            ..Default::default()
        });
        let pipeline = Pipeline::start(&config(10), bus, "test".into());
        let err = pipeline
            .submit(Signal::Traces, vec![part(0, "x")], Held::none())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, IngestError::Unavailable { reason, .. } if reason.contains("disk on fire")),
            "{err:?}"
        );
        // The memory taken by the failed request is given back.
        assert_eq!(pipeline.memory.held(), 0);
    }

    #[tokio::test]
    async fn a_stalled_bus_times_out_as_unavailable_and_then_refuses_when_full() {
        let bus = Arc::new(FakeBus {
            stall: true,
            ..Default::default()
        });
        let mut c = config(10);
        c.memory_limit = bytesize::ByteSize::b(part(0, "x").bytes() as u64);
        let pipeline = Pipeline::start(&c, bus, "test".into());
        let err = pipeline
            .submit(Signal::Traces, vec![part(0, "x")], Held::none())
            .await
            .unwrap_err();
        assert!(matches!(err, IngestError::Unavailable { .. }), "{err:?}");
        // The stalled batch still holds its memory: the next request is pushed back at once.
        let err = pipeline
            .submit(Signal::Traces, vec![part(1, "y")], Held::none())
            .await
            .unwrap_err();
        assert!(matches!(err, IngestError::Busy { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn shutdown_publishes_what_is_batched() {
        let bus = Arc::new(FakeBus::default());
        let pipeline = Pipeline::start(&config(60_000), bus.clone(), "test".into());
        let submit = {
            let pipeline = pipeline.clone();
            tokio::spawn(async move {
                pipeline
                    .submit(Signal::Traces, vec![part(0, "late")], Held::none())
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        pipeline.shutdown().await;
        submit.await.unwrap().unwrap();
        assert_eq!(bus.published.lock().unwrap().len(), 1);
        let err = pipeline
            .submit(Signal::Traces, vec![part(0, "after")], Held::none())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, IngestError::Unavailable { reason, .. } if reason.contains("shutting down"))
        );
    }

    fn sized(bytes: usize, items: u32) -> Part {
        Part {
            partition: 0,
            body: vec![0; bytes],
            items,
        }
    }

    #[test]
    fn batches_over_the_record_limit_become_several_records() {
        let sizes = |chunks: &[(Vec<Part>, usize)]| -> Vec<(Vec<usize>, usize)> {
            chunks
                .iter()
                .map(|(run, items)| (run.iter().map(Part::bytes).collect(), *items))
                .collect()
        };
        let parts = || {
            vec![
                sized(40_000, 1),
                sized(40_000, 2),
                sized(40_000, 3),
                sized(200_000, 4),
                sized(10, 5),
            ]
        };
        assert_eq!(
            sizes(&chunk_parts(parts(), None)),
            vec![(vec![40_000, 40_000, 40_000, 200_000, 10], 15)]
        );
        assert_eq!(
            sizes(&chunk_parts(parts(), Some(100_000))),
            vec![
                (vec![40_000, 40_000], 3),
                (vec![40_000], 3),
                (vec![200_000], 4),
                (vec![10], 5)
            ]
        );
    }
}
