//! `corpus("arithmetic" | "sort" | "copy" | "reverse")`: prompt/answer tasks with verifiable
//! answers, for SFT, preference data (each example with a plausible wrong answer:
//! [`Tasks::preferences`], [`rejected_answer`]) and programmatic rewards.
//!
//! Formats (one example per line when used as text):
//! `12+345=` → `357`; `sort 3 1 2 =` → `1 2 3`; `copy abc =` → `abc`; `reverse abc =` → `cba`.

use std::fmt;

use llmlab_plugin_api::data::join;
use llmlab_plugin_api::{Error, Example, ExampleSource, Result, TextSource};

use llmlab_plugin_api::rng::SplitMix64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    Arithmetic,
    Sort,
    Copy,
    Reverse,
}

impl TaskKind {
    pub const NAMES: [&'static str; 4] = ["arithmetic", "sort", "copy", "reverse"];

    pub fn from_name(name: &str) -> Option<TaskKind> {
        Some(match name {
            "arithmetic" => TaskKind::Arithmetic,
            "sort" => TaskKind::Sort,
            "copy" => TaskKind::Copy,
            "reverse" => TaskKind::Reverse,
            _ => return None,
        })
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = match self {
            TaskKind::Arithmetic => 0,
            TaskKind::Sort => 1,
            TaskKind::Copy => 2,
            TaskKind::Reverse => 3,
        };
        f.write_str(TaskKind::NAMES[i])
    }
}

/// A generated task set.
#[derive(Debug, Clone)]
pub struct Tasks {
    pub kind: TaskKind,
    /// Operand size: digits of each addend; length of sequences to sort, copy or reverse.
    pub digits: usize,
    pub seed: u64,
    examples: Vec<Example>,
}

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";

impl Tasks {
    pub fn generate(kind: TaskKind, n: usize, digits: usize, seed: u64) -> Result<Tasks> {
        if n == 0 {
            return Err(Error::Data(format!(
                "corpus(\"{kind}\"): n must be at least 1"
            )));
        }
        if digits == 0 || digits > 18 {
            return Err(Error::Data(format!(
                "corpus(\"{kind}\"): digits must be in 1..=18, got {digits}"
            )));
        }
        let mut rng = SplitMix64::new(seed);
        let examples = (0..n).map(|_| example(kind, digits, &mut rng)).collect();
        Ok(Tasks {
            kind,
            digits,
            seed,
            examples,
        })
    }

    /// The correct answer to `prompt`, or `None` when the prompt is not of this task's form.
    pub fn solve(&self, prompt: &str) -> Option<String> {
        solve(self.kind, prompt)
    }

