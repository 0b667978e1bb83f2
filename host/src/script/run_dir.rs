//! Running a component inside the session's run directory: the one place that records the
//! resolved configs, hands the plugin a context that writes `metrics.jsonl`, and draws the plots
//! afterwards (also when the call was cancelled or failed half-way). Trainers and aligners use it.

use llmlab_plugin_api::serde_json::Value;
use llmlab_plugin_api::{Context, StepMetrics};
use rhai::{Dynamic, Map};

use super::model::ModelHandle;
use super::{plugin_call, script_error, Host, ScriptResult};
use crate::plots::training_plots;

/// Calls `call` (a plugin call named `name`) in the run directory, having recorded `config` as
/// `configs/<label>.json` and the model's as `configs/model-<name>.json`.
pub fn in_run_dir<T>(
    host: &Host,
    name: &str,
    label: &str,
    config: &Value,
    model: &ModelHandle,
    floor: Option<f64>,
    call: impl FnOnce(&Context) -> llmlab_plugin_api::Result<T>,
) -> ScriptResult<T> {
    let run = host.run_dir().map_err(script_error)?;
    run.record_config(label, config).map_err(script_error)?;
    run.record_config(&format!("model-{}", model.0.name()), &model.0.config())
        .map_err(script_error)?;
    if let Some(floor) = floor {
        // The REPL's `:plot` draws the floor under a run's curves, also for runs on disk.
        let data = llmlab_plugin_api::serde_json::json!({ "entropy_floor_nats_per_token": floor });
        run.record_config("data", &data).map_err(script_error)?;
    }
    let ctx = Context {
        run_dir: Some(run.path.clone()),
        metrics: crate::serve::metrics::training_sink(run.metrics_sink()),
        ..host.context.clone()
    };
    let result = plugin_call(name, || call(&ctx)).map_err(|error| {
        if ctx.cancel.is_cancelled() {
            // Say where the work went, not only that it stopped.
            script_error(format!(
                "{name}: cancelled by Ctrl-C or SIGTERM; metrics and the last checkpoint are in {}",
                run.path.display()
            ))
        } else {
            error
        }
    });
    ctx.progress.finish("train");
    if let Err(error) = training_plots(&run.path, &run.metrics().history(), floor) {
        llmlab_plugin_api::tracing::warn!(%error, "could not draw the training plots");
    }
    result
}

/// Step metrics as a script map.
pub fn metrics_map(metrics: &StepMetrics) -> Map {
    metrics
        .iter()
        .map(|(k, v)| (k.as_str().into(), Dynamic::from(*v)))
        .collect()
}
