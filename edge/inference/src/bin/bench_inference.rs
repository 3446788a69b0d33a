//! Benchmark (issue 5): tract vs onnxruntime on the same models and inputs at batch 1 and batch 256, and the CPU
//! share of one core that scoring 2,000 beds once a minute takes.
//!
//! ```sh
//! cargo run --release --target-dir target/bench -p wardwatch-inference --bin bench_inference
//! ```
//!
//! Models: `--model DIR` (repeatable); by default models/deterioration and models/artifact when they exist, else
//! the test models edge/inference/tests/data/mlp and mlp-wide (52 features, the size of a realistic model).
//! onnxruntime runs from its Python package through edge/inference/bench/ort_bench.py, in the same run, on the
//! same model file and the same input rows. Prints a Markdown table (for docs/benchmarks.md) and, with `--json`,
//! writes the figures.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use wardwatch_inference::{
    LoadOptions, ModelBundle, ModelFiles, ModelRunner, ModelSlot, Scorer, ScorerOptions,
    SigningKey, TrustedKeys, sign_manifest,
};

#[derive(Parser, Debug)]
#[command(about = "tract vs onnxruntime, and the CPU cost of scoring a ward every minute")]
struct Args {
    /// Model bundle directory (model.onnx + manifest.json [+ model.onnx.sig]); repeatable.
    #[arg(long = "model")]
    models: Vec<PathBuf>,
    /// Trusted release public key file (default: the test release key). Bundles that do not verify against it are
    /// re-signed with a throwaway key in memory: signatures are not what this measures.
    #[arg(long)]
    trust_key: Option<PathBuf>,
    /// Python interpreter with onnxruntime installed.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Timed rounds per case in each alternation.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Alternations of tract and onnxruntime measurements (the fastest round of all is reported).
    #[arg(long, default_value_t = 6)]
    alternations: usize,
    /// Minimum seconds per timed round.
    #[arg(long, default_value_t = 0.1)]
    min_time: f64,
    /// Beds scored once a minute for the CPU-share figure.
    #[arg(long, default_value_t = 2000)]
    beds: usize,
    /// Simulated minutes (scoring cycles) measured for the CPU-share figure.
    #[arg(long, default_value_t = 100)]
    cycles: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize, Debug)]
struct ModelReport {
    dir: String,
    identity: String,
    signature: String,
    n_features: usize,
    load_ms: f64,
    tract_b1_us: Timing,
    tract_b256_us: Timing,
    ort_b1_us: Timing,
    ort_b256_us: Timing,
    ort_overhead_b1_us: Timing,
    ort_overhead_b256_us: Timing,
    max_abs_diff_vs_ort: f32,
    onnxruntime: String,
    cycle_per_bed_cpu_ms: f64,
    cycle_per_bed_wall_ms: f64,
    cycle_one_batch_cpu_ms: f64,
}

fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("..");
    root.canonicalize().unwrap_or(root)
}

fn test_data() -> PathBuf {
    workspace_root().join("edge/inference/tests/data")
}

fn default_models() -> Vec<PathBuf> {
    let root = workspace_root();
    let real: Vec<PathBuf> = ["deterioration", "artifact"]
        .iter()
        .map(|m| root.join("models").join(m))
        .filter(|d| d.join("model.onnx").is_file() && d.join("manifest.json").is_file())
        .collect();
    if real.is_empty() {
        vec![test_data().join("mlp"), test_data().join("mlp-wide")]
    } else {
        real
    }
}

