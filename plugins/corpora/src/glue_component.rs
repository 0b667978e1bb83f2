//! `corpus("glue", #{ task, n, val, seed })`: one task of the GLUE-style suite ([`crate::glue`])
//! as a corpus component. Its documents are the train texts (for a tokenizer); its labelled
//! examples are what `trainer("classify")` learns from (`glue(#{..})` in scripts gives them).

use std::sync::Arc;

use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{
    ConfigKey, Context, Corpus, Error, Factory, Instance, Kind, LabelledSource, Result, TextSource,
};

use crate::glue::{GlueData, GlueTask};

/// At least what one generated example holds (texts and their `String`s).
const EXAMPLE_BYTES: f64 = 400.0;

#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct GlueOptions {
    pub task: String,
    pub n: usize,
    /// `None`: a quarter of `n` (at least 1).
    pub val: Option<usize>,
    pub seed: u64,
    /// Entailment only: the share of training negatives that reuse a word of the story in
    /// another role; `None`: the suite's mix.
    pub hard_negatives: Option<f64>,
}

impl Default for GlueOptions {
    fn default() -> Self {
        GlueOptions {
            task: "sentiment".into(),
            n: 2000,
            val: None,
            seed: 0,
            hard_negatives: None,
        }
    }
}

impl TypedConfig for GlueOptions {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        (
            "task",
            "sentiment, acceptability, entailment, paraphrase, similarity or roles (token classification)",
        ),
        ("n", "training examples"),
        (
            "val",
            "validation examples (disjoint from train); null = n / 4",
        ),
        ("seed", "same seed, same examples"),
        (
            "hard_negatives",
            "entailment only: chance (0-1) that a training negative reuses a word the story mentions in another role; null = the suite's mix (0.5); validation always keeps the suite's mix",
        ),
    ];
    fn validate(&self) -> std::result::Result<(), String> {
        if GlueTask::from_name(&self.task).is_none() {
            let names: Vec<&str> = GlueTask::ALL.iter().map(|t| t.name()).collect();
            return Err(format!(
                "unknown task {:?}; the tasks are {}",
                self.task,
                names.join(", ")
            ));
        }
        if self.n == 0 {
            return Err("n must be at least 1".into());
        }
        if self.val == Some(0) {
            return Err("val must be at least 1 (or null for n / 4)".into());
        }
        if let Some(p) = self.hard_negatives {
            if self.task != "entailment" {
                return Err(format!(
                    "hard_negatives applies to the entailment task only, not {:?}",
                    self.task
                ));
            }
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("hard_negatives must be within 0..=1, not {p}"));
            }
        }
        Ok(())
    }
}

pub struct GlueFactory;

impl Factory for GlueFactory {
    fn name(&self) -> &'static str {
        "glue"
    }
    fn kind(&self) -> Kind {
        Kind::Corpus
    }
    fn about(&self) -> &'static str {
        "GLUE-style tasks with exact labels from the stories grammar: sentiment, acceptability, entailment, paraphrase, similarity, roles (per-word tags)"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        GlueOptions::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        let o = GlueOptions::from_json(self.name(), config)?;
        let task = GlueTask::from_name(&o.task).expect("validated");
        let val = o.val.unwrap_or((o.n / 4).max(1));
        llmlab_plugin_api::memory::check_fits(
            &format!("corpus(\"glue\"): `n` = {}", o.n),
            (o.n + val) as f64 * EXAMPLE_BYTES,
            "ask for less",
        )
        .map_err(Error::Data)?;
        Ok(Instance::Corpus(Box::new(GlueCorpus(Arc::new(
            GlueData::generate_with(task, o.n, val, o.seed, o.hard_negatives),
        )))))
    }
}

pub struct GlueCorpus(pub Arc<GlueData>);

impl Corpus for GlueCorpus {
    fn name(&self) -> String {
        LabelledSource::name(self.0.as_ref())
    }
    fn documents(&self) -> Arc<dyn TextSource> {
        self.0.clone()
    }
    fn labelled(&self) -> Option<Arc<dyn LabelledSource>> {
        Some(self.0.clone())
    }
}
