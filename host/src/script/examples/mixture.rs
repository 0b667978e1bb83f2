//! `corpus_mix([#{ corpus, prefix, rate }, ..])`: several task corpora as one, for multitask
//! text-to-text training (T5's "prefix + mixing rate" recipe, docs/t5.md). Each task's prompts
//! get its `prefix` (`"add: "`), and tasks take turns by their `rate` (default: in proportion
//! to their sizes) in a fixed, smooth weighted round-robin order, so any stretch of the mixture
//! holds them in those proportions; a task's `k`-th turn is its example `k` (wrapping around).
//! The mixture holds as many examples as its tasks together. `check` (what `accuracy` and
//! rewards use) strips the prefix and asks the task's own checker; a mixture of one task is
//! that task with its prefix, so per-task accuracy uses the prompts training saw.
//!
//! A labelled corpus (GLUE-style: `text`, `text_pair`, a class label) enters as text-to-text
//! with its label *words* as answers (`"sentence: ... | ..."` → `"positive"`), checked by exact
//! match (a token-classification corpus: the sentence → its words' tags, space-separated);
//! `exact: true` gives script-built examples (`corpus([...])`, no checker of their own)
//! the same exact-match checker against their own answers.

use std::collections::HashMap;
use std::sync::Arc;

use llmlab_plugin_api::{Example, ExampleSource, Label, LabelledSource, Result, Split, TextSource};
use rhai::{Array, Map};

use crate::script::data::CorpusHandle;
use crate::script::{script_error, ScriptResult};

/// A labelled corpus's train split as prompt → label word.
struct LabelWords(Arc<dyn LabelledSource>);

impl ExampleSource for LabelWords {
    fn name(&self) -> String {
        format!("{} as label words", self.0.name())
    }
    fn len(&self) -> usize {
        self.0.len(Split::Train)
    }
    fn get(&self, index: usize) -> Example {
        let item = self.0.get(Split::Train, index);
        // Token classification as text: the sentence → its words' tags, space-separated.
        if let Some(tagged) = self.0.tagged(Split::Train, index) {
            let names = self.0.label_names();
            let answer: Vec<&str> = tagged
                .tags
                .iter()
                .map(|&t| names.get(t).map_or("?", String::as_str))
                .collect();
            return Example {
                prompt: item.text,
                answer: answer.join(" "),
                rejected: None,
            };
        }
        let answer = match item.label {
            Label::Class(c) => self.0.label_names().get(c).cloned().unwrap_or_default(),
            Label::Score(x) => format!("{x:.1}"),
        };
        let prompt = match item.text_pair {
            Some(pair) => format!("{} | {pair}", item.text),
            None => item.text,
        };
        Example {
            prompt,
            answer,
            rejected: None,
        }
    }
}

/// Examples checked by exact match against their own answers (by prompt).
struct ExactMatch {
    examples: Arc<dyn ExampleSource>,
    answers: HashMap<String, String>,
}

impl ExactMatch {
    fn new(examples: Arc<dyn ExampleSource>) -> ExactMatch {
        let answers = (0..examples.len())
            .map(|i| {
                let e = examples.get(i);
                (e.prompt, e.answer)
            })
            .collect();
        ExactMatch { examples, answers }
    }
}

impl ExampleSource for ExactMatch {
    fn name(&self) -> String {
        self.examples.name()
    }
    fn len(&self) -> usize {
        self.examples.len()
    }
    fn get(&self, index: usize) -> Example {
        self.examples.get(index)
    }
    fn check(&self, prompt: &str, answer: &str) -> Option<bool> {
        Some(self.answers.get(prompt)?.trim() == answer.trim())
    }
}

struct Task {
    examples: Arc<dyn ExampleSource>,
    prefix: String,
    rate: f64,
}

struct Mixture {
    tasks: Vec<Task>,
    /// `(task, example index)` of each example of the mixture.
    order: Vec<(usize, usize)>,
}

impl Mixture {
    fn new(tasks: Vec<Task>) -> Mixture {
        let total: usize = tasks.iter().map(|t| t.examples.len()).sum();
        let sum: f64 = tasks.iter().map(|t| t.rate).sum();
        let mut credit = vec![0.0; tasks.len()];
        let mut turns = vec![0usize; tasks.len()];
        let order = (0..total)
            .map(|_| {
                for (c, t) in credit.iter_mut().zip(&tasks) {
                    *c += t.rate;
                }
                let pick = (0..tasks.len())
                    .max_by(|&a, &b| credit[a].total_cmp(&credit[b]).then(b.cmp(&a)))
                    .unwrap_or(0);
                credit[pick] -= sum;
                let index = turns[pick] % tasks[pick].examples.len();
                turns[pick] += 1;
                (pick, index)
            })
            .collect();
        Mixture { tasks, order }
    }
}

