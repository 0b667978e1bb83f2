//! [`Recorder`]: a metrics sink that keeps every line and can cancel the run at a step; and the
//! [`context`] that reports to it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use llmlab_plugin_api::{CancelFlag, Context, MetricsSink};

/// Keeps every recorded metrics line; cancels `cancel` once `cancel_at` is recorded.
#[derive(Default)]
pub struct Recorder {
    pub lines: Mutex<Vec<(u64, BTreeMap<String, f64>)>>,
    pub cancel_at: Option<(u64, CancelFlag)>,
}

impl MetricsSink for Recorder {
    fn record(&self, step: u64, values: &BTreeMap<String, f64>) {
        self.lines.lock().unwrap().push((step, values.clone()));
        if let Some((at, flag)) = &self.cancel_at {
            if step == *at {
                flag.cancel();
            }
        }
    }
    fn rewind(&self, step: u64) {
        self.lines.lock().unwrap().retain(|(s, _)| *s <= step);
    }
}

impl Recorder {
    pub fn losses(&self) -> Vec<(u64, f64)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|(s, m)| (*s, m["loss"]))
            .collect()
    }
}

pub fn context(recorder: Arc<Recorder>, run_dir: Option<&Path>) -> Context {
    let mut ctx = Context::cpu();
    ctx.metrics = recorder;
    ctx.run_dir = run_dir.map(Path::to_path_buf);
    ctx
}
