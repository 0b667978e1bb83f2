//! The built-in evaluation tasks, each a [`TaskSpec`] written as data (the JSON a task file would
//! hold), listed by `help()` and `llmlab eval --list`:
//!
//! | task | output type | measures |
//! | --- | --- | --- |
//! | `stories_cloze` | multiple_choice | the hero's name where the grammar allows only the hero: the right one among four names seen as heroes (acc, acc_norm) |
//! | `stories_perplexity` | loglikelihood_rolling | perplexity and bits per byte of held-out stories, beside the grammar's own bits per byte (the floor) |
//! | `arithmetic`, `sort`, `reverse` | generate_until | greedy answer, the task's exact checker (exact_match) |
//! | `code_easy`, `code_medium`, `code_hard` | generate_until | 10 sampled programs per spec run on hidden tests in the Rhai sandbox (pass@1, pass@10) |
//!
//! Two sources are built here rather than opened as corpora: `stories_cloze` (cloze items cut
//! from a held-out stories corpus) and `code` (so each failure keeps its sandbox reason).

use std::sync::Arc;

use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::{self, json, Map, Value};
use llmlab_plugin_api::{Error, Result};

use super::code::tasks::{CodeTasks, Level};
use super::task::{CorpusOpener, Doc, OpenedCorpus, TaskSpec};

/// Names and one-line descriptions of the built-in tasks.
pub const TASKS: [(&str, &str); 8] = [
    (
        "stories_cloze",
        "pick the hero's name (4 choices) where the stories grammar allows only the hero",
    ),
    (
        "stories_perplexity",
        "perplexity and bits/byte of held-out stories vs the grammar's entropy floor",
    ),
    ("arithmetic", "2-digit additions, greedy, exact match"),
    ("sort", "sort 4 digits, greedy, exact match"),
    ("reverse", "reverse 4 letters, greedy, exact match"),
    (
        "code_easy",
        "Rhai fn from a spec (one expression): pass@1, pass@10 by execution",
    ),
    (
        "code_medium",
        "Rhai fn from a spec (two arguments, conditions): pass@1, pass@10",
    ),
    (
        "code_hard",
        "Rhai fn from a spec (loops, arrays, recursion): pass@1, pass@10",
    ),
];

/// The spec of built-in task `name`, or `None`.
pub fn spec(name: &str) -> Option<TaskSpec> {
    let description = TASKS.iter().find(|(n, _)| *n == name)?.1;
    let json = match name {
        "stories_cloze" => json!({
            "source": {"corpus": "stories_cloze", "options": {"n": 200, "seed": 1001}},
            "output_type": "multiple_choice", "prompt": "{{context}}",
            "choices": "{{choices}}", "target": "{{label}}",
            "metrics": ["acc", "acc_norm"],
        }),
        "stories_perplexity" => json!({
            "source": {"corpus": "stories", "options": {"bytes": 60000, "seed": 1002}},
            "output_type": "loglikelihood_rolling", "prompt": "{{text}}",
            "metrics": ["perplexity", "bits_per_byte", "word_perplexity"],
        }),
        "arithmetic" | "sort" | "reverse" => json!({
            "source": {"corpus": name, "options": {
                "n": 200, "digits": if name == "arithmetic" { 2 } else { 4 }, "seed": 1003}},
            "output_type": "generate_until", "prompt": "{{prompt}}", "target": "{{answer}}",
            "stop": ["\n"], "max_tokens": 12, "checker": "corpus",
            "metrics": ["exact_match"],
        }),
        code => {
            let level = code.strip_prefix("code_")?;
            json!({
                "source": {"corpus": "code", "options": {"level": level, "n": 100, "seed": 1004}},
                "output_type": "generate_until", "prompt": "{{prompt}}", "target": "{{answer}}",
                "max_tokens": 64, "repeats": 10, "temperature": 0.8, "checker": "code",
                "metrics": ["pass@1", "pass@10"],
            })
        }
    };
    let mut json = json;
    let object = json.as_object_mut()?;
    object.insert("name".into(), name.into());
    object.insert("version".into(), 1.into());
    object.insert("description".into(), description.into());
    Some(TaskSpec::from_json(name, json).expect("built-in task specs are valid"))
}

/// Opens the sources the built-in tasks need that are not plain corpora, and passes the rest to
/// the session's corpora.
pub struct BuiltinSources<'a>(pub &'a dyn CorpusOpener);

impl CorpusOpener for BuiltinSources<'_> {
    fn open(&self, name: &str, options: &Map<String, Value>) -> Result<OpenedCorpus> {
        match name {
            "stories_cloze" => {
                let n = option(options, "n", 200)?;
                let seed = option(options, "seed", 0)?;
                if let Some(key) = options
                    .keys()
                    .find(|k| !["n", "seed"].contains(&k.as_str()))
                {
                    return Err(Error::Data(format!(
                        "unknown option `{key}` for stories_cloze; accepted: n, seed"
                    )));
                }
                let mut stories_options = Map::new();
                // About 550 bytes a story, and most stories hold a cloze item.
                stories_options.insert("bytes".into(), (n as u64 * 900 + 2000).into());
                stories_options.insert("seed".into(), seed.into());
                let stories = self.0.open("stories", &stories_options)?;
                let texts = stories.text.documents().collect::<Result<Vec<String>>>()?;
                Ok(OpenedCorpus {
                    text: stories.text,
                    examples: None,
                    docs: Some(cloze_docs(&texts, n as usize, seed)?),
                })
            }
            "code" => {
                let level = options
                    .get("level")
                    .and_then(Value::as_str)
                    .unwrap_or("easy");
                let n = option(options, "n", 100)?;
                let seed = option(options, "seed", 0)?;
                let tasks = Arc::new(CodeTasks::generate(
                    Level::from_name(level)?,
                    n as usize,
                    seed,
                )?);
                Ok(OpenedCorpus {
                    text: tasks.clone(),
                    examples: Some(tasks),
                    docs: None,
                })
            }
            _ => self.0.open(name, options),
        }
    }
}

