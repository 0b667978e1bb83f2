//! What a sweep leaves on disk, in `runs/<sweep>/`:
//!
//! * `sweep.json`: the space, method, metric, direction, seed and pruner (resume refuses a
//!   different space, method, metric or direction under the same name);
//! * `trials.jsonl`: one line per finished trial (complete, pruned or failed), appended when
//!   the trial ends, so a killed sweep keeps every trial that finished;
//! * `best.rhai`: the best trial's parameters as a script snippet;
//! * `trials/<NNNN>/`: each trial's run directory (metrics, checkpoints, plots).
//!
//! Also the trial table `llmlab sweep status NAME` prints.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use llmlab_plugin_api::files::write_atomic;
use llmlab_plugin_api::serde_json::{self, json, Map, Value};
use llmlab_plugin_api::{Error, Result};

/// Whether smaller or larger values are better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Minimize,
    Maximize,
}

impl Direction {
    pub fn parse(text: &str) -> std::result::Result<Direction, String> {
        match text {
            "minimize" | "min" => Ok(Direction::Minimize),
            "maximize" | "max" => Ok(Direction::Maximize),
            other => Err(format!(
                "direction {other:?}: expected \"minimize\" or \"maximize\""
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Direction::Minimize => "minimize",
            Direction::Maximize => "maximize",
        }
    }

    /// The value as a loss (smaller is better in both directions).
    pub fn loss(self, value: f64) -> f64 {
        match self {
            Direction::Minimize => value,
            Direction::Maximize => -value,
        }
    }

    /// Whether `a` is strictly better than `b`.
    pub fn better(self, a: f64, b: f64) -> bool {
        self.loss(a) < self.loss(b)
    }
}

/// How a trial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TrialState {
    #[default]
    Complete,
    /// Stopped early by the pruner; its value is its last intermediate value.
    Pruned,
    /// The objective threw, returned no number, or its worker process died.
    Failed,
}

impl TrialState {
    pub fn name(self) -> &'static str {
        match self {
            TrialState::Complete => "complete",
            TrialState::Pruned => "pruned",
            TrialState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<TrialState> {
        match text {
            "complete" => Some(TrialState::Complete),
            "pruned" => Some(TrialState::Pruned),
            "failed" => Some(TrialState::Failed),
            _ => None,
        }
    }
}

/// One finished trial: a line of `trials.jsonl`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrialRecord {
    pub number: usize,
    pub params: Map<String, Value>,
    pub state: TrialState,
    pub value: Option<f64>,
    /// `(step, value)` in report order.
    pub intermediate: Vec<(u64, f64)>,
    pub run_dir: String,
    /// Seconds since the Unix epoch when the trial started.
    pub started: f64,
    pub duration_s: f64,
    pub error: Option<String>,
}

impl TrialRecord {
    pub fn to_json(&self) -> Value {
        json!({
            "number": self.number,
            "params": self.params,
            "state": self.state.name(),
            "value": self.value.filter(|v| v.is_finite()),
            "intermediate": self.intermediate.iter().map(|(s, v)| json!([s, v])).collect::<Vec<_>>(),
            "run_dir": self.run_dir,
            "started": self.started,
            "duration_s": self.duration_s,
            "error": self.error,
        })
    }

