//! HumanEval/MBPP-style problems (JSONL records with `prompt`, `test`, `entry_point`) checked by
//! running the model's completion in an external Python: `python3` from `PATH`, one subprocess per
//! sample, in a scratch directory of its own that is deleted afterwards, with limits set in the
//! child before `exec` (`setrlimit`: CPU seconds, address space, file size, open files; no core
//! dumps), a new session so the whole process group can be killed at the wall-clock limit, and an
//! environment holding only `PATH`.
//!
//! What this does not protect against (docs/eval.md): it is not a security boundary. The program
//! runs as this user and can read and write anything this user can, open network connections, and
//! start processes (which the wall-clock kill reaches only inside its process group). Run untrusted
//! model code in a container or VM.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use llmlab_plugin_api::{Error, Result};

/// The limits one sample's interpreter runs under.
#[derive(Debug, Clone, Copy)]
pub struct PythonLimits {
    pub cpu_seconds: u64,
    pub memory_bytes: u64,
    pub wall_clock: Duration,
}

impl Default for PythonLimits {
    fn default() -> Self {
        PythonLimits {
            cpu_seconds: 5,
            memory_bytes: 1 << 30,
            wall_clock: Duration::from_secs(10),
        }
    }
}

/// How a sample ended.
#[derive(Debug, Clone, PartialEq)]
pub enum PythonVerdict {
    Passed,
    /// The tests raised (an `AssertionError`, a `NameError`, ...): the last line of stderr.
    Failed(String),
    TimeLimit(Duration),
    CpuLimit,
    MemoryLimit,
}

impl PythonVerdict {
    pub fn reason(&self) -> Option<String> {
        match self {
            PythonVerdict::Passed => None,
            PythonVerdict::Failed(e) => Some(format!("failed: {e}")),
            PythonVerdict::TimeLimit(t) => {
                Some(format!("time limit: ran past {} s", t.as_secs_f64()))
            }
            PythonVerdict::CpuLimit => Some("cpu time limit".into()),
            PythonVerdict::MemoryLimit => Some("memory limit".into()),
        }
    }
}

