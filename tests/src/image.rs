//! The ESP image: a FAT16 file system without a partition table, built and
//! edited with `mkfs.fat` (dosfstools) and mtools.
//!
//! Layout (see `boot::KERNEL_PATH` and friends for the loader's side):
//!
//! ```text
//! /EFI/BOOT/BOOTX64.EFI   the UEFI loader (firmware's default boot path)
//! /EFI/hv/kernel.elf      the kernel
//! /EFI/hv/hv.cfg          boot configuration (config/hv.cfg in the repo)
//! /EFI/hv/modules/        every file in it is loaded as a module (the test
//!                         guests: hello, ticks, memtest, rogue)
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::find_command;

/// Cylinders of the disk geometry Bochs is given (`ata0-master`).
pub const CYLINDERS: u64 = 65;
/// Heads of that geometry.
pub const HEADS: u64 = 16;
/// Sectors per track of that geometry.
pub const SECTORS_PER_TRACK: u64 = 63;
/// Image size: exactly the CHS geometry above, 33,546,240 bytes. Bochs
/// refuses a flat disk whose size does not match its geometry.
pub const IMAGE_SIZE: u64 = CYLINDERS * HEADS * SECTORS_PER_TRACK * 512;

/// The loader, where UEFI firmware looks for a removable disk's boot program.
pub const LOADER_PATH: &str = "/EFI/BOOT/BOOTX64.EFI";
/// The kernel.
pub const KERNEL_PATH: &str = "/EFI/hv/kernel.elf";
/// The boot configuration.
pub const CONFIG_PATH: &str = "/EFI/hv/hv.cfg";
/// Directory whose files the loader loads as modules.
pub const MODULES_DIR: &str = "/EFI/hv/modules";

/// An mtools or mkfs command, with the environment mtools needs for an image
/// whose size is not a whole number of its default tracks.
fn tool(name: &str) -> Result<Command, String> {
    let path = find_command(name).ok_or_else(|| {
        format!("command `{name}` not found (run `cargo xtask setup` or install mtools/dosfstools)")
    })?;
    let mut cmd = Command::new(path);
    cmd.env("MTOOLS_SKIP_CHECK", "1");
    Ok(cmd)
}

fn run(mut cmd: Command) -> Result<Vec<u8>, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn img_path(p: &str) -> String {
    format!("::{p}")
}

/// Creates `img` (overwriting it) as an empty FAT16 file system of
/// [`IMAGE_SIZE`] bytes with no partition table.
pub fn format(img: &Path) -> Result<(), String> {
    let f = fs::File::create(img).map_err(|e| format!("cannot create {}: {e}", img.display()))?;
    f.set_len(IMAGE_SIZE)
        .map_err(|e| format!("cannot size {}: {e}", img.display()))?;
    drop(f);
    let mut cmd = tool("mkfs.fat")?;
    cmd.args(["-F", "16", "-n", "HV-ESP", "-i", "48560001", "-h", "0"])
        .arg("-g")
        .arg(format!("{HEADS}/{SECTORS_PER_TRACK}"))
        .arg(img);
    run(cmd).map(drop)
}

/// Creates directory `dir` (absolute, `/`-separated) in the image.
pub fn mkdir(img: &Path, dir: &str) -> Result<(), String> {
    let mut cmd = tool("mmd")?;
    cmd.arg("-i").arg(img).arg(img_path(dir));
    run(cmd).map(drop)
}

/// Copies host file `src` to `dest` in the image, replacing an existing file.
pub fn copy_in(img: &Path, src: &Path, dest: &str) -> Result<(), String> {
    let mut cmd = tool("mcopy")?;
    cmd.arg("-o")
        .arg("-i")
        .arg(img)
        .arg(src)
        .arg(img_path(dest));
    run(cmd).map(drop)
}

/// Writes `contents` to `dest` in the image, going through a scratch file in
/// `scratch_dir`.
pub fn write(img: &Path, dest: &str, contents: &[u8], scratch_dir: &Path) -> Result<(), String> {
    let mut tmp = tempfile::NamedTempFile::new_in(scratch_dir).map_err(|e| {
        format!(
            "cannot create a scratch file in {}: {e}",
            scratch_dir.display()
        )
    })?;
    tmp.write_all(contents)
        .and_then(|()| tmp.flush())
        .map_err(|e| format!("cannot write a scratch file: {e}"))?;
    copy_in(img, tmp.path(), dest)
}

/// Deletes file `path` from the image (an error if it does not exist).
pub fn delete(img: &Path, path: &str) -> Result<(), String> {
    let mut cmd = tool("mdel")?;
    cmd.arg("-i").arg(img).arg(img_path(path));
    run(cmd).map(drop)
}

/// Reads file `path` out of the image.
pub fn read(img: &Path, path: &str) -> Result<Vec<u8>, String> {
    let mut cmd = tool("mcopy")?;
    cmd.arg("-n")
        .arg("-i")
        .arg(img)
        .arg(img_path(path))
        .arg("-");
    run(cmd)
}

