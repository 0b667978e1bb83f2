//! A Jupyter kernel for llmlab: `llmlab kernel --connection-file FILE` runs one Rhai session (the
//! REPL's engine and plugins) behind the Jupyter messaging protocol, and `llmlab kernel install`
//! writes the kernelspec. Cells' stdout and stderr stream as they come, a cell's value is shown
//! (images as PNG, tensors as tables), completion and inspection use the REPL's completer and
//! `help`, and an interrupt stops the running call the way Ctrl-C does.
//!
//! Files: `connection` (the connection file), `wire` (framing and signing), `server` (sockets),
//! `worker` (the session thread), `capture` (stdout/stderr into streams), `display` (values as
//! MIME bundles), `install` (the kernelspec).

mod capture;
mod connection;
mod display;
pub mod install;
mod progress;
mod server;
mod wire;
mod worker;

use std::path::Path;
use std::sync::{Arc, Mutex};

use llmlab_plugin_api::serde_json::json;
use llmlab_plugin_api::{CancelFlag, ProgressSink};

use crate::script::Session;
use capture::Capture;
use connection::Connection;
use server::Shared;
use wire::{Message, Signer};
use worker::{Parent, Worker};

/// Runs the kernel until a shutdown request. `make_session` builds the session, with the given
/// progress sink in its context, on the thread that runs cells; `cancel` is that session's
/// cancellation flag (what an interrupt sets).
pub fn run(
    connection_file: &Path,
    make_session: impl FnOnce(Arc<dyn ProgressSink>) -> Session + Send + 'static,
    cancel: CancelFlag,
) -> Result<(), String> {
    let connection = Connection::read(connection_file)?;
    let (iopub, outgoing) = tokio::sync::mpsc::unbounded_channel::<Message>();
    let parent: Parent = Arc::new(Mutex::new(None));
    let stream_parent = parent.clone();
    let stream_iopub = iopub.clone();
    let capture = Arc::new(
        Capture::install(Arc::new(move |name, text| {
            let parent = stream_parent.lock().unwrap_or_else(|p| p.into_inner());
            let content = json!({ "name": name, "text": text });
            let message = match parent.as_ref() {
                Some(parent) => parent.broadcast("stream", content),
                None => Message::orphan("", "stream", content),
            };
            let _ = stream_iopub.send(message);
        }))
        .map_err(|e| format!("cannot capture stdout/stderr: {e}"))?,
    );
    // SIGINT (a client whose kernelspec says interrupt_mode "signal", or a terminal) cancels too.
    let sigint = cancel.clone();
    let _ = ctrlc::set_handler(move || sigint.cancel());

    let progress = Arc::new(progress::NotebookProgress::new(
        iopub.clone(),
        parent.clone(),
    ));
    let (jobs, job_queue) = std::sync::mpsc::channel();
    let worker_iopub = iopub.clone();
    let worker_capture = capture.clone();
    let worker_cancel = cancel.clone();
    std::thread::Builder::new()
        .name("kernel-session".into())
        .spawn(move || {
            Worker {
                session: make_session(progress),
                iopub: worker_iopub,
                parent,
                capture: worker_capture,
                cancel: worker_cancel,
                execution_count: 0,
            }
            .run(job_queue)
        })
        .map_err(|e| format!("cannot start the session thread: {e}"))?;

    let shared = Shared {
        signer: Signer::new(&connection.key),
        iopub,
        jobs,
        cancel,
        capture: capture.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(server::serve(connection, shared, outgoing));
    if let Err(error) = &result {
        capture.log(error);
    }
    result
}
