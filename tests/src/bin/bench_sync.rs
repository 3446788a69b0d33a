//! Sync benchmark: vital-sign events from the edge's accept call to the cloud's database, over mutual TLS on
//! loopback, with the real edge and cloud in one process (they share the machine's cores, as on a small box).
//!
//! For each backend it reports, in one run:
//! - `outbox`: edge accept → durable outbox only (no network), events/s;
//! - `store`: cloud `Store::ingest_with` only, with one `StoredKeys` as the sync service keeps (no network, no
//!   edge), events/s;
//! - `e2e-max`: end to end with everything offered at once, events/s from first accept to last acknowledgement;
//! - `e2e-rate`: end to end at a fixed offered rate, achieved events/s and latency p50/p99/max from "accepted
//!   at the edge" to "acknowledged as stored by the cloud";
//! - `copy` (PostgreSQL only): the physical reference. The rows the e2e-max run stored are exported and loaded
//!   again with PostgreSQL's own `COPY ... FROM STDIN` into a table with the same columns and indexes
//!   (`LIKE vital_signs INCLUDING ALL`), and the e2e rate is reported as a share of that.
//!
//! `cargo run --release -p wardwatch --bin bench_sync -- --backend postgres --events 500000 --rate 50000`

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Parser;
use wardwatch::{
    CloudHandle, EdgeHandle, TestDatabase, cloud_config, dev_setup, edge_config, simulated_vitals,
};
use wardwatch_cloud::storage::{IngestItem, Store, StoredKeys};
use wardwatch_edge::node::Incoming;

#[derive(Parser)]
struct Args {
    /// sqlite, postgres, or both.
    #[arg(long, default_value = "both")]
    backend: String,
    /// Events per end-to-end run.
    #[arg(long, default_value_t = 300_000)]
    events: usize,
    /// Offered rate for the fixed-rate run, events/s.
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// Events per accept call (what one source batch would be).
    #[arg(long, default_value_t = 1_000)]
    accept_batch: usize,
    /// Events per sync batch.
    #[arg(long, default_value_t = 2_000)]
    sync_batch: usize,
    /// Sync batches in flight.
    #[arg(long, default_value_t = 8)]
    in_flight: usize,
}

fn pct(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn store_only(url: &str, events: &[Incoming]) -> Result<f64> {
    let store = Store::connect(url).await?;
    // As the sync service does: one set of lookup-table keys already stored, shared by every batch.
    let keys = StoredKeys::default();
    let t = Instant::now();
    for (b, chunk) in events.chunks(2_000).enumerate() {
        let items: Vec<IngestItem> = chunk
            .iter()
            .enumerate()
            .map(|(i, e)| IngestItem {
                sequence: (b * 2_000 + i + 1) as u64,
                idempotency_key: e.idempotency_key.clone(),
                outcome: Ok(e.payload.clone()),
            })
            .collect();
        store.ingest_with("bench-store-only", &items, &keys).await?;
    }
    let rate = events.len() as f64 / t.elapsed().as_secs_f64();
    store.close().await;
    Ok(rate)
}

struct E2e {
    rate: f64,
    p50: u32,
    p99: u32,
    max: u32,
}

async fn e2e(
    args: &Args,
    url: Option<String>,
    events: &[Incoming],
    offered_rate: Option<u64>,
    tag: &str,
) -> Result<E2e> {
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &["edge-bench"])?;
    let any = "127.0.0.1:0".parse()?;
    let cloud = CloudHandle::start(cloud_config(
        &setup,
        &dir.path().join("cloud"),
        url,
        any,
        any,
        &[("edge-bench", &["7A"])],
    )?)
    .await?;
    let mut ecfg = edge_config(
        &setup,
        &dir.path().join("edge"),
        "edge-bench",
        &["7A"],
        cloud.sync_addr,
    )?;
    ecfg.sync.batch_max_events = args.sync_batch;
    ecfg.sync.max_in_flight = args.in_flight;
    // Delete acknowledged rows at once instead of after the key-retention window, so the outbox's whole cost
    // (insert, read, delete) is inside the measurement.
    ecfg.outbox.key_retention_secs = 0;
    let edge = EdgeHandle::start(ecfg).await?;
    // Warm up the connection.
    wardwatch::wait_until(Duration::from_secs(10), "edge connected", || {
        let c = edge
            .node
            .sync_stats()
            .connected
            .load(std::sync::atomic::Ordering::Relaxed);
        async move { Ok(c) }
    })
    .await?;
    let t = Instant::now();
    match offered_rate {
        None => {
            for chunk in events.chunks(args.accept_batch) {
                edge.node.accept(chunk.to_vec()).await?;
            }
        }
        Some(rate) => {
            let per_tick = (rate / 100).max(1) as usize; // 10 ms ticks
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for chunk in events.chunks(per_tick) {
                tick.tick().await;
                edge.node.accept(chunk.to_vec()).await?;
            }
        }
    }
    let accept_done = t.elapsed();
    edge.wait_drained(Duration::from_secs(600)).await?;
    let elapsed = t.elapsed();
    let stored = cloud.store.count_vitals().await?;
    if stored as usize != events.len() {
        bail!("{tag}: stored {stored} of {}", events.len());
    }
    let mut lat: Vec<u32> = edge
        .node
        .sync_stats()
        .latency_ms
        .lock()
        .map(|l| l.iter().copied().collect())
        .unwrap_or_default();
    lat.sort_unstable();
    eprintln!("{tag}: accepted all in {accept_done:?}, drained in {elapsed:?}");
    let r = E2e {
        rate: events.len() as f64 / elapsed.as_secs_f64(),
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
        max: lat.last().copied().unwrap_or(0),
    };
    edge.stop().await;
    cloud.stop().await;
    Ok(r)
}

