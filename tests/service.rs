//! contrib/wspush.service: systemd accepts it (`systemd-analyze verify`, where installed), and
//! its ExecStart line, with the credentials directory filled in, starts a server that wants the
//! token it was given.

mod common;

use std::process::Command;

use common::{http, listening_addrs, start_until_listening};

const UNIT: &str = include_str!("../contrib/wspush.service");
const BIN: &str = env!("CARGO_BIN_EXE_wspush");

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wspush-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The unit with ExecStart pointing at the binary under test (verify checks that it exists).
fn unit_for_test() -> String {
    UNIT.replace("/usr/local/bin/wspush", BIN)
}

#[test]
fn unit_file_verifies_cleanly() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed: not verified");
        return;
    }
    let dir = scratch_dir("unit");
    let path = dir.join("wspush.service");
    std::fs::write(&path, unit_for_test()).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown or misspelt directives are only warnings (exit 0): any output counts.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("wspush.service"))
        .collect();
    std::fs::remove_dir_all(&dir).ok();
    assert!(out.status.success(), "{stderr}");
    assert!(complaints.is_empty(), "{stderr}");
}

#[test]
fn exec_start_runs_with_its_credential() {
    let exec = UNIT
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let dir = scratch_dir("credentials");
    std::fs::write(dir.join("api-token"), "s3cret\n").unwrap();
    let mut args: Vec<String> = exec
        .split_whitespace()
        .skip(1)
        .map(|a| a.replace("%d", dir.to_str().unwrap()))
        .collect();
    // Ephemeral loopback ports in place of the unit's fixed ones.
    for (i, flag) in args.clone().iter().enumerate() {
        if flag == "--listen" || flag == "--api-listen" {
            args[i + 1] = "127.0.0.1:0".into();
        }
    }
    args.push("--no-tick".into());
    let (_server, _stderr, ready) = start_until_listening(Command::new(BIN).args(&args));
    let (_, api) = listening_addrs(&ready);
    let api = api.expect("an API listener");
    let (status, _) = http(api, "GET", "/stats", "", &[]);
    assert_eq!(status, 401, "the API must want the credential's token");
    let (status, body) = http(
        api,
        "GET",
        "/stats",
        "",
        &[("Authorization", "Bearer s3cret")],
    );
    assert_eq!(status, 200, "{body}");
    std::fs::remove_dir_all(&dir).ok();
}
