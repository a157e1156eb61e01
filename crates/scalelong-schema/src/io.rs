//! Reading and writing a run folder's files safely (docs/run-folder.md): whole files are written
//! to a temporary name and renamed, logs are appended one complete line at a time and flushed,
//! and one tolerant JSONL reader serves every log.

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a reader sees the old file or the new one, never a part.
/// On failure (a full disk, a read-only folder) the error names `path` and the temporary file is
/// removed, so nothing half-written is left behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    let written = File::create(&tmp)
        .and_then(|mut file| file.write_all(bytes).and_then(|_| file.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, path));
    written.map_err(|error| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(error).context(format!("{}: cannot write", path.display()))
    })
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

/// Removes the temporary files a killed writer left in `dir` and its subfolders (`*.tmp`: a
/// process killed between writing one and renaming it). Only the one process that owns `dir`
/// (a run folder, under its sweep's lock) may call it.
pub fn remove_stale_temporaries(dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_stale_temporaries(&path)?;
        } else if path.extension().is_some_and(|extension| extension == "tmp") {
            std::fs::remove_file(&path).with_context(|| format!("{}: cannot remove", path.display()))?;
        }
    }
    Ok(())
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
    path: PathBuf,
}

impl JsonlLog {
    pub fn open(path: &Path) -> Result<Self> {
        if let Ok(text) = std::fs::read(path) {
            let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if complete < text.len() {
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|file| file.set_len(complete as u64))
                    .with_context(|| format!("{}: cannot cut off its torn last line", path.display()))?;
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open for appending", path.display()))?;
        Ok(Self { file, path: path.to_path_buf() })
    }

    /// Appends one line per value in a single write, then flushes. A write that fails part-way (a
    /// full disk) is cut back off, so the log holds whole lines only, and the error names the file.
    pub fn append<T: Serialize>(&mut self, values: &[T]) -> Result<()> {
        let mut buf = Vec::new();
        for value in values {
            serde_json::to_writer(&mut buf, value)?;
            buf.push(b'\n');
        }
        let before = self.file.metadata().map(|m| m.len()).ok();
        if let Err(error) = self.file.write_all(&buf).and_then(|_| self.file.flush()) {
            if let Some(length) = before {
                let _ = self.file.set_len(length);
            }
            return Err(anyhow::Error::new(error).context(format!("{}: cannot append", self.path.display())));
        }
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

/// Every line of a JSONL file, parsed; an empty list when the file does not exist (a run that has
/// not written it yet). Blank lines are skipped. An unparsable final line without its newline is a
/// write cut short by a killed process and is dropped; any other unparsable line is an error
/// naming the file and line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let mut reader = BufReader::new(File::open(path).with_context(|| format!("{}: cannot open", path.display()))?);
    let mut values = Vec::new();
    // Bytes, not a String: a torn line may end inside a multi-byte character.
    let mut line = Vec::new();
    for line_number in 1.. {
        line.clear();
        if reader.read_until(b'\n', &mut line).with_context(|| format!("{}: cannot read", path.display()))? == 0 {
            break;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<T>(&line) {
            Ok(value) => values.push(value),
            Err(_) if line.last() != Some(&b'\n') => break,
            Err(error) => bail!("{}:{line_number}: malformed line: {error}", path.display()),
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("scalelong-schema-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Line {
        step: u64,
    }

    #[test]
    fn the_reader_drops_a_torn_last_line_and_names_a_bad_middle_one() {
        let torn = temp_file("torn.jsonl", "{\"step\": 1}\n\n{\"step\": 2}\n{\"st");
        assert_eq!(read_jsonl::<Line>(&torn).unwrap(), [Line { step: 1 }, Line { step: 2 }]);
        let complete = temp_file("complete.jsonl", "{\"step\": 1}\n{\"step\": 2}");
        assert_eq!(read_jsonl::<Line>(&complete).unwrap().len(), 2, "a complete last line without its newline counts");
        let bad = temp_file("bad.jsonl", "{\"step\": 1}\n{\"step\": oops}\n{\"step\": 3}\n");
        let error = read_jsonl::<Line>(&bad).unwrap_err().to_string();
        assert!(error.contains("bad.jsonl:2: malformed line"), "{error}");
        assert!(read_jsonl::<Line>(&torn.with_file_name("missing.jsonl")).unwrap().is_empty());
    }

    #[test]
    fn a_reopened_log_cuts_its_torn_line_and_truncation_keeps_earlier_steps() {
        let path = temp_file("log.jsonl", "{\"step\": 1}\n{\"step\": 2}\n{\"ste");
        let mut log = JsonlLog::open(&path).unwrap();
        log.append(&[serde_json::json!({"step": 3})]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"step\": 1}\n{\"step\": 2}\n{\"step\":3}\n");
        truncate_jsonl_after(&path, 2).unwrap();
        assert_eq!(read_jsonl::<Line>(&path).unwrap(), [Line { step: 1 }, Line { step: 2 }]);
    }
}
