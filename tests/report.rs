//! `scalelong report` end to end: the subcommand writes the page and prints its path, bad input
//! fails with an error naming the file, and the page renders in headless Chromium with every
//! image decoded. The report's content is tested by the report crate's unit tests, on the same
//! synthetic sweep (`scalelong_report::testing`).

use scalelong_report::testing::SweepFixture;
use scalelong_tests::{TempDir, available, scalelong};
use std::path::Path;
use std::process::Command;

#[test]
fn report_subcommand_writes_the_page_and_prints_its_path() {
    let root = TempDir::new("report-writes");
    let sweep_dir = SweepFixture::default().write(root.path());
    let out_dir = root.join("reports/fixture");
    let output = scalelong(&["report", sweep_dir.to_str().unwrap(), "--out", out_dir.to_str().unwrap()], root.path());
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
    let root = TempDir::new("report-corrupt");
    let sweep_dir = SweepFixture::default().write(root.path());
    std::fs::write(sweep_dir.join("sweep.json"), "not json").unwrap();
    let out = root.join("out");
    let output = scalelong(&["report", sweep_dir.to_str().unwrap(), "--out", out.to_str().unwrap()], root.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains(&sweep_dir.join("sweep.json").display().to_string()), "{stderr}");
    assert!(!out.join("index.html").exists());
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs headless Chromium on `page` with a fresh profile and the given extra arguments; returns
/// its stdout.
fn chromium(page: &Path, profile: &Path, extra: &[&str]) -> String {
    let output = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Lets the load event (and the image count) run before the DOM is dumped.
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// The text of `<span id="ID">` in a DOM dump.
fn span_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let opening = format!("<span id=\"{id}\">");
    let start = dom.find(&opening).unwrap_or_else(|| panic!("no #{id} in the DOM")) + opening.len();
    &dom[start..start + dom[start..].find("</span>").unwrap()]
}

#[test]
fn report_renders_in_headless_chromium_with_every_image_decoded() {
    let missing =
        (!Path::new(CHROMIUM).exists()).then(|| format!("{CHROMIUM} is missing (apt-get install -y chromium)"));
    if !available("report_renders_in_headless_chromium", missing) {
        return;
    }
    let root = TempDir::new("report-browser");
    let sweep_dir = SweepFixture::default().write(root.path());
    let summary = scalelong_report::write_report(&sweep_dir, &root.join("reports/fixture")).unwrap();
    let page = std::fs::read_to_string(&summary.html).unwrap();
    let dom = chromium(&summary.html, &root.join("profile-dom"), &["--dump-dom"]);
    let image_count: usize = span_text(&dom, "image-count").parse().expect("the load handler ran");
    assert_eq!(image_count, page.matches("src=\"").count(), "every image of the page loaded");
    assert_eq!(span_text(&dom, "broken-images"), "0");

    let screenshot = root.join("report.png");
    chromium(
        &summary.html,
        &root.join("profile-screenshot"),
        &[&format!("--screenshot={}", screenshot.display()), "--window-size=1400,4000"],
    );
    let decoder = png::Decoder::new(std::io::Cursor::new(std::fs::read(&screenshot).unwrap()));
    let info = decoder.read_info().unwrap();
    assert_eq!((info.info().width, info.info().height), (1400, 4000));
}