/// `python3` (or `python`) on `path` (a `PATH`-style list), or an error saying it is needed.
pub fn find_python(path: Option<&std::ffi::OsStr>) -> Result<PathBuf> {
    let dirs: Vec<PathBuf> = path
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    for name in ["python3", "python"] {
        for dir in &dirs {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(Error::Data(
        "HumanEval/MBPP tasks run the model's code in Python, and no python3 (or python) is on PATH; \
         install Python 3 or put it on PATH, or evaluate the Rhai code tasks (code_easy, ...) instead"
            .into(),
    ))
}

/// The program a sample runs: the prompt and completion, the tests, and the call of `check`.
pub fn program(prompt: &str, completion: &str, test: &str, entry_point: &str) -> String {
    format!("{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n")
}

/// Runs `source` with `python` under `limits` in a fresh scratch directory.
pub fn run(python: &Path, source: &str, limits: &PythonLimits) -> Result<PythonVerdict> {
    let scratch = ScratchDir::new()?;
    let file = scratch.0.join("program.py");
    std::fs::write(&file, source).map_err(|e| Error::io(&file, e))?;
    let mut command = Command::new(python);
    command
        .arg("-I") // isolated: no user site-packages, no PYTHON* variables
        .arg(&file)
        .current_dir(&scratch.0)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (cpu, memory) = (limits.cpu_seconds, limits.memory_bytes);
    // SAFETY: only async-signal-safe calls (setsid, setrlimit) between fork and exec.
    unsafe {
        command.pre_exec(move || {
            libc::setsid();
            let limit = |resource, value: u64| {
                let rlimit = libc::rlimit {
                    rlim_cur: value as libc::rlim_t,
                    rlim_max: value as libc::rlim_t,
                };
                if libc::setrlimit(resource, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            limit(libc::RLIMIT_CPU, cpu)?;
            limit(libc::RLIMIT_AS, memory)?;
            limit(libc::RLIMIT_FSIZE, 1 << 20)?;
            limit(libc::RLIMIT_NOFILE, 64)?;
            limit(libc::RLIMIT_CORE, 0)?;
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| Error::Other(format!("cannot start {}: {e}", python.display())))?;
    let mut stderr = child.stderr.take().expect("piped");
    // Read stderr on a thread so a chatty program cannot block on a full pipe.
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| Error::Other(format!("waiting for python: {e}")))?
        {
            break Some(status);
        }
        if started.elapsed() > limits.wall_clock {
            // SAFETY: kill(2) on the child's process group (setsid made it its own).
            unsafe {
                libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stderr = reader.join().unwrap_or_default();
    use std::os::unix::process::ExitStatusExt;
    Ok(match status {
        None => PythonVerdict::TimeLimit(limits.wall_clock),
        Some(s) if s.success() => PythonVerdict::Passed,
        Some(s) if s.signal() == Some(libc::SIGXCPU) || s.signal() == Some(libc::SIGKILL) => {
            PythonVerdict::CpuLimit
        }
        Some(_) if stderr.contains("MemoryError") => PythonVerdict::MemoryLimit,
        Some(_) => PythonVerdict::Failed(
            stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("exited with an error")
                .trim()
                .to_string(),
        ),
    })
}

/// A directory of its own under the system temp dir, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<ScratchDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "llmlab-eval-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMPT: &str = "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n";
    const TEST: &str = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n";

    /// The HumanEval-format fixture's canonical solutions pass, assembled as human-eval does.
    #[test]
    fn canonical_solutions_of_the_fixture_pass() {
        let Ok(python) = find_python(std::env::var_os("PATH").as_deref()) else {
            return;
        };
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/eval/humaneval_tiny.jsonl"
        );
        let docs = crate::eval::task::read_jsonl(Path::new(fixture)).unwrap();
        assert_eq!(docs.len(), 3);
        for doc in docs {
            let field = |k: &str| doc[k].as_str().unwrap().to_string();
            let source = program(
                &field("prompt"),
                &field("canonical_solution"),
                &field("test"),
                &field("entry_point"),
            );
            let verdict = run(&python, &source, &PythonLimits::default()).unwrap();
            assert_eq!(verdict, PythonVerdict::Passed, "{}", field("task_id"));
        }
    }

    #[test]
    fn refuses_clearly_without_python() {
        let empty = std::env::temp_dir().join("llmlab-eval-no-python");
        std::fs::create_dir_all(&empty).unwrap();
        let err = find_python(Some(empty.as_os_str()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no python3") && err.contains("PATH"), "{err}");
        assert!(find_python(None).is_err());
    }

    #[test]
    fn runs_samples_with_limits_and_names_each_failure() {
        let Ok(python) = find_python(std::env::var_os("PATH").as_deref()) else {
            eprintln!("no python3 on PATH: the subprocess sandbox is not exercised here");
            return;
        };
        let limits = PythonLimits {
            cpu_seconds: 1,
            memory_bytes: 512 << 20,
            // Generous: the machine may be loaded, and the CPU limit must come first.
            wall_clock: Duration::from_secs(60),
        };
        let run_completion = |completion: &str| {
            run(&python, &program(PROMPT, completion, TEST, "add"), &limits).unwrap()
        };
        assert_eq!(run_completion("    return a + b\n"), PythonVerdict::Passed);
        let wrong = run_completion("    return a - b\n");
        assert!(
            matches!(&wrong, PythonVerdict::Failed(e) if e.contains("AssertionError")),
            "{wrong:?}"
        );
        assert_eq!(
            run_completion("    while True: pass\n"),
            PythonVerdict::CpuLimit
        );
        assert_eq!(
            run_completion("    x = bytearray(4 << 30)\n    return a + b\n"),
            PythonVerdict::MemoryLimit
        );
        let sleepy = PythonLimits {
            wall_clock: Duration::from_millis(300),
            ..limits
        };
        let slept = run(
            &python,
            &program(PROMPT, "    import time; time.sleep(60)\n", TEST, "add"),
            &sleepy,
        )
        .unwrap();
        assert_eq!(slept, PythonVerdict::TimeLimit(sleepy.wall_clock));
        // The scratch directory is the working directory and is gone afterwards.
        let cwd =
            run_completion("    import os; open('x', 'w').write(os.getcwd()); return a + b\n");
        assert_eq!(cwd, PythonVerdict::Passed);
    }
}
