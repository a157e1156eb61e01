//! `scalelong report` end to end through the binary: the subcommand writes the page and prints its
//! path, and bad input fails with an error naming the file. The report's content is tested by the
//! unit tests in `src/report/tests.rs`, on the same synthetic sweep.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// The unit tests use every item of the fixture; this test needs only the sweep it writes.
#[allow(dead_code)]
#[path = "../src/report/fixture.rs"]
mod fixture;

fn scratch_dir(test_name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scalelong-report-cli-{}-{test_name}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn report(sweep_dir: &Path, out_dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scalelong"))
        .arg("report")
        .arg(sweep_dir)
        .arg("--out")
        .arg(out_dir)
        .output()
        .expect("the scalelong binary runs")
}

#[test]
fn report_subcommand_writes_the_page_and_prints_its_path() {
    let root = scratch_dir("writes");
    let sweep_dir = fixture::SweepFixture::default().write(&root);
    let out_dir = root.join("reports").join("fixture");
    let output = report(&sweep_dir, &out_dir);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let html = out_dir.join("index.html");
    assert_eq!(String::from_utf8(output.stdout).unwrap().trim(), html.display().to_string());
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<span id=\"broken-images\">"));
    for table in ["summary.csv", "summary.parquet"] {
        assert!(out_dir.join(table).is_file(), "{table} missing");
    }
}

#[test]
fn report_subcommand_fails_naming_a_corrupt_sweep_file() {
    let root = scratch_dir("corrupt");
    let sweep_dir = fixture::SweepFixture::default().write(&root);
    std::fs::write(sweep_dir.join("sweep.json"), "not json").unwrap();
    let output = report(&sweep_dir, &root.join("out"));
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains(&sweep_dir.join("sweep.json").display().to_string()), "{stderr}");
    assert!(!root.join("out").join("index.html").exists());
}
