//! Trials in worker processes (`parallel: N`): the parent re-executes `llmlab` itself with the
//! same command line (so the same script, plugins, device and `--set` values) and the trial in
//! the environment variable [`WORKER_ENV`]. The child runs the script; its session's run
//! directory is the trial's, and when the script reaches the sweep, it runs the objective once
//! with the trial's parameters, reports back and exits. A crash of the child is a failed trial.
//!
//! The protocol is lines on the child's stdout that start with [`MARKER`] (everything else the
//! child prints goes to the trial's `worker.log`, with its stderr):
//!
//! * `{"report": {"step": s, "value": v}}`: an intermediate value; the child then reads one line
//!   from its stdin: `continue`, `prune` (the pruner stopped it) or `stop` (the sweep was
//!   interrupted);
//! * `{"result": {"state": "complete" | "pruned" | "failed" | "interrupted", "value", "error"}}`.
//!
//! Children get their own process group, so a Ctrl-C at the terminal reaches the parent only;
//! the parent passes one SIGINT to each running child, which stops its trainer after the
//! current step with its checkpoint written, exactly like a Ctrl-C in a plain run. A child
//! whose parent dies gets SIGTERM (Linux `PR_SET_PDEATHSIG`) or EOF on its stdin.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::Sender;
use std::sync::Mutex;

use llmlab_plugin_api::serde_json::{self, json, Map, Value};
use llmlab_plugin_api::{Error, Result};

/// The environment variable carrying a worker's trial ([`WorkerSpec`] as JSON).
pub const WORKER_ENV: &str = "LLMLAB_SWEEP_WORKER";
/// The prefix of protocol lines on a worker's stdout.
pub const MARKER: &str = "\u{1e}llmlab-sweep ";
/// The file in the trial's directory that gets the worker's output.
pub const WORKER_LOG: &str = "worker.log";

/// What the pruner says after a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Prune,
    /// The sweep is stopping (Ctrl-C): end like an interrupted run.
    Stop,
}

impl Decision {
    fn word(self) -> &'static str {
        match self {
            Decision::Continue => "continue",
            Decision::Prune => "prune",
            Decision::Stop => "stop",
        }
    }
}

/// The trial a worker runs.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSpec {
    pub sweep: String,
    /// Which `sweep(...)` call of the script (0 = the first), so a script with several sweeps
    /// runs the right one.
    pub call: usize,
    pub number: usize,
    pub params: Map<String, Value>,
    /// The trial's run directory: the child's session run directory.
    pub run_dir: PathBuf,
}

impl WorkerSpec {
    pub fn to_json(&self) -> Value {
        json!({ "sweep": self.sweep, "call": self.call, "number": self.number,
                "params": self.params, "run_dir": self.run_dir })
    }

    pub fn from_json(value: &Value) -> std::result::Result<WorkerSpec, String> {
        let field = |k: &str| value.get(k).ok_or_else(|| format!("{WORKER_ENV}: no {k}"));
        Ok(WorkerSpec {
            sweep: field("sweep")?.as_str().ok_or("sweep")?.to_string(),
            call: field("call")?.as_u64().ok_or("call")? as usize,
            number: field("number")?.as_u64().ok_or("number")? as usize,
            params: field("params")?.as_object().ok_or("params")?.clone(),
            run_dir: PathBuf::from(field("run_dir")?.as_str().ok_or("run_dir")?),
        })
    }

    /// The trial of this process when it is a worker.
    pub fn from_env() -> Option<std::result::Result<WorkerSpec, String>> {
        let text = std::env::var(WORKER_ENV).ok()?;
        Some(
            serde_json::from_str::<Value>(&text)
                .map_err(|e| format!("{WORKER_ENV}: {e}"))
                .and_then(|v| WorkerSpec::from_json(&v)),
        )
    }
}

/// The child's end: reports go out on stdout, decisions come in on stdin.
pub struct WorkerLink {
    input: Mutex<BufReader<std::io::Stdin>>,
}

impl Default for WorkerLink {
    fn default() -> Self {
        WorkerLink {
            input: Mutex::new(BufReader::new(std::io::stdin())),
        }
    }
}

impl WorkerLink {
    /// Sends an intermediate value and waits for the parent's decision; a parent that is
    /// gone (EOF, broken pipe) means stop.
    pub fn report(&self, step: u64, value: f64) -> Decision {
        if send(&json!({ "report": { "step": step, "value": value } })).is_err() {
            return Decision::Stop;
        }
        let mut line = String::new();
        let mut input = self.input.lock().unwrap_or_else(|p| p.into_inner());
        match input.read_line(&mut line) {
            Ok(0) | Err(_) => Decision::Stop,
            Ok(_) => match line.trim() {
                "continue" => Decision::Continue,
                "prune" => Decision::Prune,
                _ => Decision::Stop,
            },
        }
    }

