//! Labelled texts in scripts (issue 18): `glue(#{ tasks, n, val, seed })` gives the GLUE-style
//! suite's tasks by name (`corpus("glue", ..)` components), `labelled(path)` /
//! `labelled(#{ train, val, text, text_pair, label, labels, regression, metric, val_fraction,
//! tokens, tags })` a user's JSONL/CSV/TSV files (`labelled_files.rs`; `tokens`/`tags` name the
//! columns of a token-classification file), and `trainer("classify").fit(model, data, tok)`
//! fine-tunes on them. A data set tells its `labels()`, `metric()`, `is_pair()`,
//! `is_tagging()`, `len()` / `val_len()`, an `example(i)`, and the majority-class `baseline()`
//! on its val split.

use std::path::PathBuf;
use std::sync::Arc;

use llmlab_plugin_api::{Label, LabelledSource, Split, TrainJob};
use rhai::{Array, Dynamic, Engine, Map, FLOAT, INT};

use super::data::{open_corpus, CorpusHandle};
use super::labelled_files::{FileLabelled, FileOptions};
use super::model::ModelHandle;
use super::run_dir::{in_run_dir, metrics_map};
use super::tokenizer::TokenizerHandle;
use super::{lock, script_error, Host, ScriptResult, TrainerHandle};

/// A labelled data set with train and val splits.
#[derive(Clone)]
pub struct LabelledHandle(pub Arc<dyn LabelledSource>);

/// The suite's tasks, in the order tables list them.
const GLUE_TASKS: [&str; 6] = [
    "sentiment",
    "acceptability",
    "entailment",
    "paraphrase",
    "similarity",
    "roles",
];

fn int_option(options: &Map, key: &str) -> ScriptResult<Option<INT>> {
    options
        .get(key)
        .map(|v| {
            v.as_int()
                .map_err(|t| script_error(format!("glue: `{key}` must be an integer, not {t}")))
        })
        .transpose()
}

/// `glue(#{ tasks: [..] | "all", n, val, seed, hard_negatives })` → a map from task name to data
/// set (`hard_negatives`: entailment's share of hard training negatives).
fn glue(host: &Host, options: &Map) -> ScriptResult<Map> {
    if let Some(key) = options
        .keys()
        .find(|k| !["tasks", "n", "val", "seed", "hard_negatives"].contains(&k.as_str()))
    {
        return Err(script_error(format!(
            "glue: unknown option `{key}`; accepted: tasks, n, val, seed, hard_negatives"
        )));
    }
    let hard_negatives = options
        .get("hard_negatives")
        .map(|v| {
            v.as_float()
                .or_else(|_| v.as_int().map(|i| i as f64))
                .map_err(|t| {
                    script_error(format!(
                        "glue: `hard_negatives` must be a number within 0..=1, not {t}"
                    ))
                })
        })
        .transpose()?;
    let tasks: Vec<String> = match options.get("tasks") {
        None => GLUE_TASKS.iter().map(|s| s.to_string()).collect(),
        Some(v) if v.clone().into_string().is_ok_and(|s| s == "all") => {
            GLUE_TASKS.iter().map(|s| s.to_string()).collect()
        }
        Some(v) => v
            .clone()
            .into_typed_array::<rhai::ImmutableString>()
            .map_err(|_| {
                script_error(format!(
                    "glue: `tasks` must be an array of task names ({}) or \"all\"",
                    GLUE_TASKS.join(", ")
                ))
            })?
            .into_iter()
            .map(|s| s.to_string())
            .collect(),
    };
    if hard_negatives.is_some() && !tasks.iter().any(|t| t == "entailment") {
        return Err(script_error(
            "glue: `hard_negatives` sets the entailment task's mix, and `tasks` does not include entailment",
        ));
    }
    let mut out = Map::new();
    for task in tasks {
        let mut config = Map::new();
        config.insert("task".into(), Dynamic::from(task.clone()));
        for key in ["n", "val", "seed"] {
            if let Some(v) = int_option(options, key)? {
                config.insert(key.into(), Dynamic::from(v));
            }
        }
        if let (Some(p), "entailment") = (hard_negatives, task.as_str()) {
            config.insert("hard_negatives".into(), Dynamic::from(p));
        }
        let corpus = open_corpus(host, "glue", &config)?;
        out.insert(task.as_str().into(), Dynamic::from(of_corpus(&corpus)?));
    }
    Ok(out)
}

