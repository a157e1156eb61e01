//! The report on synthetic sweeps (see `fixture`): links and images resolve, tables have one row
//! per run, the claims follow the numbers, missing data are noted, and bad input names its file.
//! The page in a real browser is the end-to-end suite's (tests/report.rs).

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use polars::prelude::*;

use super::{ReportSummary, format_number, write_report};
use crate::testing::{GATE_KAPPA, SEEDS, SweepFixture};

/// A fresh, empty folder for one test.
fn scratch_dir(test_name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("scalelong-report-{}-{test_name}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `fixture` and its report under a scratch folder; returns the report summary and the page.
fn report_of(fixture: &SweepFixture, test_name: &str) -> (ReportSummary, String) {
    let root = scratch_dir(test_name);
    let sweep_dir = fixture.write(&root);
    let summary = write_report(&sweep_dir, &root.join("reports").join("fixture")).unwrap();
    let page = std::fs::read_to_string(&summary.html).unwrap();
    (summary, page)
}

/// Width and height of a PNG; panics when it does not decode.
fn decode_png(bytes: &[u8]) -> (u32, u32) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    (frame.width, frame.height)
}

/// Every value of `attribute="..."` in the page.
fn attribute_values<'a>(page: &'a str, attribute: &str) -> Vec<&'a str> {
    let opening = format!("{attribute}=\"");
    page.match_indices(&opening)
        .map(|(start, _)| {
            let value = &page[start + opening.len()..];
            &value[..value.find('"').expect("attribute values are closed")]
        })
        .collect()
}

fn text_column(frame: &DataFrame, name: &str) -> Vec<String> {
    let column = frame.column(name).unwrap().str().unwrap();
    (0..column.len()).map(|index| column.get(index).unwrap().to_string()).collect()
}

fn number_column(frame: &DataFrame, name: &str) -> Vec<Option<f64>> {
    let column = frame.column(name).unwrap().f64().unwrap();
    (0..column.len()).map(|index| column.get(index)).collect()
}

/// The text of `<p id="claims">`.
fn claims_paragraph(page: &str) -> &str {
    let start = page.find("<p id=\"claims\">").expect("the page has a claims paragraph") + "<p id=\"claims\">".len();
    &page[start..start + page[start..].find("</p>").unwrap()]
}

#[test]
fn every_link_and_image_resolves_and_every_figure_decodes() {
    let (summary, page) = report_of(&SweepFixture::default(), "links");
    let report_dir = summary.html.parent().unwrap();
    let sources = attribute_values(&page, "src");
    let links = attribute_values(&page, "href");
    // Figures 1 and 2, two heatmaps, one gate figure, three theorem checks, four sample grids.
    assert_eq!(sources.len(), 12, "{sources:?}");
    for source in &sources {
        let encoded =
            source.strip_prefix("data:image/png;base64,").unwrap_or_else(|| panic!("not a PNG data URI: {source:.60}"));
        let (width, height) = decode_png(&BASE64.decode(encoded).unwrap());
        assert!(width > 0 && height > 0);
    }
    assert!(!links.is_empty());
    for link in &links {
        assert!(report_dir.join(link).is_file(), "{link} does not exist beside the page");
    }
    assert_eq!(summary.figures.len(), 8, "{:?}", summary.figures);
    assert_eq!(summary.samples.len(), 4);
    for figure in summary.figures.iter().chain(&summary.samples) {
        let bytes = std::fs::read(figure).unwrap();
        assert!(!bytes.is_empty(), "{} is empty", figure.display());
        let (width, height) = decode_png(&bytes);
        assert!(width > 0 && height > 0, "{} has no pixels", figure.display());
    }
    assert_eq!(summary.run_count, 4);
    // The newest sample grid (step 100) is the one copied, not the one at step 50.
    let copied = std::fs::read(report_dir.join("samples/uvit-small_1_seed0.png")).unwrap();
    let newest = std::fs::read(
        summary.html.ancestors().nth(3).unwrap().join("runs/fixture/uvit-small_1_seed0/samples/step_0000100.png"),
    )
    .unwrap();
    assert_eq!(copied, newest);
}

#[test]
fn summary_tables_hold_one_row_per_run() {
    let fixture = SweepFixture::default();
    let (summary, _) = report_of(&fixture, "tables");
    let report_dir = summary.html.parent().unwrap();
    let expected_ids: Vec<String> = fixture.runs().into_iter().map(|run| run.id).collect();

    let csv = CsvReadOptions::default()
        .try_into_reader_with_file_path(Some(report_dir.join("summary.csv")))
        .unwrap()
        .finish()
        .unwrap();
    let parquet =
        ParquetReader::new(std::fs::File::open(report_dir.join("summary.parquet")).unwrap()).finish().unwrap();
    for frame in [&csv, &parquet] {
        assert_eq!(frame.height(), expected_ids.len());
        let ids = text_column(frame, "run_id");
        assert_eq!(ids, expected_ids);
    }
    assert!(summary.tables.contains(&report_dir.join("summary.parquet")));

    // Strategy 1 is its own baseline: speed-up exactly 1. LS decays 1.5x as fast: a speed-up above 1.
    let strategies = text_column(&parquet, "strategy");
    let speedups = number_column(&parquet, "speedup_vs_1");
    for (strategy, speedup) in strategies.iter().zip(&speedups) {
        match strategy.as_str() {
            "1" => assert_eq!(*speedup, Some(1.0)),
            "LS" => assert!(speedup.unwrap() > 1.2, "{speedup:?}"),
            other => panic!("unexpected strategy {other}"),
        }
    }
    assert_eq!(number_column(&parquet, "fd"), vec![Some(15.0), Some(15.0), Some(12.0), Some(12.0)]);
}

