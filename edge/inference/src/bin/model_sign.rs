//! Release tooling for model bundles: make a release key pair, sign a bundle, verify a bundle as the edge would.
//!
//! ```sh
//! cargo run -p wardwatch-inference --bin model_sign -- keygen --out release      # release.key (secret), release.pub
//! cargo run -p wardwatch-inference --bin model_sign -- sign --key release.key models/deterioration
//! cargo run -p wardwatch-inference --bin model_sign -- verify --trust release.pub models/deterioration
//! ```
//!
//! `sign` refuses a bundle whose manifest does not name the sha256 of its model.onnx, so a release cannot vouch for
//! a model it did not look at. The signature format is described in `wardwatch_inference::signature`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use rand::Rng;
use sha2::{Digest, Sha256};
use wardwatch_inference::signature::parse_signing_key;
use wardwatch_inference::{
    LoadOptions, MANIFEST_FILE, MODEL_FILE, Manifest, ModelBundle, SIGNATURE_FILE, SigningKey,
    TrustedKeys, sign_manifest,
};

#[derive(Parser, Debug)]
#[command(
    about = "Sign and verify Wardwatch model bundles (model.onnx + manifest.json + model.onnx.sig)"
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a release key pair: PREFIX.key (secret seed, hex) and PREFIX.pub (public key, hex).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign DIR/manifest.json with the secret key; writes DIR/model.onnx.sig.
    Sign {
        #[arg(long)]
        key: PathBuf,
        dir: PathBuf,
    },
    /// Verify and compile DIR exactly as the edge does, trusting the public keys in the file.
    Verify {
        #[arg(long)]
        trust: PathBuf,
        dir: PathBuf,
    },
}

fn keygen(out: &Path) -> Result<()> {
    let mut seed = [0u8; 32];
    rand::rng().fill(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let secret = out.with_extension("key");
    let public = out.with_extension("pub");
    if secret.exists() {
        bail!("{} exists: refusing to overwrite a key", secret.display());
    }
    write_secret(&secret, format!("{}\n", hex::encode(seed)).as_bytes())?;
    std::fs::write(
        &public,
        format!("{}\n", hex::encode(key.verifying_key().as_bytes())),
    )?;
    println!(
        "wrote {} (keep it secret) and {}",
        secret.display(),
        public.display()
    );
    Ok(())
}

#[cfg(unix)]
fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    Ok(())
}

#[cfg(not(unix))]
fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes)?;
    Ok(())
}

fn sign(key: &Path, dir: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    let key = parse_signing_key(&text).map_err(anyhow::Error::msg)?;
    let manifest = std::fs::read(dir.join(MANIFEST_FILE)).context("reading manifest.json")?;
    let model = std::fs::read(dir.join(MODEL_FILE)).context("reading model.onnx")?;
    let parsed = Manifest::parse(&manifest)?;
    let sha = hex::encode(Sha256::digest(&model));
    if sha != parsed.sha256 {
        bail!(
            "manifest.json names sha256 {}, model.onnx has {sha}: not signing",
            parsed.sha256
        );
    }
    std::fs::write(dir.join(SIGNATURE_FILE), sign_manifest(&key, &manifest))?;
    println!(
        "signed {} {} (sha256 {sha}) with {}",
        parsed.name,
        parsed.version,
        hex::encode(key.verifying_key().as_bytes())
    );
    Ok(())
}

fn verify(trust: &Path, dir: &Path) -> Result<()> {
    let keys = TrustedKeys::load(trust)?;
    let bundle = ModelBundle::load_dir(dir, &keys, &LoadOptions::default())?;
    println!(
        "ok: {} signed by {}; {} features; plans for batch {:?}",
        bundle.identity(),
        bundle.signed_by(),
        bundle.n_features(),
        bundle.batch_sizes()
    );
    Ok(())
}

fn main() -> Result<()> {
    match Args::parse().command {
        Cmd::Keygen { out } => keygen(&out),
        Cmd::Sign { key, dir } => sign(&key, &dir),
        Cmd::Verify { trust, dir } => verify(&trust, &dir),
    }
}
