//! Data beyond Fashion-MNIST end to end: CIFAR-10's binary format and a class-folder tree of PNGs
//! (RGB and grey mixed), both written here, go through a sweep and a report with an FD (which
//! needs the labels: its classifier refuses a set with one class).

use scalelong_tests::*;
use std::path::Path;

const SIZE: usize = 32;

/// A 32x32 RGB image, CHW: class `label` is a bright square at its own place, `index` shifts it
/// and varies its colour a little.
fn image(label: usize, index: usize) -> Vec<u8> {
    let (top, left) = ((label / 2) * 16 + index % 4, (label % 2) * 16 + (index / 4) % 4);
    let mut chw = vec![20u8; 3 * SIZE * SIZE];
    for channel in 0..3 {
        for row in top..top + 12 {
            for column in left..left + 12 {
                chw[channel * SIZE * SIZE + row * SIZE + column] = (200 + 10 * channel + index % 7) as u8;
            }
        }
    }
    chw
}

/// `count` records of CIFAR-10's binary format, labels cycling through `classes`.
fn cifar_records(count: usize, classes: usize, first_index: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in first_index..first_index + count {
        bytes.push((i % classes) as u8);
        bytes.extend(image(i % classes, i));
    }
    bytes
}

fn write_png(path: &Path, chw: &[u8], grey: bool) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut encoder = png::Encoder::new(file, SIZE as u32, SIZE as u32);
    encoder.set_depth(png::BitDepth::Eight);
    let plane = SIZE * SIZE;
    let data: Vec<u8> = if grey {
        encoder.set_color(png::ColorType::Grayscale);
        chw[..plane].to_vec()
    } else {
        encoder.set_color(png::ColorType::Rgb);
        (0..plane).flat_map(|p| [chw[p], chw[plane + p], chw[2 * plane + p]]).collect()
    };
    encoder.write_header().unwrap().write_image_data(&data).unwrap();
}

/// `split/<class>/<n>.png` for classes `circle` and `square` (label 0 and 1 in name order), every
/// third image grey.
fn write_class_tree(root: &Path, split: &str, per_class: usize) {
    for (label, class) in ["circle", "square"].iter().enumerate() {
        let folder = root.join(split).join(class);
        std::fs::create_dir_all(&folder).unwrap();
        for index in 0..per_class {
            write_png(&folder.join(format!("{index:03}.png")), &image(label, index), index % 3 == 0);
        }
    }
}

fn config(dataset: &str) -> String {
    format!(
        r#"
strategy = "1"
steps = 4
batch_size = 8
warmup_steps = 1
log_every = 1
checkpoint_every = 0
sample_count = 4
[model]
preset = "uvit-small"
img_size = 32
in_chans = 3
patch_size = 8
embed_dim = 16
depth = 2
num_heads = 2
[data]
dataset = {dataset}
pad_to_multiple = 1
[diffusion]
sampler = {{ kind = "ddim", steps = 2 }}
[diagnostics]
every = 2
t_bins = 2
probe_per_bin = 2
[eval]
heldout_images = 8
t_bins = 2
fd_samples = 8
classifier_epochs = 1
cache_dir = "classifier-cache"
"#
    )
}

/// Sweeps strategies 1 and CS over `dataset`, reports, and checks every run's final FD.
fn sweep_and_report(dir: &TempDir, name: &str, dataset: &str) {
    write_config(dir, &format!("{name}.toml"), &config(dataset));
    let sweep = format!("name = \"{name}\"\nbase = \"{name}.toml\"\n[grid]\nstrategy = [\"1\", \"cs\"]\n");
    let sweep_file = write_config(dir, &format!("sweep-{name}.toml"), &sweep);
    let output = scalelong(&["sweep", sweep_file.to_str().unwrap(), "--runs", "runs"], dir.path());
    assert!(output.status.success(), "{name}: {}", stderr(&output));
    for run in ["1", "cs"] {
        let evals = jsonl(&dir.join(&format!("runs/{name}/{run}/eval.jsonl")));
        let fd = evals.last().and_then(|line| line["fd"].as_f64());
        assert!(fd.is_some_and(|fd| fd.is_finite() && fd >= 0.0), "{name}/{run}: no FD in {evals:?}");
    }
    let report = scalelong(&["report", &format!("runs/{name}"), "--out", &format!("reports/{name}")], dir.path());
    assert!(report.status.success(), "{name}: {}", stderr(&report));
    let csv = std::fs::read_to_string(dir.join(&format!("reports/{name}/summary.csv"))).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let fd_column = header.iter().position(|h| *h == "fd").expect("summary.csv has an fd column");
    for row in csv.lines().skip(1) {
        let fd = row.split(',').nth(fd_column).unwrap();
        assert!(fd.parse::<f64>().is_ok_and(f64::is_finite), "{name}: row without an FD: {row}");
    }
}

#[test]
fn cifar10_binary_files_go_through_a_sweep_and_a_report_with_fd() {
    let dir = TempDir::new("cifar10");
    let batches = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&batches).unwrap();
    for batch in 1..=5 {
        std::fs::write(batches.join(format!("data_batch_{batch}.bin")), cifar_records(12, 4, 12 * batch)).unwrap();
    }
    std::fs::write(batches.join("test_batch.bin"), cifar_records(16, 4, 0)).unwrap();
    sweep_and_report(&dir, "cifar", r#"{ kind = "cifar10", path = "cifar-10-batches-bin" }"#);

    // A missing training file is an error naming it.
    std::fs::remove_file(batches.join("data_batch_3.bin")).unwrap();
    let config = dir.join("cifar.toml");
    let refused = train(&dir, &config, "broken", &[]);
    assert!(!refused.status.success() && stderr(&refused).contains("data_batch_3.bin missing"), "{}", stderr(&refused));
}

#[test]
fn a_class_folder_tree_of_pngs_goes_through_a_sweep_and_a_report_with_fd() {
    let dir = TempDir::new("png-classes");
    write_class_tree(dir.path(), "images/train", 24);
    write_class_tree(dir.path(), "images/test", 8);
    let dataset = r#"{ kind = "png-folder", path = "images/train", test_path = "images/test", channels = 3 }"#;
    sweep_and_report(&dir, "pngs", dataset);

    // A test split with other classes would mislabel every image: refused, naming both folders.
    std::fs::rename(dir.join("images/test/square"), dir.join("images/test/triangle")).unwrap();
    let refused = train(&dir, &dir.join("pngs.toml"), "broken", &[]);
    let message = stderr(&refused);
    assert!(!refused.status.success() && message.contains("triangle") && message.contains("images/train"), "{message}");
}
