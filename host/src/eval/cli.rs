//! `llmlab eval --model runs/x --tasks a,b --out runs/x/eval` and
//! `llmlab eval compare runs/a runs/b ... [--png FILE]`.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::builtin::TASKS;
use super::chart::bar_chart;
use super::report::{compare_table, comparison, read_results, table};
use super::runner::RunOptions;
use crate::script::{load_model_and_tokenizer, run_evaluation, Session};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub command: Option<EvalCommand>,
    /// A run directory (its `model/` and `tokenizer.json`) or a model directory.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The tokenizer file (default: tokenizer.json in or beside the model directory).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Tasks separated by commas: built-in names (`--list`) or JSON task files.
    #[arg(long)]
    pub tasks: Option<String>,
    /// Where results.json, report.md and the samples go (default: <model run>/eval).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// At most this many documents per task.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Rows per forward pass or generation batch.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Samples per document for generate_until tasks (overrides each task's `repeats`).
    #[arg(long)]
    pub repeats: Option<usize>,
    /// List the built-in tasks.
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// One table over several runs' results (and a bar chart PNG).
    Compare {
        /// Run directories (or their eval folders, or results.json files).
        #[arg(required = true, num_args = 1..)]
        runs: Vec<PathBuf>,
        /// The bar chart's file.
        #[arg(long, default_value = "eval-compare.png")]
        png: PathBuf,
    },
}

/// Where a `--model` path keeps the model and the tokenizer.
fn locate(model: &Path, tokenizer: Option<&Path>) -> Result<(PathBuf, PathBuf), String> {
    let model_dir = if model.join("model").join("config.json").is_file() {
        model.join("model")
    } else if model.join("config.json").is_file() {
        model.to_path_buf()
    } else {
        return Err(format!(
            "{}: no model there (expected config.json in it or in its model/ folder)",
            model.display()
        ));
    };
    let tokenizer = match tokenizer {
        Some(t) => t.to_path_buf(),
        None => [
            model.join("tokenizer.json"),
            model_dir.join("tokenizer.json"),
        ]
        .into_iter()
        .chain(model_dir.parent().map(|p| p.join("tokenizer.json")))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "{}: no tokenizer.json beside the model; give --tokenizer FILE",
                model.display()
            )
        })?,
    };
    Ok((model_dir, tokenizer))
}

/// Runs `llmlab eval ...`; the session gives components, corpora, Ctrl-C and progress.
pub fn run(session: &Session, args: EvalArgs) -> Result<(), String> {
    if let Some(EvalCommand::Compare { runs, png }) = args.command {
        return compare(&runs, &png);
    }
    if args.list {
        for (name, about) in TASKS {
            println!("{name:20} {about}");
        }
        return Ok(());
    }
    let model = args.model.ok_or(
        "eval: give --model RUN_DIR (and --tasks a,b), or `eval --list`, or `eval compare`",
    )?;
    let tasks = args
        .tasks
        .ok_or("eval: give --tasks a,b (`eval --list` lists the built-in tasks)")?;
    let (model_dir, tokenizer) = locate(&model, args.tokenizer.as_deref())?;
    let host = session.host();
    let (m, tok) = load_model_and_tokenizer(
        host,
        &model_dir.display().to_string(),
        &tokenizer.display().to_string(),
    )
    .map_err(|e| e.to_string())?;
    let specs = tasks
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(super::resolve)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let options = RunOptions {
        limit: args.limit,
        batch: args.batch.max(1),
        seed: host.context.seed,
        repeats: args.repeats,
        temperature: None,
    };
    let report = run_evaluation(host, &m, &tok, specs, options).map_err(|e| e.to_string())?;
    let out = args.out.unwrap_or_else(|| model.join("eval"));
    report.write(&out).map_err(|e| e.to_string())?;
    print!("{}", table(&report.to_json()));
    println!("results: {}", out.join("results.json").display());
    Ok(())
}

fn compare(runs: &[PathBuf], png: &Path) -> Result<(), String> {
    let results = runs
        .iter()
        .map(|r| read_results(r).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let labels: Vec<String> = runs.iter().map(|r| label(r)).collect();
    print!("{}", compare_table(&labels, &results));
    bar_chart(png, &labels, &comparison(&results)).map_err(|e| e.to_string())?;
    println!("chart: {}", png.display());
    Ok(())
}

/// A run's column name: its directory name (skipping `eval` and `results.json`).
fn label(path: &Path) -> String {
    path.components()
        .rev()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .find(|c| c != "results.json" && !c.starts_with("eval") && c != "." && !c.is_empty())
        .unwrap_or_else(|| path.display().to_string())
}
