//! Training plots as PNG with `plotters`: `loss.png` (train loss, validation loss, and the data's
//! entropy floor when known), `lr.png`, and for MoE runs `experts.png` (each expert's load over
//! the steps). The font is embedded, so no system font libraries are needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Once;

use llmlab_plugin_api::{Error, Result};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

pub(crate) fn ensure_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        if register_font("sans-serif", FontStyle::Normal, FONT).is_err() {
            llmlab_plugin_api::tracing::warn!("embedded plot font failed to load");
        }
    });
}

/// One named series of `(step, value)` points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub color: RGBColor,
}

/// Points of metric `key` from a metrics history, skipping non-finite values.
pub fn series_of(history: &[(u64, BTreeMap<String, f64>)], key: &str) -> Vec<(f64, f64)> {
    history
        .iter()
        .filter_map(|(step, values)| {
            values
                .get(key)
                .filter(|v| v.is_finite())
                .map(|v| (*step as f64, *v))
        })
        .collect()
}

/// Draws `series` (and a horizontal `floor` line) into `path`; nothing to draw is not an error.
pub fn line_plot(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[Series<'_>],
    floor: Option<(&str, f64)>,
) -> Result<()> {
    ensure_font();
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    if all.is_empty() {
        return Ok(());
    }
    let plot_err =
        |e: &dyn std::fmt::Display| Error::msg(format!("{}: plotting failed: {e}", path.display()));
    let (x_min, x_max) = all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (x, _)| {
        (lo.min(*x), hi.max(*x))
    });
    let (mut y_min, mut y_max) = all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (_, y)| {
        (lo.min(*y), hi.max(*y))
    });
    if let Some((_, f)) = floor {
        y_min = y_min.min(f);
        y_max = y_max.max(f);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-6);
    let x_max = if x_max > x_min { x_max } else { x_min + 1.0 };

    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_min..x_max, (y_min - pad)..(y_max + pad))
        .map_err(|e| plot_err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(|e| plot_err(&e))?;
    for s in series.iter().filter(|s| !s.points.is_empty()) {
        let color = s.color;
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| plot_err(&e))?
            .label(s.name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        if s.points.len() < 50 {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(|e| plot_err(&e))?;
        }
    }
    if let Some((name, f)) = floor {
        let color = RGBColor(120, 120, 120);
        chart
            .draw_series(LineSeries::new(
                [(x_min, f), (x_max, f)],
                color.stroke_width(1),
            ))
            .map_err(|e| plot_err(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(|e| plot_err(&e))?;
    root.present().map_err(|e| plot_err(&e))?;
    Ok(())
}

/// `loss.png` and `lr.png` for a training history into `dir`.
pub fn training_plots(
    dir: &Path,
    history: &[(u64, BTreeMap<String, f64>)],
    floor: Option<f64>,
) -> Result<()> {
    let loss = [
        Series {
            name: "train loss",
            points: series_of(history, "loss"),
            color: RGBColor(31, 119, 180),
        },
        Series {
            name: "val loss",
            points: series_of(history, "val_loss"),
            color: RGBColor(214, 39, 40),
        },
    ];
    line_plot(
        &dir.join("loss.png"),
        "loss (nats/token)",
        "loss",
        &loss,
        floor.map(|f| ("entropy floor", f)),
    )?;
    let lr = [Series {
        name: "learning rate",
        points: series_of(history, "lr"),
        color: RGBColor(44, 160, 44),
    }];
    line_plot(&dir.join("lr.png"), "learning rate", "lr", &lr, None)?;
    experts_plot(dir, history)
}

/// `experts.png` for an MoE run: each expert's load (fraction of the router's choices) over the
/// steps, averaged over the MoE blocks, from the `moe.h{block}.load.{expert}` metrics, with the
/// fair share `1 / experts` as the reference line. Nothing for a dense run.
pub fn experts_plot(dir: &Path, history: &[(u64, BTreeMap<String, f64>)]) -> Result<()> {
    let mut experts = BTreeMap::<usize, Vec<String>>::new();
    for key in history.iter().flat_map(|(_, values)| values.keys()) {
        let Some(rest) = key.strip_prefix("moe.h") else {
            continue;
        };
        if let Some((_, expert)) = rest.split_once(".load.") {
            if let Ok(e) = expert.parse::<usize>() {
                let keys = experts.entry(e).or_default();
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
            }
        }
    }
    if experts.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = experts.keys().map(|e| format!("expert {e}")).collect();
    let series: Vec<Series<'_>> = experts
        .values()
        .zip(&names)
        .enumerate()
        .map(|(i, (keys, name))| {
            let points = history
                .iter()
                .filter_map(|(step, values)| {
                    let loads: Vec<f64> =
                        keys.iter().filter_map(|k| values.get(k)).copied().collect();
                    (!loads.is_empty())
                        .then(|| (*step as f64, loads.iter().sum::<f64>() / loads.len() as f64))
                })
                .collect();
            let hue = i as f64 / experts.len() as f64;
            Series {
                name,
                points,
                color: hue_color(hue),
            }
        })
        .collect();
    let fair = 1.0 / experts.len() as f64;
    line_plot(
        &dir.join("experts.png"),
        "expert load (fraction of routed tokens, mean over MoE blocks)",
        "load",
        &series,
        Some(("fair share", fair)),
    )
}

/// A saturated colour at `hue` in [0, 1).
fn hue_color(hue: f64) -> RGBColor {
    let h = (hue.fract() * 6.0).max(0.0);
    let x = (1.0 - ((h % 2.0) - 1.0).abs()) * 200.0;
    let (r, g, b) = match h as u32 {
        0 => (200.0, x, 0.0),
        1 => (x, 200.0, 0.0),
        2 => (0.0, 200.0, x),
        3 => (0.0, x, 200.0),
        4 => (x, 0.0, 200.0),
        _ => (200.0, 0.0, x),
    };
    RGBColor(r as u8, g as u8, b as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_png_files() {
        let dir = tempfile::tempdir().unwrap();
        let history: Vec<(u64, BTreeMap<String, f64>)> = (1..=20)
            .map(|s| {
                let mut m = BTreeMap::new();
                m.insert("loss".to_string(), 5.0 / s as f64 + 1.0);
                m.insert("lr".to_string(), 1e-3);
                if s % 5 == 0 {
                    m.insert("val_loss".to_string(), 5.0 / s as f64 + 1.1);
                }
                (s, m)
            })
            .collect();
        training_plots(dir.path(), &history, Some(0.9)).unwrap();
        assert!(
            !dir.path().join("experts.png").exists(),
            "dense run: no expert plot"
        );
        for name in ["loss.png", "lr.png"] {
            let bytes = std::fs::read(dir.path().join(name)).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{name} is a PNG");
            assert!(bytes.len() > 2000, "{name} has content");
        }
    }

    #[test]
    fn moe_runs_get_an_expert_load_plot() {
        let dir = tempfile::tempdir().unwrap();
        let history: Vec<(u64, BTreeMap<String, f64>)> = (1..=30)
            .map(|s| {
                let mut m = BTreeMap::new();
                m.insert("loss".to_string(), 3.0);
                for block in [0, 2] {
                    for e in 0..4 {
                        let load = if e == 0 { 0.4 } else { 0.2 };
                        m.insert(format!("moe.h{block}.load.{e}"), load);
                    }
                }
                (s, m)
            })
            .collect();
        training_plots(dir.path(), &history, None).unwrap();
        let bytes = std::fs::read(dir.path().join("experts.png")).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 2000);
    }
}
