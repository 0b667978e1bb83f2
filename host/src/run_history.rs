//! Reading a run directory back: the points of `metrics.jsonl`, the entropy floor recorded with
//! the run (`configs/data.json`), and finding a run by name or path. The REPL's `:plot` and the
//! script's `plot(...)` use it, for this session's run or any earlier one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use llmlab_plugin_api::serde_json::{self, Value};

/// A run's metrics history, `(step, values)` per line of `metrics.jsonl`. Lines that do not
/// parse (a run killed while writing) and `null` values are skipped.
pub fn read_metrics(run: &Path) -> std::io::Result<Vec<(u64, BTreeMap<String, f64>)>> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl"))?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|record| {
            let object = record.as_object()?;
            let step = object.get("step")?.as_u64()?;
            let values = object
                .iter()
                .filter(|(k, _)| k.as_str() != "step")
                .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                .collect();
            Some((step, values))
        })
        .collect())
}

/// The entropy floor (nats/token) of the data a run trained on, when the data's distribution is
/// known.
pub fn run_floor(run: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(run.join("configs/data.json")).ok()?;
    serde_json::from_str::<Value>(&text)
        .ok()?
        .get("entropy_floor_nats_per_token")?
        .as_f64()
}

/// The run directory `name` names: a directory holding `metrics.jsonl`, or `<runs_root>/<name>`.
pub fn find_run(runs_root: &Path, name: &str) -> Result<PathBuf, String> {
    let direct = Path::new(name);
    if direct.join("metrics.jsonl").is_file() {
        return Ok(direct.to_path_buf());
    }
    let named = runs_root.join(name);
    if named.join("metrics.jsonl").is_file() {
        return Ok(named);
    }
    let known = recent_runs(runs_root);
    Err(if known.is_empty() {
        format!(
            "no run `{name}`: neither {} nor {name} holds a metrics.jsonl",
            named.display()
        )
    } else {
        format!(
            "no run `{name}` in {}; runs there, newest first: {}",
            runs_root.display(),
            known.join(", ")
        )
    })
}

/// Names of the runs under `runs_root` with metrics, newest first (at most 8).
pub fn recent_runs(runs_root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(runs_root) else {
        return Vec::new();
    };
    let mut runs: Vec<(std::time::SystemTime, String)> = entries
        .flatten()
        .filter_map(|e| {
            let modified = std::fs::metadata(e.path().join("metrics.jsonl"))
                .ok()?
                .modified()
                .ok()?;
            Some((modified, e.file_name().to_string_lossy().into_owned()))
        })
        .collect();
    runs.sort_by(|a, b| b.cmp(a));
    runs.into_iter().take(8).map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_and_floor_read_back_skipping_broken_lines() {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("r1");
        std::fs::create_dir_all(run.join("configs")).unwrap();
        std::fs::write(
            run.join("metrics.jsonl"),
            "{\"step\":1,\"loss\":3.5,\"val_loss\":null}\n{\"step\":2,\"loss\":3.0,\"val_loss\":3.1}\n{\"step\":3,\"lo",
        )
        .unwrap();
        std::fs::write(
            run.join("configs/data.json"),
            "{\"entropy_floor_nats_per_token\": 1.25}",
        )
        .unwrap();
        let history = read_metrics(&run).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].1.get("loss"), Some(&3.5));
        assert_eq!(history[0].1.get("val_loss"), None);
        assert_eq!(history[1].1.get("val_loss"), Some(&3.1));
        assert_eq!(run_floor(&run), Some(1.25));
        assert_eq!(find_run(root.path(), "r1").unwrap(), run);
        let err = find_run(root.path(), "r2").unwrap_err();
        assert!(err.contains("no run `r2`") && err.contains("r1"), "{err}");
    }
}
