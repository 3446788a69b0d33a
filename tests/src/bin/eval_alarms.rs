//! Alarm-fatigue evaluation on a simulated ward (see `wardwatch::eval`); prints a markdown report.
//!
//! `cargo run --release -p wardwatch --bin eval_alarms -- --beds 40 --hours 24 --seed 1`
//!
//! With `--models models/` it runs the same ward twice, without and then with the edge models in the loop (the
//! bundles are signed with a throw-away development release key, as the demo does), and prints both reports.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Beds.
    #[arg(long, default_value_t = 40)]
    beds: u32,
    /// Simulated hours.
    #[arg(long, default_value_t = 24)]
    hours: u32,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also run with the edge models of this directory (`deterioration/`, `artifact/` bundles) in the loop.
    #[arg(long)]
    models: Option<PathBuf>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let base = wardwatch::eval::EvalConfig {
        beds: a.beds,
        hours: a.hours,
        seed: a.seed,
        mix: None,
        models: None,
    };
    let t = std::time::Instant::now();
    let report = wardwatch::eval::run(&base);
    println!("## Without edge models\n\n{}", report.markdown());
    println!("(evaluated in {:.1} s)", t.elapsed().as_secs_f64());
    if let Some(source) = a.models {
        let work = tempfile::tempdir().context("a scratch directory for the signed models")?;
        let models = wardwatch::dev_models(
            &work.path().join("pki"),
            &source,
            &work.path().join("models"),
        )?;
        let t = std::time::Instant::now();
        let with = wardwatch::eval::run(&wardwatch::eval::EvalConfig {
            models: Some(models),
            ..base
        });
        println!("\n## With edge models\n\n{}", with.markdown());
        println!("(evaluated in {:.1} s)", t.elapsed().as_secs_f64());
    }
    Ok(())
}
