//! `evaluate(model, tok, tasks, #{ limit, batch, seed, repeats, temperature, out })`: runs
//! evaluation tasks (built-in names, JSON task files, or Rhai maps written like a task file)
//! through the harness in `crate::eval`, prints the table, writes results.json, report.md and the
//! samples into `out` (default: `eval/` in the run directory, `eval-2/`, ... on later calls), and
//! returns `#{ task: #{ metric: value, metric_stderr: error, n: documents } }`.

use std::path::PathBuf;
use std::sync::Arc;

use llmlab_plugin_api::serde_json::{Map as JsonMap, Value};
use llmlab_plugin_api::{Error, Instance, Result};
use rhai::{Array, Dynamic, Engine, Map, FLOAT};

use super::model::ModelHandle;
use super::tokenizer::TokenizerHandle;
use super::{dynamic_to_json, json_to_dynamic, script_error, Host, ScriptResult};
use crate::eval::report::{table, Report};
use crate::eval::runner::RunOptions;
use crate::eval::task::{CorpusOpener, OpenedCorpus, TaskSpec};
use crate::eval::{resolve, Evaluation};

/// The session's corpora (`corpus(name, options)`), as the harness opens its sources.
pub struct SessionCorpora(pub Arc<Host>);

impl CorpusOpener for SessionCorpora {
    fn open(&self, name: &str, options: &JsonMap<String, Value>) -> Result<OpenedCorpus> {
        let options = json_to_dynamic(&Value::Object(options.clone()))
            .try_cast::<Map>()
            .unwrap_or_default();
        let handle = super::data::open_corpus(&self.0, name, &options)
            .map_err(|e| Error::Data(e.to_string()))?;
        Ok(OpenedCorpus {
            text: handle.source,
            examples: handle.examples,
            docs: None,
        })
    }
}

/// Loads a model directory and its tokenizer file through the session's components.
pub fn load_model_and_tokenizer(
    host: &Host,
    model_dir: &str,
    tokenizer_file: &str,
) -> ScriptResult<(ModelHandle, TokenizerHandle)> {
    let model = match host.load(llmlab_plugin_api::Kind::Model, model_dir)? {
        Instance::Model(m) => ModelHandle::new(m),
        other => {
            return Err(script_error(format!(
                "{model_dir}: loaded a {}, not a model",
                other.kind()
            )))
        }
    };
    let tokenizer = match host.load(llmlab_plugin_api::Kind::Tokenizer, tokenizer_file)? {
        Instance::Tokenizer(t) => TokenizerHandle::new(t),
        other => {
            return Err(script_error(format!(
                "{tokenizer_file}: loaded a {}, not a tokenizer",
                other.kind()
            )))
        }
    };
    Ok((model, tokenizer))
}

/// Runs `specs` on the model with the session's corpora, progress and cancel flag.
pub fn run_evaluation(
    host: &Arc<Host>,
    model: &ModelHandle,
    tok: &TokenizerHandle,
    specs: Vec<TaskSpec>,
    options: RunOptions,
) -> ScriptResult<Report> {
    host.context.cancel.reset();
    let tokenizer = tok.read();
    let corpora = SessionCorpora(host.clone());
    let evaluation = Evaluation {
        model: model.0.as_ref(),
        tokenizer: tokenizer.as_ref(),
        corpora: &corpora,
        options,
        progress: host.context.progress.as_ref(),
        cancel: &host.context.cancel,
    };
    evaluation.run(specs).map_err(|e| match e {
        Error::Cancelled => script_error("evaluate: cancelled (Ctrl-C)"),
        other => script_error(format!("evaluate: {other}")),
    })
}

const OPTIONS: [&str; 6] = ["limit", "batch", "seed", "repeats", "temperature", "out"];

