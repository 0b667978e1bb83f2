//! `llmlab-corpora`: the built-in data sets as `corpus` components, made the way a third party
//! adds one (a factory per name, `submit_component!`):
//!
//! - [`stories`]: `corpus("stories", #{ bytes, seed })`, short stories from a seeded grammar whose
//!   probabilities are known, hence the entropy floor of any model trained on them;
//! - [`tasks`]: `corpus("arithmetic" | "sort" | "copy" | "reverse", #{ n, digits, seed })`,
//!   prompt/answer tasks with exact checkers, well-formedness for rewards and preference pairs;
//! - [`chat`]: `corpus("chat", #{ n, turns, digits, seed })`, multi-turn conversations of task
//!   questions as `messages` JSON, for chat SFT;
//! - [`glue`]: `corpus("glue", #{ task, n, val, seed })`, a GLUE-style suite (sentiment,
//!   acceptability, entailment, paraphrase, similarity, and the token-classification task
//!   roles of [`glue_roles`]) with exact labels ([`glue_component`]);
//! - [`components`]: the factories and the `Corpus` objects they make.

pub mod chat;
pub mod components;
pub mod glue;
pub mod glue_component;
pub mod glue_roles;
pub mod stories;
pub mod tasks;

llmlab_plugin_api::submit_component!(components::StoriesFactory);
llmlab_plugin_api::submit_component!(components::ChatFactory);
llmlab_plugin_api::submit_component!(glue_component::GlueFactory);
llmlab_plugin_api::submit_component!(components::TaskFactory(tasks::TaskKind::Arithmetic));
llmlab_plugin_api::submit_component!(components::TaskFactory(tasks::TaskKind::Sort));
llmlab_plugin_api::submit_component!(components::TaskFactory(tasks::TaskKind::Copy));
llmlab_plugin_api::submit_component!(components::TaskFactory(tasks::TaskKind::Reverse));
llmlab_plugin_api::declare_plugin!("corpora");
