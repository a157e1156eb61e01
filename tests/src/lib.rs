//! What the end-to-end suites share: the real `scalelong` binary on tiny synthetic configs, one
//! temporary-folder helper ([`TempDir`]) and one "skip here, fail under CI" helper ([`available`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh empty folder under the system temp dir, removed when dropped (kept when the test
/// panics, for a look at what it left).
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `name` must be unique among the tests of one process (the process id keeps processes
    /// apart).
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("scalelong-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Whether a test's outside requirement (a program, a device, a data set) is met. `missing` is
/// `None` when it is, else why not: then the test is skipped here, with a notice, and fails where
/// the `CI` environment variable is set, since CI installs everything (`scripts/bootstrap.sh`,
/// `just data`).
pub fn available(test: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else { return true };
    assert!(std::env::var_os("CI").is_none(), "{test}: CI must run this test, but {why}");
    eprintln!("skipped {test}: {why}");
    false
}

/// The `scalelong` command line under test: this package's binary `scalelong-under-test`, built
/// from `crates/scalelong/src/main.rs`, which cargo builds before it runs the package's suites (so
/// it is never stale), next to them in `target/<profile>/`.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    profile_dir.join("scalelong-under-test")
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
    Command::new(binary()).args(args).current_dir(cwd).output().expect("the binary runs")
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
