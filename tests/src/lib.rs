//! System-test harness: boots the hypervisor's ESP image in QEMU (TCG) or
//! Bochs (VT-x) and talks to its serial console, expect-style.
//!
//! ```no_run
//! use hv_tests::Machine;
//!
//! let mut m = Machine::qemu().cpus(2).start();
//! let ready = m.boot_to_prompt();
//! assert!(ready.reset_to_prompt_ms > 0.0);
//! let out = m.cmd("cpus");
//! assert!(out.contains("cpus: 2 (from ACPI MADT)"), "{}", m.report(&out));
//! ```
//!
//! * [`Machine`] / [`Builder`]: what the tests use. Every wait has a deadline
//!   and is woken by the console reader (no sleeps); every failure panics
//!   with the expectation, the last 50 console lines and the last 30 lines of
//!   the emulator's logs, and keeps those logs in `target/hv-tests/logs/`
//!   (`HV_KEEP_LOGS=1` keeps them for passing tests too).
//!   Each method has a `try_` twin returning [`Error`] for callers that must
//!   not panic (`cargo xtask bench`).
//! * [`Instance`]: the emulator process in its own temporary directory,
//!   killed with its whole process group on drop. [`Spec`] generates the QEMU
//!   command line and the Bochs `.bxrc` (the only copy of those recipes).
//! * [`Link`]: an Ethernet link between two machines (QEMU `-netdev stream`,
//!   Bochs through `bxhub`); [`Builder::user_net_forward`] lets a test reach
//!   a TCP service of a QEMU guest from the host.
//! * [`hubpeer`]: a station of the test's own on a Bochs link
//!   ([`Link::bochs_with_peer`]): the project's TCP/IP stack in the test
//!   process, sending raw Ethernet through the hub.
//! * [`slots`]: at most two emulators at once (`$HV_EMULATOR_SLOTS`).
//! * [`image`]: building and editing the FAT16 ESP image with mtools.
//! * [`host`]: the packages, commands and firmware files the harness needs.
//!
//! The image booted is `$HV_IMAGE`, or `target/image/esp.img`; build it with
//! `cargo xtask image` (`cargo xtask test` does it and sets `HV_IMAGE`).
//!
//! This crate is not a test of its own: the system tests are in `tests/tests/`.

pub mod console;
pub mod emulator;
pub mod host;
pub mod hubpeer;
pub mod image;
pub mod link;
pub mod machine;
pub mod peer;
pub mod random;
pub mod slots;
pub mod sockets;

pub use console::{Console, ExpectError, Found, line_pattern};
pub use emulator::{
    BOCHS_CPU_MODELS, BOCHS_E1000_MAC, CAPTURE_FILE, DEFAULT_BOCHS_MODEL, Emulator, ImageEdit,
    Instance, NetBackend, QEMU_DEFAULT_MAC, Spec,
};
pub use host::{image_path, kvm_nested_available, workspace_root};
pub use link::{BOCHS_LINK_MACS, Link, QEMU_LINK_MACS};
pub use machine::{Builder, Error, LOADER_PATTERN, Machine, READY_PATTERN, Ready, command_output};

pub use regex;

use std::time::Duration;

/// Shorthand for a timeout in seconds.
pub const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
pub use netstack;
pub use smoltcp;
