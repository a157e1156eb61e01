//! What a run survives: a damaged latest checkpoint (it resumes from the previous one), SIGKILL at
//! any moment of a sweep (restarted, it ends as if never interrupted), a full disk and a read-only
//! run folder (a clear error naming the path, nothing half-written left behind).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use scalelong_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every file under `dir` with its bytes, relative paths sorted: what "nothing changed" compares.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|name| name != ".lock") {
                files.push((path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// A copy of the folder `from` at `to`.
fn copy_folder(from: &Path, to: &Path) {
    for (relative, bytes) in snapshot(from) {
        let path = to.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Every line of a JSONL file without the fields that measure time.
fn without_timing(path: &Path) -> Vec<serde_json::Value> {
    jsonl(path)
        .into_iter()
        .map(|mut line| {
            if let Some(object) = line.as_object_mut() {
                object.remove("step_time_s");
                object.remove("examples_per_s");
            }
            line
        })
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Truncated,
    RandomBytes,
    Missing,
}

fn damage(path: &Path, how: Damage, rng: &mut ChaCha8Rng) {
    match how {
        Damage::Truncated => {
            let bytes = std::fs::read(path).unwrap();
            std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
        }
        Damage::RandomBytes => std::fs::write(path, (0..100).map(|_| rng.random::<u8>()).collect::<Vec<_>>()).unwrap(),
        Damage::Missing => std::fs::remove_file(path).unwrap(),
    }
}

#[test]
fn a_damaged_latest_checkpoint_falls_back_to_the_previous_one() {
    let dir = TempDir::new("fallback");
    let config = write_config(&dir, "tiny.toml", TINY_CONFIG);
    // Checkpoints at steps 3, 6 and 8: checkpoint/ holds step 8, checkpoint.prev/ step 6.
    let trained = train(&dir, &config, "trained", &[]);
    assert!(trained.status.success(), "{}", stderr(&trained));
    let whole = train(&dir, &config, "whole", &["--set", "steps=10"]);
    assert!(whole.status.success(), "{}", stderr(&whole));
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    for file in ["model.bpk", "ema.bpk", "optimizer.bin", "state.json", "manifest.json"] {
        for how in [Damage::Truncated, Damage::RandomBytes, Damage::Missing] {
            let name = format!("{file}-{how:?}");
            copy_folder(&dir.join("trained"), &dir.join(&name));
            damage(&dir.join(&name).join("checkpoint").join(file), how, &mut rng);
            let resumed = train(&dir, &config, &name, &["--set", "steps=10", "--resume"]);
            assert!(resumed.status.success(), "{name}: {}", stderr(&resumed));
            // Without its manifest a checkpoint is read as one from before manifests: intact, it loads.
            let falls_back = !(file == "manifest.json" && matches!(how, Damage::Missing));
            let warning = stderr(&resumed);
            assert_eq!(warning.contains("resuming from"), falls_back, "{name}: {warning}");
            if falls_back {
                assert!(
                    warning.contains("/checkpoint does not load") && warning.contains("checkpoint.prev (step 6)"),
                    "{name}: {warning}"
                );
                assert!(dir.join(&name).join("checkpoint.damaged").join("state.json").exists() || file == "state.json");
            }
            // Resumed from step 6 or 8, the run ends as if never interrupted.
            for log in ["metrics.jsonl", "diagnostics.jsonl"] {
                assert_eq!(
                    without_timing(&dir.join(&name).join(log)),
                    without_timing(&dir.join("whole").join(log)),
                    "{name}: {log}"
                );
            }
        }
    }

    // Both checkpoints damaged: an error saying so, and the folder is left as it was.
    copy_folder(&dir.join("trained"), &dir.join("both"));
    damage(&dir.join("both/checkpoint/model.bpk"), Damage::RandomBytes, &mut rng);
    damage(&dir.join("both/checkpoint.prev/state.json"), Damage::Truncated, &mut rng);
    let before = snapshot(&dir.join("both"));
    let refused = train(&dir, &config, "both", &["--set", "steps=10", "--resume"]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(message.contains("no checkpoint loads") && message.contains("checkpoint.prev"), "{message}");
    assert_eq!(snapshot(&dir.join("both")), before, "nothing was overwritten");
}

#[test]
fn a_sweep_killed_at_random_moments_ends_like_an_uninterrupted_one() {
    const SWEEP: &str = "name = \"kill\"\nbase = \"tiny.toml\"\n[grid]\nstrategy = [\"1\", \"ls\"]\nseed = [0, 1]\n[set]\nsteps = 24\ncheckpoint_every = 5\n";
    let started = Instant::now();
    let dir = TempDir::new("sweep-kill-anywhere");
    write_config(&dir, "tiny.toml", TINY_CONFIG);
    let sweep = write_config(&dir, "sweep.toml", SWEEP);
    let sweep_in = |runs: &str| ["sweep", sweep.to_str().unwrap(), "--runs", runs].map(String::from);
    let reference = scalelong(&sweep_in("reference").each_ref().map(String::as_str), dir.path());
    assert!(reference.status.success(), "{}", stderr(&reference));

    // Killed at seeded random moments, restarted after each.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    for _ in 0..6 {
        let mut child = Command::new(binary())
            .args(sweep_in("killed"))
            .current_dir(dir.path())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(30..600)));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let finished = scalelong(&sweep_in("killed").each_ref().map(String::as_str), dir.path());
    assert!(finished.status.success(), "{}", stderr(&finished));

    let ids: Vec<String> = ["1_seed0", "1_seed1", "ls_seed0", "ls_seed1"].map(String::from).to_vec();
    for id in &ids {
        let status = std::fs::read_to_string(dir.join("killed/kill").join(id).join("status.json")).unwrap();
        assert!(status.contains("completed"), "{id}: {status}");
        for log in ["metrics.jsonl", "diagnostics.jsonl"] {
            assert_eq!(
                without_timing(&dir.join("killed/kill").join(id).join(log)),
                without_timing(&dir.join("reference/kill").join(id).join(log)),
                "{id}: {log}"
            );
        }
    }
    assert!(leftover_tmp_files(&dir.join("killed")).is_empty(), "{:?}", leftover_tmp_files(&dir.join("killed")));
    let report = scalelong(&["report", "killed/kill", "--out", "report"], dir.path());
    assert!(report.status.success(), "{}", stderr(&report));
    assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
}

/// Runs `script` in `sh` with the `scalelong` binary as `$BIN`, in `dir`.
fn shell(script: &str, dir: &Path) -> std::process::Output {
    Command::new("sh").arg("-c").arg(script).env("BIN", binary()).current_dir(dir).output().unwrap()
}

#[test]
fn a_full_disk_is_an_error_naming_the_path_and_leaves_nothing_half_written() {
    let dir = TempDir::new("full-disk");
    write_config(&dir, "tiny.toml", TINY_CONFIG);
    // At most 64 KB a file (the shell's blocks of 1 KB or 512 bytes), with SIGXFSZ ignored so that
    // the write past it fails as a full disk's does: a checkpoint's weights do not fit.
    let output = shell("ulimit -f 64 && trap '' XFSZ && exec \"$BIN\" train --config tiny.toml --out run", dir.path());
    assert!(!output.status.success(), "the run must fail");
    let message = stderr(&output);
    // The path as the user gave it: `--out run`.
    assert!(message.contains("run/checkpoint.tmp/model.bpk: cannot write: File too large"), "{message}");
    assert!(leftover_tmp_files(&dir.join("run")).is_empty(), "{:?}", leftover_tmp_files(&dir.join("run")));
    assert!(!dir.join("run/checkpoint.tmp").exists(), "a half-written checkpoint was left behind");
    for log in ["metrics.jsonl", "diagnostics.jsonl", "eval.jsonl"] {
        let text = std::fs::read_to_string(dir.join("run").join(log)).unwrap_or_default();
        assert!(text.is_empty() || text.ends_with('\n'), "{log} ends in a torn line");
    }
}

#[test]
fn a_read_only_run_folder_is_an_error_naming_the_path_and_is_left_as_it_was() {
    // A tmpfs in a private mount namespace, remounted read-only after a first run: works as root
    // and, where user namespaces are enabled, as anyone.
    let probe = shell("unshare -rm sh -c 'mount -t tmpfs tmpfs .' 2>&1", &std::env::temp_dir());
    let missing = (!probe.status.success())
        .then(|| format!("no private tmpfs mount here ({})", String::from_utf8_lossy(&probe.stdout).trim()));
    if !available("a_read_only_run_folder_is_an_error", missing) {
        return;
    }
    let dir = TempDir::new("read-only");
    write_config(&dir, "tiny.toml", TINY_CONFIG);
    std::fs::create_dir_all(dir.join("mnt")).unwrap();
    let output = shell(
        "unshare -rm sh -c 'mount -t tmpfs tmpfs mnt && \"$BIN\" train --config tiny.toml --out mnt/run 2>/dev/null && \
         find mnt/run -type f | sort | xargs md5sum > before && mount -o remount,ro mnt && \
         \"$BIN\" train --config tiny.toml --set steps=12 --out mnt/run --resume; status=$?; \
         find mnt/run -type f | sort | xargs md5sum > after; exit $status'",
        dir.path(),
    );
    assert!(!output.status.success(), "resuming into a read-only folder must fail");
    let message = stderr(&output);
    assert!(message.contains("mnt/run") && message.contains("Read-only file system"), "{message}");
    assert_eq!(
        std::fs::read_to_string(dir.join("before")).unwrap(),
        std::fs::read_to_string(dir.join("after")).unwrap(),
        "the run folder was left as it was"
    );
}
