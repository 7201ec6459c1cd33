//! What long operations report while they run. The engine only calls the
//! front end's callback; the CLI renders it with `indicatif`, the web server
//! as server-sent events.

use serde::Serialize;

/// One report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Progress<'a> {
    /// A step begins. Create's steps, in order: `claim`, `pool`, `secret`,
    /// `volume`, `boot-files`, `define`, `nvram`, `start` (when asked), `finish`.
    Step { step: &'static str },
    /// Something the user should know, in words.
    Note { message: &'a str },
    /// Bytes of a copy done, of `total` (0: unknown).
    Bytes { done: u64, total: u64 },
}

/// The callback a long operation is given.
pub type Report<'r> = &'r dyn Fn(Progress<'_>);

/// A callback that drops every report.
pub fn quiet(_: Progress<'_>) {}

/// Reports a note.
pub fn note(report: Report<'_>, message: &str) {
    report(Progress::Note { message });
}
