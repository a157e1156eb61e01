//! A progress bar with ETA, it/s and running loss on a terminal; otherwise plain log lines, each
//! prefixed with the run's name so that the interleaved lines of a sweep's processes can be told
//! apart.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<ProgressBar>,
    running_loss: Option<f64>,
    /// The run's name (its folder's), before every plain line.
    run: String,
}

impl Progress {
    pub fn new(run: &str, start: u64, steps: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}, {per_sec}] {msg}")
                    .expect("a valid template"),
            );
            bar.set_position(start);
            bar
        });
        Self { bar, running_loss: None, run: run.to_string() }
    }

    pub fn step(&mut self, step: u64, loss: f64) {
        // An exponential average over ~20 steps: the raw loss jumps with the sampled timesteps.
        let running = self.running_loss.map_or(loss, |r| 0.95 * r + 0.05 * loss);
        self.running_loss = Some(running);
        if let Some(bar) = &self.bar {
            bar.set_position(step);
            bar.set_message(format!("loss {running:.4}"));
        }
    }

    /// A log line: printed above the bar on a terminal, to stderr otherwise.
    pub fn log(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => log_line(&format!("[{}] {line}", self.run)),
        }
    }

    pub fn finish(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(message.to_string()),
            None => log_line(&format!("[{}] {message}", self.run)),
        }
    }
}

/// Writes `line` and a newline to stderr in one `write` call. `eprintln!` writes each piece of its
/// format on its own, and the processes of a sweep share one stderr: their pieces interleaved
/// mid-line (measured in the sweep test); a single write of under 4 KiB to a pipe is not split.
pub fn log_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(format!("{line}\n").as_bytes());
}
