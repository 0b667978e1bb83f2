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
    /// Load only plugin libraries whose SHA-256 is listed in FILE (`sha256sum` output format);
    /// others are refused before any of their code runs (docs/scripting.md, "What a script can do").
    #[arg(long = "trusted-plugins", global = true, value_name = "FILE")]
    pub trusted_plugins: Option<PathBuf>,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub metrics: crate::serve::cli::MetricsArgs,
}

/// Resource limits for scripts (default: none, expression depth 256), for shared or served use.
#[derive(Debug, Args, Clone, Copy)]
pub struct LimitArgs {
    /// Stop a script (each REPL line) after this many Rhai operations.
    #[arg(long, global = true, value_name = "N")]
    pub max_operations: Option<u64>,
    /// Largest array a script may build (elements).
    #[arg(long, global = true, value_name = "N")]
    pub max_array_size: Option<usize>,
    /// Largest string a script may build (bytes).
    #[arg(long, global = true, value_name = "N")]
    pub max_string_size: Option<usize>,
    /// Largest object map a script may build (entries).
    #[arg(long, global = true, value_name = "N")]
    pub max_map_size: Option<usize>,
    /// Deepest nesting of function calls.
    #[arg(long, global = true, value_name = "N")]
    pub max_call_depth: Option<usize>,
    /// Deepest nesting of expressions the parser accepts (default 256).
    #[arg(long, global = true, value_name = "N")]
    pub max_expr_depth: Option<usize>,
}

impl LimitArgs {
    pub fn limits(&self) -> crate::trust::ScriptLimits {
        crate::trust::ScriptLimits {
            max_operations: self.max_operations,
            max_array_size: self.max_array_size,
            max_string_size: self.max_string_size,
            max_map_size: self.max_map_size,
            max_call_depth: self.max_call_depth,
            max_expr_depth: self.max_expr_depth,
        }
    }
}

impl Common {
    /// The allow-list named by `--trusted-plugins`, read and checked.
    pub fn trusted_plugins(&self) -> Result<Option<crate::trust::TrustedPlugins>, String> {
        self.trusted_plugins
            .as_deref()
            .map(crate::trust::TrustedPlugins::load)
            .transpose()
    }
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
    /// Serve a model: OpenAI-compatible API with continuous batching, /metrics and a web
    /// playground at / (docs/serving.md).
    Serve(crate::serve::cli::ServeArgs),
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
    /// Evaluation tasks over a saved model, and comparing runs (docs/eval.md).
    Eval(crate::eval::cli::EvalArgs),
    /// Hyperparameter sweeps (docs/sweep.md).
    Sweep {
        #[command(subcommand)]
        command: SweepCommand,
    },
    /// The Jupyter kernel: `kernel install` writes its kernelspec; Jupyter starts it with
    /// `kernel --connection-file FILE` (docs/notebook.md).
    Kernel {
        /// The connection file Jupyter passes to the kernel.
        #[arg(long, short = 'f', value_name = "FILE")]
        connection_file: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<KernelCommand>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Write the kernelspec (kernel.json) so Jupyter lists "llmlab (Rhai)"; `--plugin-dir`,
    /// `--device` and `--seed` given here are passed to every kernel started.
    Install {
        /// Into the user's Jupyter data directory (~/.local/share/jupyter).
        #[arg(long)]
        user: bool,
        /// Into PREFIX/share/jupyter (a virtual environment's prefix, say).
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SweepCommand {
    /// Print a sweep's trial table (state, value, steps, parameters; the best marked `*`).
    Status {
        /// The sweep's name (its directory under the runs directory).
        name: String,
        /// Where the runs are (`--set runs_dir=...` of the sweep's script).
        #[arg(long, default_value = "runs")]
        runs_dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Load test of a server on this machine: tokens/s, p50/p99 latency and time to first
    /// token per concurrency level (docs/serving.md).
    Serve(crate::serve::cli::BenchServeArgs),
    /// Train and forward tokens/s of `gpt` + `lm` on the shapes of shared/bench/torch_gpt.py,
    /// with the median time of each phase of a step; on CUDA also the step time and the MFU.
    Train {
        /// tiny, small or gpt2; several separated by commas.
        #[arg(long, default_value = "tiny")]
        config: String,
        /// Timed steps (after 3 warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: u64,
        /// The `lm` trainer's `precision`: f32, or bf16/f16 passes over f32 master weights
        /// (peer: torch_gpt.py --precision, autocast).
        #[arg(long, default_value = "f32")]
        precision: String,
        /// The GPU's dense bf16 peak in TFLOP/s for the MFU on CUDA (default: H100/H200 SXM).
        #[arg(long, default_value_t = crate::bench::H100_BF16_PEAK_TFLOPS)]
        peak_tflops: f64,
    },
    /// Every fused training op against its composed reference on this device: output and
    /// gradient errors, forward + backward time of both (on a GPU: the CUDA kernels' check).
    /// Exits 1 when an error is outside its tolerance.
    Kernels {
        /// small (seconds on a CPU) or gpt2 (GPT-2 small's step shapes).
        #[arg(long, default_value = "small")]
        size: String,
        /// Element types, separated by commas: f32, bf16, f16.
        #[arg(long, default_value = "f32")]
        dtype: String,
        /// Timed repetitions per path (after one warm-up); the median is reported.
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Greedy KV-cached generation tokens/s of `gpt` on the same shapes (peer:
    /// bench/hf_generate.py, transformers' `generate`).
    Generate {
        /// tiny, small or gpt2; several separated by commas.
        #[arg(long, default_value = "tiny")]
        config: String,
        /// Rows generated at once; several separated by commas.
        #[arg(long, default_value = "1")]
        batch: String,
        /// Prompt tokens per row.
        #[arg(long, default_value_t = 16)]
        prompt: usize,
        /// New tokens per row.
        #[arg(long, default_value_t = 100)]
        new_tokens: usize,
        /// Timed calls (after one warm-up call); the median is reported.
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Check that a library is a plugin this host can load; prints its declaration.
    Check { file: PathBuf },
    /// Write a new out-of-tree plugin crate with one working component, a test and a README.
    New {
        /// The plugin's name: its crate, plugin and component name (`char-lstm`).
        name: String,
        /// The component to start from: model, tokenizer, trainer or corpus.
        #[arg(long, default_value = "model")]
        kind: String,
        /// Where to write the crate (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The llmlab source tree to depend on (default: LLMLAB_SOURCE, else the one this
        /// llmlab was built from).
        #[arg(long, value_name = "DIR")]
        llmlab_source: Option<PathBuf>,
    },
    /// Build an out-of-tree plugin crate against this host's runtime (its Cargo.lock,
    /// toolchain, flags and compiled dependencies), check it and load it.
    Build {
        /// The plugin crate (default: the current directory).
        dir: Option<PathBuf>,
        /// Also run the crate's tests with the same settings.
        #[arg(long)]
        test: bool,
        /// The llmlab source tree (default: LLMLAB_SOURCE, else the one this llmlab was built
        /// from).
        #[arg(long, value_name = "DIR")]
        llmlab_source: Option<PathBuf>,
    },
}

fn long_version() -> &'static str {
    let text = format!(
        "{}\n{}",
        env!("CARGO_PKG_VERSION"),
        llmlab_plugin_api::FINGERPRINT.replace('\n', "\n  ")
    );
    Box::leak(text.into_boxed_str())
}
