//! Edge pipeline benchmark (issue 4): simulated bedside monitors publish to the real Mosquitto broker, and the
//! real edge node (MQTT source → normalization → durable SQLite outbox → clinical engine: NEWS2, thresholds,
//! alarm manager → alarm events made durable) handles them on one core.
//!
//! # What runs where
//! - **The edge** runs in a child process (this binary with `--edge-child`), started as `nice -n <edge-nice> taskset -c <edge-core>`,
//!   so every thread it has (tokio worker, SQLite workers, blocking pool) shares one core. It runs
//!   [`EdgeNode::start`] + [`EdgeNode::run`] exactly as the `wardwatch-edge` binary does, from a TOML config with
//!   the MQTT source, the real durable outbox (WAL, `synchronous=FULL`) and a cloud endpoint nobody listens on (the
//!   outbox only buffers; its budget is raised so it never fills).
//! - **The publisher** (this process) pins itself to `<publisher-core>` and publishes JSON vital signs with QoS 1
//!   over a few rumqttc connections: `--beds` beds × 7 NEWS2 parameters at 1 Hz, one sample per message by default
//!   (`--samples-per-message 7` bundles a bed's seven parameters into one message, as a monitor may).
//! - Mosquitto and the rest of the machine are not pinned.
//!
//! # What is measured
//! - **Samples/s per core**: engine-processed vital signs during the measurement window divided by the edge
//!   process's CPU time (user + system, `/proc/<pid>/stat`) in that window. Also per edge thread.
//! - **Publish → alarm latency**: `--alarm-beds` beds each have five scripted excursions (SpO2 84 %, heart rate
//!   150/min, respiratory rate 32/min, temperature 39.8 °C, systolic 85 mmHg; 5 s each) past a hard limit, so the
//!   alarm manager raises a high-priority alarm at once. The publisher stamps the sample's `measured_at` with the
//!   publish time and records when it handed the message to its MQTT client (so publisher-side queueing counts
//!   against the edge). The alarm event's `changed_at` is the triggering sample's `measured_at`, which identifies
//!   the trigger. The edge child observes, in-process, three moments:
//!   - *raised*: the alarm arrives on [`EdgeNode::subscribe_alarm_changes`], the node's live feed of alarm state
//!     changes, which the engine's output path hands out just before committing them; this is the target figure;
//!   - *alarm durable*: the alarm's state-change event arrives on [`EdgeNode::subscribe`] (batches of newly durable
//!     events, the interface the clinical engine itself consumes), i.e. raised *and* committed to the outbox;
//!   - *sample durable*: the triggering sample arrives on [`EdgeNode::subscribe`], which splits the latency into
//!     ingest (broker, MQTT batch, commit) and the engine. The observers share the edge's core, so the split is
//!     approximate to a scheduling slice (the sample can be seen a moment after the alarm it raised).
//! - **Memory**: VmRSS of the edge child sampled every 500 ms, and VmHWM (peak) at the end.
//! - Every published sample is counted at the edge (MQTT `received`, engine `vitals`), so broker drops show.
//!
//! `cargo run --release --target-dir target/bench -p wardwatch --bin bench_pipeline -- --beds 2000 --duration 60`
//! (add `--spawn-broker` for a private Mosquitto with a larger in-flight window; see docs/benchmarks.md).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use wardwatch_edge::sources::mqtt::MqttSourceConfig;
use wardwatch_edge::{EdgeConfig, EdgeNode};
use wardwatch_proto::metrics::{
    MDC_ECG_HEART_RATE, MDC_PRESS_BLD_NONINV, MDC_PRESS_BLD_NONINV_DIA, MDC_PRESS_BLD_NONINV_SYS,
    MDC_PULS_OXIM_SAT_O2, MDC_RESP_RATE, MDC_TEMP_BODY, WARDWATCH_ACVPU, WARDWATCH_SUPPLEMENTAL_O2,
};
use wardwatch_proto::v1::{AlarmKind, AlarmPriority, AlarmState, VitalSign, edge_event::Payload};

/// The seven NEWS2 parameters each bed sends every second.
const PARAMS: usize = 7;

/// Scripted excursions per alarm bed (one per parameter with a hard limit).
const EXCURSIONS: usize = 5;

/// How long each excursion lasts, seconds.
const EXCURSION_SECS: u64 = 5;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Edge pipeline benchmark: MQTT → normalize → outbox → NEWS2 → alarms on one core"
)]
struct Args {
    /// Beds publishing.
    #[arg(long, default_value_t = 2_000)]
    beds: u32,
    /// Measurement window, seconds (after the warm-up).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Warm-up before the window, seconds (patients appear, caches fill).
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Broker, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Instead of `--broker`, start a private Mosquitto (the `mosquitto` binary) on a free loopback port with
    /// the settings docs/mqtt.md asks of a ward broker plus a larger in-flight window for the edge
    /// (`max_inflight_messages 1000`, `max_queued_messages 100000`), and stop it afterwards.
    #[arg(long)]
    spawn_broker: bool,
    /// Publisher MQTT connections (beds are spread over them).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Beds with scripted hard-limit excursions (each raises five high-priority alarms in the window).
    #[arg(long, default_value_t = 200)]
    alarm_beds: u32,
    /// 1: one message per parameter (beds × 7 messages/s); 7: one message per bed per second.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=7))]
    samples_per_message: u8,
    /// Core the edge is pinned to.
    #[arg(long, default_value_t = 1)]
    edge_core: usize,
    /// Nice value for the edge child (0: as started). A negative value gives the edge priority over whatever else
    /// runs on its core (e.g. other people's compiles on a shared machine), which approximates a dedicated core;
    /// the figures are then labelled so.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    edge_nice: i32,
    /// Core the publisher (this process) is pinned to.
    #[arg(long, default_value_t = 0)]
    publisher_core: usize,
    /// Directory for the edge's data (default: a fresh temporary directory, deleted afterwards).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write the results as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run the edge models too (issue 5): the committed `models/`, signed with a development release key as the
    /// demo does; every bed is scored once a minute and threshold alarms are put to the artifact model.
    #[arg(long)]
    models: bool,
    /// Internal: run as the edge child with this config file.
    #[arg(long, hide = true)]
    edge_child: Option<PathBuf>,
}

