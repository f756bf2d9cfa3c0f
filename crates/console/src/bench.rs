//! `sagaflow console bench`: fills a history file with synthetic sagas
//! through the same store code the indexer uses, then times filtered
//! searches. It measures the store (SQLite), not Kafka: the indexer's
//! Kafka side is measured by the end-to-end tests.

use std::path::Path;
use std::time::Instant;

use sagaflow_codec::messages::{LifecycleKind, SagaLifecycleEvent, SagaResult, SagaStatus};
use serde::Serialize;
use serde_json::json;

use crate::error::ConsoleError;
use crate::store::{Filter, Item, Page, Record, Store};

/// What the bench measured.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub sagas: u64,
    pub lifecycle_events: u64,
    pub records: u64,
    pub index_seconds: f64,
    pub events_per_sec: f64,
    pub db_bytes: u64,
    /// query name → (p50 ms, p99 ms, rows of the first run).
    pub searches: Vec<SearchTiming>,
}

#[derive(Debug, Serialize)]
pub struct SearchTiming {
    pub name: String,
    pub runs: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub rows: usize,
}

const TYPES: [&str; 3] = ["order-checkout", "travel-booking", "customer-onboarding"];
const T0: i64 = 1_750_000_000_000;

fn life(id: &str, ty: &str, seq: i64, kind: LifecycleKind, at: i64) -> SagaLifecycleEvent {
    SagaLifecycleEvent {
        event_id: format!("{id}/{seq}"),
        saga_id: id.to_owned(),
        saga_type: ty.to_owned(),
        saga_version: 1,
        kind,
        at,
        ..Default::default()
    }
}

/// The records of saga `n`: 8 lifecycle events (started, 3 steps started
/// and succeeded, or a failure and a compensation) and a result.
fn saga(n: u64) -> Vec<Item> {
    let ty = TYPES[(n % 3) as usize];
    let id = format!("{ty}:o-{n:07}");
    let at = T0 + n as i64 * 10;
    let customer = format!("c-{}", n % 50_000);
    let mut started = life(&id, ty, 1, LifecycleKind::Started, at);
    started.attributes = [
        ("key".to_string(), format!("o-{n:07}")),
        ("customer_id".to_string(), customer.clone()),
        ("total_cents".to_string(), ((n * 37) % 200_000).to_string()),
    ]
    .into();
    started.input = Some(
        json!({"order_id": format!("o-{n:07}"), "customer_id": customer, "total_cents": (n * 37) % 200_000}),
    );
    let mut out = vec![Item::Lifecycle(started)];
    let fails = n.is_multiple_of(20);
    let steps = ["reserve_inventory", "charge_payment", "schedule_shipment"];
    let mut seq = 1;
    for (i, step) in steps.iter().enumerate() {
        seq += 1;
        let mut s = life(&id, ty, seq, LifecycleKind::StepStarted, at + 1 + i as i64);
        s.step = Some((*step).into());
        s.attempt = Some(1);
        s.input = Some(json!({"order_id": format!("o-{n:07}"), "amount": 1234}));
        out.push(Item::Lifecycle(s));
        seq += 1;
        if fails && i == 1 {
            let mut f = life(&id, ty, seq, LifecycleKind::StepFailed, at + 2 + i as i64);
            f.step = Some((*step).into());
            f.detail = Some(format!(
                "declined: card declined for customer c-{}",
                n % 50_000
            ));
            f.error = Some(json!({"message": "declined", "data": {"error": "card declined"}}));
            out.push(Item::Lifecycle(f));
            seq += 1;
            out.push(Item::Lifecycle(life(
                &id,
                ty,
                seq,
                LifecycleKind::Compensated,
                at + 5,
            )));
            out.push(Item::Result(SagaResult {
                saga_id: id.clone(),
                saga_type: ty.into(),
                saga_version: 1,
                status: SagaStatus::Compensated,
                output: json!({"error": "declined"}),
                error: Some("declined".into()),
                started_at: at,
                ended_at: at + 5,
            }));
            return out;
        }
        let mut s = life(
            &id,
            ty,
            seq,
            LifecycleKind::StepSucceeded,
            at + 2 + i as i64,
        );
        s.step = Some((*step).into());
        s.attempt = Some(1);
        s.output = Some(json!({"id": format!("x-{n}")}));
        out.push(Item::Lifecycle(s));
    }
    seq += 1;
    out.push(Item::Lifecycle(life(
        &id,
        ty,
        seq,
        LifecycleKind::Completed,
        at + 9,
    )));
    out.push(Item::Result(SagaResult {
        saga_id: id.clone(),
        saga_type: ty.into(),
        saga_version: 1,
        status: SagaStatus::Completed,
        output: json!({}),
        error: None,
        started_at: at,
        ended_at: at + 9,
    }));
    out
}

