//! A complete third-party llmlab plugin: one tokenizer, `"hello"`, that maps each
//! whitespace-separated word of a fixed vocabulary to its index (unknown words to `<unk>`).
//! It exists to show plugin authors the whole shape, and for the loader's end-to-end tests.

use std::path::Path;

use llmlab_plugin_api::prelude::*;
use llmlab_plugin_api::{config::TypedConfig, Error, SpecialToken, TextSource};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", default, deny_unknown_fields)]
struct HelloConfig {
    /// The vocabulary, in id order; id 0 is `<unk>`.
    words: Vec<String>,
    /// Panic when asked to encode this word: shows that a plugin panic is a script error.
    panic_on: Option<String>,
}

impl Default for HelloConfig {
    fn default() -> Self {
        HelloConfig { words: vec!["hello".into(), "world".into()], panic_on: None }
    }
}

impl TypedConfig for HelloConfig {
    const DOCS: &'static [(&'static str, &'static str)] = &[
        ("words", "vocabulary in id order (id 0 is <unk>)"),
        ("panic_on", "encode() panics on this word (to demonstrate panic isolation)"),
    ];
}

#[derive(Clone)]
struct HelloTokenizer {
    config: HelloConfig,
}

impl HelloTokenizer {
    fn vocab(&self) -> impl Iterator<Item = &str> {
        std::iter::once("<unk>").chain(self.config.words.iter().map(String::as_str))
    }
}

impl Tokenizer for HelloTokenizer {
    fn name(&self) -> &str {
        "hello"
    }
    fn config(&self) -> Value {
        self.config.to_json()
    }
    fn train(&mut self, _: &dyn TextSource, _: &Context) -> Result<()> {
        Err(Error::unsupported("hello", "training (its vocabulary is fixed)"))
    }
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(text
            .split_whitespace()
            .map(|word| {
                if self.config.panic_on.as_deref() == Some(word) {
                    panic!("hello tokenizer was told to panic on {word:?}");
                }
                self.token_to_id(word).unwrap_or(0)
            })
            .collect())
    }
    fn decode(&self, ids: &[u32]) -> Result<String> {
        let words: Vec<String> = ids.iter().map(|&id| self.id_to_token(id).unwrap_or_else(|| "<unk>".into())).collect();
        Ok(words.join(" "))
    }
    fn vocab_size(&self) -> usize {
        self.config.words.len() + 1
    }
    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.vocab().position(|w| w == token).map(|i| i as u32)
    }
    fn id_to_token(&self, id: u32) -> Option<String> {
        self.vocab().nth(id as usize).map(str::to_string)
    }
    fn special_token(&self, role: SpecialToken) -> Option<u32> {
        (role == SpecialToken::Unknown).then_some(0)
    }
    fn to_json(&self) -> Result<String> {
        Err(Error::unsupported("hello", "saving"))
    }
    fn clone_box(&self) -> Box<dyn Tokenizer> {
        Box::new(self.clone())
    }
}

struct Hello;

impl Factory for Hello {
    fn name(&self) -> &'static str {
        "hello"
    }
    fn kind(&self) -> Kind {
        Kind::Tokenizer
    }
    fn about(&self) -> &'static str {
        "word-level tokenizer over a fixed vocabulary (example plugin)"
    }
    fn config_keys(&self) -> Vec<ConfigKey> {
        HelloConfig::keys()
    }
    fn create(&self, config: &Value, _: &Context) -> Result<Instance> {
        let config = HelloConfig::from_json(self.name(), config)?;
        Ok(Instance::Tokenizer(Box::new(HelloTokenizer { config })))
    }
    fn load(&self, path: &Path, _: &Context) -> Result<Instance> {
        Err(Error::unsupported("hello", format!("loading {}", path.display())))
    }
}

llmlab_plugin_api::submit_component!(Hello);
llmlab_plugin_api::declare_plugin!("hello");
