//! Task definitions as data, modelled on lm-evaluation-harness: a [`TaskSpec`] read from a JSON
//! file or a Rhai map (unknown fields are errors naming them), checked against its documents
//! (unknown template variables are errors naming them) into a [`Task`] ready to run.
//!
//! ```json
//! { "name": "add2", "version": 1,
//!   "source": { "corpus": "arithmetic", "options": { "n": 200, "digits": 2, "seed": 99 } },
//!   "output_type": "generate_until", "prompt": "{{prompt}}", "target": "{{answer}}",
//!   "fewshot": 2, "fewshot_separator": "\n", "stop": ["\n"], "max_tokens": 8,
//!   "metrics": ["exact_match"], "filters": ["first_number"], "checker": "exact" }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::serde_json::{self, Map, Value};
use llmlab_plugin_api::{Error, ExampleSource, Result, TextSource};

use super::filters::{Filter, FilterSpec};
use super::metrics::Metric;
use super::output::OutputType;
use super::template::Template;

/// A document: named fields the templates read.
pub type Doc = Map<String, Value>;

/// A task as written (JSON file or Rhai map).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    /// Bumped when the task changes in a way that changes scores; recorded in results.json.
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub description: String,
    pub source: SourceSpec,
    pub output_type: OutputType,
    /// The prompt template (`doc_to_text`).
    pub prompt: String,
    /// The target template (`doc_to_target`): the continuation (loglikelihood), the reference
    /// answer (generate_until), or the right choice's index or text (multiple_choice).
    #[serde(default)]
    pub target: Option<String>,
    /// multiple_choice: `"{{field}}"` naming an array field, or a list of templates.
    #[serde(default)]
    pub choices: Option<ChoicesSpec>,
    #[serde(default)]
    pub fewshot: usize,
    #[serde(default = "default_fewshot_separator")]
    pub fewshot_separator: String,
    /// Between prompt and target (or choice) in log-likelihood requests and few-shot examples.
    #[serde(default = "default_target_delimiter")]
    pub target_delimiter: String,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Samples per document (generate_until): pass@k needs at least k; majority vote votes
    /// across them.
    #[serde(default = "default_repeats")]
    pub repeats: usize,
    /// Sampling temperature for generate_until (0 = greedy).
    #[serde(default)]
    pub temperature: f64,
    pub metrics: Vec<String>,
    #[serde(default)]
    pub filters: Vec<FilterSpec>,
    #[serde(default)]
    pub checker: Checker,
    /// Evaluate at most this many documents (the run's `limit` can lower it).
    #[serde(default)]
    pub limit: Option<usize>,
}

fn default_fewshot_separator() -> String {
    "\n\n".into()
}
fn default_target_delimiter() -> String {
    " ".into()
}
fn default_max_tokens() -> usize {
    32
}
fn default_repeats() -> usize {
    1
}

/// Where the documents come from: a built-in corpus (`corpus` + `options`) or a file (`file`:
/// JSONL, or CSV with a header row).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", deny_unknown_fields)]
pub struct SourceSpec {
    #[serde(default)]
    pub corpus: Option<String>,
    #[serde(default)]
    pub options: Map<String, Value>,
    #[serde(default)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", untagged)]
pub enum ChoicesSpec {
    Field(String),
    Templates(Vec<String>),
}

/// How a generated answer is judged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "snake_case")]
pub enum Checker {
    /// The filtered answer equals the rendered target (both trimmed).
    #[default]
    Exact,
    /// The source corpus's own exact checker, on the document's `prompt` field.
    Corpus,
    /// The answer is a Rhai program run in the sandbox on the hidden tests of the document's
    /// `prompt` (the code tasks).
    Code,
    /// HumanEval/MBPP: `prompt` + answer, then `test`, then `check(entry_point)`, run by Python.
    Python,
}

/// What opening a built-in corpus gives: its documents, and examples when it has them.
pub struct OpenedCorpus {
    pub text: Arc<dyn TextSource>,
    pub examples: Option<Arc<dyn ExampleSource>>,
    /// Documents already as fields (sources built for evaluation, such as cloze items).
    pub docs: Option<Vec<Doc>>,
}

/// Opens built-in corpora by name (the script session's `corpus(...)`, whatever provides it).
pub trait CorpusOpener {
    fn open(&self, name: &str, options: &Map<String, Value>) -> Result<OpenedCorpus>;
}

/// A task checked against its documents, ready to run.
pub struct Task {
    pub spec: TaskSpec,
    pub docs: Vec<Doc>,
    /// `−ln p(document)` of each document, where the corpus knows its distribution.
    pub doc_nats: Option<Vec<f64>>,
    /// The corpus's checker (for `checker: "corpus"`).
    pub examples: Option<Arc<dyn ExampleSource>>,
    pub prompt: Template,
    pub target: Option<Template>,
    pub choices: Vec<Template>,
    pub metrics: Vec<Metric>,
    pub filters: Vec<Filter>,
}

impl TaskSpec {
    /// A spec from JSON (a file's text or a Rhai map); `what` names the origin in errors.
    pub fn from_json(what: &str, json: Value) -> Result<TaskSpec> {
        serde_json::from_value(json).map_err(|e| Error::Data(format!("{what}: {e}")))
    }