fn of_corpus(corpus: &CorpusHandle) -> ScriptResult<LabelledHandle> {
    corpus
        .corpus
        .as_ref()
        .and_then(|c| c.labelled())
        .map(LabelledHandle)
        .ok_or_else(|| {
            script_error(format!(
                "{} has no labelled examples (corpus(\"glue\", ..) and labelled(path) do)",
                corpus.source.name()
            ))
        })
}

fn file_options(options: &Map) -> ScriptResult<FileOptions> {
    const KEYS: [&str; 11] = [
        "train",
        "val",
        "text",
        "text_pair",
        "label",
        "labels",
        "regression",
        "metric",
        "val_fraction",
        "tokens",
        "tags",
    ];
    if let Some(key) = options.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(script_error(format!(
            "labelled: unknown option `{key}`; accepted: {}",
            KEYS.join(", ")
        )));
    }
    let string = |key: &str| -> ScriptResult<Option<String>> {
        options
            .get(key)
            .map(|v| {
                v.clone().into_string().map_err(|t| {
                    script_error(format!("labelled: `{key}` must be a string, not {t}"))
                })
            })
            .transpose()
    };
    let train = string("train")?
        .ok_or_else(|| script_error("labelled: `train` (a JSONL, CSV or TSV file) is required"))?;
    let mut o = FileOptions::new(PathBuf::from(train));
    o.val = string("val")?.map(PathBuf::from);
    for (key, slot) in [
        ("text", &mut o.text),
        ("text_pair", &mut o.text_pair),
        ("label", &mut o.label),
        ("tokens", &mut o.tokens),
        ("tags", &mut o.tags),
    ] {
        if let Some(v) = string(key)? {
            *slot = v;
        }
    }
    o.metric = string("metric")?;
    if let Some(v) = options.get("labels") {
        let names = v
            .clone()
            .into_typed_array::<rhai::ImmutableString>()
            .map_err(|_| script_error("labelled: `labels` must be an array of strings"))?;
        o.labels = Some(names.into_iter().map(|s| s.to_string()).collect());
    }
    if let Some(v) = options.get("regression") {
        o.regression = v.as_bool().map_err(|t| {
            script_error(format!(
                "labelled: `regression` must be true or false, not {t}"
            ))
        })?;
    }
    if let Some(v) = options.get("val_fraction") {
        let f = v.as_float().map_err(|t| {
            script_error(format!(
                "labelled: `val_fraction` must be a number, not {t}"
            ))
        })?;
        if !(0.0..1.0).contains(&f) {
            return Err(script_error(format!(
                "labelled: `val_fraction` must be in [0, 1), got {f}"
            )));
        }
        o.val_fraction = f;
    }
    Ok(o)
}

fn load_files(options: FileOptions) -> ScriptResult<LabelledHandle> {
    FileLabelled::load(&options)
        .map(|data| LabelledHandle(Arc::new(data)))
        .map_err(script_error)
}

/// Token classification: the token accuracy of tagging every word with the train split's most
/// common tag, and its entity-level F1 (0: the most common tag is `O` in any real tagging).
fn tagging_baseline(data: &dyn LabelledSource) -> f64 {
    let tags = |split: Split| -> Vec<usize> {
        (0..data.len(split))
            .filter_map(|i| data.tagged(split, i))
            .flat_map(|t| t.tags)
            .collect()
    };
    let mut counts = vec![0usize; data.label_names().len()];
    for t in tags(Split::Train) {
        if let Some(c) = counts.get_mut(t) {
            *c += 1;
        }
    }
    let majority = (0..counts.len()).max_by_key(|&c| counts[c]).unwrap_or(0);
    let val = tags(Split::Val);
    match data.metric().as_str() {
        "accuracy" => {
            val.iter().filter(|&&t| t == majority).count() as f64 / val.len().max(1) as f64
        }
        _ => 0.0,
    }
}

