//! `wardwatch-edge`: runs an edge node from a TOML config until SIGINT/SIGTERM. Thin: parse, install signals,
//! call the library.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "wardwatch-edge",
    version,
    about = "Wardwatch edge node: durable outbox and mutual-TLS sync"
)]
struct Cli {
    /// TOML config file (see edge/src/config.rs).
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Reads a nurse station password from standard input (one line; never from the command line, where other
    /// users could see it) and prints its argon2id hash for `password_hash` in `[[station.users]]`.
    HashPassword,
}

/// `hash-password`: one line from stdin, hashed; the password itself is never printed or stored.
fn hash_password() -> Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    println!(
        "{}",
        wardwatch_edge::station::auth::hash_password(password)?
    );
    Ok(())
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

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(Command::HashPassword) = cli.command {
        return hash_password();
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,h2=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let Some(config) = cli.config else {
        anyhow::bail!("--config FILE is required (or the hash-password subcommand)");
    };
    let cfg = wardwatch_edge::EdgeConfig::from_file(&config)?;
    let node = wardwatch_edge::EdgeNode::start(cfg).await?;
    node.run(shutdown_signal()).await;
    Ok(())
}
