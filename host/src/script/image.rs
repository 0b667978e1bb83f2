//! Images as script values: `image("runs/x/loss.png")` loads a PNG, `plot()` draws this session's
//! run (loss, validation loss, entropy floor), `plot("name")` an earlier run under `runs/`, and
//! `plot(result)` takes what `fit` returned. A notebook shows an image value inline; the REPL
//! prints its description (`:plot` draws in the terminal).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rhai::{Engine, Map};

use super::{script_error, Host, ScriptResult};
use crate::plots::training_plots;
use crate::run_history::{find_run, read_metrics, run_floor};

/// A PNG image and where it came from.
#[derive(Clone)]
pub struct ImageHandle {
    pub png: Arc<Vec<u8>>,
    pub source: String,
}

impl ImageHandle {
    /// Width and height from the PNG header.
    pub fn size(&self) -> Option<(u32, u32)> {
        let b = self.png.get(16..24)?;
        Some((
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ))
    }

    pub fn describe(&self) -> String {
        match self.size() {
            Some((w, h)) => format!("image {} (PNG {w}×{h})", self.source),
            None => format!("image {}", self.source),
        }
    }
}

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

fn load_png(path: &Path) -> ScriptResult<ImageHandle> {
    let png = std::fs::read(path)
        .map_err(|e| script_error(format!("image: cannot read {}: {e}", path.display())))?;
    if !png.starts_with(PNG_MAGIC) {
        return Err(script_error(format!(
            "image: {} is not a PNG file",
            path.display()
        )));
    }
    Ok(ImageHandle {
        png: Arc::new(png),
        source: path.display().to_string(),
    })
}

/// Draws the loss plot of the run in `run` (from its `metrics.jsonl`) and loads it.
fn loss_plot(run: &Path) -> ScriptResult<ImageHandle> {
    let history = read_metrics(run).map_err(|e| {
        script_error(format!(
            "plot: cannot read {}: {e}",
            run.join("metrics.jsonl").display()
        ))
    })?;
    if history.is_empty() {
        return Err(script_error(format!(
            "plot: {} has no metrics yet",
            run.display()
        )));
    }
    // Drawn into a scratch directory so plotting an old run never rewrites its files.
    static DRAWN: AtomicU64 = AtomicU64::new(0);
    let scratch = std::env::temp_dir().join(format!(
        "llmlab-plot-{}-{}",
        std::process::id(),
        DRAWN.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| script_error(format!("plot: {}: {e}", scratch.display())))?;
    let drawn = training_plots(&scratch, &history, run_floor(run))
        .map_err(script_error)
        .and_then(|_| load_png(&scratch.join("loss.png")));
    let _ = std::fs::remove_dir_all(&scratch);
    let mut image = drawn?;
    image.source = format!("loss of {}", run.display());
    Ok(image)
}

fn current_run(host: &Host) -> ScriptResult<PathBuf> {
    host.current_run().map(|r| r.path.clone()).ok_or_else(|| {
        script_error("plot: nothing trained in this session yet; plot(\"name\") draws runs/<name>")
    })
}

fn runs_root(host: &Host) -> PathBuf {
    host.overrides
        .setting("runs_dir")
        .map_or_else(|| PathBuf::from("runs"), |d| PathBuf::from(d.to_string()))
}

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    engine.register_type_with_name::<ImageHandle>("Image");
    engine.register_fn("to_string", |i: &mut ImageHandle| i.describe());
    engine.register_fn("image", |path: &str| load_png(Path::new(path)));
    engine.register_fn(
        "save",
        |i: &mut ImageHandle, path: &str| -> ScriptResult<()> {
            std::fs::write(path, i.png.as_slice())
                .map_err(|e| script_error(format!("image save: {path}: {e}")))
        },
    );
    let h = host.clone();
    engine.register_fn("plot", move || loss_plot(&current_run(&h)?));
    // `plot(fit(...))`: fit's result is this session's run.
    let h = host.clone();
    engine.register_fn("plot", move |_: Map| loss_plot(&current_run(&h)?));
    let h = host.clone();
    engine.register_fn("plot", move |name: &str| -> ScriptResult<ImageHandle> {
        let run = find_run(&runs_root(&h), name).map_err(|e| script_error(format!("plot: {e}")))?;
        loss_plot(&run)
    });
}