fn unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn main() -> Result<()> {
    let args = Args::parse();
    wardwatch::install_crypto();
    if let Some(cfg) = &args.edge_child {
        // The sync task's reconnect warnings (no cloud, on purpose) are not news here.
        wardwatch::init_logging("warn,wardwatch_edge::sync=error");
        // The same runtime the `wardwatch-edge` binary uses (`#[tokio::main]`); under `taskset` it has one worker.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        return rt.block_on(edge_child(cfg));
    }
    wardwatch::init_logging("warn");
    // Pin before the runtime starts threads, so all of them inherit the affinity.
    let pid = std::process::id().to_string();
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", &args.publisher_core.to_string(), &pid])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    if !pinned.success() {
        bail!(
            "taskset could not pin the publisher to core {}",
            args.publisher_core
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(orchestrate(args))
}

// ---------------------------------------------------------------------------------------------------------------
// The edge child.

/// Runs the edge node from `config` until "stop" arrives on stdin. Protocol on stdout, one line each:
/// `ALARM <patient> <changed_at ms> <observed Unix µs>` for every high-priority vital-threshold alarm raised,
/// `STATS <json>` in answer to `stats` on stdin, and `DONE <json>` after shutdown.
async fn edge_child(config: &Path) -> Result<()> {
    let cfg = EdgeConfig::from_file(config)?;
    let node = EdgeNode::start(cfg).await?;
    // Subscribed before `run`, so no alarm event is missed. This is the node's existing consumer interface (the
    // clinical engine uses the same one); it delivers each batch once it is durable.
    let mut rx = node.subscribe();
    let lagged = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let observer_lagged = lagged.clone();
    let observer = tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match rx.recv().await {
                Ok(batch) => {
                    for ev in batch.iter() {
                        match &ev.payload {
                            Payload::Alarm(a)
                                if a.state == AlarmState::Raised as i32
                                    && a.priority == AlarmPriority::High as i32
                                    && a.kind == AlarmKind::VitalThreshold as i32 =>
                            {
                                println!(
                                    "ALARM {} {} {}",
                                    a.patient_id,
                                    a.changed_at_unix_ms,
                                    unix_us()
                                );
                            }
                            // The excursion samples themselves, once durable: splits the latency into
                            // publish → sample durable and sample durable → alarm durable.
                            Payload::Vital(v) if is_excursion(v) => {
                                println!(
                                    "SAMPLE {} {} {}",
                                    v.patient_id,
                                    v.measured_at_unix_ms,
                                    unix_us()
                                );
                            }
                            _ => {}
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    observer_lagged.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
    // The moment the alarm manager raises an alarm: the node's live feed of alarm state changes, handed out by
    // the engine's output path just before the alarm's own commit.
    let mut raised_rx = node.subscribe_alarm_changes();
    let raised_lagged = lagged.clone();
    let raised_observer = tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match raised_rx.recv().await {
                Ok(a) => {
                    if a.state == AlarmState::Raised as i32
                        && a.priority == AlarmPriority::High as i32
                        && a.kind == AlarmKind::VitalThreshold as i32
                    {
                        println!(
                            "RAISED {} {} {}",
                            a.patient_id,
                            a.changed_at_unix_ms,
                            unix_us()
                        );
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    raised_lagged.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                Err(RecvError::Closed) => break,
            }
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(node.clone().run(async move {
        let _ = stop_rx.await;
    }));
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "stats" => println!("STATS {}", child_stats(&node, &lagged)),
            "stop" => break,
            _ => {}
        }
    }
    let _ = stop_tx.send(());
    let _ = runner.await;
    observer.abort();
    raised_observer.abort();
    println!("DONE {}", child_stats(&node, &lagged));
    Ok(())
}

/// Whether a (normalized) vital sign is one of the scripted excursion values, past a default hard limit.
fn is_excursion(v: &VitalSign) -> bool {
    match v.metric_mdc {
        MDC_PULS_OXIM_SAT_O2 => v.value <= 85.0,
        MDC_ECG_HEART_RATE => v.value >= 140.0,
        MDC_RESP_RATE => v.value >= 30.0,
        MDC_TEMP_BODY => v.value >= 39.5,
        MDC_PRESS_BLD_NONINV => v
            .components
            .iter()
            .any(|c| c.metric_mdc == MDC_PRESS_BLD_NONINV_SYS && c.value <= 90.0),
        _ => false,
    }
}

fn child_stats(node: &EdgeNode, lagged: &std::sync::atomic::AtomicU64) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let (engine, alarms) = node
        .engine()
        .lock()
        .map(|e| (e.stats(), e.alarm_stats()))
        .unwrap_or_default();
    let m = node.mqtt_stats().snapshot();
    let a = node.accept_stats();
    serde_json::json!({
        "vitals": engine.vitals,
        "news2_updates": engine.news2_updates,
        "alarm_events": engine.alarm_events,
        "model_predictions": engine.model_predictions,
        "model_failures": engine.model_failures,
        "artifact_queries": engine.artifact_queries,
        "artifact_holds": engine.artifact_holds,
        "alarms_raised": alarms.raised,
        "accepted": a.accepted.load(Relaxed),
        "rejected": a.rejected.load(Relaxed),
        "refused_full": a.refused_full.load(Relaxed),
        "transactions": a.transactions.load(Relaxed),
        "outbox_used_bytes": node.outbox().used_bytes(),
        "observer_lagged_batches": lagged.load(Relaxed),
        "mqtt_received": m.received,
        "mqtt_accepted": m.accepted,
        "mqtt_duplicates": m.duplicates,
        "mqtt_rejected": m.rejected,
        "mqtt_malformed": m.malformed,
        "mqtt_acked": m.acked,
        "mqtt_not_acked": m.not_acked_outbox_full + m.not_acked_errors,
        "mqtt_reconnects": m.reconnects,
        "mqtt_connects": m.connects,
        "mqtt_subscriptions": m.subscriptions,
        "mqtt_batches": m.batches,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// /proc readings.

/// CPU time (user + system) of a process or thread, in clock ticks, from its `stat` file.
fn proc_ticks(stat_path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU ticks per thread name (threads of the same name are summed) of process `pid`.
fn thread_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let name = std::fs::read_to_string(t.path().join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if let Some(ticks) = proc_ticks(&t.path().join("stat")) {
            *out.entry(name).or_insert(0) += ticks;
        }
    }
    out
}

/// (on-CPU ns, waiting-for-a-CPU ns) summed over the threads of process `pid`, from each thread's `schedstat`.
/// The wait is time a thread was runnable but another task had its core: contention, not work.
fn sched_ns(pid: u32) -> (u64, u64) {
    let mut out = (0, 0);
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
            let mut f = s.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
            out.0 += f.next().unwrap_or(0);
            out.1 += f.next().unwrap_or(0);
        }
    }
    out
}

/// The 1-minute load average.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|k| k * 1024)
}

/// (busy, total) ticks of one core from `/proc/stat`.
fn core_ticks(core: usize) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{core}");
    let line = s
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&name))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// The system broker's pid, when it can be found (for its CPU time; it runs unpinned on the shared cores).
fn system_broker_pid() -> Option<u32> {
    std::fs::read_to_string("/run/mosquitto/mosquitto.pid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Starts a private Mosquitto on a free loopback port with `max_inflight_messages 1000` and
/// `max_queued_messages 100000`; returns the process (killed when dropped) and its port.
async fn spawn_broker(dir: &Path) -> Result<(tokio::process::Child, u16)> {
    let port = wardwatch::free_port()?.port();
    let state = dir.join("mosquitto");
    std::fs::create_dir_all(&state)?;
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n\
             max_inflight_messages 1000\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\n",
            state.display()
        ),
    )?;
    let child = tokio::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting mosquitto (is it installed?)")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("the private mosquitto did not listen on {port} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((child, port))
}

/// A reading of the edge child and the machine at one moment.
#[derive(Debug, Clone)]
struct Mark {
    at: Instant,
    stats: serde_json::Value,
    cpu_ticks: u64,
    threads: BTreeMap<String, u64>,
    sched: (u64, u64),
    load: f64,
    edge_core: (u64, u64),
    broker_ticks: Option<u64>,
}

// ---------------------------------------------------------------------------------------------------------------
// The simulated monitors.

/// A deterministic pseudo-random number in [0, 1) from a few integers (splitmix64).
fn noise(a: u64, b: u64, c: u64) -> f64 {
    let mut z = a
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(b.wrapping_mul(0xBF58_476D_1CE4_E5B9))
        .wrapping_add(c.wrapping_mul(0x94D0_49BB_1331_11EB))
        .wrapping_add(0x2545_F491_4F6C_DD1D);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// The simulated ward: bed baselines and the excursion schedule.
#[derive(Debug)]
struct Ward {
    beds: u32,
    /// Seconds (since the start of publishing) at which bed `b`'s excursion `k` starts, for alarm beds.
    excursions: HashMap<u32, [u64; EXCURSIONS]>,
}

impl Ward {
    fn new(args: &Args) -> Self {
        let mut excursions = HashMap::new();
        let alarm_beds = args.alarm_beds.min(args.beds);
        // Each excursion gets its own slot of the window; the bed's start within the slot is spread.
        let slot = (args.duration / EXCURSIONS as u64).max(EXCURSION_SECS + 1);
        let spread = slot.saturating_sub(EXCURSION_SECS + 1).max(1);
        for i in 0..alarm_beds {
            // Alarm beds are spread over the whole ward (and so over the publisher connections).
            let b = (u64::from(i) * u64::from(args.beds) / u64::from(alarm_beds.max(1))) as u32;
            let mut starts = [0u64; EXCURSIONS];
            for (k, s) in starts.iter_mut().enumerate() {
                let offset = (noise(u64::from(b), k as u64, 7) * spread as f64) as u64;
                *s = args.warmup + k as u64 * slot + offset;
            }
            excursions.insert(b, starts);
        }
        Self {
            beds: args.beds,
            excursions,
        }
    }

    /// The excursion (parameter index into [`Ward::sample`]'s order) bed `b` is in at second `s`, and whether `s`
    /// is its first second.
    fn excursion(&self, b: u32, s: u64) -> Option<(usize, bool)> {
        let starts = self.excursions.get(&b)?;
        starts
            .iter()
            .enumerate()
            .find(|(_, st)| s >= **st && s < **st + EXCURSION_SECS)
            .map(|(k, st)| (k, s == *st))
    }

    /// JSON of parameter `p` (0..7) of bed `b` at second `s`: SpO2, heart rate, respiratory rate, temperature,
    /// blood pressure, ACVPU, air/oxygen. Baselines vary per bed (some near NEWS2 band edges, so scores move);
    /// each sample is flagged `simulated`.
    fn sample(&self, b: u32, s: u64, p: usize) -> String {
        let bed = u64::from(b);
        let base = |k: u64| noise(bed, k, 0);
        let jitter = |k: u64| noise(bed, k, s + 1) - 0.5;
        let exc = self.excursion(b, s).map(|(k, _)| k);
        match p {
            0 => {
                let v = if exc == Some(0) {
                    84.0
                } else {
                    (94.0 + base(1) * 5.0 + jitter(1) * 2.0).round().min(100.0)
                };
                format!(
                    r#"{{"mdc":{MDC_PULS_OXIM_SAT_O2},"value":{v},"unit":"%","quality":["simulated"]}}"#
                )
            }
            1 => {
                let v = if exc == Some(1) {
                    150.0
                } else {
                    (58.0 + base(2) * 36.0 + jitter(2) * 4.0).round()
                };
                format!(
                    r#"{{"mdc":{MDC_ECG_HEART_RATE},"value":{v},"unit":"bpm","quality":["simulated"]}}"#
                )
            }
            2 => {
                let v = if exc == Some(2) {
                    32.0
                } else {
                    (12.0 + base(3) * 9.0 + jitter(3) * 2.0).round()
                };
                format!(
                    r#"{{"mdc":{MDC_RESP_RATE},"value":{v},"unit":"/min","quality":["simulated"]}}"#
                )
            }
            3 => {
                let c = if exc == Some(3) {
                    39.8
                } else {
                    36.2 + base(4) * 1.8 + jitter(4) * 0.2
                };
                // Every other bed reports in Fahrenheit, so normalization converts.
                if b.is_multiple_of(2) {
                    format!(
                        r#"{{"mdc":{MDC_TEMP_BODY},"value":{c:.1},"unit":"Cel","quality":["simulated"]}}"#
                    )
                } else {
                    let f = c * 9.0 / 5.0 + 32.0;
                    format!(
                        r#"{{"mdc":{MDC_TEMP_BODY},"value":{f:.1},"unit":"[degF]","quality":["simulated"]}}"#
                    )
                }
            }
            4 => {
                let sys = if exc == Some(4) {
                    85.0
                } else {
                    (108.0 + base(5) * 40.0 + jitter(5) * 6.0).round()
                };
                let dia = (sys * 0.62).round();
                format!(
                    r#"{{"mdc":{MDC_PRESS_BLD_NONINV},"unit":"mmHg","components":[{{"mdc":{MDC_PRESS_BLD_NONINV_SYS},"value":{sys}}},{{"mdc":{MDC_PRESS_BLD_NONINV_DIA},"value":{dia}}}],"quality":["simulated"]}}"#
                )
            }
            5 => format!(r#"{{"mdc":{WARDWATCH_ACVPU},"enumerated":"A","quality":["simulated"]}}"#),
            _ => {
                let o2 = if base(6) < 0.1 { "O2" } else { "AIR" };
                format!(
                    r#"{{"mdc":{WARDWATCH_SUPPLEMENTAL_O2},"enumerated":"{o2}","quality":["simulated"]}}"#
                )
            }
        }
    }
}

fn patient(b: u32) -> String {
    format!("SIM{:06}", b + 1)
}

/// A published message that should raise an alarm: the patient, its `measured_at` (ms) and when it was handed
/// to the MQTT client (Unix µs).
#[derive(Debug, Clone)]
struct Trigger {
    patient: String,
    measured_at_ms: i64,
    published_us: i64,
}

/// Connects `n` publisher clients; returns them once all are connected.
async fn publishers(
    n: usize,
    host: &str,
    port: u16,
    run_id: &str,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<AsyncClient>> {
    let mut clients = Vec::new();
    let (up_tx, mut up_rx) = mpsc::unbounded_channel::<usize>();
    for i in 0..n {
        let mut opts = MqttOptions::new(format!("ww-bench-mon-{run_id}-{i}"), host, port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_inflight(2_000);
        let (client, mut el) = AsyncClient::new(opts, 50_000);
        let up = up_tx.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = up.send(i);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if *stop.borrow() {
                            break;
                        }
                        eprintln!("publisher {i}: {e}; reconnecting");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        clients.push(client);
    }
    for _ in 0..n {
        tokio::time::timeout(Duration::from_secs(10), up_rx.recv())
            .await
            .context("publisher did not connect")?;
    }
    Ok(clients)
}

/// Publishes the ward at 1 Hz for `secs` seconds from `start`, evenly spread over each second; returns the
/// messages and samples published and the triggers.
async fn publish(
    ward: &Ward,
    clients: &[AsyncClient],
    prefix: &str,
    per_message: usize,
    secs: u64,
    start: Instant,
) -> Result<(u64, u64, Vec<Trigger>)> {
    let groups = PARAMS.div_ceil(per_message);
    let per_second = u64::from(ward.beds) * groups as u64;
    let total = per_second * secs;
    let mut sent = 0u64;
    let mut samples = 0u64;
    let mut triggers = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let topics: Vec<String> = (0..ward.beds)
        .map(|b| format!("{prefix}/7A/{}/mon-{:04}/vitals", b + 1, b + 1))
        .collect();
    while sent < total {
        tick.tick().await;
        let due = ((start.elapsed().as_micros() as u64).saturating_mul(per_second) / 1_000_000)
            .min(total);
        while sent < due {
            let s = sent / per_second;
            let j = sent % per_second;
            // Bed-major: a bed's parameters go out together, beds are spread over the second.
            let b = (j / groups as u64) as u32;
            let g = (j % groups as u64) as usize;
            let params = (g * per_message)..((g + 1) * per_message).min(PARAMS);
            let measured_at = wardwatch_proto::now_unix_ms();
            let mut body = String::with_capacity(120 * params.len() + 64);
            body.push_str(&format!(
                r#"{{"patient_id":"{}","measured_at":{measured_at},"samples":["#,
                patient(b)
            ));
            let mut trigger = false;
            for (i, p) in params.clone().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&ward.sample(b, s, p));
                if let Some((k, true)) = ward.excursion(b, s) {
                    trigger |= EXCURSION_PARAM[k] == p;
                }
            }
            body.push_str("]}");
            samples += params.len() as u64;
            let published_us = unix_us();
            clients[b as usize % clients.len()]
                .publish(
                    &topics[b as usize],
                    QoS::AtLeastOnce,
                    false,
                    body.into_bytes(),
                )
                .await?;
            if trigger {
                triggers.push(Trigger {
                    patient: patient(b),
                    measured_at_ms: measured_at,
                    published_us,
                });
            }
            sent += 1;
        }
    }
    Ok((sent, samples, triggers))
}

/// Which sample parameter (index of [`Ward::sample`]) excursion `k` moves.
const EXCURSION_PARAM: [usize; EXCURSIONS] = [0, 1, 2, 3, 4];

// ---------------------------------------------------------------------------------------------------------------
// The orchestrator.

/// Talks to the edge child: sends commands, receives `STATS`/`DONE` answers; `ALARM` lines are collected.
struct Child {
    proc: tokio::process::Child,
    pid: u32,
    stdin: tokio::process::ChildStdin,
    answers: mpsc::UnboundedReceiver<(String, serde_json::Value)>,
    alarms: Arc<Mutex<Vec<Observed>>>,
}

/// What the edge child observed about a trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Seen {
    /// The alarm manager raised the alarm (live feed, before the alarm's commit).
    Raised,
    /// The alarm's state-change event is durable.
    AlarmDurable,
    /// The triggering sample is durable.
    SampleDurable,
}

/// (what, patient, measured_at ms, observed Unix µs).
type Observed = (Seen, String, i64, i64);

impl Child {
    async fn stats(&mut self) -> Result<serde_json::Value> {
        self.stdin.write_all(b"stats\n").await?;
        self.stdin.flush().await?;
        match tokio::time::timeout(Duration::from_secs(30), self.answers.recv()).await {
            Ok(Some((_, v))) => Ok(v),
            _ => bail!("the edge child did not answer"),
        }
    }

    async fn mark(&mut self, core: usize, broker: Option<u32>) -> Result<Mark> {
        let stats = self.stats().await?;
        Ok(Mark {
            at: Instant::now(),
            stats,
            cpu_ticks: proc_ticks(Path::new(&format!("/proc/{}/stat", self.pid))).unwrap_or(0),
            threads: thread_ticks(self.pid),
            sched: sched_ns(self.pid),
            load: load_average(),
            edge_core: core_ticks(core).unwrap_or((0, 0)),
            broker_ticks: broker.and_then(|p| proc_ticks(Path::new(&format!("/proc/{p}/stat")))),
        })
    }
}

fn num(v: &serde_json::Value, k: &str) -> u64 {
    v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn orchestrate(mut args: Args) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_path_buf());
    let (_private_broker, broker_pid) = if args.spawn_broker {
        let (child, port) = spawn_broker(&dir).await?;
        args.broker = format!("127.0.0.1:{port}");
        let pid = child.id();
        (Some(child), pid)
    } else {
        (None, system_broker_pid())
    };
    let (host, port) = args
        .broker
        .rsplit_once(':')
        .context("--broker must be host:port")?;
    let port: u16 = port.parse().context("--broker port")?;
    std::net::TcpStream::connect((host, port))
        .with_context(|| format!("no MQTT broker at {}: start mosquitto", args.broker))?;
    let run_id = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
    let setup = wardwatch::dev_setup(&dir, &["edge-bench"])?;
    // Nothing listens on this port: the outbox only buffers, as when the cloud is unreachable.
    let mut cfg = wardwatch::edge_config(
        &setup,
        &dir.join("edge"),
        "edge-bench",
        &["7A"],
        wardwatch::free_port()?,
    )?;
    cfg.outbox.max_bytes = 64 << 30;
    cfg.outbox.near_full_ratio = 0.9;
    cfg.sync.backoff_max_ms = 30_000;
    let mqtt = MqttSourceConfig {
        broker_host: host.to_string(),
        broker_port: port,
        client_id: format!("ww-bench-edge-{run_id}"),
        topic_prefix: format!("wardwatch-bench/{run_id}/v1"),
        ..Default::default()
    };
    let prefix = mqtt.topic_prefix.clone();
    let edge_client_id = mqtt.client_id.clone();
    cfg.mqtt = Some(mqtt);
    if args.models {
        cfg.engine.models = Some(wardwatch::dev_models(
            &dir.join("pki"),
            &wardwatch::repo_models_dir(),
            &dir.join("edge").join("models"),
        )?);
    }
    cfg.validate()?;
    let cfg_path = dir.join("edge.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg)?)?;

    let per_message = usize::from(args.samples_per_message);
    let groups = PARAMS.div_ceil(per_message);
    let msgs_per_s = u64::from(args.beds) * groups as u64;
    println!(
        "# bench_pipeline: {} beds x {PARAMS} parameters at 1 Hz = {} samples/s in {msgs_per_s} messages/s (QoS 1) via {} ({}); warm-up {} s, window {} s; edge on core {} (nice {}), publisher on core {}; edge models {}",
        args.beds,
        u64::from(args.beds) * PARAMS as u64,
        args.broker,
        if args.spawn_broker {
            "private mosquitto, max_inflight_messages 1000, max_queued_messages 100000"
        } else {
            "as configured"
        },
        args.warmup,
        args.duration,
        args.edge_core,
        args.edge_nice,
        args.publisher_core,
        if args.models { "on" } else { "off" }
    );

    // The edge child, pinned to its core.
    let exe = std::env::current_exe()?;
    let mut proc = tokio::process::Command::new("nice")
        .arg("-n")
        .arg(args.edge_nice.to_string())
        .arg("taskset")
        .arg("-c")
        .arg(args.edge_core.to_string())
        .arg(&exe)
        .arg("--edge-child")
        .arg(&cfg_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting the edge child under nice and taskset")?;
    let pid = proc.id().context("edge child pid")?;
    let stdin = proc.stdin.take().context("child stdin")?;
    let stdout = proc.stdout.take().context("child stdout")?;
    let alarms: Arc<Mutex<Vec<Observed>>> = Arc::default();
    let (ans_tx, answers) = mpsc::unbounded_channel();
    let sink = alarms.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut parts = line.splitn(2, ' ');
            match (parts.next(), parts.next()) {
                (Some(tag @ ("RAISED" | "ALARM" | "SAMPLE")), Some(rest)) => {
                    let f: Vec<&str> = rest.split(' ').collect();
                    let what = match tag {
                        "RAISED" => Seen::Raised,
                        "ALARM" => Seen::AlarmDurable,
                        _ => Seen::SampleDurable,
                    };
                    if let [p, at, seen] = f[..]
                        && let (Ok(at), Ok(seen)) = (at.parse::<i64>(), seen.parse::<i64>())
                        && let Ok(mut a) = sink.lock()
                    {
                        a.push((what, p.to_string(), at, seen));
                    }
                }
                (Some(tag @ ("STATS" | "DONE")), Some(json)) => {
                    let v = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
                    let _ = ans_tx.send((tag.to_string(), v));
                }
                _ => eprintln!("edge child: {line}"),
            }
        }
    });
    let mut child = Child {
        proc,
        pid,
        stdin,
        answers,
        alarms,
    };
    // Wait until the edge's MQTT source is subscribed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = child.stats().await?;
        if num(&s, "mqtt_subscriptions") > 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the edge did not subscribe to the broker within 30 s: {s}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Memory sampler.
    let rss_max = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler_rss = rss_max.clone();
    let sampler = tokio::spawn(async move {
        loop {
            if let Some(r) = status_kb(pid, "VmRSS:") {
                sampler_rss.fetch_max(r, std::sync::atomic::Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });

    // Publish: warm-up + window.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let clients = publishers(args.publishers, host, port, &run_id, stop_rx).await?;
    let ward = Ward::new(&args);
    let start = Instant::now();
    let secs = args.warmup + args.duration;
    let pub_task = {
        let clients = clients.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            let r = publish(&ward, &clients, &prefix, per_message, secs, start).await;
            (r, ward)
        })
    };
    tokio::time::sleep_until((start + Duration::from_secs(args.warmup)).into()).await;
    let m0 = child.mark(args.edge_core, broker_pid).await?;
    let rss_at_window_start = status_kb(pid, "VmRSS:").unwrap_or(0);
    tokio::time::sleep_until((start + Duration::from_secs(secs)).into()).await;
    let m1 = child.mark(args.edge_core, broker_pid).await?;
    let (published, _ward) = pub_task.await?;
    let (messages, samples, triggers) = published?;
    let publish_secs = start.elapsed().as_secs_f64();

    // Drain: wait until the edge has seen every sample, or stalls.
    let drain_start = Instant::now();
    let mut last = (0u64, Instant::now());
    let mut end_stats;
    loop {
        end_stats = child.stats().await?;
        let v = num(&end_stats, "vitals");
        if v >= samples {
            break;
        }
        if v != last.0 {
            last = (v, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            eprintln!("edge stopped making progress at {v} of {samples} samples");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    // Let the last alarms arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hwm = status_kb(pid, "VmHWM:").unwrap_or(0);
    let rss_end = status_kb(pid, "VmRSS:").unwrap_or(0);
    sampler.abort();
    let rss_peak_sampled = rss_max.load(std::sync::atomic::Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for c in &clients {
        let _ = c.disconnect().await;
    }
    child.stdin.write_all(b"stop\n").await?;
    child.stdin.flush().await?;
    let done = tokio::time::timeout(Duration::from_secs(30), child.answers.recv())
        .await
        .ok()
        .flatten()
        .map(|(_, v)| v)
        .unwrap_or(serde_json::Value::Null);
    let _ = tokio::time::timeout(Duration::from_secs(10), child.proc.wait()).await;
    purge_session(host, port, &edge_client_id).await;

    // Results.
    let tck = clock_ticks_per_sec();
    let wall = m1.at.duration_since(m0.at).as_secs_f64();
    let cpu = (m1.cpu_ticks.saturating_sub(m0.cpu_ticks)) as f64 / tck;
    let window_samples = num(&m1.stats, "vitals").saturating_sub(num(&m0.stats, "vitals"));
    let per_core = window_samples as f64 / cpu.max(1e-9);
    let core_busy = {
        let (b0, t0) = m0.edge_core;
        let (b1, t1) = m1.edge_core;
        (b1.saturating_sub(b0)) as f64 / (t1.saturating_sub(t0)).max(1) as f64
    };
    let broker_cpu = match (m0.broker_ticks, m1.broker_ticks) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / tck),
        _ => None,
    };
    let alarms = child.alarms.lock().map(|a| a.clone()).unwrap_or_default();
    let seen: HashMap<(Seen, String, i64), i64> = alarms
        .iter()
        .map(|(w, p, at, us)| ((*w, p.clone(), *at), *us))
        .collect();
    // publish → raised (the target), publish → alarm durable, and the split publish → sample durable →
    // raised → alarm durable.
    let mut raised_ms: Vec<f64> = Vec::new();
    let mut lat_ms: Vec<f64> = Vec::new();
    let mut to_durable_ms: Vec<f64> = Vec::new();
    let mut to_raised_ms: Vec<f64> = Vec::new();
    let mut to_alarm_ms: Vec<f64> = Vec::new();
    let mut missing = 0usize;
    let mut missing_raised = 0usize;
    let ms = |a: i64, b: i64| (a - b) as f64 / 1_000.0;
    for t in &triggers {
        let key = |w| (w, t.patient.clone(), t.measured_at_ms);
        let raised = seen.get(&key(Seen::Raised));
        let alarm = seen.get(&key(Seen::AlarmDurable));
        let sample = seen.get(&key(Seen::SampleDurable));
        match raised {
            Some(us) => raised_ms.push(ms(*us, t.published_us)),
            None => missing_raised += 1,
        }
        match alarm {
            Some(us) => lat_ms.push(ms(*us, t.published_us)),
            None => missing += 1,
        }
        if let (Some(r), Some(a), Some(s)) = (raised, alarm, sample) {
            to_durable_ms.push(ms(*s, t.published_us));
            to_raised_ms.push(ms(*r, *s));
            to_alarm_ms.push(ms(*a, *r));
        }
    }
    for v in [
        &mut raised_ms,
        &mut lat_ms,
        &mut to_durable_ms,
        &mut to_raised_ms,
        &mut to_alarm_ms,
    ] {
        v.sort_by(f64::total_cmp);
    }
    let mut threads: Vec<(String, f64)> = m1
        .threads
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                t.saturating_sub(m0.threads.get(n).copied().unwrap_or(0)) as f64 / tck,
            )
        })
        .filter(|(_, s)| *s > 0.0)
        .collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;

    println!(
        "published: {messages} messages, {samples} samples in {publish_secs:.1} s ({:.0} samples/s offered)",
        samples as f64 / publish_secs
    );
    println!(
        "edge saw: {} samples (MQTT received {} messages: {} lost in the broker, e.g. Mosquitto's per-client queue limit `max_queued_messages`; {} not acknowledged, {} reconnects); drained {drain_secs:.1} s after publishing ended",
        num(&end_stats, "vitals"),
        num(&end_stats, "mqtt_received"),
        messages.saturating_sub(num(&end_stats, "mqtt_received")),
        num(&end_stats, "mqtt_not_acked"),
        num(&end_stats, "mqtt_reconnects"),
    );
    println!(
        "window {wall:.1} s: {window_samples} samples ({:.0}/s), edge CPU {cpu:.2} s = {:.0} % of one core -> {per_core:.0} samples/s per core ({:.1} us CPU per sample)",
        window_samples as f64 / wall,
        100.0 * cpu / wall,
        1e6 / per_core.max(1e-9)
    );
    println!(
        "edge core {} busy {:.0} % (edge and anything else scheduled there); broker CPU {}",
        args.edge_core,
        100.0 * core_busy,
        broker_cpu.map_or("n/a".into(), |c| format!(
            "{c:.1} s ({:.0} % of a core)",
            100.0 * c / wall
        ))
    );
    let on_cpu = m1.sched.0.saturating_sub(m0.sched.0) as f64 / 1e9;
    let waited = m1.sched.1.saturating_sub(m0.sched.1) as f64 / 1e9;
    println!(
        "contention: edge threads waited {waited:.1} s for their core while runnable (on it {on_cpu:.1} s); load average {:.1} at window start, {:.1} at end (2 cores)",
        m0.load, m1.load
    );
    let thread_line: Vec<String> = threads
        .iter()
        .map(|(n, s)| format!("{n} {s:.2} s ({:.0} %)", 100.0 * s / cpu.max(1e-9)))
        .collect();
    println!("edge CPU by thread: {}", thread_line.join(", "));
    println!(
        "publish -> alarm raised by the alarm manager: {} alarms of {} triggers ({missing_raised} not seen); p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        raised_ms.len(),
        triggers.len(),
        pct(&raised_ms, 0.5),
        pct(&raised_ms, 0.9),
        pct(&raised_ms, 0.99),
        raised_ms.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "publish -> alarm raised and durable: {} alarms of {} triggers ({missing} not seen); p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat_ms.len(),
        triggers.len(),
        pct(&lat_ms, 0.5),
        pct(&lat_ms, 0.9),
        pct(&lat_ms, 0.99),
        lat_ms.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "edge memory: VmRSS at window start {:.1} MiB, max sampled {:.1} MiB, at end {:.1} MiB; VmHWM (peak) {:.1} MiB; outbox {:.1} MiB on disk",
        mib(rss_at_window_start),
        mib(rss_peak_sampled),
        mib(rss_end),
        mib(hwm),
        mib(num(&end_stats, "outbox_used_bytes"))
    );
    println!(
        "engine: {} NEWS2 updates, {} alarm events, {} alarms raised; accept rejected {}, refused (full) {}; observer lagged {} batches",
        num(&end_stats, "news2_updates"),
        num(&end_stats, "alarm_events"),
        num(&end_stats, "alarms_raised"),
        num(&end_stats, "rejected"),
        num(&end_stats, "refused_full"),
        num(&end_stats, "observer_lagged_batches"),
    );
    println!(
        "models: {} deterioration predictions ({} failed runs), {} artifact queries, {} threshold alarms held back",
        num(&end_stats, "model_predictions"),
        num(&end_stats, "model_failures"),
        num(&end_stats, "artifact_queries"),
        num(&end_stats, "artifact_holds"),
    );
    println!(
        "  split: publish -> triggering sample durable p50 {:.1} / p99 {:.1} ms; sample durable -> alarm raised p50 {:.1} / p99 {:.1} ms; raised -> alarm durable p50 {:.1} / p99 {:.1} ms",
        pct(&to_durable_ms, 0.5),
        pct(&to_durable_ms, 0.99),
        pct(&to_raised_ms, 0.5),
        pct(&to_raised_ms, 0.99),
        pct(&to_alarm_ms, 0.5),
        pct(&to_alarm_ms, 0.99),
    );
    println!(
        "outbox transactions: {} ({:.0}/s; MQTT batches {} = mean {:.1} messages each, the rest engine output)",
        num(&end_stats, "transactions"),
        num(&end_stats, "transactions") as f64 / publish_secs,
        num(&end_stats, "mqtt_batches"),
        num(&end_stats, "mqtt_received") as f64 / num(&end_stats, "mqtt_batches").max(1) as f64
    );
    let p99 = pct(&raised_ms, 0.99);
    let lost = samples.saturating_sub(num(&end_stats, "vitals"));
    let kept_up = lost == 0 && drain_secs < 5.0;
    println!(
        "targets: load on one core {} | p99 < 50 ms {} | < 150 MB resident {}",
        if kept_up && cpu / wall < 1.0 {
            "MET"
        } else {
            "MISSED"
        },
        if p99 < 50.0 && missing_raised == 0 {
            "MET"
        } else {
            "MISSED"
        },
        if hwm < 150_000_000 { "MET" } else { "MISSED" },
    );
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "beds": args.beds, "samples_per_message": per_message, "duration_s": args.duration,
            "edge_nice": args.edge_nice, "broker": args.broker, "private_broker": args.spawn_broker,
            "messages": messages, "samples": samples, "publish_secs": publish_secs,
            "window_s": wall, "window_samples": window_samples, "edge_cpu_s": cpu,
            "samples_per_core_s": per_core, "edge_core_busy": core_busy, "broker_cpu_s": broker_cpu,
            "runqueue_wait_s": waited, "on_cpu_s": on_cpu, "load_average": [m0.load, m1.load],
            "threads": threads,
            "raised_ms": {"n": raised_ms.len(), "missing": missing_raised, "p50": pct(&raised_ms, 0.5),
                "p90": pct(&raised_ms, 0.9), "p99": p99, "max": raised_ms.last()},
            "durable_ms": {"n": lat_ms.len(), "missing": missing, "p50": pct(&lat_ms, 0.5),
                "p90": pct(&lat_ms, 0.9), "p99": pct(&lat_ms, 0.99), "max": lat_ms.last(),
                "sample_to_raised_p50": pct(&to_raised_ms, 0.5), "sample_to_raised_p99": pct(&to_raised_ms, 0.99),
                "to_sample_durable_p50": pct(&to_durable_ms, 0.5), "to_sample_durable_p99": pct(&to_durable_ms, 0.99),
                "raised_to_durable_p50": pct(&to_alarm_ms, 0.5), "raised_to_durable_p99": pct(&to_alarm_ms, 0.99)},
            "transactions": num(&end_stats, "transactions"),
            "mqtt_batches": num(&end_stats, "mqtt_batches"),
            "rss_bytes": {"window_start": rss_at_window_start, "max_sampled": rss_peak_sampled, "end": rss_end, "hwm": hwm},
            "lost_samples": lost, "drain_s": drain_secs, "end": end_stats, "done": done,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

/// Removes the edge's persistent broker session (a clean-session connect with the same client id), so the bench
/// leaves nothing behind in the broker.
async fn purge_session(host: &str, port: u16, client_id: &str) {
    let mut opts = MqttOptions::new(client_id, host, port);
    opts.set_clean_session(true);
    let (client, mut el) = AsyncClient::new(opts, 10);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.try_disconnect();
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}
