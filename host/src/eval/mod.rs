//! The evaluation harness (docs/eval.md): tasks defined as data ([`task`], [`template`]), the
//! four lm-evaluation-harness request types ([`output`], [`requests`]), metrics with standard
//! errors ([`metrics`], [`pass_at_k`]), answer [`filters`], code execution in sandboxes
//! ([`code`]), the built-in tasks ([`builtin`]), the [`runner`], and what a run leaves behind and
//! how runs compare ([`report`], [`chart`], [`fingerprint`]). [`cli`] is `llmlab eval`; the
//! script side is `evaluate(...)` in `script/eval.rs`.

pub mod builtin;
pub mod chart;
pub mod cli;
pub mod code;
pub mod filters;
pub mod fingerprint;
pub mod metrics;
pub mod output;
pub mod pass_at_k;
pub mod report;
pub mod requests;
pub mod runner;
pub mod task;
pub mod template;

use std::path::Path;

use llmlab_plugin_api::serde_json::{json, Value};
use llmlab_plugin_api::{CancelFlag, Error, Model, ProgressSink, Result, Tokenizer};

use builtin::BuiltinSources;
use report::Report;
use requests::Lm;
use runner::{run_task, RunOptions};
use task::{CorpusOpener, TaskSpec};

/// A task named on the command line or in a script: a built-in name, or a JSON task file.
pub fn resolve(name: &str) -> Result<TaskSpec> {
    if let Some(spec) = builtin::spec(name) {
        return Ok(spec);
    }
    let path = Path::new(name);
    if path.extension().is_some_and(|e| e == "json") || path.is_file() {
        return TaskSpec::read(path);
    }
    let names: Vec<&str> = builtin::TASKS.iter().map(|(n, _)| *n).collect();
    Err(Error::Data(format!(
        "unknown evaluation task `{name}`: not a built-in ({}) nor a task file (.json)",
        names.join(", ")
    )))
}

/// What an evaluation needs besides the tasks.
pub struct Evaluation<'a> {
    pub model: &'a dyn Model,
    pub tokenizer: &'a dyn Tokenizer,
    pub corpora: &'a dyn CorpusOpener,
    pub options: RunOptions,
    pub progress: &'a dyn ProgressSink,
    pub cancel: &'a CancelFlag,
}

impl Evaluation<'_> {
    /// Loads every task first (so a bad task fails before any model call), then runs them.
    pub fn run(&self, specs: Vec<TaskSpec>) -> Result<Report> {
        let sources = BuiltinSources(self.corpora);
        let tasks = specs
            .into_iter()
            .map(|s| s.load(&sources))
            .collect::<Result<Vec<_>>>()?;
        let lm = Lm {
            model: self.model,
            tokenizer: self.tokenizer,
            batch: self.options.batch,
            cancel: self.cancel,
        };
        let mut results = Vec::new();
        for task in &tasks {
            results.push(run_task(&lm, task, &self.options, self.progress)?);
        }
        let o = &self.options;
        Ok(Report {
            config: json!({
                "tasks": tasks.iter().map(|t| json!({
                    "name": t.spec.name, "version": t.spec.version, "digest": t.spec.digest(),
                    "spec": t.spec,
                })).collect::<Vec<Value>>(),
                "limit": o.limit, "batch": o.batch, "seed": o.seed,
                "repeats": o.repeats, "temperature": o.temperature,
            }),
            model: fingerprint::model_fingerprint(self.model, self.tokenizer)?,
            tasks: results,
        })
    }
}