impl ExampleSource for Mixture {
    fn name(&self) -> String {
        let parts: Vec<String> = self
            .tasks
            .iter()
            .map(|t| format!("{:?} {} ×{:.3}", t.prefix, t.examples.name(), t.rate))
            .collect();
        format!("mix({})", parts.join(", "))
    }
    fn len(&self) -> usize {
        self.order.len()
    }
    fn get(&self, index: usize) -> Example {
        let (task, i) = self.order[index % self.order.len()];
        let task = &self.tasks[task];
        let mut example = task.examples.get(i);
        example.prompt = format!("{}{}", task.prefix, example.prompt);
        example
    }
    fn check(&self, prompt: &str, answer: &str) -> Option<bool> {
        // The longest matching prefix: "" matches everything, so a task with a real prefix
        // is preferred.
        let task = self
            .tasks
            .iter()
            .filter(|t| prompt.starts_with(&t.prefix))
            .max_by_key(|t| t.prefix.len())?;
        task.examples.check(&prompt[task.prefix.len()..], answer)
    }
}

impl TextSource for Mixture {
    fn name(&self) -> String {
        ExampleSource::name(self)
    }
    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        Box::new((0..self.len()).map(|i| {
            let e = self.get(i);
            Ok(llmlab_plugin_api::data::join(&e.prompt, &e.answer))
        }))
    }
    fn approx_bytes(&self) -> Option<u64> {
        None
    }
}

fn task(i: usize, part: rhai::Dynamic) -> ScriptResult<Task> {
    let map = part.try_cast::<Map>().ok_or_else(|| {
        script_error(format!(
            "corpus_mix: entry {i} is not a #{{ corpus, prefix, rate }} map"
        ))
    })?;
    if let Some(key) = map
        .keys()
        .find(|k| !["corpus", "prefix", "rate", "exact"].contains(&k.as_str()))
    {
        return Err(script_error(format!(
            "corpus_mix: entry {i} has unknown key `{key}`; accepted: corpus, prefix, rate, exact"
        )));
    }
    let corpus = map
        .get("corpus")
        .and_then(|c| c.clone().try_cast::<CorpusHandle>())
        .ok_or_else(|| {
            script_error(format!(
                "corpus_mix: entry {i} needs `corpus`: a task corpus"
            ))
        })?;
    let labelled = corpus.corpus.as_ref().and_then(|c| c.labelled());
    let examples: Arc<dyn ExampleSource> = match (corpus.examples.clone(), labelled) {
        (Some(examples), _) => examples,
        (None, Some(labelled)) => Arc::new(ExactMatch::new(Arc::new(LabelWords(labelled)))),
        (None, None) => {
            return Err(script_error(format!(
                "corpus_mix: entry {i}: {} has neither prompt/answer examples nor labels (use a task or labelled corpus)",
                corpus.source.name()
            )))
        }
    };
    let examples = match map.get("exact").map(|e| e.as_bool()) {
        None | Some(Ok(false)) => examples,
        Some(Ok(true)) => Arc::new(ExactMatch::new(examples)) as Arc<dyn ExampleSource>,
        Some(Err(t)) => {
            return Err(script_error(format!(
                "corpus_mix: entry {i}: `exact` must be true or false, not {t}"
            )))
        }
    };
    if examples.is_empty() {
        return Err(script_error(format!(
            "corpus_mix: entry {i}: {} is empty",
            examples.name()
        )));
    }
    let prefix = match map.get("prefix") {
        None => String::new(),
        Some(p) if p.is_string() => p.to_string(),
        Some(p) => {
            return Err(script_error(format!(
                "corpus_mix: entry {i}: `prefix` must be a string, not {}",
                p.type_name()
            )))
        }
    };
    let rate = match map.get("rate") {
        None => examples.len() as f64,
        Some(r) => r
            .as_float()
            .ok()
            .or_else(|| r.as_int().ok().map(|n| n as f64))
            .filter(|r| *r > 0.0 && r.is_finite())
            .ok_or_else(|| {
                script_error(format!(
                    "corpus_mix: entry {i}: `rate` must be a number above 0, got {r}"
                ))
            })?,
    };
    Ok(Task {
        examples,
        prefix,
        rate,
    })
}

