//! FHIR search benchmark (issue 6): search latency with millions of Observations stored in PostgreSQL.
//!
//! Fills `vital_signs` of a fresh PostgreSQL database with `--observations` rows (default 10 million) for
//! `--patients` patients over `--days` days, six numeric vital signs in turn, with one server-side
//! `INSERT ... SELECT generate_series` per million rows into its day partitions (the load itself is not what is
//! measured), runs `ANALYZE`, starts the real cloud on that database, and times over HTTPS with a bearer token,
//! from a client in the same process:
//! - `last-24h`: `GET [base]/Observation?patient=P&date=ge<end-24h>&_count=1000`, one patient's whole last
//!   24 hours of vitals in one searchset (about 700 Observations at the defaults);
//! - `last-24h page`: the same with `_count=50&_sort=-date`, the newest page a nurse-facing EHR view shows;
//! - `code`: `GET [base]/Observation?patient=P&code=http://loinc.org|8867-4&_count=100`, one vital's history;
//! - `$lastn`: `GET [base]/Observation/$lastn?patient=P&max=1`, the newest Observation of each vital-sign code;
//! - `encounter`: `GET [base]/Observation?encounter:identifier=P-V1&date=ge<end-24h>&_count=50&_sort=-date`, the
//!   newest page of one stay (every row is filled with its patient's visit `P-V1`, and `encounters` with each visit).
//!
//! Each query runs `--queries` times on randomly chosen patients after a warm-up; p50/p95/p99 are of the whole
//! request (TLS, auth, audit record, SQL, FHIR JSON).
//!
//! `cargo run --release -p wardwatch --bin bench_fhir_search -- --observations 10000000`

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rand::Rng;
use wardwatch::{CloudHandle, TestDatabase, cloud_config, dev_setup, https_client};
use wardwatch_proto::metrics::{
    MDC_ECG_HEART_RATE, MDC_PULS_OXIM_PULS_RATE, MDC_PULS_OXIM_SAT_O2, MDC_RESP_RATE,
    MDC_TEMP_BODY, by_mdc,
};

#[derive(Parser)]
struct Args {
    /// Observations to store.
    #[arg(long, default_value_t = 10_000_000)]
    observations: u64,
    /// Patients they belong to.
    #[arg(long, default_value_t = 2_000)]
    patients: u64,
    /// Days they span (each patient's samples are evenly spread).
    #[arg(long, default_value_t = 7)]
    days: u64,
    /// Timed requests per query kind.
    #[arg(long, default_value_t = 500)]
    queries: usize,
    /// Use this database (filled first if it holds no Observations) instead of a temporary one; it is kept.
    #[arg(long)]
    database_url: Option<String>,
}

/// The metrics stored, in turn: (MDC code, a plausible value, its spread).
const METRICS: [(u32, f64, f64); 5] = [
    (MDC_ECG_HEART_RATE, 80.0, 15.0),
    (MDC_PULS_OXIM_PULS_RATE, 80.0, 15.0),
    (MDC_RESP_RATE, 16.0, 4.0),
    (MDC_PULS_OXIM_SAT_O2, 96.0, 2.0),
    (MDC_TEMP_BODY, 37.0, 0.5),
];

/// Fixed end of the stored data (2026-11-01T00:00:00Z), so runs are comparable.
const END_MS: i64 = 1_793_491_200_000;

fn sql_array_text(items: impl Iterator<Item = String>) -> String {
    format!(
        "ARRAY[{}]",
        items
            .map(|s| format!("'{s}'"))
            .collect::<Vec<_>>()
            .join(",")
    )
}

