//! Alarm-fatigue evaluation on a simulated ward (see `wardwatch::eval`); prints a markdown report.
//!
//! `cargo run --release -p wardwatch --bin eval_alarms -- --beds 40 --hours 24 --seed 1`

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
}

fn main() {
    let a = Args::parse();
    let t = std::time::Instant::now();
    let report = wardwatch::eval::run(&wardwatch::eval::EvalConfig {
        beds: a.beds,
        hours: a.hours,
        seed: a.seed,
        mix: None,
    });
    println!("{}", report.markdown());
    println!("(evaluated in {:.1} s)", t.elapsed().as_secs_f64());
}