    /// Preference pairs from these examples: see [`TaskPreferences::from_examples`].
    pub fn preferences(&self, n: usize, seed: u64) -> Result<TaskPreferences> {
        TaskPreferences::from_examples(self, n, seed)
    }
}

impl TaskKind {
    /// The task whose prompt format `prompt` has (the formats are disjoint).
    pub fn of_prompt(prompt: &str) -> Option<TaskKind> {
        [
            TaskKind::Arithmetic,
            TaskKind::Sort,
            TaskKind::Copy,
            TaskKind::Reverse,
        ]
        .into_iter()
        .find(|&kind| solve(kind, prompt).is_some())
    }
}

impl TaskKind {
    /// Whether `answer` has the form of an answer to this task, right or wrong: digits for
    /// arithmetic, numbers for sort, lowercase letters for copy and reverse.
    pub fn well_formed(self, answer: &str) -> bool {
        let a = answer.trim();
        !a.is_empty()
            && match self {
                TaskKind::Arithmetic => a.bytes().all(|b| b.is_ascii_digit()),
                TaskKind::Sort => a.split(' ').all(|n| n.parse::<u64>().is_ok()),
                TaskKind::Copy | TaskKind::Reverse => a.bytes().all(|b| b.is_ascii_lowercase()),
            }
    }
}

/// Task examples with a plausible wrong answer each (`rejected`): preference pairs.
#[derive(Debug, Clone)]
pub struct TaskPreferences {
    name: String,
    examples: Vec<Example>,
}

impl TaskPreferences {
    /// The first `n` examples of `source` (cycling when `n` exceeds them), each with a rejected
    /// answer from [`rejected_answer`] drawn with `seed`. Every prompt must be a built-in task's.
    pub fn from_examples(source: &dyn ExampleSource, n: usize, seed: u64) -> Result<Self> {
        let what = format!("{}.preferences", source.name());
        if n == 0 {
            return Err(Error::Data(format!("{what}: n must be at least 1")));
        }
        if source.is_empty() {
            return Err(Error::Data(format!("{what}: the corpus has no examples")));
        }
        let mut rng = SplitMix64::new(seed ^ 0x5052_4546_5345_4544);
        let examples = (0..n)
            .map(|i| {
                let mut e = source.get(i % source.len());
                let kind = TaskKind::of_prompt(&e.prompt).ok_or_else(|| {
                    Error::Data(format!(
                        "{what}: example {i} has the prompt {:?}, not one of the built-in tasks ({}); \
                         for other data write a JSONL file and use preferences(path)",
                        e.prompt,
                        TaskKind::NAMES.join(", ")
                    ))
                })?;
                e.rejected = Some(rejected_answer(kind, &e.answer, &mut rng));
                Ok(e)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TaskPreferences {
            name: format!("{}.preferences(n={n}, seed={seed})", source.name()),
            examples,
        })
    }
}

impl ExampleSource for TaskPreferences {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn len(&self) -> usize {
        self.examples.len()
    }
    fn get(&self, index: usize) -> Example {
        self.examples[index % self.examples.len()].clone()
    }
    fn check(&self, prompt: &str, answer: &str) -> Option<bool> {
        let kind = TaskKind::of_prompt(prompt)?;
        solve(kind, prompt).map(|correct| correct == answer.trim())
    }
}

/// As text: the prompt followed by the chosen answer, one document per pair.
impl TextSource for TaskPreferences {
    fn name(&self) -> String {
        ExampleSource::name(self)
    }
    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        documents_of(&self.examples)
    }
    fn approx_bytes(&self) -> Option<u64> {
        Some(bytes_of(&self.examples))
    }
}

/// A plausible wrong answer to a task whose right answer is `answer`, never equal to it:
/// arithmetic is off by one in one digit (off by 1, 10, 100, ...), sorting has one adjacent pair
/// of different numbers swapped, copy/reverse one adjacent pair of different letters swapped;
/// where nothing differs to swap, one number or letter is changed by one.
pub fn rejected_answer(kind: TaskKind, answer: &str, rng: &mut SplitMix64) -> String {
    match kind {
        TaskKind::Arithmetic => {
            let Ok(sum) = answer.parse::<u64>() else {
                return format!("{answer}0");
            };
            let place = 10u64.pow(rng.below(answer.len()) as u32);
            if sum >= place && rng.below(2) == 0 {
                (sum - place).to_string()
            } else {
                (sum + place).to_string()
            }
        }
        TaskKind::Sort => {
            let mut items: Vec<&str> = answer.split(' ').collect();
            let pairs: Vec<usize> = (0..items.len().saturating_sub(1))
                .filter(|&i| items[i] != items[i + 1])
                .collect();
            if pairs.is_empty() {
                let i = rng.below(items.len());
                let bumped = match items[i].parse::<u64>() {
                    Ok(x) if x > 0 => (x - 1).to_string(),
                    Ok(x) => (x + 1).to_string(),
                    Err(_) => format!("{}0", items[i]),
                };
                let mut owned: Vec<String> = items.iter().map(|s| s.to_string()).collect();
                owned[i] = bumped;
                return owned.join(" ");
            }
            let i = pairs[rng.below(pairs.len())];
            items.swap(i, i + 1);
            items.join(" ")
        }
        TaskKind::Copy | TaskKind::Reverse => {
            let mut chars: Vec<char> = answer.chars().collect();
            let pairs: Vec<usize> = (0..chars.len().saturating_sub(1))
                .filter(|&i| chars[i] != chars[i + 1])
                .collect();
            if chars.is_empty() {
                return "a".into();
            }
            if pairs.is_empty() {
                let i = rng.below(chars.len());
                chars[i] = if chars[i] == 'z' {
                    'a'
                } else {
                    char::from_u32(chars[i] as u32 + 1).unwrap_or('a')
                };
            } else {
                let i = pairs[rng.below(pairs.len())];
                chars.swap(i, i + 1);
            }
            chars.into_iter().collect()
        }
    }
}

fn example(kind: TaskKind, digits: usize, rng: &mut SplitMix64) -> Example {
    let prompt = match kind {
        TaskKind::Arithmetic => {
            let limit = 10u64.pow(digits as u32);
            format!(
                "{}+{}=",
                rng.below(limit as usize),
                rng.below(limit as usize)
            )
        }
        TaskKind::Sort => {
            let numbers: Vec<String> = (0..digits).map(|_| rng.below(10).to_string()).collect();
            format!("sort {} =", numbers.join(" "))
        }
        TaskKind::Copy | TaskKind::Reverse => {
            let word: String = (0..digits)
                .map(|_| LETTERS[rng.below(26)] as char)
                .collect();
            format!(
                "{} {word} =",
                if kind == TaskKind::Copy {
                    "copy"
                } else {
                    "reverse"
                }
            )
        }
    };
    let answer = solve(kind, &prompt).expect("generated prompts are well formed");
    Example {
        prompt,
        answer,
        rejected: None,
    }
}

fn solve(kind: TaskKind, prompt: &str) -> Option<String> {
    match kind {
        TaskKind::Arithmetic => {
            let (a, b) = prompt.strip_suffix('=')?.split_once('+')?;
            let sum = a.trim().parse::<u64>().ok()? + b.trim().parse::<u64>().ok()?;
            Some(sum.to_string())
        }
        TaskKind::Sort => {
            let body = prompt.strip_prefix("sort ")?.strip_suffix(" =")?;
            let mut numbers: Vec<u64> = body
                .split(' ')
                .map(|x| x.parse().ok())
                .collect::<Option<_>>()?;
            numbers.sort_unstable();
            Some(
                numbers
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        }
        TaskKind::Copy => Some(
            prompt
                .strip_prefix("copy ")?
                .strip_suffix(" =")?
                .to_string(),
        ),
        TaskKind::Reverse => Some(
            prompt
                .strip_prefix("reverse ")?
                .strip_suffix(" =")?
                .chars()
                .rev()
                .collect(),
        ),
    }
}

impl ExampleSource for Tasks {
    fn name(&self) -> String {
        format!(
            "{}(digits={}, seed={}, n={})",
            self.kind,
            self.digits,
            self.seed,
            self.examples.len()
        )
    }
    fn len(&self) -> usize {
        self.examples.len()
    }
    fn get(&self, index: usize) -> Example {
        self.examples[index % self.examples.len()].clone()
    }
    /// Exact match after trimming whitespace.
    fn check(&self, prompt: &str, answer: &str) -> Option<bool> {
        self.solve(prompt).map(|correct| correct == answer.trim())
    }
}

/// As text (tokenizer training, pretraining): one `prompt answer` line per example; the answer
/// follows the prompt with one space (arithmetic: none, `12+3=15`).
impl TextSource for Tasks {
    fn name(&self) -> String {
        ExampleSource::name(self)
    }
    fn documents(&self) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
        documents_of(&self.examples)
    }
    fn approx_bytes(&self) -> Option<u64> {
        Some(bytes_of(&self.examples))
    }
}

/// Examples as text documents: each prompt followed by its (chosen) answer.
fn documents_of(examples: &[Example]) -> Box<dyn Iterator<Item = Result<String>> + Send + '_> {
    Box::new(examples.iter().map(|e| Ok(join(&e.prompt, &e.answer))))
}

