//! Link flags for the `tidewater` binary.
//!
//! The collector runs beside every app container, so its idle memory is paid in every task.
//! A position-independent binary carries ~75k relative relocations (1.8 MB of `.rela.dyn`)
//! that the dynamic loader reads at every start; packed relative relocations (DT_RELR,
//! glibc ≥ 2.36, GNU ld ≥ 2.38) shrink them to a few KB and take ~2 MiB off idle RSS while
//! keeping the binary position-independent (ASLR). `TIDEWATER_NO_RELR=1` turns this off for
//! older toolchains.

fn main() {
    println!("cargo:rerun-if-env-changed=TIDEWATER_NO_RELR");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") && std::env::var_os("TIDEWATER_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