fn option(options: &Map<String, Value>, key: &str, default: u64) -> Result<u64> {
    match options.get(key) {
        None => Ok(default),
        Some(v) => v.as_u64().ok_or_else(|| {
            Error::Data(format!(
                "option `{key}` must be a non-negative integer, not {v}"
            ))
        }),
    }
}

/// The sentences whose name the grammar fixes to the hero (the friend or anyone else is
/// impossible there): `One day, <hero> went to ...` and `In the end, <hero> was ...`.
const HERO_SLOTS: [(&str, &str); 2] = [("One day, ", " went to"), ("In the end, ", " was ")];

/// One cloze item per story that has a hero slot (its last one): the text up to the slot, the
/// hero and three other names seen as heroes in these stories, shuffled, and the hero's index.
pub fn cloze_docs(stories: &[String], n: usize, seed: u64) -> Result<Vec<Doc>> {
    let hero_of = |story: &str| -> Option<String> {
        let first = story.split_once('.')?.0;
        Some(first.rsplit_once(" named ")?.1.to_string())
    };
    let mut names: Vec<String> = stories.iter().filter_map(|s| hero_of(s)).collect();
    names.sort();
    names.dedup();
    if names.len() < 4 {
        return Err(Error::Data(format!(
            "stories_cloze: the stories name only {} heroes; 4 are needed for the choices",
            names.len()
        )));
    }
    let mut rng = SplitMix64::new(seed ^ 0xC102E);
    let mut docs = Vec::new();
    for story in stories {
        if docs.len() == n {
            break;
        }
        let Some(hero) = hero_of(story) else { continue };
        let slot = HERO_SLOTS
            .iter()
            .filter_map(|(before, after)| {
                story
                    .rfind(&format!("{before}{hero}{after}"))
                    .map(|at| at + before.len() - 1)
            })
            .max();
        let Some(cut) = slot else { continue };
        let mut choices = vec![hero.clone()];
        while choices.len() < 4 {
            let name = &names[rng.below(names.len())];
            if !choices.contains(name) {
                choices.push(name.clone());
            }
        }
        let order = rng.permutation(4);
        let shuffled: Vec<Value> = order.iter().map(|&i| choices[i].clone().into()).collect();
        let label = order
            .iter()
            .position(|&i| i == 0)
            .expect("hero is a choice");
        let mut doc = Doc::new();
        doc.insert("context".into(), story[..cut].into());
        doc.insert("choices".into(), Value::Array(shuffled));
        doc.insert("label".into(), label.into());
        docs.push(doc);
    }
    if docs.is_empty() {
        return Err(Error::Data(
            "stories_cloze: no story has a hero slot".into(),
        ));
    }
    Ok(docs)
}

/// Every built-in spec as pretty JSON (docs/eval.md shows them; a test keeps them valid).
pub fn specs_json() -> String {
    let specs: Vec<Value> = TASKS
        .iter()
        .filter_map(|(n, _)| spec(n))
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .collect();
    serde_json::to_string_pretty(&specs).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_spec_parses() {
        for (name, _) in TASKS {
            let s = spec(name).unwrap();
            assert_eq!(s.name, name);
        }
        assert!(spec("glue_sst2").is_none());
        assert!(specs_json().contains("pass@10"));
    }

    #[test]
    fn cloze_items_blank_the_hero_where_only_the_hero_fits() {
        let stories: Vec<String> = [
            "Once upon a time, there was a shy little fox named Lily. Lily met a kind cat called Tom. One day, Lily went to the park. The end.",
            "Once upon a time, there was a kind little owl named Ben. He felt sad because of the cup. In the end, Ben was happy.",
            "Once upon a time, there was a red little dog named Mia. The end.",
            "Once upon a time, there was a tiny little bee named Zoe. One day, Zoe went to the farm. In the end, Zoe was calm.",
        ]
        .map(String::from)
        .to_vec();
        let docs = cloze_docs(&stories, 10, 3).unwrap();
        assert_eq!(docs.len(), 3, "the story without a slot has no item");
        let expect = [
            ("Lily", "One day,"),
            ("Ben", "In the end,"),
            ("Zoe", "In the end,"),
        ];
        for (doc, (hero, ending)) in docs.iter().zip(expect) {
            let choices: Vec<&str> = doc["choices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let label = doc["label"].as_u64().unwrap() as usize;
            assert_eq!(choices[label], hero);
            assert_eq!(choices.len(), 4);
            let context = doc["context"].as_str().unwrap();
            assert!(context.ends_with(ending), "{context:?}");
        }
        assert!(cloze_docs(&stories[..2], 10, 3).is_err(), "too few heroes");
    }
}
