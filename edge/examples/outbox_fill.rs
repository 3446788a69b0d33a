//! Fills the edge's durable outbox with simulated vital signs, batch by batch as `EdgeNode::accept` appends them,
//! and prints the append rate for every `--report` rows, so a slowdown as the table grows shows where it starts.
//!
//! The events look like the ward simulator's: every `--beds` bed's monitor sends heart rate, pulse rate,
//! respiratory rate and SpO2 once a second, with the simulator's idempotency key
//! `mon-{ward}-{bed}:{mdc}:{measured_at}`, so consecutive keys are spread across the key space as in the real
//! edge. `--ack-lag N` also plays the sync task: after each append, everything but the newest N rows is
//! acknowledged (key retention 0, so those rows are deleted), as in `bench_sync`'s end-to-end runs.
//!
//! `cargo run --release --target-dir target/bench -p wardwatch-edge --example outbox_fill -- --rows 1500000`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use wardwatch_edge::outbox::{NewEvent, Outbox};
use wardwatch_proto::metrics::{
    MDC_ECG_HEART_RATE, MDC_PULS_OXIM_PULS_RATE, MDC_PULS_OXIM_SAT_O2, MDC_RESP_RATE,
};
use wardwatch_proto::v1::{BedLocation, VitalSign, edge_event::Payload};

#[derive(Parser)]
struct Args {
    /// Rows to append in all.
    #[arg(long, default_value_t = 1_500_000)]
    rows: u64,
    /// Events per append (one transaction), as `bench_sync`'s default accept batch.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Print a line every this many rows.
    #[arg(long, default_value_t = 100_000)]
    report: u64,
    /// Beds sending vitals.
    #[arg(long, default_value_t = 2_000)]
    beds: u32,
    /// Acknowledge (and so delete) all but the newest this many rows after each append; absent: never.
    #[arg(long)]
    ack_lag: Option<u64>,
    /// Use this directory (an existing outbox is opened and appended to) instead of a fresh temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const METRICS: [(u32, &str, f64); 4] = [
    (MDC_ECG_HEART_RATE, "/min", 72.0),
    (MDC_PULS_OXIM_PULS_RATE, "/min", 72.0),
    (MDC_RESP_RATE, "/min", 16.0),
    (MDC_PULS_OXIM_SAT_O2, "%", 97.0),
];

/// The `i`-th event: ticks of one second, each tick every bed's four metrics, beds in turn.
fn event(i: u64, beds: u32, start_ms: i64) -> NewEvent {
    let per_tick = u64::from(beds) * METRICS.len() as u64;
    let tick = i / per_tick;
    let in_tick = i % per_tick;
    let bed = in_tick / METRICS.len() as u64 + 1;
    let (mdc, unit, base) = METRICS[(in_tick % METRICS.len() as u64) as usize];
    let at = start_ms + i64::try_from(tick).unwrap_or(i64::MAX) * 1_000;
    let device_id = format!("mon-7A-{bed}");
    NewEvent {
        idempotency_key: format!("{device_id}:{mdc}:{at}"),
        accepted_at_unix_ms: at,
        payload: Payload::Vital(VitalSign {
            patient_id: format!("MRN{bed:06}"),
            location: Some(BedLocation {
                ward: "7A".into(),
                bed: bed.to_string(),
            }),
            device_id,
            metric_mdc: mdc,
            value: base + (i % 7) as f64,
            unit_ucum: unit.into(),
            measured_at_unix_ms: at,
            ..Default::default()
        }),
    }
}

fn file_mib(path: &std::path::Path) -> f64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir()?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let t_open = Instant::now();
    let outbox = Outbox::open(&dir, 64 << 30, 0.99)
        .await?
        .with_key_retention(Duration::ZERO);
    println!(
        "# outbox_fill: {} rows in batches of {}, {} beds, ack lag {:?}, dir {} (opened in {:.2?})",
        args.rows,
        args.batch,
        args.beds,
        args.ack_lag,
        dir.display(),
        t_open.elapsed()
    );
    println!(
        "rows\trate_window_per_s\trate_total_per_s\tslowest_append_ms\tused_MiB\tdb_MiB\twal_MiB"
    );
    let start_ms = 1_764_000_000_000;
    let first = outbox_last_seq(&outbox).await?;
    let t0 = Instant::now();
    let mut tw = Instant::now();
    let mut done = 0u64;
    let mut last_report = 0u64;
    // The slowest append of the window (an append that settles keys waits for the settle).
    let mut slowest = Duration::ZERO;
    while done < args.rows {
        let n = (args.rows - done).min(args.batch as u64);
        let batch: Vec<NewEvent> = (done..done + n)
            .map(|i| event(first + i, args.beds, start_ms))
            .collect();
        let ta = Instant::now();
        let out = outbox.append(&batch, false).await?;
        slowest = slowest.max(ta.elapsed());
        anyhow::ensure!(
            out.accepted == n,
            "accepted {} of {n} (duplicates {})",
            out.accepted,
            out.duplicates
        );
        done += n;
        if let Some(lag) = args.ack_lag {
            // Every accepted row took the next sequence (the outbox was written only by us since `first`).
            let newest = first + done;
            if newest > lag {
                outbox.acknowledge(newest - lag, &[]).await?;
            }
        }
        if done - last_report >= args.report || done == args.rows {
            let window = done - last_report;
            println!(
                "{done}\t{:.0}\t{:.0}\t{:.1}\t{:.1}\t{:.1}\t{:.1}",
                window as f64 / tw.elapsed().as_secs_f64(),
                done as f64 / t0.elapsed().as_secs_f64(),
                slowest.as_secs_f64() * 1e3,
                outbox.used_bytes() as f64 / (1 << 20) as f64,
                file_mib(&dir.join("outbox.sqlite")),
                file_mib(&dir.join("outbox.sqlite-wal")),
            );
            last_report = done;
            tw = Instant::now();
            slowest = Duration::ZERO;
        }
    }
    println!(
        "# total: {done} rows in {:.2?}: {:.0} rows/s",
        t0.elapsed(),
        done as f64 / t0.elapsed().as_secs_f64()
    );
    outbox.close().await;
    Ok(())
}

/// The highest sequence in the outbox (the acknowledged one when nothing is pending), read through the public API.
async fn outbox_last_seq(outbox: &Outbox) -> anyhow::Result<u64> {
    let acked = outbox.acked_through().await?;
    let mut last = acked;
    loop {
        let page = outbox.read_after(last, 10_000).await?;
        match page.last() {
            Some(e) => last = e.sequence,
            None => return Ok(last),
        }
    }
}