    /// Reads a task file (JSON); relative `source.file` paths are taken from the file's folder.
    pub fn read(path: &Path) -> Result<TaskSpec> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
        let mut spec = TaskSpec::from_json(&path.display().to_string(), json)?;
        if let Some(file) = &spec.source.file {
            if file.is_relative() {
                let base = path.parent().unwrap_or(Path::new("."));
                spec.source.file = Some(base.join(file));
            }
        }
        Ok(spec)
    }

    /// A stable digest of the spec (recorded with the version in results.json).
    pub fn digest(&self) -> String {
        let text = serde_json::to_string(self).unwrap_or_default();
        format!("{:016x}", fnv1a(text.as_bytes()))
    }

    fn what(&self) -> String {
        format!("task \"{}\"", self.name)
    }

    /// Checks the spec and loads its documents through `opener`.
    pub fn load(self, opener: &dyn CorpusOpener) -> Result<Task> {
        let what = self.what();
        let metrics = self
            .metrics
            .iter()
            .map(|m| Metric::parse(m).map_err(|e| Error::Data(format!("{what}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        if metrics.is_empty() {
            return Err(Error::Data(format!("{what}: `metrics` is empty")));
        }
        for m in &metrics {
            if !m.fits(self.output_type) {
                return Err(Error::Data(format!(
                    "{what}: metric `{m}` does not apply to output_type {}",
                    self.output_type.name()
                )));
            }
            if let Metric::PassAt(k) = m {
                if self.repeats < *k {
                    return Err(Error::Data(format!(
                        "{what}: metric `{m}` needs repeats ≥ {k} (samples per problem); repeats is {}",
                        self.repeats
                    )));
                }
            }
        }
        if self.repeats == 0 || self.max_tokens == 0 {
            return Err(Error::Data(format!(
                "{what}: repeats and max_tokens must be at least 1"
            )));
        }
        let filters = self
            .filters
            .iter()
            .map(|f| Filter::compile(&what, f))
            .collect::<Result<Vec<_>>>()?;
        let prompt = Template::parse(&format!("{what}: prompt"), &self.prompt)?;
        let target = self
            .target
            .as_deref()
            .map(|t| Template::parse(&format!("{what}: target"), t))
            .transpose()?;
        let choices = match &self.choices {
            None => Vec::new(),
            Some(ChoicesSpec::Field(t)) => vec![Template::parse(&format!("{what}: choices"), t)?],
            Some(ChoicesSpec::Templates(ts)) => ts
                .iter()
                .map(|t| Template::parse(&format!("{what}: choices"), t))
                .collect::<Result<_>>()?,
        };
        match self.output_type {
            OutputType::MultipleChoice if choices.is_empty() || target.is_none() => {
                return Err(Error::Data(format!(
                    "{what}: multiple_choice needs `choices` and `target`"
                )))
            }
            OutputType::Loglikelihood if target.is_none() => {
                return Err(Error::Data(format!("{what}: loglikelihood needs `target`")))
            }
            OutputType::GenerateUntil if target.is_none() && self.checker == Checker::Exact => {
                return Err(Error::Data(format!(
                    "{what}: generate_until with checker \"exact\" needs `target`"
                )))
            }
            _ => {}
        }
        let (docs, doc_nats, examples) = load_docs(&what, &self.source, opener)?;
        if docs.is_empty() {
            return Err(Error::Data(format!("{what}: the source has no documents")));
        }
        let first = &docs[0];
        prompt.check(&format!("{what}: prompt"), first)?;
        if let Some(t) = &target {
            t.check(&format!("{what}: target"), first)?;
        }
        for c in &choices {
            c.check(&format!("{what}: choices"), first)?;
        }
        let needs = |fields: &[&str]| -> Result<()> {
            match fields.iter().find(|f| !first.contains_key(**f)) {
                Some(f) => Err(Error::Data(format!(
                    "{what}: checker {:?} needs a `{f}` field in every document",
                    self.checker
                ))),
                None => Ok(()),
            }
        };
        match self.checker {
            Checker::Corpus if examples.is_none() => {
                return Err(Error::Data(format!(
                    "{what}: checker \"corpus\" needs a task corpus as the source"
                )))
            }
            Checker::Corpus | Checker::Code => needs(&["prompt"])?,
            Checker::Python => needs(&["prompt", "test", "entry_point"])?,
            Checker::Exact => {}
        }
        Ok(Task {
            spec: self,
            docs,
            doc_nats,
            examples,
            prompt,
            target,
            choices,
            metrics,
            filters,
        })
    }
}

type Loaded = (Vec<Doc>, Option<Vec<f64>>, Option<Arc<dyn ExampleSource>>);

fn load_docs(what: &str, source: &SourceSpec, opener: &dyn CorpusOpener) -> Result<Loaded> {
    match (&source.corpus, &source.file) {
        (Some(name), None) => {
            let opened = opener
                .open(name, &source.options)
                .map_err(|e| Error::Data(format!("{what}: source corpus {name:?}: {e}")))?;
            if let Some(docs) = opened.docs {
                return Ok((docs, None, opened.examples));
            }
            if let Some(examples) = opened.examples {
                let docs = (0..examples.len())
                    .map(|i| {
                        let e = examples.get(i);
                        let mut doc = Doc::new();
                        doc.insert("prompt".into(), e.prompt.into());
                        doc.insert("answer".into(), e.answer.into());
                        doc
                    })
                    .collect();
                return Ok((docs, None, Some(examples)));
            }
            let mut docs = Vec::new();
            let mut nats = Some(Vec::new());
            for (i, text) in opened.text.documents().enumerate() {
                let mut doc = Doc::new();
                doc.insert("text".into(), text?.into());
                docs.push(doc);
                match (opened.text.document_nats(i), nats.as_mut()) {
                    (Some(n), Some(all)) => all.push(n),
                    _ => nats = None,
                }
            }
            Ok((docs, nats, None))
        }
        (None, Some(path)) => {
            if !source.options.is_empty() {
                return Err(Error::Data(format!(
                    "{what}: source `options` are for corpora, not files"
                )));
            }
            let docs = match path.extension().and_then(|e| e.to_str()) {
                Some("csv") => read_csv(path)?,
                _ => read_jsonl(path)?,
            };
            Ok((docs, None, None))
        }
        _ => Err(Error::Data(format!(
            "{what}: `source` needs exactly one of `corpus` (a built-in corpus) or `file` (JSONL or CSV)"
        ))),
    }
}

/// Objects, one per line; blank lines skipped; errors name the file and line.
pub fn read_jsonl(path: &Path) -> Result<Vec<Doc>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(doc)) => Ok(doc),
            Ok(_) => Err(Error::Data(format!(
                "{}: line {}: not a JSON object",
                path.display(),
                i + 1
            ))),
            Err(e) => Err(Error::Data(format!(
                "{}: line {}: {e}",
                path.display(),
                i + 1
            ))),
        })
        .collect()
}

