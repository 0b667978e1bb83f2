//! Hyperparameter sweeps: `sweep(space, objective, opts)` in Rhai (the script surface is
//! `script/sweep.rs`), driven from here. One file per concept:
//!
//! * [`space`]: the dimensions and the grid;
//! * [`sampler`]: grid / random / TPE proposals, [`tpe`]: the Parzen estimator;
//! * [`pruners`]: median and ASHA early stopping;
//! * [`records`]: `trials.jsonl`, `sweep.json`, `best.rhai`, the status table;
//! * [`plots`]: history, per-parameter and intermediate-value PNGs;
//! * [`workers`]: trials in `llmlab` worker processes;
//! * [`study`]: one sweep's state and its loop over trials.
//!
//! The sweep driver belongs to the host (DESIGN.md §9): it orchestrates components and
//! processes, it is not a component.

pub mod plots;
pub mod pruners;
pub mod records;
pub mod sampler;
pub mod space;
pub mod study;
pub mod tpe;
pub mod workers;

use std::path::Path;

/// `llmlab sweep status NAME`: the trial table of `runs_root/NAME`.
pub fn status(runs_root: &Path, name: &str) -> Result<String, String> {
    let dir = records::sweep_dir(runs_root, name).map_err(|e| e.to_string())?;
    let meta = records::read_meta(&dir).map_err(|e| e.to_string())?;
    if meta.is_none() {
        return Err(format!(
            "no sweep {name} in {} (no {})",
            runs_root.display(),
            dir.join(records::META_FILE).display()
        ));
    }
    let trials = records::load_trials(&dir).map_err(|e| e.to_string())?;
    Ok(records::status_table(name, &trials, meta.as_ref()))
}
