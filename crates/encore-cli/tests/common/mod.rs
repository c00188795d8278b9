//! What the binary's test files share: running `encore`, and the tiny synthetic world
//! prepared as a dataset.
// Each test file uses its own subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn encore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_encore"))
        .args(args)
        .output()
        .expect("the encore binary runs")
}

/// Run `encore` and expect success; returns its standard output.
pub fn ok(args: &[&str]) -> String {
    let out = encore(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "encore {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Run `encore` and expect failure; returns its standard error.
pub fn fails(args: &[&str]) -> String {
    let out = encore(args);
    assert!(!out.status.success(), "encore {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The synthetic `tiny` world of `seed` generated into `tmp/world` and imported into
/// `tmp/data`; returns the dataset folder.
pub fn tiny_data(tmp: &Path, seed: u64) -> PathBuf {
    let world = tmp.join("world");
    let data = tmp.join("data");
    let seed = seed.to_string();
    ok(&[
        "data",
        "synth",
        "--preset",
        "tiny",
        "--seed",
        &seed,
        "--out",
        s(&world),
    ]);
    ok(&[
        "data",
        "import",
        "--format",
        "onion",
        "--input",
        s(&world),
        "--out",
        s(&data),
    ]);
    data
}