/// Rows of a CSV file with a header row (RFC 4180 quoting); every value is a string.
pub fn read_csv(path: &Path) -> Result<Vec<Doc>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let rows = parse_csv(&text).map_err(|e| Error::Data(format!("{}: {e}", path.display())))?;
    let mut rows = rows.into_iter();
    let header = rows
        .next()
        .ok_or_else(|| Error::Data(format!("{}: empty CSV file", path.display())))?;
    rows.enumerate()
        .map(|(i, row)| {
            if row.len() != header.len() {
                return Err(Error::Data(format!(
                    "{}: row {}: {} fields, the header has {}",
                    path.display(),
                    i + 2,
                    row.len(),
                    header.len()
                )));
            }
            Ok(header
                .iter()
                .cloned()
                .zip(row.into_iter().map(Value::String))
                .collect())
        })
        .collect()
}

fn parse_csv(text: &str) -> std::result::Result<Vec<Vec<String>>, String> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let (mut quoted, mut line) = (false, 1);
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c)
            }
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                line += 1;
                row.push(std::mem::take(&mut field));
                if !(row.len() == 1 && row[0].is_empty()) {
                    rows.push(std::mem::take(&mut row));
                }
                row.clear();
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(format!("line {line}: a quoted field is not closed"));
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    Ok(rows)
}

