//! Code generation judged by execution: the built-in Rhai code tasks ([`tasks`]) checked in the
//! Rhai sandbox ([`sandbox`]), and HumanEval/MBPP-format problems checked by an external Python
//! ([`python`]).
//!
//! The code tasks live in the host, not in the corpora plugin with the other task corpora, because
//! their checker runs the model's code in a Rhai engine, and Rhai is the host's: plugins never see
//! Rhai types (docs/architecture.md).

pub mod corpus;
pub mod python;
pub mod sandbox;
pub mod tasks;