#[test]
fn claims_paragraph_follows_the_numbers() {
    let (_, fast_page) = report_of(&SweepFixture::default(), "claims-fast");
    let fast = claims_paragraph(&fast_page);
    assert!(fast.contains("(a) Faster training held"), "{fast}");
    assert!(fast.contains("(b) Smaller feature-norm oscillation for smaller coefficients (Thm 3.1) held"), "{fast}");
    assert!(fast.contains("(c) Gradient scale follows the bound (Thm 3.3) held"), "{fast}");
    assert!(fast.contains("(d) Robustness to perturbed inputs (Thm 3.4) held"), "{fast}");
    assert!(fast.contains("(e) LS gates decay exponentially with the LSC index held"), "{fast}");
    assert!(fast.contains(&format!("kappa_hat {}", format_number(GATE_KAPPA))), "{fast}");

    let slow = SweepFixture { ls_loss_speed: 0.5, ..SweepFixture::default() };
    let (_, slow_page) = report_of(&slow, "claims-slow");
    let slow = claims_paragraph(&slow_page);
    assert!(slow.contains("(a) Faster training did not hold"), "{slow}");
    assert!(slow.contains(&format!("LS no speed-up, {} run(s) never reached the target", SEEDS.len())), "{slow}");
}

#[test]
fn missing_pieces_are_noted_instead_of_failing() {
    let bare = SweepFixture { diagnostics: false, eval: false, samples: false, ..SweepFixture::default() };
    let (summary, page) = report_of(&bare, "missing");
    // Only the loss figure remains.
    assert_eq!(summary.figures.len(), 1, "{:?}", summary.figures);
    assert!(summary.samples.is_empty());
    for note in [
        "The feature norm of the last decoder block was not recorded in this sweep.",
        "Per-LSC feature and gradient norms were not recorded in this sweep.",
        "The LS runs' gate statistics were not recorded in this sweep.",
        "Sample grids were not recorded in this sweep.",
        "The sweep has no optimizer.lr axis, so the largest stable learning rate was not recorded in this sweep.",
    ] {
        assert!(page.contains(note), "missing note: {note}");
    }
    let claims = claims_paragraph(&page);
    assert!(
        claims.contains("(b) Smaller feature-norm oscillation for smaller coefficients (Thm 3.1) was not measured"),
        "{claims}"
    );
    assert!(claims.contains("(e) LS gates decay exponentially with the LSC index was not measured"), "{claims}");
    assert!(claims.contains("(a) Faster training held"), "{claims}");
    let csv = std::fs::read_to_string(summary.html.parent().unwrap().join("summary.csv")).unwrap();
    // Blank held-out loss, FD and accuracy: three empty fields in a row.
    assert!(csv.lines().nth(1).unwrap().contains(",,,"), "{csv}");
}

#[test]
fn learning_rate_axis_gives_the_largest_stable_rate() {
    let fixture = SweepFixture {
        lrs: vec![1e-4, 2e-4],
        diverged: vec!["uvit-small_ls_lr0.0002_seed1".to_string()],
        ..SweepFixture::default()
    };
    let (summary, page) = report_of(&fixture, "stable-lr");
    assert!(page.contains("diverged at step 50"));
    let stable =
        ParquetReader::new(std::fs::File::open(summary.html.parent().unwrap().join("stable_lr.parquet")).unwrap())
            .finish()
            .unwrap();
    assert_eq!(text_column(&stable, "strategy"), vec!["1", "LS"]);
    assert_eq!(number_column(&stable, "largest_stable_lr"), vec![Some(2e-4), Some(1e-4)]);
}

#[test]
fn bad_input_is_an_error_naming_the_file() {
    let root = scratch_dir("bad-input");
    let missing = root.join("runs").join("nowhere");
    let error = write_report(&missing, &root.join("out")).unwrap_err();
    assert!(format!("{error:#}").contains(&missing.display().to_string()), "{error:#}");

    let sweep_dir = SweepFixture::default().write(&root);
    std::fs::write(sweep_dir.join("sweep.json"), "{\"name\": \"fixture\", \"runs\": [").unwrap();
    let error = write_report(&sweep_dir, &root.join("out")).unwrap_err();
    assert!(format!("{error:#}").contains(&sweep_dir.join("sweep.json").display().to_string()), "{error:#}");

    let sweep_dir = SweepFixture::default().write(&scratch_dir("bad-config"));
    let config = sweep_dir.join("uvit-small_ls_seed1").join("config.json");
    std::fs::write(&config, "{\"seed\": 1, \"strategy\": \"no-such-strategy\"}").unwrap();
    let error = write_report(&sweep_dir, &root.join("out")).unwrap_err();
    assert!(format!("{error:#}").contains(&config.display().to_string()), "{error:#}");
}

#[test]
fn numbers_have_four_significant_digits_without_trailing_zeros() {
    assert_eq!(format_number(0.5), "0.5");
    assert_eq!(format_number(12.3456), "12.35");
    assert_eq!(format_number(2e-4), "2e-4");
    assert_eq!(format_number(0.0012346), "0.001235");
    assert_eq!(format_number(12000.0), "12000");
    assert_eq!(format_number(123456.0), "1.235e5");
    assert_eq!(format_number(-3.0), "-3");
    assert_eq!(format_number(0.0), "0");
}
