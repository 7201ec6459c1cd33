//! How the CLI shows what the engine reports while it works, and the figures
//! every command prints the same way: a spinner naming the step, byte counts
//! on it or on a bar, notes as `phyllome: ...` lines, sizes the short way and dates in UTC.

use phyllome_engine::op::progress::Progress;
use std::cell::Cell;
use std::io::IsTerminal;
use std::time::Duration;

/// A line for the user on standard error: `phyllome: MESSAGE`.
pub fn note(message: &str) {
    eprintln!("phyllome: {message}");
}

/// Renders the engine's progress: a spinner naming the step on a terminal,
/// and the notes as lines (the only output when standard error is not a terminal).
pub struct Steps(indicatif::ProgressBar);

impl Steps {
    pub fn new(what: &str) -> Steps {
        let bar = if std::io::stderr().is_terminal() {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {prefix} {wide_msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b.set_prefix(what.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        Steps(bar)
    }

    /// Steps and notes; byte counts are left out (see [`reporter`]).
    pub fn report(&self, p: Progress<'_>) {
        match p {
            Progress::Step { step } => self.0.set_message(step.to_string()),
            Progress::Note { message } if self.0.is_hidden() => note(message),
            Progress::Note { message } => self.0.println(format!("phyllome: {message}")),
            Progress::Bytes { .. } => {}
        }
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// Steps, notes and byte counts on the spinner, after the step they belong to ("disk 1.2G / 4.0G").
pub fn reporter(steps: &Steps) -> impl Fn(Progress<'_>) + '_ {
    let step = Cell::new("");
    move |p| match p {
        Progress::Step { step: s } => {
            step.set(s);
            steps.report(p)
        }
        Progress::Bytes { done, total } if total > 0 => {
            steps.0.set_message(format!("{} {} / {}", step.get(), human(done as f64), human(total as f64)))
        }
        other => steps.report(other),
    }
}

/// A bar of bytes (a copy into the ISO folder) on a terminal, when `shown`; hidden otherwise.
pub fn byte_bar(shown: bool) -> indicatif::ProgressBar {
    if !shown || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b
}

/// Bytes the short way: `512B`, `3.4K`, `1.2G` (powers of 1024).
pub fn human(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut v = bytes;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{v:.0}{}", UNITS[u])
    }
}

/// UNIX seconds as `YYYY-MM-DD HH:MM UTC`.
pub fn utc(secs: u64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(secs as i64) {
        Ok(t) => format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), t.month() as u8, t.day(), t.hour(), t.minute()),
        Err(_) => secs.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_short() {
        assert_eq!(human(512.0), "512B");
        assert_eq!(human(1536.0), "1.5K");
        assert_eq!(human(300.0 * 1024.0 * 1024.0), "300M");
        assert_eq!(human(24.0 * (1u64 << 30) as f64), "24G");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(1_796_169_600), "2026-12-02 00:00 UTC");
        assert_eq!(utc(951_782_400 + 3_660), "2000-02-29 01:01 UTC");
    }

    #[test]
    fn byte_counts_follow_their_step() {
        let steps = Steps(indicatif::ProgressBar::hidden());
        let report = reporter(&steps);
        report(Progress::Step { step: "disk" });
        assert_eq!(steps.0.message(), "disk");
        report(Progress::Bytes { done: 1536, total: 4 << 30 });
        assert_eq!(steps.0.message(), "disk 1.5K / 4.0G");
        // Without a total there is nothing to show.
        report(Progress::Bytes { done: 7, total: 0 });
        assert_eq!(steps.0.message(), "disk 1.5K / 4.0G");
    }
}