    /// Sends the trial's outcome (`state`, `value`, `error`).
    pub fn finish(&self, outcome: &Value) {
        let _ = send(&json!({ "result": outcome }));
    }
}

fn send(message: &Value) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    // The leading newline keeps the marker at the start of a line after unterminated output.
    writeln!(out, "\n{MARKER}{message}")?;
    out.flush()
}

/// What a worker's reader thread tells the sweep loop.
#[derive(Debug)]
pub enum Event {
    Report {
        number: usize,
        step: u64,
        value: f64,
    },
    /// The child closed its stdout (it exited); `result` is its result message, if it sent one.
    Finished {
        number: usize,
        result: Option<Value>,
    },
}

/// A running worker, seen from the parent.
pub struct Worker {
    pub number: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    pub log: PathBuf,
    interrupted: bool,
}

impl Worker {
    /// Starts `llmlab` again with this process's arguments for the trial in `spec`; its output
    /// goes to `<run_dir>/worker.log`, its protocol messages to `events`.
    pub fn spawn(spec: &WorkerSpec, events: Sender<Event>) -> Result<Worker> {
        std::fs::create_dir_all(&spec.run_dir).map_err(|e| Error::io(&spec.run_dir, e))?;
        let log = spec.run_dir.join(WORKER_LOG);
        // Both the child's stderr and the reader thread's stdout lines append: with a plain
        // write handle, stderr would overwrite lines appended through the other handle.
        File::create(&log).map_err(|e| Error::io(&log, e))?;
        let append = || {
            OpenOptions::new()
                .append(true)
                .open(&log)
                .map_err(|e| Error::io(&log, e))
        };
        let stderr = append()?;
        let exe = std::env::current_exe()
            .map_err(|e| Error::msg(format!("cannot find the llmlab executable: {e}")))?;
        let mut command = Command::new(&exe);
        command
            .args(std::env::args_os().skip(1))
            .env(WORKER_ENV, spec.to_json().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        detach(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| Error::msg(format!("cannot start worker {}: {e}", exe.display())))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        let mut log_out = append()?;
        let number = spec.number;
        std::thread::spawn(move || {
            let mut result = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some(message) = line.strip_prefix(MARKER) else {
                    if !line.is_empty() {
                        let _ = writeln!(log_out, "{line}");
                    }
                    continue;
                };
                let Ok(message) = serde_json::from_str::<Value>(message) else {
                    let _ = writeln!(log_out, "(unreadable protocol line) {line}");
                    continue;
                };
                if let Some(report) = message.get("report") {
                    let step = report.get("step").and_then(Value::as_u64).unwrap_or(0);
                    let value = report
                        .get("value")
                        .and_then(Value::as_f64)
                        .unwrap_or(f64::NAN);
                    if events
                        .send(Event::Report {
                            number,
                            step,
                            value,
                        })
                        .is_err()
                    {
                        break;
                    }
                } else if let Some(r) = message.get("result") {
                    result = Some(r.clone());
                }
            }
            let _ = events.send(Event::Finished { number, result });
        });
        Ok(Worker {
            number,
            child,
            stdin,
            log,
            interrupted: false,
        })
    }

    /// Answers the worker's last report.
    pub fn reply(&mut self, decision: Decision) {
        if let Some(stdin) = self.stdin.as_mut() {
            if writeln!(stdin, "{}", decision.word())
                .and_then(|_| stdin.flush())
                .is_err()
            {
                self.stdin = None;
            }
        }
    }

    /// Sends the worker one SIGINT (its trainer stops after the current step, checkpoint kept).
    pub fn interrupt(&mut self) {
        if !self.interrupted {
            self.interrupted = true;
            // SAFETY: kill with a child's pid and a standard signal number has no memory effects.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, libc::SIGINT);
            }
        }
    }

    /// Waits for the process to end (its stdout is already closed).
    pub fn wait(mut self) -> std::io::Result<ExitStatus> {
        drop(self.stdin.take());
        self.child.wait()
    }
}

/// The last `n` non-empty lines of a worker's log: the message of a crashed trial.
pub fn log_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Its own process group (the terminal's Ctrl-C goes to the parent, which forwards it once),
/// and SIGTERM when the parent dies.
#[cfg(target_os = "linux")]
fn detach(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
fn detach(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_round_trips_through_json() {
        let mut params = Map::new();
        params.insert("lr".into(), json!(0.001));
        let spec = WorkerSpec {
            sweep: "s".into(),
            call: 1,
            number: 7,
            params,
            run_dir: PathBuf::from("runs/s/trials/0007"),
        };
        assert_eq!(WorkerSpec::from_json(&spec.to_json()).unwrap(), spec);
    }
}
