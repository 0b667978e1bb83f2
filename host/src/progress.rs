//! Progress bars: the host's [`ProgressSink`], drawing one `indicatif` bar per task label
//! (`train`, `tokenize`, ...) on stderr, and nothing when stderr is not a terminal.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use llmlab_plugin_api::{ProgressSink, ProgressUpdate};

pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    /// Bars on stderr when it is a terminal; hidden otherwise (CI logs, pipes).
    pub fn for_stderr() -> Bars {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Bars {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// Clears every bar still drawn: the REPL calls it when a call ends, so a call that stopped
    /// early (an error, Ctrl-C) leaves no stale bar above the next prompt.
    pub fn clear(&self) {
        let bars: Vec<ProgressBar> = self
            .bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, bar)| bar)
            .collect();
        for bar in bars {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        let _ = self.multi.clear();
    }

    fn bar(&self, update: &ProgressUpdate) -> ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.entry(update.label.clone())
            .or_insert_with(|| {
                let bar = match update.total {
                    Some(total) => {
                        let bar = ProgressBar::new(total);
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{prefix:>8} [{bar:30}] {pos}/{len} {msg} (eta {eta})",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .progress_chars("=> "),
                        );
                        bar
                    }
                    None => ProgressBar::new_spinner(),
                };
                bar.set_prefix(update.label.clone());
                self.multi.add(bar)
            })
            .clone()
    }
}

impl ProgressSink for Bars {
    fn update(&self, update: &ProgressUpdate) {
        let bar = self.bar(update);
        if let Some(total) = update.total {
            bar.set_length(total);
        }
        bar.set_position(update.position);
        bar.set_message(update.message.clone());
    }

    fn finish(&self, label: &str) {
        if let Some(bar) = self
            .bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(label)
        {
            bar.finish_and_clear();
        }
    }
}