async fn fill(url: &str, args: &Args) -> Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let mut mdcs = Vec::new();
    let mut loincs = Vec::new();
    let mut units = Vec::new();
    let mut bases = Vec::new();
    let mut spreads = Vec::new();
    for (mdc, base, spread) in METRICS {
        let m = by_mdc(mdc).context("metric table")?;
        mdcs.push(mdc.to_string());
        loincs.push(m.loinc.to_string());
        units.push(m.unit.to_string());
        bases.push(base.to_string());
        spreads.push(spread.to_string());
    }
    let per_patient = args.observations.div_ceil(args.patients);
    let span_ms = i64::try_from(args.days * 86_400_000)?;
    let step_ms = span_ms / i64::try_from(per_patient.max(1))?;
    let start_ms = END_MS - span_ms;
    let n_metrics = METRICS.len();
    let chunk = 1_000_000u64;
    let t = Instant::now();
    let mut from = 1u64;
    while from <= args.observations {
        let to = (from + chunk - 1).min(args.observations);
        // Row g belongs to patient g % P; its k-th sample (k = g / P) is at start + k * step, metric k % M.
        let sql = format!(
            "INSERT INTO vital_signs (edge_id, sequence, patient_id, ward, bed, device_id, metric_mdc, loinc, \
             value, enumerated, unit, components, quality, measured_at_ms, received_at_ms, encounter, \
             encounter_authority) \
             SELECT 'edge-bench', g, 'SIM' || lpad((g % {p})::text, 6, '0'), '7A', ((g % {p}) % 40 + 1)::text, \
                    'mon-' || (g % {p}), ({mdcs})[(g / {p}) % {m} + 1]::bigint, ({loincs})[(g / {p}) % {m} + 1], \
                    ({bases})[(g / {p}) % {m} + 1]::float8 + (random() - 0.5) * ({spreads})[(g / {p}) % {m} + 1]::float8, \
                    NULL, ({units})[(g / {p}) % {m} + 1], NULL, 0, \
                    {start_ms} + (g / {p}) * {step_ms}, {start_ms} + (g / {p}) * {step_ms} + 500, \
                    'SIM' || lpad((g % {p})::text, 6, '0') || '-V1', 'WARDWATCH-SIM' \
             FROM generate_series({from}::bigint, {to}::bigint) g",
            p = args.patients,
            m = n_metrics,
            mdcs = sql_array_text(mdcs.iter().cloned()),
            loincs = sql_array_text(loincs.iter().cloned()),
            bases = sql_array_text(bases.iter().cloned()),
            spreads = sql_array_text(spreads.iter().cloned()),
            units = sql_array_text(units.iter().cloned()),
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
        eprintln!(
            "filled {to} of {} rows in {:.0} s",
            args.observations,
            t.elapsed().as_secs_f64()
        );
        from = to + 1;
    }
    // Each patient's visit, as the ingest records it (migration 0012).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO encounters (visit_number, assigning_authority, patient_id) \
         SELECT 'SIM' || lpad(g::text, 6, '0') || '-V1', 'WARDWATCH-SIM', 'SIM' || lpad(g::text, 6, '0') \
         FROM generate_series(0, {}) g ON CONFLICT DO NOTHING",
        args.patients.saturating_sub(1)
    )))
    .execute(&mut conn)
    .await?;
    // Each patient's codes, as the ingest records them (migration 0013).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO patient_codes (patient_id, loinc) \
         SELECT DISTINCT 'SIM' || lpad(g::text, 6, '0'), l FROM generate_series(0, {}) g, unnest({}) l \
         ON CONFLICT DO NOTHING",
        args.patients.saturating_sub(1),
        sql_array_text(loincs.iter().cloned()),
    )))
    .execute(&mut conn)
    .await?;
    sqlx::query("ANALYZE vital_signs")
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn iso(ms: i64) -> Result<String> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)?;
    Ok(t.format(&time::format_description::well_known::Rfc3339)?)
}