pub fn corpus_mix(parts: Array) -> ScriptResult<CorpusHandle> {
    if parts.is_empty() {
        return Err(script_error("corpus_mix: the array of tasks is empty"));
    }
    let tasks = parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| task(i, p))
        .collect::<ScriptResult<Vec<_>>>()?;
    let mixture = Arc::new(Mixture::new(tasks));
    let mut handle = CorpusHandle::documents(mixture.clone());
    handle.examples = Some(mixture);
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Numbers(usize, &'static str);
    impl ExampleSource for Numbers {
        fn name(&self) -> String {
            self.1.into()
        }
        fn len(&self) -> usize {
            self.0
        }
        fn get(&self, index: usize) -> Example {
            Example {
                prompt: format!("{}{index}", self.1),
                answer: index.to_string(),
                rejected: None,
            }
        }
        fn check(&self, prompt: &str, answer: &str) -> Option<bool> {
            Some(prompt.strip_prefix(self.1)? == answer)
        }
    }

    fn task(len: usize, name: &'static str, prefix: &str, rate: f64) -> Task {
        Task {
            examples: Arc::new(Numbers(len, name)),
            prefix: prefix.into(),
            rate,
        }
    }

    #[test]
    fn tasks_take_turns_by_rate_with_their_prefix_and_checker() {
        let mix = Mixture::new(vec![task(50, "a", "A: ", 3.0), task(10, "b", "B: ", 1.0)]);
        assert_eq!(mix.len(), 60);
        let from_a = (0..40)
            .filter(|&i| mix.get(i).prompt.starts_with("A: "))
            .count();
        assert_eq!(from_a, 30, "3:1 in any 40 consecutive examples");
        assert_eq!(mix.get(0).prompt, "A: a0");
        let b = (0..60)
            .map(|i| mix.get(i))
            .find(|e| e.prompt.starts_with("B: "))
            .unwrap();
        assert_eq!(b.prompt, "B: b0");
        assert_eq!(mix.check("B: b7", "7"), Some(true));
        assert_eq!(mix.check("A: a7", "8"), Some(false));
        assert_eq!(mix.check("C: c7", "7"), None);
    }

    #[test]
    fn equal_rates_interleave_three_tasks_and_use_every_example_once() {
        // The t5_multitask set-up: three tasks of 4,000 examples at rate 1. Any 3 consecutive
        // examples hold one of each, so the seq2seq trainer's held-out tail (its last examples)
        // and any shuffled epoch see the tasks in equal shares, and no example repeats.
        let mix = Mixture::new(vec![
            task(4000, "a", "add: ", 1.0),
            task(4000, "r", "reverse: ", 1.0),
            task(4000, "c", "classify: ", 1.0),
        ]);
        assert_eq!(mix.len(), 12_000);
        let mut seen = std::collections::HashSet::new();
        for start in (0..mix.len()).step_by(3) {
            let mut prefixes: Vec<String> = (start..start + 3)
                .map(|i| {
                    let e = mix.get(i);
                    assert!(seen.insert(e.prompt.clone()), "{} repeats", e.prompt);
                    let (prefix, rest) = e.prompt.split_at(e.prompt.find(' ').unwrap() + 1);
                    assert_eq!(mix.check(&e.prompt, &e.answer), Some(true), "{rest}");
                    prefix.to_string()
                })
                .collect();
            prefixes.sort();
            assert_eq!(prefixes, ["add: ", "classify: ", "reverse: "], "at {start}");
        }
        assert_eq!(seen.len(), 12_000);
        // A one-task mixture (how `accuracy` is given each test set) has that task's prefix.
        let one = Mixture::new(vec![task(5, "r", "reverse: ", 1.0)]);
        assert_eq!(one.get(2).prompt, "reverse: r2");
        assert_eq!(one.check("reverse: r2", "2"), Some(true));
    }

    struct NoChecker;
    impl ExampleSource for NoChecker {
        fn name(&self) -> String {
            "script".into()
        }
        fn len(&self) -> usize {
            2
        }
        fn get(&self, index: usize) -> Example {
            Example {
                prompt: format!("compare {index} 1"),
                answer: ["less", "equal"][index].into(),
                rejected: None,
            }
        }
    }

    #[test]
    fn exact_match_checks_script_examples_against_their_own_answers() {
        let exact = ExactMatch::new(Arc::new(NoChecker));
        assert_eq!(exact.check("compare 0 1", " less"), Some(true));
        assert_eq!(exact.check("compare 1 1", "less"), Some(false));
        assert_eq!(exact.check("compare 9 1", "less"), None);
    }
}
