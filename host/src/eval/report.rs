//! What an evaluation leaves in its directory and how runs are compared: `results.json` (config,
//! model fingerprint, each task's version, digest and metrics with standard errors),
//! `report.md` (the same as a table), `<task>.samples.jsonl` (every document's outcome); and
//! `llmlab eval compare`'s one table over several runs.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use llmlab_plugin_api::files::write_atomic;
use llmlab_plugin_api::serde_json::{self, json, Map, Value};
use llmlab_plugin_api::{Error, Result};

use super::runner::TaskResult;

/// One evaluation run: what was asked, of which model, and the results.
pub struct Report {
    pub config: Value,
    pub model: Value,
    pub tasks: Vec<TaskResult>,
}

impl Report {
    pub fn to_json(&self) -> Value {
        let tasks: Map<String, Value> = self
            .tasks
            .iter()
            .map(|t| {
                let metrics: Map<String, Value> = t
                    .metrics
                    .iter()
                    .map(|(m, e)| (m.clone(), json!({"value": e.value, "stderr": e.stderr})))
                    .collect();
                (
                    t.name.clone(),
                    json!({
                        "version": t.version,
                        "digest": t.digest,
                        "output_type": t.output_type.name(),
                        "documents": t.documents,
                        "metrics": metrics,
                        "extra": t.extra,
                    }),
                )
            })
            .collect();
        json!({
            "created": created_now(),
            "config": self.config,
            "model": self.model,
            "tasks": tasks,
        })
    }

    /// Writes results.json, report.md and the samples into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = self.to_json();
        let text = serde_json::to_string_pretty(&json)?;
        write_atomic(&dir.join("results.json"), text.as_bytes())?;
        let mut md = String::from("# Evaluation\n\n");
        let _ = writeln!(
            md,
            "Model `{}` ({} parameters, sha256 `{}`).\n",
            self.model["name"].as_str().unwrap_or("?"),
            self.model["num_params"],
            self.model["sha256"].as_str().unwrap_or("?")
        );
        md.push_str(&table(&json));
        write_atomic(&dir.join("report.md"), md.as_bytes())?;
        for t in &self.tasks {
            let mut lines = String::new();
            for o in &t.outcomes {
                lines.push_str(&serde_json::to_string(o)?);
                lines.push('\n');
            }
            write_atomic(
                &dir.join(format!("{}.samples.jsonl", t.name)),
                lines.as_bytes(),
            )?;
        }
        Ok(())
    }
}

fn created_now() -> String {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = crate::runs::UtcTime::from_epoch_seconds(seconds);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// The markdown table of a results.json: one row per task and metric.
pub fn table(results: &Value) -> String {
    let mut out = String::from("| task | version | metric | value | ± stderr | n |\n");
    out.push_str("| --- | --- | --- | ---: | ---: | ---: |\n");
    for (name, task) in results["tasks"].as_object().into_iter().flatten() {
        for (metric, e) in task["metrics"].as_object().into_iter().flatten() {
            let _ = writeln!(
                out,
                "| {name} | {} | {metric} | {} | {} | {} |",
                task["version"],
                number(&e["value"]),
                number(&e["stderr"]),
                task["documents"]
            );
        }
        if let Some(floor) = task["extra"]["floor_bits_per_byte"].as_f64() {
            let _ = writeln!(
                out,
                "| {name} | {} | floor_bits_per_byte | {floor:.4} |  | {} |",
                task["version"], task["documents"]
            );
        }
    }
    out
}

fn number(v: &Value) -> String {
    v.as_f64().map_or_else(|| "—".into(), |x| format!("{x:.4}"))
}

/// The results.json of a run: `path` itself, `path/results.json` or `path/eval/results.json`.
pub fn find_results(path: &Path) -> Result<PathBuf> {
    let candidates = [
        path.to_path_buf(),
        path.join("results.json"),
        path.join("eval").join("results.json"),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Data(format!(
                "{}: no results.json there (nor in {}/eval); run `llmlab eval --model ... --out ...` first",
                path.display(),
                path.display()
            ))
        })
}