/// The majority class's score on the val split in the task's metric (regression: predicting
/// the train mean, whose correlation is 0).
fn baseline(data: &dyn LabelledSource) -> Map {
    let metric = data.metric();
    let classes = data.label_names().len();
    let count = |split: Split, class: usize| {
        (0..data.len(split))
            .filter(|&i| data.get(split, i).label == Label::Class(class))
            .count()
    };
    let value = if data.is_tagging() {
        tagging_baseline(data)
    } else if classes == 0 {
        0.0
    } else {
        let majority = (0..classes)
            .max_by_key(|&c| count(Split::Train, c))
            .unwrap_or(0);
        let n = data.len(Split::Val).max(1) as f64;
        let share = count(Split::Val, majority) as f64 / n;
        match metric.as_str() {
            "accuracy" => share,
            // F1 of class 1: predicting class 1 everywhere gives precision = recall share.
            "f1" if majority == 1 && classes == 2 => 2.0 * share / (1.0 + share),
            _ => 0.0,
        }
    };
    let mut m = Map::new();
    m.insert("metric".into(), Dynamic::from(metric));
    m.insert("value".into(), Dynamic::from(value as FLOAT));
    m
}

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    engine.register_type_with_name::<LabelledHandle>("Labelled");
    let h = host.clone();
    engine.register_fn("glue", move |options: Map| glue(&h, &options));
    let h = host.clone();
    engine.register_fn("glue", move || glue(&h, &Map::new()));
    engine.register_fn("labelled", |path: &str| {
        load_files(FileOptions::new(PathBuf::from(path)))
    });
    engine.register_fn("labelled", |options: Map| {
        load_files(file_options(&options)?)
    });
    engine.register_fn("labelled", |corpus: CorpusHandle| of_corpus(&corpus));
    engine.register_fn("len", |d: &mut LabelledHandle| d.0.len(Split::Train) as INT);
    engine.register_fn("val_len", |d: &mut LabelledHandle| {
        d.0.len(Split::Val) as INT
    });
    engine.register_fn("name", |d: &mut LabelledHandle| d.0.name());
    engine.register_fn("to_string", |d: &mut LabelledHandle| d.0.name());
    engine.register_fn("metric", |d: &mut LabelledHandle| d.0.metric());
    engine.register_fn("is_pair", |d: &mut LabelledHandle| d.0.is_pair());
    engine.register_fn("is_tagging", |d: &mut LabelledHandle| d.0.is_tagging());
    engine.register_fn("labels", |d: &mut LabelledHandle| -> Array {
        d.0.label_names().into_iter().map(Dynamic::from).collect()
    });
    engine.register_fn("baseline", |d: &mut LabelledHandle| baseline(d.0.as_ref()));
    engine.register_fn(
        "example",
        |d: &mut LabelledHandle, i: INT| -> ScriptResult<Map> {
            let n = d.0.len(Split::Train);
            let index = usize::try_from(i).ok().filter(|&i| i < n).ok_or_else(|| {
                script_error(format!("example({i}): the train split has {n} examples"))
            })?;
            let e = d.0.get(Split::Train, index);
            let mut m = Map::new();
            if let Some(tagged) = d.0.tagged(Split::Train, index) {
                let names = d.0.label_names();
                m.insert("text".into(), Dynamic::from(e.text));
                m.insert(
                    "tokens".into(),
                    Dynamic::from_array(tagged.words.into_iter().map(Dynamic::from).collect()),
                );
                m.insert(
                    "tags".into(),
                    Dynamic::from_array(
                        tagged
                            .tags
                            .iter()
                            .map(|&t| Dynamic::from(names.get(t).cloned().unwrap_or_default()))
                            .collect(),
                    ),
                );
                return Ok(m);
            }
            m.insert("text".into(), Dynamic::from(e.text));
            m.insert(
                "text_pair".into(),
                e.text_pair.map_or(Dynamic::UNIT, Dynamic::from),
            );
            m.insert(
                "label".into(),
                match e.label {
                    Label::Class(c) => Dynamic::from(
                        d.0.label_names()
                            .get(c)
                            .cloned()
                            .unwrap_or_else(|| c.to_string()),
                    ),
                    Label::Score(s) => Dynamic::from(s as FLOAT),
                },
            );
            Ok(m)
        },
    );
    let h = host.clone();
    engine.register_fn(
        "fit",
        move |tr: &mut TrainerHandle,
              model: ModelHandle,
              data: LabelledHandle,
              tok: TokenizerHandle|
              -> ScriptResult<Map> {
            let tokenizer = tok.read();
            let job = TrainJob::labelled(data.0.as_ref(), tokenizer.as_ref());
            let mut trainer = lock(&tr.0);
            let name = trainer.name().to_string();
            let config = trainer.config();
            let metrics = in_run_dir(
                &h,
                &name,
                &format!("trainer-{name}"),
                &config,
                &model,
                None,
                |ctx| trainer.fit(model.0.as_ref(), &job, ctx),
            )?;
            let run = h.run_dir().map_err(script_error)?;
            let shown: Vec<String> = ["step", "loss", "val_loss", "val_metric", "val_best"]
                .iter()
                .filter_map(|k| metrics.get(*k).map(|v| format!("{k} {v:.4}")))
                .collect();
            println!(
                "{} on {}: {} → {}",
                name,
                data.0.name(),
                shown.join(", "),
                run.path.display()
            );
            Ok(metrics_map(&metrics))
        },
    );
}
