//! `wardwatch-edge hash-password`: the password comes from standard input, the output is an argon2id PHC string
//! that verifies it (and only it) and that a `[[station.users]]` entry accepts; a too-short password is refused.

use std::io::Write;
use std::process::{Command, Stdio};

use wardwatch_edge::station::auth::{check_hash, verify_password};

fn run(stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wardwatch-edge"))
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wardwatch-edge");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

#[test]
fn hash_password_prints_a_verifying_argon2id_hash() {
    let out = run("ward 7A night shift\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8(out.stdout).expect("utf-8");
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    check_hash(hash).expect("a hash the station config accepts");
    assert!(verify_password(hash, "ward 7A night shift"));
    assert!(!verify_password(hash, "ward 7A night shift\n"));
    assert!(!hash.contains("night"));
}

#[test]
fn hash_password_refuses_a_short_password() {
    let out = run("short\n");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("10 to 256"));
}

#[test]
fn the_node_still_takes_config_and_says_when_it_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_wardwatch-edge"))
        .output()
        .expect("run wardwatch-edge");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config FILE is required"));
    let out = Command::new(env!("CARGO_BIN_EXE_wardwatch-edge"))
        .args(["--config", "/nonexistent/edge.toml"])
        .output()
        .expect("run wardwatch-edge");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read config"), "{err}");
}
