//! Run directories: every experiment writes `runs/<name>/` — the script, resolved component
//! configs, `metrics.jsonl`, plots, checkpoints (written by trainers), `tokenizer.json`, and the
//! fingerprints of the plugins loaded.
//!
//! The name comes from `--set name=...` (then an existing directory is reused, so a run can be
//! resumed into it) or is `<script stem>-<UTC timestamp>`.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use llmlab_plugin_api::files::write_atomic;
use llmlab_plugin_api::serde_json::{self, json, Value};
use llmlab_plugin_api::{Error, MetricsSink, Result};

/// One run's directory.
pub struct RunDir {
    pub path: PathBuf,
    metrics: Arc<JsonlMetrics>,
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
        Ok(RunDir { path, metrics })
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

/// `YYYYmmdd-HHMMSS` for seconds since the epoch (civil-from-days, proleptic Gregorian).
fn utc_timestamp(seconds: u64) -> String {
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
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Metrics as JSON lines (`{"step": 10, "loss": 3.2, ...}`), flushed per record, and kept in
/// memory for the plots.
pub struct JsonlMetrics {
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
            file: Mutex::new(BufWriter::new(file)),
            history: Mutex::new(Vec::new()),
        })
    }

    /// Every record so far in this session.
    pub fn history(&self) -> Vec<(u64, BTreeMap<String, f64>)> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
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
}
