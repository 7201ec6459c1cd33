//! What every long operation shares, whatever it makes:
//! - [`Op`]: its interrupt flag, set by Ctrl-C, SIGTERM or SIGHUP while it runs (the one
//!   place signals are caught), and its steps, where it stops when interrupted and where the
//!   tests' build can fail or hold it (`test-hooks`);
//! - `progress`: what it reports to the front end while it runs;
//! - `record`: the one crash record format (who runs it, through which connection, and what
//!   it made or changed, by identity), kept in `journal` (a claim of a new VM's name), `lock`
//!   (one operation per VM) or `moves` (a migration until it is settled);
//! - `undo`: putting back what a record names; `recover`: what every command does first, for
//!   the records of processes that are gone.

pub mod journal;
pub mod lock;
pub mod moves;
pub mod progress;
pub mod record;
pub mod recover;
pub mod undo;

use progress::{Progress, Report};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Why an operation stopped at a step.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StepError {
    #[error("interrupted: everything this command created was removed")]
    Interrupted,
    #[error("injected failure at step {0} (PHYLLOME_TEST_FAIL_AT)")]
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    Injected(String),
}

impl crate::errors::Classify for StepError {
    fn kind(&self) -> crate::errors::ErrorKind {
        match self {
            StepError::Interrupted => crate::errors::ErrorKind::Interrupted,
            StepError::Injected(_) => crate::errors::ErrorKind::Failed,
        }
    }
}

/// A long operation while it runs: the signals that interrupt it are caught from
/// [`Op::begin`] until it is dropped, and set its flag instead of killing the process.
pub struct Op {
    interrupted: Arc<AtomicBool>,
    hooks: Vec<signal_hook::SigId>,
}

impl Op {
    /// Catches Ctrl-C, SIGTERM and SIGHUP for this operation.
    pub fn begin() -> Op {
        let interrupted = Arc::new(AtomicBool::new(false));
        let hooks = [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP]
            .iter()
            .filter_map(|s| signal_hook::flag::register(*s, Arc::clone(&interrupted)).ok())
            .collect();
        Op { interrupted, hooks }
    }

    /// The flag the signals set (for loops that check it between blocks).
    pub fn flag(&self) -> &AtomicBool {
        &self.interrupted
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Relaxed)
    }

    /// Stops when interrupted (inside a step's loop).
    pub fn check(&self) -> Result<(), StepError> {
        if self.interrupted() {
            return Err(StepError::Interrupted);
        }
        Ok(())
    }

    /// A step: see [`step`].
    pub fn step(&self, name: &str) -> Result<(), StepError> {
        step(name, &self.interrupted)
    }

    /// A step the front end is told of as it begins.
    pub fn at(&self, report: Report<'_>, name: &'static str) -> Result<(), StepError> {
        report(Progress::Step { step: name });
        self.step(name)
    }
}

impl Drop for Op {
    /// The signals are the process's again.
    fn drop(&mut self) {
        for h in self.hooks.drain(..) {
            signal_hook::low_level::unregister(h);
        }
    }
}

/// A step of an operation: stops when it was interrupted (Ctrl-C, SIGTERM).
///
/// Test hooks, only with the `test-hooks` feature (the tests' own build):
/// `PHYLLOME_TEST_FAIL_AT=STEP` fails a step, `PHYLLOME_TEST_PAUSE_AT=STEP`
/// holds it for `PHYLLOME_TEST_PAUSE_SECS` (60 s by default), so a test can
/// kill -9 it or race another command against it.
pub fn step(name: &str, interrupted: &AtomicBool) -> Result<(), StepError> {
    #[cfg(feature = "test-hooks")]
    if std::env::var("PHYLLOME_TEST_PAUSE_AT").is_ok_and(|s| s == name) {
        use std::time::{Duration, Instant};
        let secs = std::env::var("PHYLLOME_TEST_PAUSE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until && !interrupted.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    if interrupted.load(Ordering::Relaxed) {
        return Err(StepError::Interrupted);
    }
    #[cfg(feature = "test-hooks")]
    if std::env::var("PHYLLOME_TEST_FAIL_AT").is_ok_and(|s| s == name) {
        return Err(StepError::Injected(name.to_string()));
    }
    let _ = name;
    Ok(())
}
