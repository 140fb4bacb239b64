//! Links the bare-metal guest binaries with `guest.ld` (at 1 MiB, see the
//! crate docs); host builds (unit tests, the host stubs of the bins) are left
//! alone.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=guest.ld");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg-bins=-T{dir}/guest.ld");
    }
}
