//! Run directories: every experiment writes `runs/<name>/` — the script, resolved component
//! configs, `metrics.jsonl`, plots, checkpoints (written by trainers), `tokenizer.json`, and the
//! fingerprints of the plugins loaded.
//!
//! The name comes from `--set name=...` (then an existing directory is reused, so a run can be
//! resumed into it) or is `<script stem>-<UTC timestamp>`.
//!
//! One process at a time: opening takes an advisory lock on `runs/<name>/.lock` (which holds the
//! owner's pid) for as long as the run is open, so a second process naming the same run is
//! refused with the holder's pid instead of interleaving `metrics.jsonl` and racing on the
//! checkpoint swap. Under the lock, temp files left by a killed process (`.<file>.tmp-<pid>` of a
//! pid that no longer runs) are removed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use llmlab_plugin_api::files::write_atomic;
use llmlab_plugin_api::serde_json::{self, json, Value};
use llmlab_plugin_api::{Error, MetricsSink, Result};

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// One run's directory.
pub struct RunDir {
    pub path: PathBuf,
    metrics: Arc<JsonlMetrics>,
    /// Holds the advisory lock (released when the file is closed, also by a crash).
    _lock: Option<File>,
}

impl RunDir {
    /// Opens `root/<name>`, creating it; records the script's text and the plugin fingerprints.
    pub fn open(
        root: &Path,
        name: &str,
        script: Option<&Path>,
        plugins: &[(String, String)],
    ) -> Result<RunDir> {
        if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
            return Err(Error::msg(format!(
                "run name {name:?} must be a plain directory name"
            )));
        }
        let path = root.join(name);
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        let lock = lock_run_dir(&path)?;
        remove_stale_temps(&path, |_| true);
        if let Some(script) = script {
            let text = std::fs::read(script).map_err(|e| Error::io(script, e))?;
            write_atomic(&path.join("script.rhai"), &text)?;
        }
        let fingerprints: BTreeMap<&str, &str> = plugins
            .iter()
            .map(|(n, f)| (n.as_str(), f.as_str()))
            .collect();
        let record = json!({ "host": llmlab_plugin_api::FINGERPRINT, "plugins": fingerprints });
        write_atomic(
            &path.join("plugins.json"),
            serde_json::to_string_pretty(&record)?.as_bytes(),
        )?;
        let metrics = Arc::new(JsonlMetrics::open(&path.join("metrics.jsonl"))?);
        Ok(RunDir {
            path,
            metrics,
            _lock: lock,
        })
    }

    /// Records a component's resolved config as `configs/<label>.json`.
    pub fn record_config(&self, label: &str, config: &Value) -> Result<()> {
        let file = self.path.join("configs").join(format!("{label}.json"));
        write_atomic(&file, serde_json::to_string_pretty(config)?.as_bytes())
    }

    pub fn metrics(&self) -> &JsonlMetrics {
        &self.metrics
    }

    /// The metrics file as the sink plugins write to.
    pub fn metrics_sink(&self) -> Arc<dyn MetricsSink> {
        self.metrics.clone()
    }
}

/// Takes the run directory's advisory lock (`flock`, released by the kernel when the process
/// ends however it ends), writing our pid into the lock file. A directory locked by another
/// process is refused naming its pid. A filesystem without locks only gets a warning: refusing
/// every run there would be worse than the race the lock prevents.
fn lock_run_dir(dir: &Path) -> Result<Option<File>> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => {
            let pid = format!("{}\n", std::process::id());
            file.set_len(0)
                .and_then(|_| file.write_all(pid.as_bytes()))
                .map_err(|e| Error::io(&path, e))?;
            Ok(Some(file))
        }
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_string(),
                pid => format!("process {pid}"),
            };
            Err(Error::msg(format!(
                "run directory {} is in use by {holder} (it holds {}); wait for that run to \
                 end or stop it, or give this run another name with --set name=...",
                dir.display(),
                path.display()
            )))
        }
        Err(TryLockError::Error(error)) => {
            llmlab_plugin_api::tracing::warn!(
                %error,
                "{}: cannot lock the run directory; another process could use it at the same time",
                path.display()
            );
            Ok(None)
        }
    }
}