/// Bytes of [`documents_of`]'s text (the separator counted as one).
fn bytes_of(examples: &[Example]) -> u64 {
    examples
        .iter()
        .map(|e| e.prompt.len() + e.answer.len() + 1)
        .sum::<usize>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_checks_its_own_answers() {
        for name in TaskKind::NAMES {
            let tasks = Tasks::generate(TaskKind::from_name(name).unwrap(), 50, 3, 4).unwrap();
            for i in 0..tasks.len() {
                let e = tasks.get(i);
                assert_eq!(
                    tasks.check(&e.prompt, &e.answer),
                    Some(true),
                    "{name}: {e:?}"
                );
                assert_eq!(
                    tasks.check(&e.prompt, &format!("{}x", e.answer)),
                    Some(false)
                );
            }
        }
    }

    #[test]
    fn answers_are_right() {
        assert_eq!(solve(TaskKind::Arithmetic, "12+345="), Some("357".into()));
        assert_eq!(solve(TaskKind::Sort, "sort 3 1 2 ="), Some("1 2 3".into()));
        assert_eq!(
            solve(TaskKind::Reverse, "reverse abc ="),
            Some("cba".into())
        );
        assert_eq!(solve(TaskKind::Copy, "copy abc ="), Some("abc".into()));
        assert_eq!(solve(TaskKind::Arithmetic, "twelve"), None);
        assert_eq!(join("1+2=", "3"), "1+2=3");
        assert_eq!(join("copy ab =", "ab"), "copy ab = ab");
    }

    #[test]
    fn rejected_answers_are_wrong_but_plausible() {
        for name in TaskKind::NAMES {
            let kind = TaskKind::from_name(name).unwrap();
            for digits in [1, 3] {
                let prefs = Tasks::generate(kind, 200, digits, 9)
                    .unwrap()
                    .preferences(300, 1)
                    .unwrap();
                assert_eq!(prefs.len(), 300);
                for i in 0..prefs.len() {
                    let e = prefs.get(i);
                    let rejected = e.rejected.clone().unwrap();
                    assert_eq!(prefs.check(&e.prompt, &e.answer), Some(true), "{e:?}");
                    assert_eq!(prefs.check(&e.prompt, &rejected), Some(false), "{e:?}");
                    if kind != TaskKind::Arithmetic {
                        assert_eq!(rejected.len(), e.answer.len(), "{e:?}");
                    }
                }
            }
        }
        let mut rng = SplitMix64::new(3);
        for _ in 0..50 {
            let r: i64 = rejected_answer(TaskKind::Arithmetic, "57", &mut rng)
                .parse()
                .unwrap();
            assert!([47, 56, 58, 67].contains(&r), "{r}");
        }
        assert_eq!(rejected_answer(TaskKind::Sort, "1 2", &mut rng), "2 1");
        let err = Tasks::generate(TaskKind::Sort, 5, 2, 1)
            .unwrap()
            .preferences(0, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("n must be"), "{err}");
    }

    #[test]
    fn generation_is_seeded_and_validates_sizes() {
        let a = Tasks::generate(TaskKind::Arithmetic, 10, 2, 1).unwrap();
        let b = Tasks::generate(TaskKind::Arithmetic, 10, 2, 1).unwrap();
        assert_eq!(a.examples, b.examples);
        assert!(a.examples.iter().all(|e| e.prompt.len() <= "99+99=".len()));
        let err = Tasks::generate(TaskKind::Sort, 0, 2, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("n must be"), "{err}");
        let err = Tasks::generate(TaskKind::Sort, 5, 0, 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("digits"), "{err}");
    }
}
