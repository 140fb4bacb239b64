//! `cargo xtask setup`: make this machine able to build, run and test.
//!
//! Idempotent and quiet when everything is there. Installs the rust targets
//! with rustup and, as root, the apt packages; a non-root user is told the
//! one command to run.

use std::process::Command;

use hv_tests::host::{APT_PACKAGES, RUST_TARGETS, missing_host_tools};

use crate::{Result, root, run_cmd};

/// Rust targets, then host packages.
pub fn setup() -> Result {
    rust_targets()?;
    host_packages()
}

/// Installs the missing rust targets (all `build` needs).
pub fn rust_targets() -> Result {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output();
    let out = match out {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            return Err(format!(
                "`rustup target list --installed` failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Err(e) => {
            eprintln!(
                "xtask: warning: cannot run rustup ({e}); make sure the targets {} are installed",
                RUST_TARGETS.join(" ")
            );
            return Ok(());
        }
    };
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = RUST_TARGETS
        .iter()
        .copied()
        .filter(|t| !installed.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["target", "add"])
        .args(&missing)
        .current_dir(root());
    run_cmd(add)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn host_packages() -> Result {
    let missing = missing_host_tools();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        eprintln!(
            "error: missing packages; run: sudo apt-get install -y {}",
            APT_PACKAGES.join(" ")
        );
        // Already reported: main prints nothing more.
        return Err(String::new());
    }
    eprintln!(
        "xtask: missing {}; installing {}",
        missing.join(", "),
        APT_PACKAGES.join(" ")
    );
    // Without an update first, the package lists of a fresh machine may be
    // empty or stale.
    let mut update = Command::new("apt-get");
    update.arg("update");
    run_cmd(update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y"])
        .args(APT_PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_cmd(install)?;
    let still = missing_host_tools();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "still missing after apt-get install: {}",
            still.join(", ")
        ))
    }
}
