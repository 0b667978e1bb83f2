//! `:plot [run]`: the loss and validation loss of this session's run (or a named one, or a run
//! directory) as a braille chart in the terminal, with the data's entropy floor when known.

use std::io::IsTerminal;
use std::path::PathBuf;

use super::Repl;
use crate::plots::series_of;
use crate::run_history::{find_run, read_metrics, recent_runs, run_floor};
use crate::term_plot::{render, Color, Level, Series};

impl Repl<'_> {
    pub(super) fn plot(&mut self, name: &str) {
        match self.plot_text(name) {
            Ok(chart) => print!("{chart}"),
            Err(error) => eprintln!("error: {error}"),
        }
    }

    fn plot_text(&self, name: &str) -> Result<String, String> {
        let host = self.session.host();
        let root = host
            .overrides
            .setting("runs_dir")
            .map_or_else(|| PathBuf::from("runs"), |d| PathBuf::from(d.to_string()));
        let run = if name.is_empty() {
            match host.current_run() {
                Some(run) => run.path.clone(),
                None => {
                    let recent = recent_runs(&root);
                    return Err(if recent.is_empty() {
                        "nothing trained in this session yet; :plot NAME draws runs/NAME".into()
                    } else {
                        format!(
                            "nothing trained in this session yet; :plot NAME draws one of: {}",
                            recent.join(", ")
                        )
                    });
                }
            }
        } else {
            find_run(&root, name)?
        };
        let history = read_metrics(&run)
            .map_err(|e| format!("cannot read {}: {e}", run.join("metrics.jsonl").display()))?;
        let floor = run_floor(&run);
        let series = [
            Series {
                name: "train loss",
                points: series_of(&history, "loss"),
                color: Color::Blue,
            },
            Series {
                name: "val loss",
                points: series_of(&history, "val_loss"),
                color: Color::Red,
            },
        ];
        let levels: Vec<Level<'_>> = floor
            .map(|y| Level {
                name: "entropy floor",
                y,
                color: Color::Grey,
            })
            .into_iter()
            .collect();
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse::<usize>().ok())
            .map_or(64, |c| c.saturating_sub(12).clamp(20, 120));
        let title = format!("loss (nats/token) — {}", run.display());
        render(
            &title,
            &series,
            &levels,
            width,
            14,
            std::io::stdout().is_terminal(),
        )
        .ok_or_else(|| format!("{} has no loss values yet", run.display()))
    }
}
