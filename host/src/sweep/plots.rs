//! A sweep's PNG plots, redrawn after every trial so an interrupted sweep has them too:
//!
//! * `history.png`: each trial's value (pruned trials at their last intermediate value, marked
//!   differently) and the best value so far;
//! * `params.png`: value against each parameter, one panel per parameter; log dimensions on a
//!   log axis, categorical ones at their value's position;
//! * `intermediate.png`: every trial's reported values against step, pruned ones in their own
//!   colour with a cross where they stopped.

use std::path::Path;

use llmlab_plugin_api::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::records::{Direction, TrialRecord, TrialState};
use super::space::{Coordinates, Dimension, Space};
use crate::plots::ensure_font;

const COMPLETE: RGBColor = RGBColor(31, 119, 180);
const PRUNED: RGBColor = RGBColor(255, 127, 14);
const BEST: RGBColor = RGBColor(214, 39, 40);

fn plot_err(path: &Path) -> impl Fn(&dyn std::fmt::Display) -> Error + '_ {
    move |e| Error::msg(format!("{}: plotting failed: {e}", path.display()))
}

/// The value a trial is plotted at: its result, or a pruned trial's last report.
fn plotted_value(t: &TrialRecord) -> Option<f64> {
    let v = match t.state {
        TrialState::Complete => t.value,
        TrialState::Pruned => t.value.or_else(|| t.intermediate.last().map(|p| p.1)),
        TrialState::Failed => None,
    };
    v.filter(|v| v.is_finite())
}

fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad, hi + pad)
}

/// Draws all three plots into `dir`; a sweep with nothing to draw yet draws nothing.
pub fn sweep_plots(
    dir: &Path,
    space: &Space,
    trials: &[TrialRecord],
    metric: &str,
    direction: Direction,
) -> Result<()> {
    ensure_font();
    history(&dir.join("history.png"), trials, metric, direction)?;
    params(&dir.join("params.png"), space, trials, metric)?;
    intermediate(&dir.join("intermediate.png"), trials, metric)
}

