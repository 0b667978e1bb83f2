//! `corpus("code", #{ level, n, seed })`: the code tasks as a host built-in `corpus` component,
//! so they serve SFT (`trainer("sft").fit(gpt, code, tok)`), RL rewards (`code.reward()`: the
//! sandboxed checker, partial credit for a program that compiles and defines `f`) and
//! `evaluate(...)` like every other task corpus.

use std::sync::Arc;

use llmlab_plugin_api::config::TypedConfig;
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{
    ConfigKey, Context, Corpus, Error, ExampleSource, Factory, Instance, Kind, Result, TextSource,
};

use super::tasks::{well_formed, CodeTasks, Level};

/// At least what one generated problem holds: prompt and solution `String`s.
const CODE_EXAMPLE_BYTES: f64 = 160.0;

#[derive(Debug, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
pub struct CodeOptions {
    pub level: String,
    pub n: usize,
    pub seed: u64,
}

impl Default for CodeOptions {
    fn default() -> Self {
        CodeOptions {
            level: "easy".into(),
            n: 10_000,
            seed: 0,
        }
    }
}

impl TypedConfig for CodeOptions {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("level", "\"easy\", \"medium\" or \"hard\""),
        ("n", "number of problems"),
        ("seed", "same seed, same problems"),
    ];
    fn validate(&self) -> std::result::Result<(), String> {
        Level::from_name(&self.level).map_err(|e| e.to_string())?;
        if self.n == 0 {
            return Err("n must be at least 1".into());
        }
        Ok(())
    }
}

/// The `code` corpus factory (a host built-in).
pub struct CodeFactory;

impl Factory for CodeFactory {
    fn name(&self) -> &'static str {
        "code"
    }
    fn kind(&self) -> Kind {
        Kind::Corpus
    }
    fn about(&self) -> &'static str {
        "write a Rhai fn f from a one-line spec; checked by running hidden tests in a sandbox"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        CodeOptions::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        let o = CodeOptions::from_json(self.name(), config)?;
        llmlab_plugin_api::memory::check_fits(
            &format!("corpus(\"code\"): `n` = {}", o.n),
            o.n as f64 * CODE_EXAMPLE_BYTES,
            "ask for less",
        )
        .map_err(Error::Data)?;
        let tasks = CodeTasks::generate(Level::from_name(&o.level)?, o.n, o.seed)?;
        Ok(Instance::Corpus(Box::new(CodeCorpus(Arc::new(tasks)))))
    }
}

llmlab_plugin_api::submit_component!(CodeFactory);

pub struct CodeCorpus(pub Arc<CodeTasks>);

impl Corpus for CodeCorpus {
    fn name(&self) -> String {
        ExampleSource::name(self.0.as_ref())
    }
    fn documents(&self) -> Arc<dyn TextSource> {
        self.0.clone()
    }
    fn examples(&self) -> Option<Arc<dyn ExampleSource>> {
        Some(self.0.clone())
    }
    fn well_formed(&self, prompt: &str, answer: &str) -> Option<bool> {
        well_formed(prompt, answer)
    }
}
