//! What the host machine must provide, and where the workspace is.
//!
//! `cargo xtask setup` checks exactly these lists (one copy: the harness and
//! xtask both read them from here).

use std::env;
use std::path::{Path, PathBuf};

/// Debian packages that provide every command and file below.
pub const APT_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "ovmf",
    "bochs",
    "bochsbios",
    "vgabios",
    "mtools",
    "dosfstools",
    "binutils",
];

/// Commands the emulators and the image builder run.
pub const REQUIRED_COMMANDS: &[&str] = &[
    "qemu-system-x86_64",
    "bochs",
    "mcopy",
    "mmd",
    "mdel",
    "mdir",
    "mkfs.fat",
    "objdump",
];

/// UEFI firmware code (package `ovmf`), read-only.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
/// UEFI variable store template (package `ovmf`); every instance gets a copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
/// VGA option ROM for Bochs (package `vgabios`).
pub const VGABIOS: &str = "/usr/share/vgabios/vgabios.bin";
/// Bochs' own BIOS (package `bochsbios`). Not used when booting OVMF, but the
/// `bochs` package is unusable without it, so its absence means a broken set-up.
pub const BOCHS_BIOS: &str = "/usr/share/bochs/BIOS-bochs-latest";

/// Files that must exist.
pub const REQUIRED_FILES: &[&str] = &[OVMF_CODE, OVMF_VARS, VGABIOS, BOCHS_BIOS];

/// Rust targets the loader and the kernel are built for.
pub const RUST_TARGETS: &[&str] = &["x86_64-unknown-uefi", "x86_64-unknown-none"];

/// Finds `name` in `PATH`, then in the `sbin` directories a non-root `PATH`
/// often lacks (`mkfs.fat` lives in `/usr/sbin`).
pub fn find_command(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Commands from [`REQUIRED_COMMANDS`] and files from [`REQUIRED_FILES`] that
/// are missing on this machine.
pub fn missing_host_tools() -> Vec<String> {
    let mut missing: Vec<String> = REQUIRED_COMMANDS
        .iter()
        .filter(|c| find_command(c).is_none())
        .map(|c| format!("command {c}"))
        .collect();
    missing.extend(
        REQUIRED_FILES
            .iter()
            .filter(|f| !Path::new(f).is_file())
            .map(|f| format!("file {f}")),
    );
    missing
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// Where `cargo xtask image` writes the ESP image.
pub fn default_image_path() -> PathBuf {
    workspace_root()
        .join("target")
        .join("image")
        .join("esp.img")
}

/// The image the system tests boot: `$HV_IMAGE`, else [`default_image_path`].
pub fn image_path() -> PathBuf {
    match env::var_os("HV_IMAGE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default_image_path(),
    }
}

/// Whether QEMU can use KVM with nested VT-x here; the error says why not.
pub fn kvm_nested_available() -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err("/dev/kvm does not exist".into());
    }
    let param = "/sys/module/kvm_intel/parameters/nested";
    match std::fs::read_to_string(param) {
        Ok(v) if matches!(v.trim(), "Y" | "y" | "1") => Ok(()),
        Ok(v) => Err(format!(
            "nested VT-x is off ({param} reads '{}'); the hypervisor needs VMX inside the VM",
            v.trim()
        )),
        Err(_) => Err(format!(
            "{param} is missing: /dev/kvm is not backed by kvm_intel (no nested VT-x)"
        )),
    }
}