/// mimalloc, as the cloud and demo binaries use (see docs/benchmarks.md, FHIR search).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    wardwatch::install_crypto();
    wardwatch::init_logging("error");
    let args = Args::parse();
    let (url, created) = match &args.database_url {
        Some(u) => (u.clone(), None),
        None => {
            let db = TestDatabase::create("bench_search")
                .await?
                .context("PostgreSQL is not reachable at 127.0.0.1:5432")?;
            (db.url.clone(), Some(db))
        }
    };
    // Migrate, then fill unless a kept database already holds the rows.
    let store = wardwatch_cloud::storage::Store::connect(&url).await?;
    let have = store.count_vitals().await?;
    if have == 0 {
        // Day partitions for the whole span first (ingest creates only days near now), so the rows land in
        // their days as synced rows would, not in the default partition.
        let span_ms = i64::try_from(args.days * 86_400_000)?;
        store
            .prepare_observation_days(END_MS - span_ms, END_MS)
            .await?;
    }
    store.close().await;
    if have == 0 {
        fill(&url, &args).await?;
    }
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &["edge-bench"])?;
    let any = "127.0.0.1:0".parse()?;
    let cloud = CloudHandle::start(cloud_config(
        &setup,
        &dir.path().join("cloud"),
        Some(url.clone()),
        any,
        any,
        &[("edge-bench", &["7A"])],
    )?)
    .await?;
    let stored = cloud.store.count_vitals().await?;
    println!(
        "# bench_fhir_search: {stored} Observations in PostgreSQL, {} patients over {} days, {} requests per query",
        args.patients, args.days, args.queries
    );
    let client = https_client(&setup.pki.ca_cert)?;
    let since = iso(END_MS - 86_400_000)?;
    // (name, path after the base, query; `{P}` is replaced by a random patient's MRN).
    let kinds: [(&str, &str, String); 5] = [
        (
            "last-24h (all, _count=1000)",
            "Observation",
            format!("patient={{P}}&date=ge{since}&_count=1000"),
        ),
        (
            "last-24h page (_count=50&_sort=-date)",
            "Observation",
            format!("patient={{P}}&date=ge{since}&_count=50&_sort=-date"),
        ),
        (
            "code (one vital, _count=100)",
            "Observation",
            "patient={P}&code=http://loinc.org|8867-4&_count=100".to_string(),
        ),
        (
            "$lastn (newest of each vital-sign code)",
            "Observation/$lastn",
            "patient={P}&max=1".to_string(),
        ),
        (
            "encounter last-24h page (encounter:identifier, _count=50&_sort=-date)",
            "Observation",
            format!("encounter:identifier={{P}}-V1&date=ge{since}&_count=50&_sort=-date"),
        ),
    ];
    let mut rng = rand::rng();
    for (name, path, query) in &kinds {
        let mut lat = Vec::with_capacity(args.queries);
        let mut entries = 0usize;
        for i in 0..args.queries + 20 {
            let patient = format!("SIM{:06}", rng.random_range(0..args.patients));
            let url = format!(
                "{}/{path}?{}",
                cloud.fhir_base,
                query.replace("{P}", &patient).replace('+', "%2B")
            );
            let t = Instant::now();
            let resp = client.get(&url).bearer_auth(&setup.token).send().await?;
            let status = resp.status();
            let body = resp.bytes().await?;
            let elapsed = t.elapsed();
            if !status.is_success() {
                bail!("{url} → {status}: {}", String::from_utf8_lossy(&body));
            }
            if i >= 20 {
                lat.push(elapsed.as_secs_f64() * 1000.0);
                let v: serde_json::Value = serde_json::from_slice(&body)?;
                entries += v["entry"].as_array().map_or(0, Vec::len);
            }
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "{name}: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.0} Observations per response",
            pct(&lat, 0.5),
            pct(&lat, 0.95),
            pct(&lat, 0.99),
            lat.last().copied().unwrap_or(0.0),
            entries as f64 / lat.len().max(1) as f64
        );
    }
    cloud.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Some(db) = created {
        db.drop_now().await?;
    }
    Ok(())
}
