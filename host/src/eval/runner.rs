//! Runs loaded tasks against a model: builds each document's requests, calls the model in
//! batches (with progress and Ctrl-C), judges generated samples (exact match, the corpus's
//! checker, the Rhai sandbox or Python) and aggregates the task's metrics.

use std::collections::BTreeMap;
use std::path::PathBuf;

use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{Error, ProgressSink, ProgressUpdate, Result};

use super::code::python::{self, PythonLimits};
use super::code::sandbox::Limits;
use super::code::tasks::verdict;
use super::filters::{document_answer, filter_sample};
use super::metrics::{aggregate, floor_bits_per_byte, Estimate};
use super::output::{Outcome, OutputType, Sample};
use super::requests::Lm;
use super::task::{Checker, Task};

/// Settings of one evaluation run (`evaluate(.., #{ limit, batch, seed, repeats, temperature })`).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// At most this many documents per task.
    pub limit: Option<usize>,
    /// Rows per forward pass or generation batch.
    pub batch: usize,
    pub seed: u64,
    /// Overrides every generate_until task's samples per document.
    pub repeats: Option<usize>,
    /// Overrides every generate_until task's sampling temperature.
    pub temperature: Option<f64>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            limit: None,
            batch: 32,
            seed: 0,
            repeats: None,
            temperature: None,
        }
    }
}

/// One task's scores.
#[derive(Debug, Clone)]
pub struct TaskResult {
    pub name: String,
    pub version: u32,
    /// Digest of the task's spec.
    pub digest: String,
    pub output_type: OutputType,
    pub documents: usize,
    pub metrics: Vec<(String, Estimate)>,
    /// More numbers worth reporting: the entropy floor, failures by reason, samples per problem.
    pub extra: BTreeMap<String, Value>,
    pub outcomes: Vec<Outcome>,
}

/// Runs `task` and scores it.
pub fn run_task(
    lm: &Lm,
    task: &Task,
    options: &RunOptions,
    progress: &dyn ProgressSink,
) -> Result<TaskResult> {
    let count = task.count(options.limit);
    let label = format!("eval {}", task.spec.name);
    let report = |done: usize| {
        progress.update(&ProgressUpdate {
            label: label.clone(),
            position: done as u64,
            total: Some(count as u64),
            message: String::new(),
        })
    };
    report(0);
    let mut outcomes = Vec::with_capacity(count);
    let chunk = options.batch.max(1);
    let judge = Judge::for_task(task)?;
    for start in (0..count).step_by(chunk) {
        let end = (start + chunk).min(count);
        outcomes.extend(run_documents(lm, task, options, start..end, &judge)?);
        report(end);
    }
    progress.finish(&label);
    let mut metrics = Vec::new();
    for metric in &task.metrics {
        let estimate = aggregate(*metric, &outcomes, options.seed)
            .map_err(|e| Error::Data(format!("{}: {e}", task.what())))?;
        metrics.push((metric.to_string(), estimate));
    }
    let mut extra = BTreeMap::new();
    if let Some(floor) = floor_bits_per_byte(&outcomes) {
        extra.insert("floor_bits_per_byte".into(), floor.into());
    }
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for o in &outcomes {
        if let Outcome::Generated { samples, .. } = o {
            for reason in samples.iter().filter_map(|s| s.reason.as_deref()) {
                let kind = reason.split(':').next().unwrap_or(reason).to_string();
                *failures.entry(kind).or_default() += 1;
            }
        }
    }
    if !failures.is_empty() {
        extra.insert(
            "failures".into(),
            failures
                .into_iter()
                .map(|(k, v)| (k, Value::from(v)))
                .collect::<llmlab_plugin_api::serde_json::Map<_, _>>()
                .into(),
        );
    }
    if task.spec.output_type == OutputType::GenerateUntil {
        extra.insert("samples_per_document".into(), repeats(task, options).into());
    }
    Ok(TaskResult {
        name: task.spec.name.clone(),
        version: task.spec.version,
        digest: task.spec.digest(),
        output_type: task.spec.output_type,
        documents: count,
        metrics,
        extra,
        outcomes,
    })
}

fn repeats(task: &Task, options: &RunOptions) -> usize {
    options.repeats.unwrap_or(task.spec.repeats).max(1)
}

