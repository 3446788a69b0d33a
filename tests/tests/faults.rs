//! Fault tests with real processes: the cloud SIGKILLed mid-stream, the edge SIGKILLed right after accepting.
//! Both sides run the `wardwatch` binary (the same code as the demo) so a kill is a real process death.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use wardwatch::{
    CloudHandle, EdgeHandle, TestDatabase, cloud_config, dev_setup, edge_config, simulated_vitals,
    wait_until,
};
use wardwatch_cloud::storage::Store;

const EDGE: &str = "edge-7a";
const WARD: &str = "7A";

fn init() {
    wardwatch::install_crypto();
    wardwatch::init_logging("warn");
}

fn spawn(args: &[&str]) -> Result<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_wardwatch"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?)
}

async fn wait_listening(addr: std::net::SocketAddr) -> Result<()> {
    wait_until(Duration::from_secs(30), "cloud to listen", || async move {
        Ok(tokio::net::TcpStream::connect(addr).await.is_ok())
    })
    .await
}

/// The cloud is SIGKILLed while a stream of samples is being stored, then restarted on the same database:
/// every sample is stored exactly once.
async fn cloud_killed_mid_stream(database_url: Option<String>) -> Result<()> {
    init();
    const N: usize = 30_000;
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &[EDGE])?;
    let sync = wardwatch::free_port()?;
    let api = wardwatch::free_port()?;
    let cfg = cloud_config(
        &setup,
        &dir.path().join("cloud"),
        database_url,
        sync,
        api,
        &[(EDGE, &[WARD])],
    )?;
    let cfg_path = dir.path().join("cloud.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg)?)?;
    let cfg_arg = cfg_path.to_str().context("utf-8 path")?;

    let mut cloud = spawn(&["cloud", "--config", cfg_arg])?;
    wait_listening(sync).await?;
    let store = Store::connect(&cfg.database_url()).await?;

    let edge = EdgeHandle::start(edge_config(
        &setup,
        &dir.path().join("edge"),
        EDGE,
        &[WARD],
        sync,
    )?)
    .await?;
    for chunk in simulated_vitals(WARD, 40, 11, N).chunks(1_000) {
        edge.node.accept(chunk.to_vec()).await?;
    }
    wait_until(
        Duration::from_secs(60),
        "the first samples to be stored",
        || {
            let store = store.clone();
            async move { Ok(store.count_vitals().await? > 0) }
        },
    )
    .await?;
    cloud.kill().await?; // SIGKILL
    let at_kill = store.count_vitals().await?;
    if at_kill as usize >= N {
        bail!(
            "the cloud stored all {N} samples before it could be killed: the test did not kill mid-stream"
        );
    }

    let mut cloud = spawn(&["cloud", "--config", cfg_arg])?;
    wait_listening(sync).await?;
    edge.wait_drained(Duration::from_secs(120)).await?;
    let stored = store.count_vitals().await?;
    let dups = store.count_duplicate_vitals().await?;
    eprintln!(
        "cloud killed with {at_kill} of {N} stored; after restart {stored} stored, {dups} duplicated, {} resent events recognised as replays",
        edge.node
            .sync_stats()
            .replayed
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(stored as usize, N);
    assert_eq!(dups, 0);
    edge.stop().await;
    cloud.kill().await?;
    store.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_sigkilled_mid_stream_sqlite() -> Result<()> {
    cloud_killed_mid_stream(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_sigkilled_mid_stream_postgres() -> Result<()> {
    let Some(db) = TestDatabase::create("fault_cloud_kill").await? else {
        return Ok(());
    };
    let r = cloud_killed_mid_stream(Some(db.url.clone())).await;
    db.drop_now().await?;
    r
}

/// The edge is SIGKILLed right after it reported samples as accepted; after restart none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sigkilled_after_accepting_loses_nothing() -> Result<()> {
    init();
    const N: usize = 5_000;
    let dir = tempfile::tempdir()?;
    let setup = dev_setup(dir.path(), &[EDGE])?;
    let cloud = CloudHandle::start(cloud_config(
        &setup,
        &dir.path().join("cloud"),
        None,
        wardwatch::free_port()?,
        wardwatch::free_port()?,
        &[(EDGE, &[WARD])],
    )?)
    .await?;
    let edge_cfg = edge_config(
        &setup,
        &dir.path().join("edge"),
        EDGE,
        &[WARD],
        cloud.sync_addr,
    )?;
    let cfg_path = dir.path().join("edge.toml");
    std::fs::write(&cfg_path, toml::to_string(&edge_cfg)?)?;

    let mut child = spawn(&[
        "edge",
        "--config",
        cfg_path.to_str().context("utf-8 path")?,
        "--accept-burst",
        &N.to_string(),
    ])?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let accepted = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(n) = line.strip_prefix("accepted ") {
                return Ok::<usize, anyhow::Error>(n.trim().parse()?);
            }
        }
        bail!("edge exited without accepting")
    })
    .await??;
    child.kill().await?; // SIGKILL, right after "accepted"
    assert_eq!(accepted, N);
    let before_restart = cloud.store.count_vitals().await?;

    let edge = EdgeHandle::start(edge_cfg).await?;
    edge.wait_drained(Duration::from_secs(120)).await?;
    eprintln!(
        "edge killed after accepting {N}; {before_restart} had reached the cloud before the kill"
    );
    assert_eq!(cloud.store.count_vitals().await? as usize, N);
    assert_eq!(cloud.store.count_duplicate_vitals().await?, 0);
    edge.stop().await;
    cloud.stop().await;
    Ok(())
}