/// `mdir -b` of `dir` in the image: one full path per entry, directories
/// with a trailing `/`.
pub fn list(img: &Path, dir: &str) -> Result<Vec<String>, String> {
    let mut cmd = tool("mdir")?;
    cmd.arg("-b").arg("-i").arg(img).arg(img_path(dir));
    let out = run(cmd)?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .map(|l| l.trim().trim_start_matches("::").to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

/// What goes into a fresh ESP image.
#[derive(Debug, Clone)]
pub struct EspContents {
    /// The loader (`bootx64.efi`).
    pub loader: PathBuf,
    /// The kernel ELF.
    pub kernel: PathBuf,
    /// The config file.
    pub config: PathBuf,
    /// Modules: a file name in [`MODULES_DIR`] and the host file copied
    /// there (the test guests).
    pub modules: Vec<(String, PathBuf)>,
}

/// Builds the ESP image at `out` from `contents`. The image is built in a
/// temporary file next to `out` and renamed over it only when complete, so
/// `out` is never left half written.
pub fn build_esp(out: &Path, contents: &EspContents) -> Result<(), String> {
    for (what, p) in [
        ("loader", &contents.loader),
        ("kernel", &contents.kernel),
        ("config", &contents.config),
    ] {
        if !p.is_file() {
            return Err(format!("{what} {} does not exist", p.display()));
        }
    }
    for (name, p) in &contents.modules {
        if name.is_empty() || name.contains(['/', '\\']) {
            return Err(format!("bad module name '{name}' (one file name expected)"));
        }
        if !p.is_file() {
            return Err(format!("module {name}: {} does not exist", p.display()));
        }
    }
    let dir = out
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", out.display()))?;
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".esp-")
        .suffix(".img.tmp")
        .tempfile_in(dir)
        .map_err(|e| format!("cannot create a temporary image in {}: {e}", dir.display()))?;
    let img = tmp.path();
    format(img)?;
    for d in ["/EFI", "/EFI/BOOT", "/EFI/hv", MODULES_DIR] {
        mkdir(img, d)?;
    }
    copy_in(img, &contents.loader, LOADER_PATH)?;
    copy_in(img, &contents.kernel, KERNEL_PATH)?;
    copy_in(img, &contents.config, CONFIG_PATH)?;
    for (name, p) in &contents.modules {
        copy_in(img, p, &format!("{MODULES_DIR}/{name}"))?;
    }
    // Temporary files are created 0600; the image is an ordinary build output.
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(img, fs::Permissions::from_mode(0o644))
            .map_err(|e| format!("cannot set permissions of {}: {e}", img.display()))?;
    }
    // The temporary file is removed if persisting fails (or on any `?` above).
    tmp.persist(out)
        .map_err(|e| format!("cannot rename the image to {}: {}", out.display(), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_the_documented_size() {
        assert_eq!(IMAGE_SIZE, 33_546_240);
    }

    #[test]
    fn builds_an_esp_with_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        fs::write(p("loader"), b"MZ loader").unwrap();
        fs::write(p("kernel"), b"\x7fELF kernel").unwrap();
        fs::write(p("cfg"), b"hostname = hv\n").unwrap();
        fs::write(p("hello"), b"\x7fELF hello").unwrap();
        let out = p("out/esp.img");
        let mut contents = EspContents {
            loader: p("loader"),
            kernel: p("kernel"),
            config: p("cfg"),
            modules: vec![("hello".into(), p("hello"))],
        };
        build_esp(&out, &contents).unwrap();
        assert_eq!(fs::metadata(&out).unwrap().len(), IMAGE_SIZE);
        assert_eq!(read(&out, LOADER_PATH).unwrap(), b"MZ loader");
        assert_eq!(read(&out, KERNEL_PATH).unwrap(), b"\x7fELF kernel");
        assert_eq!(read(&out, CONFIG_PATH).unwrap(), b"hostname = hv\n");
        assert_eq!(
            read(&out, &format!("{MODULES_DIR}/hello")).unwrap(),
            b"\x7fELF hello"
        );
        assert_eq!(list(&out, MODULES_DIR).unwrap(), ["/EFI/hv/modules/hello"]);
        let listing = list(&out, "/EFI/hv").unwrap();
        assert!(
            listing.iter().any(|l| l == "/EFI/hv/modules/"),
            "{listing:?}"
        );
        // No temporary file left behind.
        let left: Vec<_> = fs::read_dir(p("out")).unwrap().collect();
        assert_eq!(left.len(), 1);
        // Edits used by the harness.
        write(&out, CONFIG_PATH, b"log = debug\n", dir.path()).unwrap();
        assert_eq!(read(&out, CONFIG_PATH).unwrap(), b"log = debug\n");
        delete(&out, KERNEL_PATH).unwrap();
        assert!(read(&out, KERNEL_PATH).is_err());
        assert!(delete(&out, KERNEL_PATH).is_err());

        // A module that is missing or badly named is refused up front.
        contents.modules = vec![("nosuch".into(), p("nosuch"))];
        let err = build_esp(&out, &contents).unwrap_err();
        assert!(err.contains("module nosuch"), "{err}");
        contents.modules = vec![("a/b".into(), p("hello"))];
        let err = build_esp(&out, &contents).unwrap_err();
        assert!(err.contains("bad module name"), "{err}");
    }
}