/// A named search, built from the run number.
type Query = (&'static str, Box<dyn Fn(usize) -> Filter>);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Indexes `sagas` synthetic sagas into a fresh file at `path` (batches of
/// `batch` records), then runs each search `runs` times.
pub async fn run(
    path: &Path,
    sagas: u64,
    batch: usize,
    runs: usize,
) -> Result<BenchReport, ConsoleError> {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let store = Store::open(path).await?;
    let started = Instant::now();
    let (mut events, mut records) = (0u64, 0u64);
    let mut buf: Vec<Record> = Vec::with_capacity(batch + 16);
    let mut offset = 0i64;
    for n in 0..sagas {
        for item in saga(n) {
            if matches!(item, Item::Lifecycle(_)) {
                events += 1;
            }
            buf.push(Record {
                topic: "bench.saga-events".into(),
                partition: (n % 6) as i32,
                offset,
                item,
            });
            offset += 1;
        }
        if buf.len() >= batch {
            records += buf.len() as u64;
            store.apply(&buf).await?;
            buf.clear();
        }
    }
    records += buf.len() as u64;
    store.apply(&buf).await?;
    let index_seconds = started.elapsed().as_secs_f64();
    let mut searches = Vec::new();
    let last = sagas.saturating_sub(1);
    let queries: Vec<Query> = vec![
        (
            "by id",
            Box::new(move |i| Filter {
                id: Some(format!(
                    "{}:o-{:07}",
                    TYPES[(i as u64 * 7919 % sagas.max(1) % 3) as usize],
                    i as u64 * 7919 % sagas.max(1)
                )),
                ..Default::default()
            }),
        ),
        (
            "by key",
            Box::new(move |i| Filter {
                key: Some(format!("o-{:07}", (i as u64 * 104_729) % sagas.max(1))),
                ..Default::default()
            }),
        ),
        (
            "type + status",
            Box::new(|i| Filter {
                saga_type: Some(TYPES[i % 3].into()),
                status: Some("COMPENSATED".into()),
                ..Default::default()
            }),
        ),
        (
            "status + time range",
            Box::new(move |i| Filter {
                status: Some("COMPLETED".into()),
                from: Some(T0 + ((i as i64 * 7_777) % (last as i64 + 1)) * 10),
                to: Some(T0 + ((i as i64 * 7_777) % (last as i64 + 1)) * 10 + 600_000),
                ..Default::default()
            }),
        ),
        (
            "attribute customer_id",
            Box::new(|i| Filter {
                attrs: vec![("customer_id".into(), format!("c-{}", (i * 31) % 50_000))],
                ..Default::default()
            }),
        ),
        (
            "type + attribute + status",
            Box::new(|i| Filter {
                saga_type: Some(TYPES[i % 3].into()),
                status: Some("COMPLETED".into()),
                attrs: vec![("customer_id".into(), format!("c-{}", (i * 17) % 50_000))],
                ..Default::default()
            }),
        ),
        (
            "error text + type",
            Box::new(|i| Filter {
                saga_type: Some(TYPES[i % 3].into()),
                error: Some(format!("c-{}", (i * 13) % 50_000)),
                ..Default::default()
            }),
        ),
    ];
    for (name, make) in &queries {
        let mut times = Vec::with_capacity(runs);
        let mut rows = 0;
        for i in 0..runs {
            let f = make(i);
            let t = Instant::now();
            let page = store.search(&f, &Page::default()).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            if i == 0 {
                rows = page.sagas.len();
            }
        }
        times.sort_by(f64::total_cmp);
        searches.push(SearchTiming {
            name: (*name).to_owned(),
            runs,
            p50_ms: percentile(&times, 0.5),
            p99_ms: percentile(&times, 0.99),
            max_ms: times.last().copied().unwrap_or(0.0),
            rows,
        });
    }
    let mut db_bytes = 0;
    for suffix in ["", "-wal"] {
        db_bytes += std::fs::metadata(format!("{}{suffix}", path.display()))
            .map(|m| m.len())
            .unwrap_or(0);
    }
    Ok(BenchReport {
        sagas,
        lifecycle_events: events,
        records,
        index_seconds,
        events_per_sec: events as f64 / index_seconds.max(1e-9),
        db_bytes,
        searches,
    })
}
