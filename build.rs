//! Build script: finds the recorded Binance data the data-driven tests read
//! (`../shared/data` beside the checkout, or `KLINEGATE_SHARED_DATA`), and
//! tells the tests where it is (`KLINEGATE_SHARED_DATA_DIR`) or that it is
//! absent (`cfg(shared_data_absent)`: those tests are then `#[ignore]`d with
//! the reason, so `cargo test` reports them as ignored, not as passes).
//!
//! It never reads the data itself and never changes the library's code.
// A build script, outside the deterministic core: it may read the environment.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;

/// The directories under the data root that the tests read.
const PARTS: [&str; 4] = ["cryptofeed/sample_data", "cryptofeed/derived", "freqtrade/testdata", "polyoxide"];

fn main() {
    println!("cargo:rustc-check-cfg=cfg(shared_data_absent)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=KLINEGATE_SHARED_DATA");
    let dir = match std::env::var_os("KLINEGATE_SHARED_DATA").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => {
            let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_default();
            manifest.join("..").join("shared").join("data")
        }
    };
    println!("cargo:rustc-env=KLINEGATE_SHARED_DATA_DIR={}", dir.display());
    // Present only when every part the tests read is there (an empty or partial
    // directory counts as absent rather than letting tests pass without data).
    let missing: Vec<&str> = PARTS.iter().copied().filter(|p| !dir.join(p).is_dir()).collect();
    if missing.is_empty() {
        // Noticed when it goes away (or its top level changes).
        println!("cargo:rerun-if-changed={}", dir.display());
    } else {
        println!("cargo:rustc-cfg=shared_data_absent");
        println!(
            "cargo:warning=SKIPPED: {} absent (no {}): the tests that replay recorded Binance data are ignored \
             (set KLINEGATE_SHARED_DATA to its path)",
            dir.display(),
            missing.join(", ")
        );
    }
}