fn run_documents(
    lm: &Lm,
    task: &Task,
    options: &RunOptions,
    docs: std::ops::Range<usize>,
    judge: &Judge,
) -> Result<Vec<Outcome>> {
    let spec = &task.spec;
    let contexts = docs
        .clone()
        .map(|i| task.context(i, options.seed))
        .collect::<Result<Vec<_>>>()?;
    match spec.output_type {
        OutputType::Loglikelihood => {
            let pairs = docs
                .clone()
                .zip(&contexts)
                .map(|(i, c)| {
                    Ok((
                        c.clone(),
                        format!("{}{}", spec.target_delimiter, task.target_text(i)?),
                    ))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(lm
                .loglikelihood(&pairs)?
                .into_iter()
                .map(|l| Outcome::Loglikelihood {
                    ll: l.ll,
                    is_greedy: l.is_greedy,
                    tokens: l.tokens,
                })
                .collect())
        }
        OutputType::MultipleChoice => {
            let mut pairs = Vec::new();
            let mut per_doc = Vec::new();
            for (i, c) in docs.clone().zip(&contexts) {
                let choices = task.choice_texts(i)?;
                let gold = task.gold(i, &choices)?;
                for choice in &choices {
                    pairs.push((c.clone(), format!("{}{choice}", spec.target_delimiter)));
                }
                per_doc.push((choices, gold));
            }
            let mut lls = lm.loglikelihood(&pairs)?.into_iter();
            Ok(per_doc
                .into_iter()
                .map(|(choices, gold)| Outcome::MultipleChoice {
                    lls: lls.by_ref().take(choices.len()).map(|l| l.ll).collect(),
                    choice_bytes: choices.iter().map(String::len).collect(),
                    gold,
                })
                .collect())
        }
        OutputType::LoglikelihoodRolling => {
            let totals = lm.loglikelihood_rolling(&contexts)?;
            Ok(docs
                .zip(contexts.iter().zip(totals))
                .map(|(i, (text, l))| Outcome::Rolling {
                    ll: l.ll,
                    tokens: l.tokens,
                    bytes: text.len(),
                    words: text.split_whitespace().count(),
                    floor_nats: task.doc_nats.as_ref().map(|n| n[i]),
                })
                .collect())
        }
        OutputType::GenerateUntil => {
            let n = repeats(task, options);
            let temperature = options.temperature.unwrap_or(spec.temperature);
            let texts = lm.generate(
                &contexts,
                n,
                &spec.stop,
                spec.max_tokens,
                temperature,
                options.seed.wrapping_add(docs.start as u64 * n as u64),
            )?;
            docs.zip(texts)
                .map(|(i, texts)| {
                    let target = match &task.target {
                        Some(_) => task.target_text(i)?,
                        None => String::new(),
                    };
                    let mut samples = Vec::with_capacity(texts.len());
                    for text in texts {
                        let filtered = filter_sample(&task.filters, &text);
                        let (correct, reason) = judge.judge(task, i, &filtered, &target)?;
                        samples.push(Sample {
                            text,
                            filtered,
                            correct,
                            reason,
                        });
                    }
                    let filtered: Vec<String> =
                        samples.iter().map(|s| s.filtered.clone()).collect();
                    let answer = document_answer(&task.filters, &filtered);
                    let correct = match samples.iter().find(|s| s.filtered == answer) {
                        Some(s) => s.correct,
                        None => judge.judge(task, i, &answer, &target)?.0,
                    };
                    Ok(Outcome::Generated {
                        samples,
                        answer,
                        target,
                        correct,
                    })
                })
                .collect()
        }
    }
}

/// Judges one generated answer by the task's checker.
enum Judge {
    Exact,
    Corpus,
    Code(Limits),
    Python(PathBuf, PythonLimits),
}

impl Judge {
    fn for_task(task: &Task) -> Result<Judge> {
        Ok(match task.spec.checker {
            Checker::Exact => Judge::Exact,
            Checker::Corpus => Judge::Corpus,
            Checker::Code => Judge::Code(Limits::default()),
            Checker::Python => Judge::Python(
                python::find_python(std::env::var_os("PATH").as_deref())
                    .map_err(|e| Error::Data(format!("{}: {e}", task.what())))?,
                PythonLimits::default(),
            ),
        })
    }

    /// `(correct, why not)` for `answer` to document `i`.
    fn judge(
        &self,
        task: &Task,
        i: usize,
        answer: &str,
        target: &str,
    ) -> Result<(bool, Option<String>)> {
        let field = |name: &str| -> Result<String> {
            match task.docs[i].get(name) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(Error::Data(format!(
                    "{}: document {i} has no string field `{name}`",
                    task.what()
                ))),
            }
        };
        Ok(match self {
            Judge::Exact => (answer.trim() == target.trim(), None),
            Judge::Corpus => {
                let prompt = field("prompt")?;
                let examples = task
                    .examples
                    .as_ref()
                    .expect("checked when the task loaded");
                match examples.check(&prompt, answer) {
                    Some(ok) => (ok, None),
                    None => {
                        return Err(Error::Data(format!(
                            "{}: the corpus cannot check document {i} ({prompt:?})",
                            task.what()
                        )))
                    }
                }
            }
            Judge::Code(limits) => {
                let prompt = field("prompt")?;
                match verdict(&prompt, answer, limits) {
                    Some(Ok(())) => (true, None),
                    Some(Err(failure)) => (false, Some(failure.to_string())),
                    None => {
                        return Err(Error::Data(format!(
                            "{}: document {i}'s prompt {prompt:?} is not a code task's spec",
                            task.what()
                        )))
                    }
                }
            }
            Judge::Python(python_path, limits) => {
                let source = python::program(
                    &field("prompt")?,
                    answer,
                    &field("test")?,
                    &field("entry_point")?,
                );
                let verdict = python::run(python_path, &source, limits)?;
                (verdict.reason().is_none(), verdict.reason())
            }
        })
    }
}