/// Loads the bundle, verifying its signature when it can; otherwise re-signs in memory with a throwaway key.
fn load(dir: &Path, trust: Option<&TrustedKeys>) -> Result<(ModelBundle, String, f64)> {
    let model = std::fs::read(dir.join("model.onnx"))
        .with_context(|| format!("{}/model.onnx", dir.display()))?;
    let manifest = std::fs::read(dir.join("manifest.json"))
        .with_context(|| format!("{}/manifest.json", dir.display()))?;
    let signature = std::fs::read(dir.join("model.onnx.sig")).ok();
    let options = LoadOptions::default();
    match (trust, signature) {
        (Some(keys), Some(signature)) => {
            let files = ModelFiles {
                model: model.clone(),
                manifest: manifest.clone(),
                signature,
            };
            let start = Instant::now();
            match ModelBundle::from_files(&files, keys, &options) {
                Ok(bundle) => {
                    return Ok((
                        bundle,
                        "verified".into(),
                        start.elapsed().as_secs_f64() * 1e3,
                    ));
                }
                Err(e) => eprintln!("{}: does not verify ({e}); re-signing", dir.display()),
            }
        }
        _ => eprintln!("{}: no model.onnx.sig; re-signing", dir.display()),
    }
    let mut seed = [0u8; 32];
    rand::rng().fill(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let keys = TrustedKeys::new(vec![key.verifying_key()])?;
    let signature = sign_manifest(&key, &manifest);
    let files = ModelFiles {
        model,
        manifest,
        signature,
    };
    let start = Instant::now();
    let bundle = ModelBundle::from_files(&files, &keys, &options)
        .with_context(|| format!("loading {}", dir.display()))?;
    Ok((
        bundle,
        "re-signed with a throwaway key".into(),
        start.elapsed().as_secs_f64() * 1e3,
    ))
}

/// Standard-normal rows (Box-Muller), seeded: the same rows go to tract and onnxruntime.
fn input_rows(n: usize, f: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n * f)
        .map(|_| {
            let u1: f64 = rng.random::<f64>().max(1e-12);
            let u2: f64 = rng.random::<f64>();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// Microseconds per call of `run` over `chunks`, one figure per round, each round lasting at least `min_time`.
fn time_per_call(
    chunks: &[&[f32]],
    rounds: usize,
    min_time: f64,
    run: &mut dyn FnMut(&[f32]),
) -> Vec<f64> {
    for chunk in chunks {
        run(chunk);
    }
    let mut per_call = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        let mut calls = 0usize;
        loop {
            for chunk in chunks {
                run(chunk);
            }
            calls += chunks.len();
            if start.elapsed().as_secs_f64() >= min_time {
                break;
            }
        }
        per_call.push(start.elapsed().as_secs_f64() * 1e6 / calls as f64);
    }
    per_call
}

/// Microseconds per inference over the timed rounds of one case.
#[derive(Serialize, Debug, Clone, Copy)]
struct Timing {
    fastest: f64,
    median: f64,
}

fn min_median(mut rounds: Vec<f64>) -> Timing {
    rounds.sort_by(f64::total_cmp);
    match rounds.as_slice() {
        [] => Timing {
            fastest: f64::NAN,
            median: f64::NAN,
        },
        r => Timing {
            fastest: r[0],
            median: r[r.len() / 2],
        },
    }
}

/// CPU time of this process so far, summed over its threads (nanosecond resolution from schedstat).
fn process_cpu() -> Result<Duration> {
    let mut total = 0u64;
    for task in
        std::fs::read_dir("/proc/self/task").context("reading /proc/self/task (Linux only)")?
    {
        let path = task?.path().join("schedstat");
        // A thread may have exited since the directory was listed.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let ns: u64 = text
            .split_whitespace()
            .next()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0);
        total += ns;
    }
    Ok(Duration::from_nanos(total))
}

#[derive(serde::Deserialize, Debug)]
struct OrtResult {
    onnxruntime: String,
    batches: std::collections::HashMap<String, OrtBatchIn>,
}

#[derive(serde::Deserialize, Debug)]
struct OrtBatchIn {
    rounds_us: Vec<f64>,
    overhead_rounds_us: Vec<f64>,
}

fn run_ort(
    args: &Args,
    dir: &Path,
    bundle: &ModelBundle,
    x: &[f32],
    want_outputs: bool,
) -> Result<(OrtResult, Vec<f32>)> {
    let tmp = std::env::temp_dir().join(format!("wardwatch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let inputs = tmp.join("inputs.f32");
    let outputs = tmp.join("outputs.f32");
    std::fs::write(
        &inputs,
        x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )?;
    let script = workspace_root().join("edge/inference/bench/ort_bench.py");
    let manifest = bundle.manifest();
    let out = Command::new(&args.python)
        .arg(&script)
        .arg("--model")
        .arg(dir.join("model.onnx"))
        .arg("--inputs")
        .arg(&inputs)
        .args(["--features", &bundle.n_features().to_string()])
        .args([
            "--input-name",
            &manifest.input.name,
            "--output-name",
            &manifest.output.name,
        ])
        .args(["--batch", "1", "--batch", "256"])
        .args([
            "--rounds",
            &args.rounds.to_string(),
            "--min-time",
            &args.min_time.to_string(),
        ])
        .args(if want_outputs {
            vec![
                std::ffi::OsString::from("--outputs"),
                outputs.clone().into(),
            ]
        } else {
            vec![]
        })
        .output()
        .with_context(|| format!("running {} {}", args.python, script.display()))?;
    if !out.status.success() {
        bail!(
            "ort_bench.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let result: OrtResult = serde_json::from_slice(&out.stdout).context("ort_bench.py output")?;
    let raw = if want_outputs {
        std::fs::read(&outputs)?
    } else {
        Vec::new()
    };
    let probs = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let _ = std::fs::remove_dir_all(&tmp);
    Ok((result, probs))
}

/// One simulated minute per cycle: every bed's row scored through the real Scorer (its thread, its channel),
/// first as one request per bed (coalesced by the scorer), then as one request with every bed.
fn cpu_cycles(bundle: ModelBundle, beds: usize, cycles: usize) -> Result<(f64, f64, f64)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let f = bundle.n_features();
    let x = input_rows(beds, f, 99);
    let keys = TrustedKeys::new(vec![SigningKey::from_bytes(&[7; 32]).verifying_key()])?;
    let slot = Arc::new(ModelSlot::new("bench", keys, LoadOptions::default()));
    slot.install(bundle)?;
    let scorer = Scorer::spawn(slot, ScorerOptions::default())?;
    runtime.block_on(async {
        // Warm-up cycle.
        scorer.score(x.clone(), f).await?;
        let cpu0 = process_cpu()?;
        let wall0 = Instant::now();
        for _ in 0..cycles {
            let mut tasks = Vec::with_capacity(beds);
            for row in x.chunks(f) {
                let scorer = scorer.clone();
                let row = row.to_vec();
                tasks.push(tokio::spawn(async move { scorer.score(row, f).await }));
            }
            for task in tasks {
                task.await??;
            }
        }
        let per_bed_cpu = (process_cpu()? - cpu0).as_secs_f64() * 1e3 / cycles as f64;
        let per_bed_wall = wall0.elapsed().as_secs_f64() * 1e3 / cycles as f64;
        let cpu1 = process_cpu()?;
        for _ in 0..cycles {
            scorer.score(x.clone(), f).await?;
        }
        let one_batch_cpu = (process_cpu()? - cpu1).as_secs_f64() * 1e3 / cycles as f64;
        Ok((per_bed_cpu, per_bed_wall, one_batch_cpu))
    })
}

fn bench_model(args: &Args, dir: &Path, trust: Option<&TrustedKeys>) -> Result<ModelReport> {
    let (bundle, signature, load_ms) = load(dir, trust)?;
    let bundle = Arc::new(bundle);
    let f = bundle.n_features();
    eprintln!(
        "{}: {} ({f} features), loaded in {load_ms:.1} ms",
        dir.display(),
        bundle.identity()
    );
    let n = 256 * 16;
    let x = input_rows(n, f, 20261123);

    let mut runner = ModelRunner::new(Arc::clone(&bundle));
    let mut sink = 0f32;
    let b1: Vec<&[f32]> = x.chunks(f).take(1024).collect();
    let b256: Vec<&[f32]> = x.chunks(256 * f).collect();
    // The machine is shared: alternate tract and onnxruntime so both see the same background load, and compare
    // the fastest rounds (the least disturbed ones); medians are kept in the JSON.
    let mut rounds: [Vec<f64>; 6] = Default::default();
    let mut ort_version = String::new();
    let mut ort_out = Vec::new();
    for alternation in 0..args.alternations {
        rounds[0].extend(time_per_call(
            &b1,
            args.rounds,
            args.min_time,
            &mut |rows| {
                sink += runner.score(rows).map(|p| p[0]).unwrap_or(f32::NAN);
            },
        ));
        rounds[1].extend(time_per_call(
            &b256,
            args.rounds,
            args.min_time,
            &mut |rows| {
                sink += runner.score(rows).map(|p| p[0]).unwrap_or(f32::NAN);
            },
        ));
        let (ort, out) = run_ort(args, dir, &bundle, &x, alternation == 0)?;
        for (ix, batch) in [(2, "1"), (3, "256")] {
            let r = ort
                .batches
                .get(batch)
                .context("onnxruntime result for a batch size")?;
            rounds[ix].extend(&r.rounds_us);
            rounds[ix + 2].extend(&r.overhead_rounds_us);
        }
        ort_version = ort.onnxruntime;
        if alternation == 0 {
            ort_out = out;
        }
    }
    if !sink.is_finite() {
        bail!("tract produced a non-finite output or failed during the benchmark");
    }
    let tract_out = runner.score(&x)?;
    if tract_out.len() != ort_out.len() {
        bail!(
            "onnxruntime returned {} outputs for {} rows",
            ort_out.len(),
            tract_out.len()
        );
    }
    let max_abs_diff = tract_out
        .iter()
        .zip(&ort_out)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let [tract_b1, tract_b256, ort_b1, ort_b256, ort_oh1, ort_oh256] = rounds.map(min_median);

    // The CPU cycles need their own bundle (a slot owns it); load again.
    let (cycle_bundle, _, _) = load(dir, trust)?;
    let (per_bed_cpu, per_bed_wall, one_batch_cpu) =
        cpu_cycles(cycle_bundle, args.beds, args.cycles)?;

    Ok(ModelReport {
        dir: dir.display().to_string(),
        identity: bundle.identity().to_string(),
        signature,
        n_features: f,
        load_ms,
        tract_b1_us: tract_b1,
        tract_b256_us: tract_b256,
        ort_b1_us: ort_b1,
        ort_b256_us: ort_b256,
        ort_overhead_b1_us: ort_oh1,
        ort_overhead_b256_us: ort_oh256,
        max_abs_diff_vs_ort: max_abs_diff,
        onnxruntime: ort_version,
        cycle_per_bed_cpu_ms: per_bed_cpu,
        cycle_per_bed_wall_ms: per_bed_wall,
        cycle_one_batch_cpu_ms: one_batch_cpu,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Without --trust-key, the test release key: the test bundles verify, anything else is re-signed.
    let trust_file = args
        .trust_key
        .clone()
        .unwrap_or_else(|| test_data().join("test-release.pub"));
    let trust = Some(TrustedKeys::load(&trust_file)?);
    let models = if args.models.is_empty() {
        default_models()
    } else {
        args.models.clone()
    };
    let mut reports = Vec::new();
    for dir in &models {
        reports.push(bench_model(&args, dir, trust.as_ref())?);
    }

    println!(
        "| model | tract b1 (µs) | onnxruntime b1 (µs) | tract b256 (µs) | onnxruntime b256 (µs) | tract / ort b1 | \
         tract / ort b256 | max abs diff |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &reports {
        println!(
            "| {} | {:.1} | {:.1} (binding ≈ {:.1}) | {:.1} | {:.1} (binding ≈ {:.1}) | {:.2} | {:.2} | {:.1e} |",
            r.identity,
            r.tract_b1_us.fastest,
            r.ort_b1_us.fastest,
            r.ort_overhead_b1_us.fastest,
            r.tract_b256_us.fastest,
            r.ort_b256_us.fastest,
            r.ort_overhead_b256_us.fastest,
            r.tract_b1_us.fastest / r.ort_b1_us.fastest,
            r.tract_b256_us.fastest / r.ort_b256_us.fastest,
            r.max_abs_diff_vs_ort
        );
    }
    println!(
        "\nFastest of {} rounds per case (at least {} s each), tract and onnxruntime alternating; medians in --json.\n",
        args.rounds * args.alternations,
        args.min_time
    );
    println!(
        "| model | CPU per minute, {} beds one request each (ms) | wall (ms) | CPU per minute, one {}-row request (ms) | \
         share of one core (per-bed requests) |",
        args.beds, args.beds
    );
    println!("|---|---:|---:|---:|---:|");
    let mut total = 0.0;
    for r in &reports {
        total += r.cycle_per_bed_cpu_ms;
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.3} % |",
            r.identity,
            r.cycle_per_bed_cpu_ms,
            r.cycle_per_bed_wall_ms,
            r.cycle_one_batch_cpu_ms,
            r.cycle_per_bed_cpu_ms / 60_000.0 * 100.0
        );
    }
    println!(
        "\nAll models listed together: {:.3} % of one core (target: under 1 %).",
        total / 60_000.0 * 100.0
    );
    for r in &reports {
        println!(
            "{}: load (verify + compile) {:.1} ms; signature {}; onnxruntime {}.",
            r.identity, r.load_ms, r.signature, r.onnxruntime
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&reports)?)?;
    }
    Ok(())
}