    pub fn from_json(value: &Value) -> std::result::Result<TrialRecord, String> {
        let state = value
            .get("state")
            .and_then(Value::as_str)
            .and_then(TrialState::parse)
            .ok_or("no valid state")?;
        let intermediate = value
            .get("intermediate")
            .and_then(Value::as_array)
            .map(|points| {
                points
                    .iter()
                    .filter_map(|p| Some((p.get(0)?.as_u64()?, p.get(1)?.as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(TrialRecord {
            number: value
                .get("number")
                .and_then(Value::as_u64)
                .ok_or("no number")? as usize,
            params: value
                .get("params")
                .and_then(Value::as_object)
                .cloned()
                .ok_or("no params")?,
            state,
            value: value.get("value").and_then(Value::as_f64),
            intermediate,
            run_dir: value
                .get("run_dir")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            started: value.get("started").and_then(Value::as_f64).unwrap_or(0.0),
            duration_s: value
                .get("duration_s")
                .and_then(Value::as_f64)
                .unwrap_or(0.0),
            error: value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string),
        })
    }

    /// Steps this trial trained: its last reported step (0 when it reported none).
    pub fn steps(&self) -> u64 {
        self.intermediate.last().map_or(0, |(s, _)| *s)
    }
}

/// The sweep directory `root/<name>`.
pub fn sweep_dir(root: &Path, name: &str) -> Result<PathBuf> {
    if name.is_empty() || name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err(Error::msg(format!(
            "sweep name {name:?} must be a plain directory name"
        )));
    }
    Ok(root.join(name))
}

pub const TRIALS_FILE: &str = "trials.jsonl";
pub const META_FILE: &str = "sweep.json";

/// Appends one finished trial to `trials.jsonl` (one `write` of one line, then `fsync`).
pub fn append_trial(dir: &Path, record: &TrialRecord) -> Result<()> {
    let path = dir.join(TRIALS_FILE);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    let line = format!("{}\n", record.to_json());
    file.write_all(line.as_bytes())
        .and_then(|_| file.sync_data())
        .map_err(|e| Error::io(&path, e))
}

/// The finished trials of the sweep in `dir` (none when it has not started). A torn last line
/// (the process died mid-write) is skipped; any other bad line is an error naming it.
pub fn load_trials(dir: &Path) -> Result<Vec<TrialRecord>> {
    let path = dir.join(TRIALS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut trials = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let parsed = serde_json::from_str::<Value>(line)
            .map_err(|e| e.to_string())
            .and_then(|v| TrialRecord::from_json(&v));
        match parsed {
            Ok(t) => trials.push(t),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => {
                return Err(Error::msg(format!(
                    "{} line {}: {e}",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    // A trial number appears once (the first record wins if a crash duplicated one).
    let mut seen = std::collections::BTreeSet::new();
    trials.retain(|t| seen.insert(t.number));
    Ok(trials)
}

pub fn write_meta(dir: &Path, meta: &Value) -> Result<()> {
    write_atomic(
        &dir.join(META_FILE),
        serde_json::to_string_pretty(meta)?.as_bytes(),
    )
}

pub fn read_meta(dir: &Path) -> Result<Option<Value>> {
    let path = dir.join(META_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            Ok(Some(serde_json::from_str(&text).map_err(|e| {
                Error::msg(format!("{}: {e}", path.display()))
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// The best complete trial.
pub fn best(trials: &[TrialRecord], direction: Direction) -> Option<&TrialRecord> {
    trials
        .iter()
        .filter(|t| t.state == TrialState::Complete)
        .filter(|t| t.value.is_some_and(f64::is_finite))
        .min_by(|a, b| {
            direction
                .loss(a.value.unwrap_or_default())
                .total_cmp(&direction.loss(b.value.unwrap_or_default()))
                .then(a.number.cmp(&b.number))
        })
}

/// A parameter value as a Rhai literal (`3e-4` stays a float, strings quoted).
pub fn rhai_literal(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or_default();
            let text = format!("{f:?}");
            if text.contains(['.', 'e', 'E']) {
                text
            } else {
                format!("{text}.0")
            }
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(rhai_literal)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

/// `best.rhai`: the best parameters as a map literal ready to paste.
pub fn best_snippet(name: &str, metric: &str, best: &TrialRecord) -> String {
    let fields: Vec<String> = best
        .params
        .iter()
        .map(|(k, v)| format!("    {k}: {},", rhai_literal(v)))
        .collect();
    format!(
        "// Best trial of sweep {name}: trial {} with {metric} = {}\n// (run directory {}).\nlet best_params = #{{\n{}\n}};\n",
        best.number,
        best.value.unwrap_or(f64::NAN),
        best.run_dir,
        fields.join("\n")
    )
}

/// The trial table: number, state, value, steps, seconds, parameters; the best marked `*`.
pub fn status_table(name: &str, trials: &[TrialRecord], meta: Option<&Value>) -> String {
    let direction = meta
        .and_then(|m| m.get("direction"))
        .and_then(Value::as_str)
        .and_then(|d| Direction::parse(d).ok())
        .unwrap_or_default();
    let metric = meta
        .and_then(|m| m.get("metric"))
        .and_then(Value::as_str)
        .unwrap_or("value");
    let best_number = best(trials, direction).map(|t| t.number);
    let param_names: Vec<String> = {
        let mut names: Vec<String> = trials
            .iter()
            .flat_map(|t| t.params.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    };
    let mut out = String::new();
    let count = |s: TrialState| trials.iter().filter(|t| t.state == s).count();
    out.push_str(&format!(
        "sweep {name}: {} trials ({} complete, {} pruned, {} failed), {} {metric}\n",
        trials.len(),
        count(TrialState::Complete),
        count(TrialState::Pruned),
        count(TrialState::Failed),
        direction.name(),
    ));
    let mut header = format!(
        "{:>5}  {:<9} {:>12} {:>7} {:>8}",
        "trial", "state", metric, "steps", "seconds"
    );
    for p in &param_names {
        header.push_str(&format!("  {p:>12}"));
    }
    out.push_str(&header);
    out.push('\n');
    let mut sorted: Vec<&TrialRecord> = trials.iter().collect();
    sorted.sort_by_key(|t| t.number);
    for t in sorted {
        let mark = if Some(t.number) == best_number {
            "*"
        } else {
            " "
        };
        let value = t
            .value
            .map_or_else(|| "-".to_string(), |v| format!("{v:.5}"));
        let mut line = format!(
            "{:>4}{mark}  {:<9} {:>12} {:>7} {:>8.1}",
            t.number,
            t.state.name(),
            value,
            t.steps(),
            t.duration_s
        );
        for p in &param_names {
            let v = t.params.get(p).map_or_else(|| "-".to_string(), short_value);
            line.push_str(&format!("  {v:>12}"));
        }
        if let Some(e) = &t.error {
            line.push_str(&format!(
                "  error: {}",
                e.lines().next().unwrap_or_default()
            ));
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn short_value(value: &Value) -> String {
    match value {
        Value::Number(n) if n.is_f64() => format!("{:.4e}", n.as_f64().unwrap_or_default()),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(number: usize, state: TrialState, value: Option<f64>) -> TrialRecord {
        let mut params = Map::new();
        params.insert("lr".into(), json!(0.003));
        params.insert("act".into(), json!("gelu"));
        TrialRecord {
            number,
            params,
            state,
            value,
            intermediate: vec![(10, 2.0), (20, 1.5)],
            run_dir: format!("runs/s/trials/{number:04}"),
            error: (state == TrialState::Failed).then(|| "objective threw: boom".to_string()),
            ..TrialRecord::default()
        }
    }

    #[test]
    fn trials_round_trip_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let a = trial(0, TrialState::Complete, Some(1.5));
        let b = trial(1, TrialState::Failed, None);
        append_trial(dir.path(), &a).unwrap();
        append_trial(dir.path(), &b).unwrap();
        assert_eq!(load_trials(dir.path()).unwrap(), vec![a.clone(), b.clone()]);
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(TRIALS_FILE))
            .unwrap();
        f.write_all(b"{\"number\": 2, \"par").unwrap();
        assert_eq!(load_trials(dir.path()).unwrap().len(), 2);
    }

    #[test]
    fn best_ignores_pruned_and_failed_and_follows_direction() {
        let trials = vec![
            trial(0, TrialState::Complete, Some(2.0)),
            trial(1, TrialState::Pruned, Some(0.5)),
            trial(2, TrialState::Complete, Some(1.0)),
            trial(3, TrialState::Failed, None),
        ];
        assert_eq!(best(&trials, Direction::Minimize).unwrap().number, 2);
        assert_eq!(best(&trials, Direction::Maximize).unwrap().number, 0);
        let snippet = best_snippet("s", "val_loss", &trials[2]);
        assert!(
            snippet.contains("lr: 0.003,") && snippet.contains("act: \"gelu\""),
            "{snippet}"
        );
        let table = status_table(
            "s",
            &trials,
            Some(&json!({ "direction": "minimize", "metric": "val_loss" })),
        );
        assert!(table.contains("   2*  complete"), "{table}");
        assert!(table.contains("error: objective threw: boom"), "{table}");
        assert!(table.contains("1 pruned, 1 failed"), "{table}");
    }
}
