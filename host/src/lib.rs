//! The llmlab host: finds and checks plugins ([`loader`]), lists their components
//! ([`registry`]), runs Rhai experiments over them ([`script`]), interactively too ([`repl`]).
//! `main.rs` is only the command line around these.

pub mod bench;
pub mod bench_generate;
pub mod bench_kernels;
pub mod chat;
pub mod cli;
pub mod data;
pub mod device;
pub mod distributed;
pub mod eval;
pub mod kernel;
pub mod loader;
pub mod panics;
pub mod plots;
pub mod plugin_sdk;
pub mod progress;
pub mod registry;
pub mod repl;
pub mod run_history;
pub mod runs;
pub mod script;
pub mod serve;
pub mod sweep;
pub mod term_plot;
pub mod trust;
