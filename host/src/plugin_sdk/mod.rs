//! Tools for plugin authors: `llmlab plugin new` writes an out-of-tree plugin crate
//! ([`scaffold`]), `llmlab plugin build` compiles one against this host's runtime ([`build`]).

pub mod build;
pub mod scaffold;
