//! Progress in a notebook: each task (`train`, `tokenize`, ...) is one line of text under the
//! running cell, shown with `display_data` and then updated in place (`update_display_data`,
//! at most a few times a second) — the notebook's form of the REPL's progress bars.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use llmlab_plugin_api::serde_json::json;
use llmlab_plugin_api::{ProgressSink, ProgressUpdate};
use tokio::sync::mpsc::UnboundedSender;

use super::wire::{new_id, Message};
use super::worker::Parent;

const EVERY: Duration = Duration::from_millis(250);

struct Line {
    display_id: String,
    sent: Instant,
    text: String,
}

pub struct NotebookProgress {
    pub iopub: UnboundedSender<Message>,
    pub parent: Parent,
    lines: Mutex<HashMap<String, Line>>,
}

/// `label [=====>     ] 120/800 message`
fn text(update: &ProgressUpdate) -> String {
    match update.total {
        Some(total) if total > 0 => {
            let width = 30;
            let done = ((update.position.min(total) as f64 / total as f64) * width as f64) as usize;
            let bar: String = (0..width)
                .map(|i| match i.cmp(&done) {
                    std::cmp::Ordering::Less => '=',
                    std::cmp::Ordering::Equal => '>',
                    std::cmp::Ordering::Greater => ' ',
                })
                .collect();
            format!(
                "{} [{bar}] {}/{} {}",
                update.label, update.position, total, update.message
            )
        }
        _ => format!("{} {} {}", update.label, update.position, update.message),
    }
}

impl NotebookProgress {
    pub fn new(iopub: UnboundedSender<Message>, parent: Parent) -> NotebookProgress {
        NotebookProgress {
            iopub,
            parent,
            lines: Mutex::new(HashMap::new()),
        }
    }

    fn send(&self, msg_type: &str, display_id: &str, text: &str) {
        let parent = self.parent.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(parent) = parent.as_ref() {
            let _ = self.iopub.send(parent.broadcast(
                msg_type,
                json!({
                    "data": { "text/plain": text },
                    "metadata": {},
                    "transient": { "display_id": display_id },
                }),
            ));
        }
    }
}

impl ProgressSink for NotebookProgress {
    fn update(&self, update: &ProgressUpdate) {
        let line = text(update);
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        match lines.get_mut(&update.label) {
            Some(shown) => {
                shown.text = line;
                if shown.sent.elapsed() >= EVERY {
                    shown.sent = Instant::now();
                    self.send("update_display_data", &shown.display_id, &shown.text);
                }
            }
            None => {
                let display_id = new_id();
                self.send("display_data", &display_id, &line);
                lines.insert(
                    update.label.clone(),
                    Line {
                        display_id,
                        sent: Instant::now(),
                        text: line,
                    },
                );
            }
        }
    }

    /// The line keeps its last state (the final step and loss), as a finished bar would.
    fn finish(&self, label: &str) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shown) = lines.remove(label) {
            self.send("update_display_data", &shown.display_id, &shown.text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_shows_position_total_and_message() {
        let update = ProgressUpdate {
            label: "train".into(),
            position: 15,
            total: Some(30),
            message: "loss 2.5".into(),
        };
        assert_eq!(
            text(&update),
            "train [===============>              ] 15/30 loss 2.5"
        );
    }
}
