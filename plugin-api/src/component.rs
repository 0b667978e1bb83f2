//! Components and their registration: a [`Factory`] per component name, submitted with
//! [`submit_component!`](crate::submit_component) and handed to the host by the plugin's
//! `register` function.
//!
//! `inventory` keeps one registry for the whole process (the runtime is shared), so each plugin
//! hands over only the entries its own crate submitted, filtered by crate name.

use std::fmt;
use std::path::Path;

use serde_json::Value;

use crate::{
    Aligner, ConfigKey, Context, Corpus, Error, Model, Quantizer, Result, Tokenizer, Trainer,
};

/// The kinds of component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Tokenizer,
    Model,
    Trainer,
    Aligner,
    Quantizer,
    Corpus,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Tokenizer,
        Kind::Model,
        Kind::Trainer,
        Kind::Aligner,
        Kind::Quantizer,
        Kind::Corpus,
    ];

    /// The Rhai constructor that makes components of this kind (`tokenizer("bpe", ...)`).
    pub fn script_constructor(self) -> &'static str {
        match self {
            Kind::Tokenizer => "tokenizer",
            Kind::Model => "model",
            Kind::Trainer => "trainer",
            Kind::Aligner => "rl",
            Kind::Quantizer => "quantizer",
            Kind::Corpus => "corpus",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Kind::Tokenizer => "tokenizer",
            Kind::Model => "model",
            Kind::Trainer => "trainer",
            Kind::Aligner => "aligner",
            Kind::Quantizer => "quantizer",
            Kind::Corpus => "corpus",
        };
        f.write_str(name)
    }
}

/// A live component, as a factory makes it.
pub enum Instance {
    Tokenizer(Box<dyn Tokenizer>),
    Model(Box<dyn Model>),
    Trainer(Box<dyn Trainer>),
    Aligner(Box<dyn Aligner>),
    Quantizer(Box<dyn Quantizer>),
    Corpus(Box<dyn Corpus>),
}

impl Instance {
    pub fn kind(&self) -> Kind {
        match self {
            Instance::Tokenizer(_) => Kind::Tokenizer,
            Instance::Model(_) => Kind::Model,
            Instance::Trainer(_) => Kind::Trainer,
            Instance::Aligner(_) => Kind::Aligner,
            Instance::Quantizer(_) => Kind::Quantizer,
            Instance::Corpus(_) => Kind::Corpus,
        }
    }
}

/// Makes components of one name. One per component; registered with `submit_component!`.
pub trait Factory: Send + Sync {
    /// The name scripts use: `"bpe"`, `"gpt"`, `"lm"`.
    fn name(&self) -> &'static str;
    fn kind(&self) -> Kind;
    /// One line for `help()` and `llmlab plugins`.
    fn about(&self) -> &'static str;
    /// Every accepted config key with its default and a one-line doc.
    fn config_keys(&self) -> Vec<ConfigKey>;
    /// A new component from a JSON config (an object, or null for all defaults).
    fn create(&self, config: &Value, ctx: &Context) -> Result<Instance>;
    /// A component saved earlier (`tokenizer.json`, a model directory, ...).
    fn load(&self, path: &Path, ctx: &Context) -> Result<Instance> {
        let _ = (path, ctx);
        Err(Error::unsupported(self.name(), "load"))
    }
}

/// One `inventory` entry: a factory and the crate that submitted it.
pub struct Registration {
    pub crate_name: &'static str,
    pub factory: &'static dyn Factory,
}

inventory::collect!(Registration);

/// What the host passes to a plugin's `register` function.
pub trait Registrar {
    fn register(&mut self, registration: &'static Registration);
}

/// Hands `registrar` every component submitted by the crate named `crate_name`.
pub fn register_crate(crate_name: &str, registrar: &mut dyn Registrar) {
    for registration in inventory::iter::<Registration> {
        if registration.crate_name == crate_name {
            registrar.register(registration);
        }
    }
}

/// Submits a factory (a `const`-constructible value implementing [`Factory`]) for this crate.
#[macro_export]
macro_rules! submit_component {
    ($factory:expr) => {
        $crate::inventory::submit! {
            $crate::Registration { crate_name: env!("CARGO_CRATE_NAME"), factory: &$factory }
        }
    };
}