/// Whether process `pid` exists (a pid we may not signal still exists).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 performs only the existence and permission checks; nothing is sent.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The pid in a temp name `.<base>.tmp-<pid>` (also `.<base>.old-<pid>`), with `<base>`.
fn temp_owner(name: &str) -> Option<(&str, u32)> {
    let rest = name.strip_prefix('.')?;
    let (base, pid) = rest
        .rsplit_once(".tmp-")
        .or_else(|| rest.rsplit_once(".old-"))?;
    if base.is_empty() || pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((base, pid.parse().ok()?))
}

/// Removes the temp files and directories in `dir` that a killed process left behind: entries
/// named `.<base>.tmp-<pid>` or `.<base>.old-<pid>` whose `<base>` `accept`s and whose pid is
/// not running (nor ours). Failures are warnings: this is tidying, never a reason to stop.
/// Returns how many entries were removed.
pub fn remove_stale_temps(dir: &Path, accept: impl Fn(&str) -> bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((base, pid)) = name.to_str().and_then(temp_owner) else {
            continue;
        };
        if !accept(base) || pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let result = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match result {
            Ok(()) => {
                removed += 1;
                llmlab_plugin_api::tracing::info!(
                    "removed {}, left by process {pid}, which no longer runs",
                    path.display()
                );
            }
            Err(error) => llmlab_plugin_api::tracing::warn!(
                %error,
                "could not remove the stale temp {}",
                path.display()
            ),
        }
    }
    removed
}

/// A run name for `script` when none was given: `<stem>-<YYYYmmdd-HHMMSS>` in UTC.
pub fn default_run_name(script: Option<&Path>) -> String {
    let stem = script
        .and_then(|s| s.file_stem())
        .and_then(|s| s.to_str())
        .unwrap_or("repl");
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{stem}-{}", utc_timestamp(seconds))
}

/// `base`, or `base-2`, `base-3`, ... : the first name with no directory under `root` yet.
pub fn unused_name(root: &Path, base: &str) -> String {
    if !root.join(base).exists() {
        return base.to_string();
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|name| !root.join(name).exists())
        .unwrap_or_else(|| base.to_string())
}