impl Task {
    pub fn what(&self) -> String {
        self.spec.what()
    }

    /// The documents a run evaluates: the first `limit` (or all).
    pub fn count(&self, limit: Option<usize>) -> usize {
        let limit = match (limit, self.spec.limit) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(usize::MAX),
        };
        self.docs.len().min(limit)
    }

    /// The rendered prompt of document `i`, after `fewshot` examples drawn (seeded) from the other
    /// documents, each `prompt + delimiter + target`, joined by the separator.
    pub fn context(&self, i: usize, seed: u64) -> Result<String> {
        let what = self.what();
        let doc = &self.docs[i];
        let prompt = self.prompt.render(&format!("{what}: prompt"), doc)?;
        let shots = self.spec.fewshot.min(self.docs.len().saturating_sub(1));
        if shots == 0 {
            return Ok(prompt);
        }
        if self.target.is_none() {
            return Err(Error::Data(format!(
                "{what}: few-shot examples need a `target` template"
            )));
        }
        let mut rng = SplitMix64::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut parts = Vec::new();
        let mut taken = Vec::new();
        while taken.len() < shots {
            let j = rng.below(self.docs.len());
            if j == i || taken.contains(&j) {
                continue;
            }
            taken.push(j);
            let d = &self.docs[j];
            parts.push(format!(
                "{}{}{}",
                self.prompt.render(&format!("{what}: prompt"), d)?,
                self.spec.target_delimiter,
                self.target_text(j)?
            ));
        }
        parts.push(prompt);
        Ok(parts.join(&self.spec.fewshot_separator))
    }

    /// The rendered target of document `i` (for multiple choice: the right choice's text).
    pub fn target_text(&self, i: usize) -> Result<String> {
        let what = self.what();
        let target = self
            .target
            .as_ref()
            .ok_or_else(|| Error::Data(format!("{what}: no `target` template")))?;
        let text = target.render(&format!("{what}: target"), &self.docs[i])?;
        if self.spec.output_type == OutputType::MultipleChoice {
            let choices = self.choice_texts(i)?;
            let gold = self.gold(i, &choices)?;
            return Ok(choices[gold].clone());
        }
        Ok(text)
    }

    /// The choices of document `i`.
    pub fn choice_texts(&self, i: usize) -> Result<Vec<String>> {
        let what = format!("{}: choices", self.what());
        let doc = &self.docs[i];
        if let [single] = self.choices.as_slice() {
            if let Some(field) = single.sole_field() {
                single.check(&what, doc)?;
                if let Value::Array(items) = &doc[field] {
                    return Ok(items
                        .iter()
                        .map(|v| match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect());
                }
            }
        }
        self.choices.iter().map(|c| c.render(&what, doc)).collect()
    }

    /// Index of the right choice: the target as a number, or the choice whose text it is.
    pub fn gold(&self, i: usize, choices: &[String]) -> Result<usize> {
        let what = self.what();
        let target = self
            .target
            .as_ref()
            .ok_or_else(|| Error::Data(format!("{what}: no `target` template")))?
            .render(&format!("{what}: target"), &self.docs[i])?;
        let trimmed = target.trim();
        if let Ok(index) = trimmed.parse::<usize>() {
            if index < choices.len() {
                return Ok(index);
            }
        }
        choices
            .iter()
            .position(|c| c.trim() == trimmed)
            .ok_or_else(|| {
                Error::Data(format!(
                    "{what}: document {i}: target {target:?} is neither a choice index below {} nor one of the choices",
                    choices.len()
                ))
            })
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_plugin_api::serde_json::json;

    struct NoCorpora;
    impl CorpusOpener for NoCorpora {
        fn open(&self, name: &str, _: &Map<String, Value>) -> Result<OpenedCorpus> {
            Err(Error::Data(format!("no corpus {name}")))
        }
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("llmlab-eval-task-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn unknown_fields_and_template_variables_are_named() {
        let err = TaskSpec::from_json(
            "t.json",
            json!({"name": "x", "source": {"file": "a.jsonl"}, "output_type": "generate_until",
                   "prompt": "{{q}}", "metrics": ["exact_match"], "promt": "typo"}),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("t.json") && err.contains("unknown field `promt`"),
            "{err}"
        );
        let err = TaskSpec::from_json(
            "t.json",
            json!({"name": "x", "source": {"file": "a.jsonl"}, "output_type": "generate",
                   "prompt": "", "metrics": []}),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown variant `generate`"), "{err}");
        let data = temp_file("qa.jsonl", "{\"question\": \"1+1\", \"answer\": \"2\"}\n");
        let spec = TaskSpec::from_json(
            "t",
            json!({"name": "qa", "source": {"file": data}, "output_type": "generate_until",
                   "prompt": "Q: {{questoin}}", "target": "{{answer}}", "metrics": ["exact_match"]}),
        )
        .unwrap();
        let err = spec.load(&NoCorpora).map(|_| ()).unwrap_err().to_string();
        assert!(
            err.contains("`questoin`") && err.contains("answer, question"),
            "{err}"
        );
    }

    #[test]
    fn files_load_with_fewshot_choices_and_line_numbered_errors() {
        let csv = temp_file(
            "mc.csv",
            "question,a,b,label\n\"Is it, \"\"quoted\"\"?\",yes,no,0\nsky?,blue,green,1\nsea?,wet,dry,0\n",
        );
        let spec = TaskSpec::from_json(
            "t",
            json!({"name": "mc", "source": {"file": csv}, "output_type": "multiple_choice",
                   "prompt": "Q: {{question}}\nA:", "choices": ["{{a}}", "{{b}}"],
                   "target": "{{label}}", "fewshot": 1, "metrics": ["acc", "acc_norm"]}),
        )
        .unwrap();
        let task = spec.load(&NoCorpora).unwrap();
        assert_eq!(task.docs.len(), 3);
        assert_eq!(task.docs[0]["question"], "Is it, \"quoted\"?");
        assert_eq!(task.choice_texts(1).unwrap(), ["blue", "green"]);
        assert_eq!(task.gold(1, &task.choice_texts(1).unwrap()).unwrap(), 1);
        assert_eq!(task.target_text(1).unwrap(), "green");
        let context = task.context(0, 7).unwrap();
        assert!(
            context.ends_with("\n\nQ: Is it, \"quoted\"?\nA:"),
            "{context:?}"
        );
        assert!(context.starts_with("Q: sky?\nA: green") || context.starts_with("Q: sea?\nA: wet"));
        let bad = temp_file("bad.jsonl", "{\"a\": 1}\n\n[1, 2]\n");
        let err = read_jsonl(&bad).unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("not a JSON object"),
            "{err}"
        );
    }

    #[test]
    fn metrics_must_fit_the_output_type() {
        let data = temp_file("m.jsonl", "{\"text\": \"hi\"}\n");
        let spec = |metrics: Value, repeats: u64| {
            TaskSpec::from_json(
                "t",
                json!({"name": "m", "source": {"file": data}, "output_type": "generate_until",
                       "prompt": "{{text}}", "target": "{{text}}", "metrics": metrics,
                       "repeats": repeats}),
            )
            .unwrap()
            .load(&NoCorpora)
            .map(|_| ())
        };
        let err = spec(json!(["acc_norm"]), 1).unwrap_err().to_string();
        assert!(
            err.contains("`acc_norm` does not apply to output_type generate_until"),
            "{err}"
        );
        let err = spec(json!(["pass@10"]), 5).unwrap_err().to_string();
        assert!(err.contains("repeats ≥ 10"), "{err}");
        let err = spec(json!(["bleu"]), 1).unwrap_err().to_string();
        assert!(err.contains("`bleu`"), "{err}");
        assert!(spec(json!(["exact_match", "pass@1"]), 1).is_ok());
    }
}
