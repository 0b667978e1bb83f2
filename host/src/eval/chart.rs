//! The bar chart of `llmlab eval compare`: one group of bars per task and metric, one bar per
//! run (with its standard error as a whisker), drawn with `plotters` and the embedded font.

use std::path::Path;

use llmlab_plugin_api::{Error, Result};
use plotters::prelude::*;

use super::report::Comparison;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws `rows` (from [`super::report::comparison`]) for runs named `labels` into `path` (PNG).
pub fn bar_chart(path: &Path, labels: &[String], rows: &Comparison) -> Result<()> {
    crate::plots::ensure_font();
    let plot_err = |e: &dyn std::fmt::Display| {
        Error::Other(format!("{}: plotting failed: {e}", path.display()))
    };
    if rows.is_empty() {
        return Err(Error::Data(
            "eval compare: the runs have no metrics to draw".into(),
        ));
    }
    let y_max = rows
        .iter()
        .flat_map(|(_, cells)| cells.iter().flatten().map(|(v, s)| v + s))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-6)
        * 1.15;
    let width = (160 * rows.len() as u32).clamp(640, 2400);
    let root = BitMapBackend::new(path, (width, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(&e))?;
    let names: Vec<String> = rows.iter().map(|((t, m), _)| format!("{t}\n{m}")).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption("evaluation", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..rows.len() as f64, 0f64..y_max)
        .map_err(|e| plot_err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 1e-6 && i < names.len() {
                names[i].replace('\n', " ")
            } else {
                String::new()
            }
        })
        .y_desc("value")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| plot_err(&e))?;
    let runs = labels.len().max(1);
    let bar = 0.8 / runs as f64;
    for (r, label) in labels.iter().enumerate() {
        let color = PALETTE[r % PALETTE.len()];
        let bars: Vec<(f64, f64, f64)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, (_, cells))| {
                cells[r].map(|(v, s)| (i as f64 + 0.1 + r as f64 * bar, v, s))
            })
            .collect();
        chart
            .draw_series(
                bars.iter().map(|&(x, v, _)| {
                    Rectangle::new([(x, 0.0), (x + bar * 0.9, v)], color.filled())
                }),
            )
            .map_err(|e| plot_err(&e))?
            .label(label.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        chart
            .draw_series(bars.iter().filter(|(_, _, s)| *s > 0.0).map(|&(x, v, s)| {
                let mid = x + bar * 0.45;
                PathElement::new(vec![(mid, (v - s).max(0.0)), (mid, v + s)], BLACK)
            }))
            .map_err(|e| plot_err(&e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let dir = std::env::temp_dir().join(format!("llmlab-eval-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("compare.png");
        let rows: Comparison = vec![
            (
                ("code_easy".into(), "pass@1".into()),
                vec![Some((0.2, 0.05)), Some((0.6, 0.05))],
            ),
            (
                ("stories_cloze".into(), "acc".into()),
                vec![Some((0.9, 0.02)), None],
            ),
        ];
        bar_chart(&path, &["sft".into(), "grpo".into()], &rows).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        assert!(bytes.len() > 2000);
    }
}