/// `YYYYmmdd-HHMMSS` for seconds since the epoch.
fn utc_timestamp(seconds: u64) -> String {
    let t = UtcTime::from_epoch_seconds(seconds);
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// A UTC calendar time: run names and the kernel's message dates need one, and no date crate
/// is worth a dependency for it.
pub struct UtcTime {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
}

impl UtcTime {
    /// Civil date from days since the epoch (Howard Hinnant's algorithm, proleptic Gregorian).
    pub fn from_epoch_seconds(seconds: u64) -> UtcTime {
        let days = (seconds / 86_400) as i64;
        let rem = seconds % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        UtcTime {
            year: yoe + era * 400 + i64::from(month <= 2),
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
        }
    }
}

/// Metrics as JSON lines (`{"step": 10, "loss": 3.2, ...}`), flushed per record, and kept in
/// memory for the plots.
pub struct JsonlMetrics {
    path: PathBuf,
    file: Mutex<BufWriter<File>>,
    history: Mutex<Vec<(u64, BTreeMap<String, f64>)>>,
}

impl JsonlMetrics {
    pub fn open(path: &Path) -> Result<JsonlMetrics> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(JsonlMetrics {
            path: path.to_path_buf(),
            file: Mutex::new(BufWriter::new(file)),
            history: Mutex::new(Vec::new()),
        })
    }

    /// A run resumed from a checkpoint at `step`: drops the records after `step` at the end of
    /// the file (those a killed process wrote after its last checkpoint, which the resumed run
    /// writes again) and a partial last line. Only the trailing records go: a run directory may
    /// hold an earlier trainer's records whose steps start again at 1. Returns how many lines
    /// were dropped.
    pub fn rewind(&self, step: u64) -> Result<usize> {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.flush().map_err(|e| Error::io(&self.path, e))?;
        let text = std::fs::read(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let (keep, dropped) = rewound_length(&text, step);
        if dropped > 0 {
            // The file is opened for appending, so the next record lands at the new end.
            file.get_ref()
                .set_len(keep as u64)
                .map_err(|e| Error::io(&self.path, e))?;
            llmlab_plugin_api::tracing::info!(
                "{}: dropped {dropped} record(s) after step {step}, written after the checkpoint the run resumes from",
                self.path.display()
            );
        }
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        while history.last().is_some_and(|(s, _)| *s > step) {
            history.pop();
        }
        Ok(dropped)
    }

    /// Every record so far in this session.
    pub fn history(&self) -> Vec<(u64, BTreeMap<String, f64>)> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Where `metrics.jsonl` (its bytes `text`) ends once the trailing records with a step above
/// `step` and any partial or unreadable trailing line are dropped, and how many lines go.
fn rewound_length(text: &[u8], step: u64) -> (usize, usize) {
    let mut end = text.len();
    let mut dropped = 0;
    while end > 0 {
        // The last line is text[start..end], without its newline (a partial line has none).
        let body_end = if text[end - 1] == b'\n' { end - 1 } else { end };
        let start = text[..body_end]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let line_step = serde_json::from_slice::<Value>(&text[start..body_end])
            .ok()
            .and_then(|v| v.get("step").and_then(Value::as_u64));
        let complete = body_end < end;
        match line_step {
            Some(s) if s <= step && complete => break,
            _ => {
                end = start;
                dropped += 1;
            }
        }
    }
    (end, dropped)
}

impl MetricsSink for JsonlMetrics {
    fn record(&self, step: u64, values: &BTreeMap<String, f64>) {
        let mut line = serde_json::Map::new();
        line.insert("step".into(), json!(step));
        for (k, v) in values {
            // JSON has no NaN/inf: write null rather than an unparsable line.
            line.insert(
                k.clone(),
                if v.is_finite() { json!(v) } else { Value::Null },
            );
        }
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let written = serde_json::to_writer(&mut *file, &Value::Object(line))
            .map_err(std::io::Error::from)
            .and_then(|_| file.write_all(b"\n"))
            .and_then(|_| file.flush());
        if let Err(error) = written {
            llmlab_plugin_api::tracing::warn!(%error, "could not write metrics.jsonl");
        }
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((step, values.clone()));
    }

    fn rewind(&self, step: u64) {
        if let Err(error) = JsonlMetrics::rewind(self, step) {
            llmlab_plugin_api::tracing::warn!(%error, "could not rewind metrics.jsonl");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_civil_utc() {
        assert_eq!(utc_timestamp(0), "19700101-000000");
        // 2024-02-29T12:34:56Z
        assert_eq!(utc_timestamp(1_709_210_096), "20240229-123456");
    }

    #[test]
    fn run_dir_records_script_plugins_configs_and_metrics() {
        let root = tempfile::tempdir().unwrap();
        let script = root.path().join("exp.rhai");
        std::fs::write(&script, "print(1);").unwrap();
        let run = RunDir::open(
            root.path(),
            "try1",
            Some(&script),
            &[("gpt".into(), "format=1".into())],
        )
        .unwrap();
        run.record_config("lm", &json!({ "steps": 3 })).unwrap();
        let mut values = BTreeMap::new();
        values.insert("loss".to_string(), 2.5);
        values.insert("val_loss".to_string(), f64::NAN);
        run.metrics().record(1, &values);
        let dir = root.path().join("try1");
        assert_eq!(
            std::fs::read_to_string(dir.join("script.rhai")).unwrap(),
            "print(1);"
        );
        assert!(std::fs::read_to_string(dir.join("plugins.json"))
            .unwrap()
            .contains("\"gpt\""));
        assert!(std::fs::read_to_string(dir.join("configs/lm.json"))
            .unwrap()
            .contains("\"steps\": 3"));
        let line = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
        let parsed: Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(parsed, json!({ "step": 1, "loss": 2.5, "val_loss": null }));
        assert_eq!(run.metrics().history().len(), 1);
        assert!(RunDir::open(root.path(), "../escape", None, &[]).is_err());
    }

    #[test]
    fn generated_names_skip_existing_directories() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(unused_name(root.path(), "x-1"), "x-1");
        std::fs::create_dir(root.path().join("x-1")).unwrap();
        std::fs::create_dir(root.path().join("x-1-2")).unwrap();
        assert_eq!(unused_name(root.path(), "x-1"), "x-1-3");
    }

    #[test]
    fn a_second_opener_is_refused_naming_the_holder_until_it_closes() {
        let root = tempfile::tempdir().unwrap();
        let first = RunDir::open(root.path(), "shared", None, &[]).unwrap();
        let lock = root.path().join("shared").join(LOCK_FILE);
        assert_eq!(
            std::fs::read_to_string(&lock).unwrap().trim(),
            std::process::id().to_string()
        );
        // flock belongs to the open file, so a second open in this process stands in for a
        // second process.
        let error = RunDir::open(root.path(), "shared", None, &[])
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains(&format!("in use by process {}", std::process::id()))
                && error.contains("shared"),
            "{error}"
        );
        drop(first);
        assert!(RunDir::open(root.path(), "shared", None, &[]).is_ok());
    }

    /// A pid that no longer runs: a child that has exited and been reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed_live_ones_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("r");
        let dead = dead_pid();
        let mut live = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let stale_dir = dir.join(format!(".checkpoint.tmp-{dead}"));
        std::fs::create_dir_all(stale_dir.join("x")).unwrap();
        std::fs::write(dir.join(format!(".train.bin.tmp-{dead}")), b"ids").unwrap();
        let busy = dir.join(format!(".checkpoint.tmp-{}", live.id()));
        std::fs::create_dir_all(&busy).unwrap();
        let unrelated = ["notes.tmp-1", ".checkpoint.old", ".x.tmp-12a"];
        for name in unrelated {
            std::fs::write(dir.join(name), b"keep").unwrap();
        }
        let _run = RunDir::open(root.path(), "r", None, &[]).unwrap();
        assert!(!stale_dir.exists());
        assert!(!dir.join(format!(".train.bin.tmp-{dead}")).exists());
        assert!(busy.exists(), "a running process's temp is not touched");
        for name in unrelated {
            assert!(dir.join(name).exists(), "{name}");
        }
        live.kill().unwrap();
        live.wait().unwrap();
        // `accept` limits what goes.
        std::fs::write(dir.join(format!(".other.tmp-{dead}")), b"x").unwrap();
        assert_eq!(remove_stale_temps(&dir, |base| base == "train.bin"), 0);
        assert_eq!(remove_stale_temps(&dir, |base| base == "other"), 1);
    }

    fn record(metrics: &JsonlMetrics, step: u64) {
        let mut values = BTreeMap::new();
        values.insert("loss".to_string(), step as f64);
        metrics.record(step, &values);
    }

    fn steps(path: &Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn rewinding_drops_the_trailing_records_after_the_checkpoint() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("metrics.jsonl");
        {
            // An earlier trainer (steps 1..=4), then one killed at step 7 after a checkpoint
            // at step 5, leaving half a line.
            let crashed = JsonlMetrics::open(&path).unwrap();
            for step in [1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7] {
                record(&crashed, step);
            }
        }
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"step\": 8, \"lo").unwrap();
        drop(file);
        let resumed = JsonlMetrics::open(&path).unwrap();
        assert_eq!(resumed.rewind(5).unwrap(), 3);
        record(&resumed, 6);
        assert_eq!(steps(&path), [1, 2, 3, 4, 1, 2, 3, 4, 5, 6]);
        assert_eq!(resumed.history().len(), 1);
        // Nothing after the step: nothing dropped.
        assert_eq!(resumed.rewind(6).unwrap(), 0);
        assert_eq!(rewound_length(b"", 3), (0, 0));
    }
}
