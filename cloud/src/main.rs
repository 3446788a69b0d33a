//! `wardwatch-cloud`: runs the cloud from a TOML config, or creates development certificates. Thin: parse,
//! install signals, call the library.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "wardwatch-cloud",
    version,
    about = "Wardwatch cloud: mutual-TLS edge sync, exactly-once storage, FHIR R4"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve edge sync and the FHIR API.
    Serve {
        /// TOML config file (see cloud/src/config.rs).
        #[arg(long)]
        config: PathBuf,
    },
    /// Create a development CA plus cloud and edge certificates.
    Certs {
        /// Output directory.
        #[arg(long, default_value = "data/pki")]
        out: PathBuf,
        /// Edge ids to issue client certificates for.
        #[arg(long = "edge")]
        edges: Vec<String>,
        /// Host names / IPs for the cloud certificate.
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
    },
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// mimalloc instead of glibc's malloc: a large FHIR Bundle spent most of its time in glibc's free lists (see
/// docs/benchmarks.md, FHIR search).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,h2=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve { config } => {
            let cfg = wardwatch_cloud::CloudConfig::from_file(&config)?;
            let server = wardwatch_cloud::CloudServer::start(cfg).await?;
            println!(
                "sync on {} · FHIR at {}",
                server.sync_addr()?,
                server.fhir_base_url()
            );
            server.run(shutdown_signal()).await;
        }
        Command::Certs { out, edges, hosts } => {
            let p = wardwatch_cloud::pki::generate_dev_pki(
                &out,
                &wardwatch_cloud::pki::DevPkiRequest {
                    cloud_hosts: hosts,
                    edge_ids: edges,
                },
            )?;
            println!(
                "CA {} · cloud {} · {} edge certificate(s) in {}",
                p.ca_cert.display(),
                p.cloud_cert.display(),
                p.edges.len(),
                p.dir.display()
            );
        }
    }
    Ok(())
}
