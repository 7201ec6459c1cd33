//! Long operations (create, snapshot, revert, clone, migrate) as requests:
//! one runner answers each as JSON once it ends, or, when the client asks with
//! `Accept: text/event-stream`, as server-sent events while it runs: the
//! engine's `Progress` reports become `progress` events, then one event with
//! the result (`done`; create's is `created`) or an `error` event (ErrorBody).

use crate::http::{blocking, shown, ApiError, ApiResult, ErrorBody};
use crate::App;
use axum::http::header::{self, HeaderMap};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use phyllome_engine::op::progress::Progress;
use phyllome_libvirt::Libvirt;
use serde::Serialize;
use std::cell::Cell;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A long operation on a VM and how it answers.
pub struct Job {
    /// The VM whose row the list re-reads once the job ends.
    vm: String,
    /// The status of the JSON answer.
    ok: StatusCode,
    /// The name of the event that carries the result.
    done: &'static str,
    /// Whether the job copies bytes: its `progress` events then carry `done` and `total`.
    copies: bool,
    /// The word the job's notes go to the server's log under, if they do.
    logged_as: Option<&'static str>,
}

impl Job {
    /// A create: `progress` events are steps and notes (it copies nothing byte by
    /// byte), its notes go to the log too, and the result comes as `created` (201).
    pub fn create(vm: &str) -> Job {
        Job { vm: vm.to_string(), ok: StatusCode::CREATED, done: "created", copies: false, logged_as: Some("create") }
    }

    /// A job that copies disks and files (snapshot, revert, clone, migrate): steps,
    /// notes and byte counts, then `done`; `ok` is the status of its JSON answer.
    pub fn copying(vm: String, ok: StatusCode) -> Job {
        Job { vm, ok, done: "done", copies: true, logged_as: None }
    }

    /// Runs `f` with this host's connection on the blocking pool and answers as
    /// the client asked (see the module documentation).
    pub async fn run<T: Serialize + Send + 'static>(
        self,
        app: &Arc<App>,
        headers: &HeaderMap,
        f: impl FnOnce(&Libvirt, &dyn Fn(Progress<'_>)) -> Result<T, ApiError> + Send + 'static,
    ) -> ApiResult<Response> {
        if !wants_events(headers) {
            let ok = self.ok;
            let r = blocking(app, move |app, lv| {
                let r = f(lv, &|p| self.log(p));
                app.inventory.refresh(&self.vm);
                r
            })
            .await?;
            return Ok((ok, Json(r)).into_response());
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let app = Arc::clone(app);
        tokio::task::spawn_blocking(move || {
            let lv = match app.libvirt() {
                Ok(lv) => lv,
                Err(e) => {
                    let _ = tx.send(error_event(&ApiError::from(e)));
                    return;
                }
            };
            let last_bytes = Cell::new(Instant::now() - Duration::from_secs(1));
            let report = |p: Progress<'_>| {
                self.log(p);
                let event =
                    self.progress(p, &last_bytes).and_then(|b| Event::default().event("progress").json_data(b).ok());
                if let Some(e) = event {
                    let _ = tx.send(e);
                }
            };
            let r = f(&lv, &report);
            app.inventory.refresh(&self.vm);
            let last = match r {
                Ok(v) => Event::default().event(self.done).json_data(&v).unwrap_or_default(),
                Err(e) => error_event(&e),
            };
            let _ = tx.send(last);
        });
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx)) },
            );
        Ok(Sse::new(stream).into_response())
    }

    /// The job's notes in the server's log, when it logs them.
    fn log(&self, p: Progress<'_>) {
        if let (Some(what), Progress::Note { message }) = (self.logged_as, p) {
            tracing::info!(vm = %shown(&self.vm), "{what}: {message}");
        }
    }

    /// A report as the data of a `progress` event; none for a byte count of a job that
    /// copies nothing, or one within 250 ms of the last (at most four a second reach the page).
    fn progress(&self, p: Progress<'_>, last_bytes: &Cell<Instant>) -> Option<ProgressEvent> {
        let none = self.copies.then_some(ByteCount { done: None, total: None });
        let body = match p {
            Progress::Step { step } => ProgressEvent { step: Some(step), message: String::new(), bytes: none },
            Progress::Note { message } => ProgressEvent { step: None, message: message.to_string(), bytes: none },
            Progress::Bytes { .. } if !self.copies => return None,
            Progress::Bytes { done, total } => {
                if last_bytes.get().elapsed() < Duration::from_millis(250) && (done < total || total == 0) {
                    return None;
                }
                last_bytes.set(Instant::now());
                let bytes = Some(ByteCount { done: Some(done), total: Some(total) });
                ProgressEvent { step: None, message: String::new(), bytes }
            }
        };
        Some(body)
    }
}

/// A `progress` event: a step that begins, a note, or the bytes a step copied so far.
/// (Create's events, without byte counts, are what the API document calls StepEvent.)
#[derive(Serialize)]
struct ProgressEvent {
    /// The step that begins (create's: `claim`, `pool`, `secret`, `volume`, `boot-files`,
    /// `define`, `nvram`, `start`, `finish`), or null for a note or a byte count.
    step: Option<&'static str>,
    message: String,
    /// Only in the events of jobs that copy: `done` and `total`, null but in a byte count.
    #[serde(flatten)]
    bytes: Option<ByteCount>,
}

#[derive(Serialize)]
struct ByteCount {
    done: Option<u64>,
    total: Option<u64>,
}

fn wants_events(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/event-stream"))
}

fn error_event(e: &ApiError) -> Event {
    Event::default()
        .event("error")
        .json_data(ErrorBody { error: e.message.clone(), kind: e.kind.to_string() })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The data of the `progress` event a report becomes, as JSON.
    fn data(job: &Job, p: Progress<'_>, last_bytes: &Cell<Instant>) -> Option<serde_json::Value> {
        job.progress(p, last_bytes).map(|b| serde_json::to_value(b).unwrap())
    }

    #[test]
    fn create_events_carry_steps_and_notes_and_copying_jobs_byte_counts_too() {
        let long_ago = || Cell::new(Instant::now() - Duration::from_secs(1));
        let create = Job::create("vm");
        assert_eq!(
            data(&create, Progress::Step { step: "define" }, &long_ago()),
            Some(json!({"step": "define", "message": ""}))
        );
        assert_eq!(
            data(&create, Progress::Note { message: "n" }, &long_ago()),
            Some(json!({"step": null, "message": "n"}))
        );
        assert_eq!(data(&create, Progress::Bytes { done: 1, total: 2 }, &long_ago()), None);
        let copy = Job::copying("vm".into(), StatusCode::OK);
        let step = json!({"step": "disk", "message": "", "done": null, "total": null});
        assert_eq!(data(&copy, Progress::Step { step: "disk" }, &long_ago()), Some(step));
        let last = long_ago();
        let bytes = |done| data(&copy, Progress::Bytes { done, total: 4 }, &last);
        assert_eq!(bytes(1), Some(json!({"step": null, "message": "", "done": 1, "total": 4})));
        // At most four byte counts a second; the last one always.
        assert_eq!(bytes(2), None);
        assert_eq!(bytes(4), Some(json!({"step": null, "message": "", "done": 4, "total": 4})));
    }
}
