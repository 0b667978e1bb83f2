//! llmlab plugin `rl`: aligners that learn from preference pairs (prompt, chosen, rejected) and
//! from rewards of their own samples.
//!
//! - `reward` ([`reward`]): a reward model, the given model's body (its own copy) plus a scalar
//!   head on the last token's hidden state, trained with the pairwise loss −log σ(r_c − r_r).
//! - `dpo` ([`dpo`]): direct preference optimisation of a policy against a frozen reference copy;
//!   `kto`, `orpo`, `simpo`: the same aligner with those offline losses ([`preference_loss`]).
//! - `grpo` ([`grpo`]) and `ppo` ([`ppo`]): online RL from sampled completions scored by a
//!   reward function (a Rhai closure, a task checker or a reward model), sharing rollouts
//!   ([`rollout`]), the clipped objective ([`policy_loss`]) and run state ([`online`]).
//!
//! The pair aligners tokenize pairs the same way ([`preference_batch`]) and hold out a split
//! for preference accuracy. All optimise with the shared runtime's AdamW, schedule and clipping
//! ([`optimizer`], on `llmlab_train`). Settings: [`config`],
//! [`online_config`].

pub mod advantage;
pub mod config;
pub mod dpo;
pub mod fit;
pub mod gae;
pub mod grpo;
pub mod grpo_variant;
pub mod online;
pub mod online_config;
pub mod optimizer;
pub mod policy_checkpoint;
pub mod policy_loss;
pub mod ppo;
pub mod preference_batch;
pub mod preference_loss;
pub mod resume;
pub mod reward;
pub mod rollout;
pub mod value_head;

pub use dpo::{new_dpo, new_preset, Dpo};
pub use grpo::{new_grpo, Grpo};
pub use ppo::{new_ppo, Ppo};
pub use reward::{new_reward_model, RewardModel};

llmlab_plugin_api::submit_component!(reward::RewardFactory);
llmlab_plugin_api::submit_component!(dpo::DpoFactory {
    loss: config::DpoLoss::Sigmoid
});
llmlab_plugin_api::submit_component!(dpo::DpoFactory {
    loss: config::DpoLoss::Kto
});
llmlab_plugin_api::submit_component!(dpo::DpoFactory {
    loss: config::DpoLoss::Orpo
});
llmlab_plugin_api::submit_component!(dpo::DpoFactory {
    loss: config::DpoLoss::Simpo
});
llmlab_plugin_api::submit_component!(grpo::GrpoFactory);
llmlab_plugin_api::submit_component!(ppo::PpoFactory);
llmlab_plugin_api::declare_plugin!("rl");