/// Reads a results.json, naming the file in errors.
pub fn read_results(path: &Path) -> Result<Value> {
    let file = find_results(path)?;
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| Error::Data(format!("{}: {e}", file.display())))?;
    if !json["tasks"].is_object() {
        return Err(Error::Data(format!(
            "{}: not an evaluation's results.json (no `tasks`)",
            file.display()
        )));
    }
    Ok(json)
}

/// Rows `(task, metric)` and one `(value, stderr)` column per run, in first-seen order.
pub type Comparison = Vec<((String, String), Vec<Option<(f64, f64)>>)>;

pub fn comparison(runs: &[Value]) -> Comparison {
    let mut rows: Comparison = Vec::new();
    for (r, results) in runs.iter().enumerate() {
        for (task, t) in results["tasks"].as_object().into_iter().flatten() {
            for (metric, e) in t["metrics"].as_object().into_iter().flatten() {
                let key = (task.clone(), metric.clone());
                let i = match rows.iter().position(|(k, _)| *k == key) {
                    Some(i) => i,
                    None => {
                        rows.push((key, vec![None; runs.len()]));
                        rows.len() - 1
                    }
                };
                if let (Some(v), Some(s)) = (e["value"].as_f64(), e["stderr"].as_f64()) {
                    rows[i].1[r] = Some((v, s));
                }
            }
        }
    }
    rows
}

/// The comparison as a markdown table, one column per run (`value ± stderr`), and a note where
/// a task's version or digest differs between runs (their numbers are not comparable).
pub fn compare_table(labels: &[String], runs: &[Value]) -> String {
    let mut out = format!("| task | metric | {} |\n", labels.join(" | "));
    let _ = writeln!(out, "| --- | --- |{}", " ---: |".repeat(labels.len()));
    for ((task, metric), cells) in comparison(runs) {
        let cells: Vec<String> = cells
            .iter()
            .map(|c| c.map_or_else(|| "—".into(), |(v, s)| format!("{v:.4} ± {s:.4}")))
            .collect();
        let _ = writeln!(out, "| {task} | {metric} | {} |", cells.join(" | "));
    }
    let mut tasks: Vec<&String> = runs
        .iter()
        .flat_map(|r| r["tasks"].as_object().into_iter().flat_map(|t| t.keys()))
        .collect();
    tasks.sort();
    tasks.dedup();
    for task in tasks {
        let ids: Vec<String> = runs
            .iter()
            .filter_map(|r| {
                let t = &r["tasks"][task.as_str()];
                t.is_object()
                    .then(|| format!("v{} {}", t["version"], t["digest"].as_str().unwrap_or("")))
            })
            .collect();
        if ids.windows(2).any(|w| w[0] != w[1]) {
            let _ = writeln!(
                out,
                "\nnote: task `{task}` differs between runs ({}); its numbers are not comparable",
                ids.join(" / ")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(acc: f64, version: u32) -> Value {
        json!({"tasks": {
            "stories_cloze": {"version": version, "digest": "d", "documents": 10,
                "metrics": {"acc": {"value": acc, "stderr": 0.1}}, "extra": {}},
        }})
    }

    #[test]
    fn compare_lines_runs_up_by_task_and_metric_and_flags_version_changes() {
        let runs = [results(0.5, 1), results(0.75, 1)];
        let table = compare_table(&["a".into(), "b".into()], &runs);
        assert!(
            table.contains("| stories_cloze | acc | 0.5000 ± 0.1000 | 0.7500 ± 0.1000 |"),
            "{table}"
        );
        assert!(!table.contains("not comparable"));
        let table = compare_table(
            &["a".into(), "b".into()],
            &[results(0.5, 1), results(0.5, 2)],
        );
        assert!(table.contains("`stories_cloze` differs"), "{table}");
        let md = super::table(&runs[0]);
        assert!(
            md.contains("| stories_cloze | 1 | acc | 0.5000 | 0.1000 | 10 |"),
            "{md}"
        );
    }
}
