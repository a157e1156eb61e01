//! Running the real `scalelong` binary on tiny synthetic configs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh empty folder under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("scalelong-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A U-ViT with 2 long skips on 16x16 synthetic images: a step takes milliseconds.
pub const TINY_CONFIG: &str = r#"
strategy = "ls"
steps = 8
batch_size = 8
warmup_steps = 2
log_every = 1
checkpoint_every = 3
sample_count = 4
[model]
preset = "uvit-small"
img_size = 16
embed_dim = 16
depth = 4
num_heads = 2
[data]
dataset = { kind = "synthetic", n = 64, channels = 1, size = 16, seed = 1 }
pad_to_multiple = 1
[diffusion]
sampler = { kind = "ddim", steps = 3 }
[diagnostics]
every = 2
t_bins = 2
probe_per_bin = 2
[eval]
heldout_images = 8
t_bins = 2
fd_samples = 0
"#;

pub fn write_config(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

pub fn scalelong(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scalelong")).args(args).current_dir(cwd).output().expect("the binary runs")
}

pub fn train(dir: &TempDir, config: &Path, out: &str, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--config", config.to_str().unwrap(), "--out", out];
    args.extend_from_slice(extra);
    scalelong(&args, &dir.0)
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every line of a JSONL file, parsed; panics on a malformed line.
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: bad line {l:?}: {e}", path.display())))
        .collect()
}

pub fn steps_of(lines: &[serde_json::Value]) -> Vec<u64> {
    lines.iter().map(|l| l["step"].as_u64().unwrap()).collect()
}

/// Files left with a temporary name: a write that was not completed.
pub fn leftover_tmp_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(leftover_tmp_files(&path));
        } else if path.extension().is_some_and(|e| e == "tmp") {
            found.push(path);
        }
    }
    found
}
