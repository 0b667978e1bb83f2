//! llmlab plugin `rl`: aligners that learn from preference pairs (prompt, chosen, rejected).
//!
//! - `reward` ([`reward`]): a reward model, the given model's body (its own copy) plus a scalar
//!   head on the last token's hidden state, trained with the pairwise loss −log σ(r_c − r_r).
//! - `dpo` ([`dpo`]): direct preference optimisation of a policy against a frozen reference copy.
//!
//! Both tokenize pairs the same way ([`preference_batch`]), hold out a split for preference
//! accuracy, and optimise with the shared runtime's AdamW, schedule and clipping
//! ([`optimizer`], on `llmlab_plugin_api::train`). Settings: [`config`].

pub mod config;
pub mod dpo;
pub mod fit;
pub mod optimizer;
pub mod preference_batch;
pub mod reward;

pub use dpo::{new_dpo, Dpo};
pub use reward::{new_reward_model, RewardModel};

llmlab_plugin_api::submit_component!(reward::RewardFactory);
llmlab_plugin_api::submit_component!(dpo::DpoFactory);
llmlab_plugin_api::declare_plugin!("rl");