async fn outbox_only(args: &Args, events: &[Incoming]) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &["edge-bench"])?;
    // Nothing listens on this port: the edge only buffers.
    let cfg = edge_config(
        &setup,
        &dir.path().join("edge"),
        "edge-bench",
        &["7A"],
        wardwatch::free_port()?,
    )?;
    let edge = EdgeHandle::start(cfg).await?;
    let t = Instant::now();
    for chunk in events.chunks(args.accept_batch) {
        edge.node.accept(chunk.to_vec()).await?;
    }
    let rate = events.len() as f64 / t.elapsed().as_secs_f64();
    edge.stop().await;
    Ok(rate)
}

/// The columns an Observation row has (everything but the generated id).
const VITAL_COLUMNS: &str = "edge_id, sequence, patient_id, ward, bed, device_id, metric_mdc, loinc, value, \
                             enumerated, unit, components, quality, measured_at_ms, received_at_ms, encounter, \
                             encounter_authority";

/// Exports the stored vital-sign rows and loads them again with `COPY FROM STDIN` into a twin of the table
/// (same columns, same indexes). Returns the row count and the COPY rate (rows/s, the load alone).
async fn copy_reference(url: &str) -> Result<(u64, f64)> {
    use sqlx::Connection;
    use tokio_stream::StreamExt;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let mut data = Vec::new();
    {
        let mut out = conn
            .copy_out_raw(&format!(
                "COPY (SELECT {VITAL_COLUMNS} FROM vital_signs) TO STDOUT"
            ))
            .await?;
        while let Some(chunk) = out.next().await {
            data.extend_from_slice(&chunk?);
        }
    }
    sqlx::query("CREATE TABLE vital_signs_copy (LIKE vital_signs INCLUDING ALL)")
        .execute(&mut conn)
        .await?;
    let t = Instant::now();
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY vital_signs_copy ({VITAL_COLUMNS}) FROM STDIN"
        ))
        .await?;
    for chunk in data.chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    let rows = copy.finish().await?;
    let rate = rows as f64 / t.elapsed().as_secs_f64();
    conn.close().await?;
    Ok((rows, rate))
}

/// mimalloc instead of glibc's malloc: a large FHIR Bundle spent most of its time in glibc's free lists (see
/// docs/benchmarks.md, FHIR search).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    wardwatch::install_crypto();
    wardwatch::init_logging("error");
    let args = Args::parse();
    let events = simulated_vitals("7A", 2_000, 42, args.events);
    println!(
        "# bench_sync: {} events/run, accept batch {}, sync batch {}, {} in flight, fixed rate {}/s",
        args.events, args.accept_batch, args.sync_batch, args.in_flight, args.rate
    );
    println!(
        "outbox-only (edge accept → durable SQLite outbox): {:.0} events/s",
        outbox_only(&args, &events).await?
    );
    let mut backends: Vec<(&str, Option<TestDatabase>)> = Vec::new();
    if matches!(args.backend.as_str(), "sqlite" | "both") {
        backends.push(("sqlite", None));
    }
    if matches!(args.backend.as_str(), "postgres" | "both") {
        match TestDatabase::create("bench").await? {
            Some(db) => backends.push(("postgres", Some(db))),
            None => bail!("PostgreSQL not reachable"),
        }
    }
    for (name, db) in &backends {
        let store_url = match db {
            Some(d) => d.url.clone(),
            None => {
                let d = tempfile::tempdir()?.keep();
                format!("sqlite://{}/store.sqlite", d.display())
            }
        };
        let s = store_only(&store_url, &events).await?;
        println!("{name} store-only (Store::ingest_with, 2,000-event batches): {s:.0} events/s");
        // Each end-to-end run on PostgreSQL gets its own database so runs do not see each other's rows.
        let (max_db, rate_db) = if db.is_some() {
            (
                TestDatabase::create("bench_max").await?,
                TestDatabase::create("bench_rate").await?,
            )
        } else {
            (None, None)
        };
        let m = e2e(
            &args,
            max_db.as_ref().map(|d| d.url.clone()),
            &events,
            None,
            &format!("{name} e2e-max"),
        )
        .await?;
        println!(
            "{name} e2e-max (all offered at once): {:.0} events/s; latency p50 {} ms p99 {} ms max {} ms",
            m.rate, m.p50, m.p99, m.max
        );
        if let Some(d) = &max_db {
            let (rows, copy_rate) = copy_reference(&d.url).await?;
            println!(
                "{name} COPY of the same {rows} rows into vital_signs' twin: {copy_rate:.0} rows/s; \
                 e2e-max is {:.0} % of COPY",
                100.0 * m.rate / copy_rate
            );
        }
        let r = e2e(
            &args,
            rate_db.as_ref().map(|d| d.url.clone()),
            &events,
            Some(args.rate),
            &format!("{name} e2e-rate"),
        )
        .await?;
        println!(
            "{name} e2e-rate (offered {}/s): {:.0} events/s; latency p50 {} ms p99 {} ms max {} ms",
            args.rate, r.rate, r.p50, r.p99, r.max
        );
        for d in [max_db, rate_db].into_iter().flatten() {
            d.drop_now().await?;
        }
    }
    for (_, db) in backends {
        if let Some(d) = db {
            d.drop_now().await?;
        }
    }
    Ok(())
}
