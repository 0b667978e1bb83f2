//! The command line: `llmlab` (REPL), `llmlab run FILE`, `llmlab plugins`, `llmlab plugin check`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "llmlab", version = long_version(), about = "A plugin-based research framework for small language models")]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args)]
pub struct Common {
    /// Extra directory to load plugins from (searched before LLMLAB_PLUGIN_PATH and the executable's directory).
    #[arg(long = "plugin-dir", global = true)]
    pub plugin_dirs: Vec<PathBuf>,
    /// Base seed for everything random.
    #[arg(long, global = true, default_value_t = 0)]
    pub seed: u64,
    /// Device: `cpu`, `cuda` or `cuda:N` (cuda builds only: scripts/build-cuda.sh).
    #[arg(long, global = true, default_value = "cpu")]
    pub device: String,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a Rhai experiment script.
    Run {
        script: PathBuf,
        /// Override a config key (`lm.steps=20`, `gpt.n_layer=2`) or a script setting (`name=x`).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// List loaded plugins and their components, and libraries refused with the reason.
    Plugins,
    /// Benchmarks printing one JSON line per measurement.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Plugin library tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Train and forward tokens/s of `gpt` + `lm` on the shapes of shared/bench/torch_gpt.py.
    Train {
        /// tiny, small or gpt2; several separated by commas.
        #[arg(long, default_value = "tiny")]
        config: String,
        /// Timed steps (after 3 warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Check that a library is a plugin this host can load; prints its declaration.
    Check { file: PathBuf },
}

fn long_version() -> &'static str {
    let text = format!(
        "{}\n{}",
        env!("CARGO_PKG_VERSION"),
        llmlab_plugin_api::FINGERPRINT.replace('\n', "\n  ")
    );
    Box::leak(text.into_boxed_str())
}
