//! Builds `rebind.so` from `rebind-preload/src/lib.rs` with one `rustc` call and leaves it in
//! OUT_DIR, where `wrap.rs` embeds it (`include_bytes!`). The preload crate has no
//! dependencies for exactly this reason: no nested cargo, no second lock on the target dir.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = manifest.join("../rebind-preload/src/lib.rs");
    let output = out_dir.join("rebind.so");
    println!("cargo::rerun-if-changed={}", source.display());

    if !source.exists() {
        // Built outside the workspace (e.g. from a packaged crate): embed nothing; wrap mode
        // then needs WEBSOCKIFY_REBIND or a rebind.so next to the binary.
        println!(
            "cargo::warning=rebind-preload source not found: wrap mode will need WEBSOCKIFY_REBIND"
        );
        std::fs::write(&output, b"").expect("write empty rebind.so placeholder");
        return;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let status = Command::new(rustc)
        .args([
            "--crate-type",
            "cdylib",
            "--crate-name",
            "rebind",
            "--edition",
            "2024",
        ])
        .args([
            "-C",
            "opt-level=2",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args(["--target", &target])
        .arg("-o")
        .arg(&output)
        .arg(&source)
        .status()
        .expect("run rustc for rebind.so");
    assert!(
        status.success(),
        "building rebind.so from {} failed",
        source.display()
    );
}
