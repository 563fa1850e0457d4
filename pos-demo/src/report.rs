//! Small helpers for printing timelines, percentiles and JSON results.

use std::time::{Duration, Instant};

/// Prints timestamped lines relative to the start of a run.
pub struct Timeline {
    started: Instant,
}

impl Timeline {
    /// Starts the clock.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
        }
    }

    /// Prints one line: `[  1.234s] who  what`.
    pub fn say(&self, who: &str, what: impl AsRef<str>) {
        println!(
            "[{:>7.3}s] {who:<12} {}",
            self.started.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }

    /// Time since start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// The value at quantile `q` (0..=1) of unsorted samples, or 0 when empty.
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let rank = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// Median of unsorted samples.
pub fn median(samples: &mut [f64]) -> f64 {
    percentile(samples, 0.5)
}

/// A progress bar on stderr when it is a terminal; hidden (plain output)
/// when piped, so `--json` output and logs stay clean.
pub fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what} ({{per_sec}})"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_ranks() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut samples, 0.5), 51.0);
        assert_eq!(percentile(&mut samples, 0.99), 99.0);
        assert_eq!(percentile(&mut [], 0.5), 0.0);
    }
}
