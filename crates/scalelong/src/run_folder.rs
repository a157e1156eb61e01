//! Writing a run folder safely (see docs/run-folder.md): whole files are written to a temporary
//! name and renamed, logs are appended one complete line at a time and flushed.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a reader sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let mut file = File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))
}

pub fn write_json_atomic(path: &Path, value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_vec_pretty(value)?;
    text.push(b'\n');
    write_atomic(path, &text)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{}: corrupt JSON", path.display()))
}

/// `<name>.<pid>.tmp`: processes sharing a sweep folder never write the same temporary file.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().expect("a file path").to_os_string();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// A JSONL log opened for appending. A line torn by a crash (no trailing newline) is cut off when
/// the log is reopened, so every later line starts on a line of its own.
pub struct JsonlLog {
    file: File,
}

impl JsonlLog {
    pub fn open(path: &Path) -> Result<Self> {
        if let Ok(text) = std::fs::read(path) {
            let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if complete < text.len() {
                OpenOptions::new().write(true).open(path)?.set_len(complete as u64)?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open for appending", path.display()))?;
        Ok(Self { file })
    }

    /// Appends one line per value in a single write, then flushes.
    pub fn append<T: Serialize>(&mut self, values: &[T]) -> Result<()> {
        let mut buf = Vec::new();
        for value in values {
            serde_json::to_writer(&mut buf, value)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.file.flush()?;
        Ok(())
    }
}

/// Drops log lines past `step` (a resumed run recomputes them from its checkpoint).
pub fn truncate_jsonl_after(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Completed,
    Diverged,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub state: RunState,
    pub step: u64,
    pub message: Option<String>,
}

impl Status {
    pub fn read(run: &Path) -> Option<Self> {
        read_json(&run.join("status.json")).ok()
    }
    pub fn write(&self, run: &Path) -> Result<()> {
        write_json_atomic(&run.join("status.json"), self)
    }
}