fn run_options(options: &Map) -> ScriptResult<(RunOptions, Option<String>)> {
    if let Some(key) = options.keys().find(|k| !OPTIONS.contains(&k.as_str())) {
        return Err(script_error(format!(
            "unknown evaluate option `{key}`; accepted: {}",
            OPTIONS.join(", ")
        )));
    }
    let int = |key: &str| -> ScriptResult<Option<usize>> {
        options
            .get(key)
            .map(|v| match v.as_int() {
                Ok(n) if n >= 1 => Ok(n as usize),
                _ => Err(script_error(format!(
                    "evaluate option `{key}` must be a positive integer, not {v}"
                ))),
            })
            .transpose()
    };
    let defaults = RunOptions::default();
    let temperature = options
        .get("temperature")
        .map(|v| {
            v.as_float()
                .or_else(|_| v.as_int().map(|i| i as FLOAT))
                .map_err(|_| script_error("evaluate option `temperature` must be a number"))
        })
        .transpose()?;
    let seed = options
        .get("seed")
        .map(|v| {
            v.as_int().ok().filter(|s| *s >= 0).ok_or_else(|| {
                script_error("evaluate option `seed` must be a non-negative integer")
            })
        })
        .transpose()?;
    let out = options
        .get("out")
        .map(|v| {
            v.clone()
                .into_string()
                .map_err(|t| script_error(format!("evaluate option `out` must be a path, not {t}")))
        })
        .transpose()?;
    Ok((
        RunOptions {
            limit: int("limit")?,
            batch: int("batch")?.unwrap_or(defaults.batch),
            seed: seed.map_or(defaults.seed, |s| s as u64),
            repeats: int("repeats")?,
            temperature,
        },
        out,
    ))
}

fn task_specs(tasks: Array) -> ScriptResult<Vec<TaskSpec>> {
    if tasks.is_empty() {
        return Err(script_error("evaluate: no tasks given"));
    }
    tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t.is_string() {
                resolve(&t.to_string()).map_err(script_error)
            } else if t.is_map() {
                let json = dynamic_to_json(t)?;
                TaskSpec::from_json(&format!("evaluate: task {i}"), json).map_err(script_error)
            } else {
                Err(script_error(format!(
                    "evaluate: task {i} is a {}; give a built-in name, a task file path or a task map",
                    t.type_name()
                )))
            }
        })
        .collect()
}

/// The value `evaluate` returns.
fn result_map(report: &Report) -> Map {
    report
        .tasks
        .iter()
        .map(|t| {
            let mut m = Map::new();
            for (metric, e) in &t.metrics {
                m.insert(metric.as_str().into(), e.value.into());
                m.insert(format!("{metric}_stderr").into(), e.stderr.into());
            }
            m.insert("n".into(), (t.documents as rhai::INT).into());
            for (key, value) in &t.extra {
                m.insert(key.as_str().into(), json_to_dynamic(value));
            }
            (t.name.as_str().into(), Dynamic::from(m))
        })
        .collect()
}

fn evaluate(
    host: &Arc<Host>,
    model: ModelHandle,
    tok: TokenizerHandle,
    tasks: Array,
    options: Map,
) -> ScriptResult<Map> {
    let (run_options, out) = run_options(&options)?;
    let specs = task_specs(tasks)?;
    let report = run_evaluation(host, &model, &tok, specs, run_options)?;
    let dir = match out {
        Some(out) => PathBuf::from(out),
        None => {
            let run = host.run_dir().map_err(script_error)?;
            run.path.join(crate::runs::unused_name(&run.path, "eval"))
        }
    };
    report.write(&dir).map_err(script_error)?;
    print!("{}", table(&report.to_json()));
    println!("evaluation saved in {}", dir.display());
    Ok(result_map(&report))
}

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    let h = host.clone();
    engine.register_fn(
        "evaluate",
        move |m: ModelHandle, tok: TokenizerHandle, tasks: Array, options: Map| {
            evaluate(&h, m, tok, tasks, options)
        },
    );
    let h = host.clone();
    engine.register_fn(
        "evaluate",
        move |m: ModelHandle, tok: TokenizerHandle, tasks: Array| {
            evaluate(&h, m, tok, tasks, Map::new())
        },
    );
}
