//! The [`Context`] the host passes to every plugin call: where to compute (device, dtype), the
//! seed, the cancellation flag (Ctrl-C), and the sinks for progress and metrics that the host
//! renders (progress bars, `metrics.jsonl`, plots).
//!
//! Logging needs no handle: with the shared runtime there is one `tracing` dispatcher, and plugin
//! `tracing` events reach the host's subscriber directly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::{Error, Result};

/// Set by the host on Ctrl-C; long-running plugin calls poll it and return [`Error::Cancelled`].
#[derive(Clone, Default, Debug)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// One progress report; `total` is `None` when the length is unknown.
#[derive(Debug, Clone)]
pub struct ProgressUpdate {
    pub label: String,
    pub position: u64,
    pub total: Option<u64>,
    pub message: String,
}

pub trait ProgressSink: Send + Sync {
    fn update(&self, update: &ProgressUpdate);
    /// The task named `label` is over; the host removes its bar.
    fn finish(&self, label: &str);
}

pub trait MetricsSink: Send + Sync {
    /// Records named values at `step` (a JSONL line in the run directory, a point on a plot).
    fn record(&self, step: u64, values: &BTreeMap<String, f64>);
    /// A run resumed from a checkpoint at `step`: forget the records after `step` that an
    /// interrupted process wrote after that checkpoint (the resumed run writes them again).
    fn rewind(&self, _step: u64) {}
}

/// Sinks that drop everything: for tests and library use outside the host.
pub struct Discard;

impl ProgressSink for Discard {
    fn update(&self, _: &ProgressUpdate) {}
    fn finish(&self, _: &str) {}
}

impl MetricsSink for Discard {
    fn record(&self, _: u64, _: &BTreeMap<String, f64>) {}
}

#[derive(Clone)]
pub struct Context {
    pub device: Device,
    /// Compute dtype for new tensors: f32 on CPU (candle has no bf16 CPU matmul).
    pub dtype: DType,
    pub seed: u64,
    pub cancel: CancelFlag,
    pub progress: Arc<dyn ProgressSink>,
    pub metrics: Arc<dyn MetricsSink>,
    /// The run directory, when the host opened one for this experiment.
    pub run_dir: Option<PathBuf>,
}

impl Context {
    /// CPU, f32, seed 0, nothing reported: what unit tests use.
    pub fn cpu() -> Context {
        Context {
            device: Device::Cpu,
            dtype: DType::F32,
            seed: 0,
            cancel: CancelFlag::default(),
            progress: Arc::new(Discard),
            metrics: Arc::new(Discard),
            run_dir: None,
        }
    }

    /// `Err(Cancelled)` once the user pressed Ctrl-C.
    pub fn check_cancelled(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    pub fn progress(&self, label: &str, position: u64, total: Option<u64>, message: String) {
        self.progress.update(&ProgressUpdate {
            label: label.to_string(),
            position,
            total,
            message,
        });
    }
}