fn history(path: &Path, trials: &[TrialRecord], metric: &str, direction: Direction) -> Result<()> {
    let mut sorted: Vec<&TrialRecord> = trials.iter().collect();
    sorted.sort_by_key(|t| t.number);
    let points: Vec<(f64, f64, TrialState)> = sorted
        .iter()
        .filter_map(|t| plotted_value(t).map(|v| (t.number as f64, v, t.state)))
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let mut best_line = Vec::new();
    let mut best: Option<f64> = None;
    for t in &sorted {
        if let (TrialState::Complete, Some(v)) = (t.state, plotted_value(t)) {
            if best.is_none_or(|b| direction.better(v, b)) {
                best = Some(v);
            }
        }
        if let Some(b) = best {
            best_line.push((t.number as f64, b));
        }
    }
    let err = plot_err(path);
    let (y0, y1) = padded(
        points.iter().map(|p| p.1).fold(f64::MAX, f64::min),
        points.iter().map(|p| p.1).fold(f64::MIN, f64::max),
    );
    let x1 = sorted.last().map_or(1.0, |t| t.number as f64 + 1.0);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("optimisation history ({metric})"),
            ("sans-serif", 24),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..x1, y0..y1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("trial")
        .y_desc(metric)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(
            points
                .iter()
                .filter(|p| p.2 == TrialState::Complete)
                .map(|p| Circle::new((p.0, p.1), 4, COMPLETE.filled())),
        )
        .map_err(|e| err(&e))?
        .label("complete")
        .legend(|(x, y)| Circle::new((x + 10, y), 4, COMPLETE.filled()));
    chart
        .draw_series(
            points
                .iter()
                .filter(|p| p.2 == TrialState::Pruned)
                .map(|p| Cross::new((p.0, p.1), 5, PRUNED.stroke_width(2))),
        )
        .map_err(|e| err(&e))?
        .label("pruned (last report)")
        .legend(|(x, y)| Cross::new((x + 10, y), 5, PRUNED.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(best_line, BEST.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label("best so far")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BEST.stroke_width(2)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

fn params(path: &Path, space: &Space, trials: &[TrialRecord], metric: &str) -> Result<()> {
    let n = space.dims.len();
    if n == 0 || trials.iter().all(|t| plotted_value(t).is_none()) {
        return Ok(());
    }
    let err = plot_err(path);
    let cols = n.min(3);
    let rows = n.div_ceil(cols);
    let root = BitMapBackend::new(path, (420 * cols as u32, 360 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let panels = root.split_evenly((rows, cols));
    for ((name, dim), area) in space.dims.iter().zip(panels.iter()) {
        panel(area, name, dim, trials, metric).map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))
}

/// One parameter's scatter; a log dimension is drawn over log10 of its values with the ticks
/// labelled in the values themselves.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    name: &str,
    dim: &Dimension,
    trials: &[TrialRecord],
    metric: &str,
) -> std::result::Result<(), String> {
    let x_of = |v: &llmlab_plugin_api::serde_json::Value| -> Option<f64> {
        match dim {
            Dimension::LogUniform { .. } => v.as_f64().filter(|x| *x > 0.0).map(f64::log10),
            _ => dim.to_coordinate(v),
        }
    };
    let points: Vec<(f64, f64, TrialState)> = trials
        .iter()
        .filter_map(|t| Some((x_of(t.params.get(name)?)?, plotted_value(t)?, t.state)))
        .collect();
    let (x0, x1) = match (dim, dim.coordinates()) {
        (Dimension::LogUniform { low, high }, _) => (low.log10(), high.log10()),
        (_, Coordinates::Categorical { n }) => (-0.5, n as f64 - 0.5),
        (_, Coordinates::Numeric { low, high, .. }) => (low, high),
    };
    let (x0, x1) = padded(x0, x1);
    let (y0, y1) = if points.is_empty() {
        (0.0, 1.0)
    } else {
        padded(
            points.iter().map(|p| p.1).fold(f64::MAX, f64::min),
            points.iter().map(|p| p.1).fold(f64::MIN, f64::max),
        )
    };
    let values = dim.values().map(<[_]>::to_vec);
    let is_log = dim.is_log();
    let is_int = matches!(dim, Dimension::IntUniform { .. });
    let x_label = move |x: &f64| -> String {
        if is_log {
            format!("{:.0e}", 10f64.powf(*x))
        } else if let Some(values) = &values {
            let i = x.round();
            if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < values.len() {
                match &values[i as usize] {
                    llmlab_plugin_api::serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                }
            } else {
                String::new()
            }
        } else if is_int {
            format!("{x:.0}")
        } else {
            format!("{x:.3}")
        }
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            format!("{name}{}", if is_log { " (log axis)" } else { "" }),
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc(name)
        .y_desc(metric)
        .x_label_formatter(&x_label)
        .label_style(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(points.iter().map(|p| {
            let color = if p.2 == TrialState::Pruned {
                PRUNED
            } else {
                COMPLETE
            };
            Circle::new((p.0, p.1), 4, color.filled())
        }))
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn intermediate(path: &Path, trials: &[TrialRecord], metric: &str) -> Result<()> {
    let curves: Vec<(&TrialRecord, Vec<(f64, f64)>)> = trials
        .iter()
        .map(|t| {
            let pts = t
                .intermediate
                .iter()
                .filter(|p| p.1.is_finite())
                .map(|&(s, v)| (s as f64, v))
                .collect::<Vec<_>>();
            (t, pts)
        })
        .filter(|(_, pts)| !pts.is_empty())
        .collect();
    if curves.is_empty() {
        return Ok(());
    }
    let err = plot_err(path);
    let all = curves.iter().flat_map(|(_, p)| p.iter());
    let (mut x1, mut y0, mut y1) = (1.0f64, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    let (y0, y1) = padded(y0, y1);
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("intermediate values ({metric})"),
            ("sans-serif", 24),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x1 * 1.02, y0..y1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(metric)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    let (mut complete_labelled, mut pruned_labelled) = (false, false);
    for (t, pts) in &curves {
        let pruned = t.state == TrialState::Pruned;
        let color = if pruned { PRUNED } else { COMPLETE };
        let series = chart
            .draw_series(LineSeries::new(
                pts.iter().copied(),
                color.mix(0.7).stroke_width(1),
            ))
            .map_err(|e| err(&e))?;
        if pruned && !pruned_labelled {
            pruned_labelled = true;
            series
                .label("pruned (x: where it stopped)")
                .legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], PRUNED.stroke_width(2))
                });
        } else if !pruned && !complete_labelled {
            complete_labelled = true;
            series.label("complete / failed").legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], COMPLETE.stroke_width(2))
            });
        }
        if pruned {
            if let Some(&last) = pts.last() {
                chart
                    .draw_series(std::iter::once(Cross::new(last, 6, PRUNED.stroke_width(2))))
                    .map_err(|e| err(&e))?;
            }
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use llmlab_plugin_api::serde_json::json;

    use super::*;

    #[test]
    fn draws_the_three_pngs() {
        let mut dims = BTreeMap::new();
        dims.insert(
            "lr".into(),
            Dimension::LogUniform {
                low: 1e-4,
                high: 1e-1,
            },
        );
        dims.insert(
            "act".into(),
            Dimension::Choice(vec![json!("relu"), json!("gelu")]),
        );
        dims.insert("width".into(), Dimension::IntUniform { low: 32, high: 128 });
        let space = Space { dims };
        let trials: Vec<TrialRecord> = (0..8)
            .map(|n| {
                let mut params = llmlab_plugin_api::serde_json::Map::new();
                params.insert("lr".into(), json!(1e-4 * 2f64.powi(n as i32)));
                params.insert(
                    "act".into(),
                    json!(if n % 2 == 0 { "relu" } else { "gelu" }),
                );
                params.insert("width".into(), json!(32 + 10 * n));
                let pruned = n % 3 == 2;
                let curve: Vec<(u64, f64)> = (1..=if pruned { 2 } else { 5 })
                    .map(|s| (s * 10, 3.0 - 0.1 * s as f64 - 0.05 * n as f64))
                    .collect();
                TrialRecord {
                    number: n,
                    params,
                    state: if pruned {
                        TrialState::Pruned
                    } else {
                        TrialState::Complete
                    },
                    value: curve.last().map(|p| p.1),
                    intermediate: curve,
                    ..TrialRecord::default()
                }
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        sweep_plots(dir.path(), &space, &trials, "val_loss", Direction::Minimize).unwrap();
        for name in ["history.png", "params.png", "intermediate.png"] {
            let bytes = std::fs::read(dir.path().join(name)).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{name}");
            assert!(bytes.len() > 3000, "{name} has content");
        }
    }
}
