//! Line charts drawn with Unicode braille characters, for the terminal: the REPL's `:plot` shows
//! a run's loss and validation loss (and the data's entropy floor when known) without leaving the
//! session. Each character cell holds 2×4 dots, so a 64×14 chart has 128×56 points of resolution.
//!
//! The PNG plots (`plots.rs`) are the record; this is the quick look.

use std::fmt::Write;

/// ANSI colours for series; `None` draws in the terminal's default colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    Blue,
    Red,
    Grey,
}

impl Color {
    fn code(self) -> &'static str {
        match self {
            Color::Blue => "34",
            Color::Red => "31",
            Color::Grey => "90",
        }
    }
}

/// One named series of `(x, y)` points.
pub struct Series<'a> {
    pub name: &'a str,
    pub points: Vec<(f64, f64)>,
    pub color: Color,
}

/// A horizontal reference line (the entropy floor).
pub struct Level<'a> {
    pub name: &'a str,
    pub y: f64,
    pub color: Color,
}

/// Braille dot bits for (column 0..2, row 0..4) inside one character cell.
const DOTS: [[u32; 4]; 2] = [[0x01, 0x02, 0x04, 0x40], [0x08, 0x10, 0x20, 0x80]];

/// A grid of braille cells, each with the colour of the last series that drew into it.
struct Canvas {
    width: usize,
    height: usize,
    bits: Vec<u32>,
    colors: Vec<Option<Color>>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Canvas {
        Canvas {
            width,
            height,
            bits: vec![0; width * height],
            colors: vec![None; width * height],
        }
    }

    /// Dots across and down.
    fn dots(&self) -> (i64, i64) {
        (self.width as i64 * 2, self.height as i64 * 4)
    }

    /// Sets the dot at (x, y), y counted from the top; dots outside are ignored.
    fn set(&mut self, x: i64, y: i64, color: Color) {
        let (w, h) = self.dots();
        if x < 0 || y < 0 || x >= w || y >= h {
            return;
        }
        let cell = (y / 4) as usize * self.width + (x / 2) as usize;
        self.bits[cell] |= DOTS[(x % 2) as usize][(y % 4) as usize];
        self.colors[cell] = Some(color);
    }

    /// A straight line of dots (Bresenham).
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), color: Color) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, color);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn row(&self, row: usize, ansi: bool) -> String {
        let mut out = String::new();
        let mut current: Option<Color> = None;
        for col in 0..self.width {
            let cell = row * self.width + col;
            let bits = self.bits[cell];
            let color = if bits == 0 { None } else { self.colors[cell] };
            if ansi && color != current {
                match color {
                    Some(c) => {
                        let _ = write!(out, "\x1b[{}m", c.code());
                    }
                    None => out.push_str("\x1b[0m"),
                }
                current = color;
            }
            out.push(char::from_u32(0x2800 + bits).unwrap_or(' '));
        }
        if ansi && current.is_some() {
            out.push_str("\x1b[0m");
        }
        out
    }
}

/// A compact number for axis labels.
fn label(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.2e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Renders `series` and `levels` as a chart of `width`×`height` character cells (plus axes,
/// labels and a legend), with ANSI colours when `ansi`. `None` when there is nothing to draw.
pub fn render(
    title: &str,
    series: &[Series<'_>],
    levels: &[Level<'_>],
    width: usize,
    height: usize,
    ansi: bool,
) -> Option<String> {
    let points: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if points.is_empty() {
        return None;
    }
    let (width, height) = (width.max(8), height.max(3));
    let fold = |f: fn(&(f64, f64)) -> f64| {
        points
            .iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    let (x_min, mut x_max) = fold(|p| p.0);
    let (mut y_min, mut y_max) = fold(|p| p.1);
    for level in levels.iter().filter(|l| l.y.is_finite()) {
        y_min = y_min.min(level.y);
        y_max = y_max.max(level.y);
    }
    if x_max <= x_min {
        x_max = x_min + 1.0;
    }
    if y_max - y_min < 1e-12 {
        y_max += 0.5;
        y_min -= 0.5;
    }
    let mut canvas = Canvas::new(width, height);
    let (w, h) = canvas.dots();
    let to_dot = |(x, y): (f64, f64)| {
        let dx = ((x - x_min) / (x_max - x_min) * (w - 1) as f64).round() as i64;
        let dy = ((y_max - y) / (y_max - y_min) * (h - 1) as f64).round() as i64;
        (dx, dy)
    };
    // Levels first, dotted, so the curves draw over them.
    for level in levels.iter().filter(|l| l.y.is_finite()) {
        let (_, y) = to_dot((x_min, level.y));
        for x in (0..w).step_by(2) {
            canvas.set(x, y, level.color);
        }
    }
    for s in series {
        let dots: Vec<(i64, i64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(to_dot)
            .collect();
        if let [only] = dots.as_slice() {
            canvas.set(only.0, only.1, s.color);
        }
        for pair in dots.windows(2) {
            canvas.line(pair[0], pair[1], s.color);
        }
    }

    let (top, mid, bottom) = (label(y_max), label((y_max + y_min) / 2.0), label(y_min));
    let gutter = top.len().max(mid.len()).max(bottom.len());
    let mut out = String::new();
    let _ = writeln!(out, "{:gutter$}  {title}", "");
    for row in 0..height {
        let (tick, text) = if row == 0 {
            ('┤', top.as_str())
        } else if row == height / 2 {
            ('┤', mid.as_str())
        } else if row == height - 1 {
            ('┤', bottom.as_str())
        } else {
            ('│', "")
        };
        let _ = writeln!(out, "{text:>gutter$} {tick}{}", canvas.row(row, ansi));
    }
    let _ = writeln!(out, "{:gutter$} └{}", "", "─".repeat(width));
    let (left, right) = (label(x_min), label(x_max));
    let pad = width.saturating_sub(left.len() + right.len() + 5);
    let _ = writeln!(out, "{:gutter$}  {left}{:pad$}{right} step", "", "");
    let paint = |text: String, color: Color| {
        if ansi {
            format!("\x1b[{}m{text}\x1b[0m", color.code())
        } else {
            text
        }
    };
    let mut legend: Vec<String> = series
        .iter()
        .filter(|s| !s.points.is_empty())
        .map(|s| {
            let last = s.points.last().map_or(String::new(), |p| label(p.1));
            paint(format!("⣿ {} (last {last})", s.name), s.color)
        })
        .collect();
    legend.extend(
        levels
            .iter()
            .filter(|l| l.y.is_finite())
            .map(|l| paint(format!("⠒ {} {}", l.name, label(l.y)), l.color)),
    );
    let _ = writeln!(out, "{:gutter$}  {}", "", legend.join("   "));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn falling() -> Vec<(f64, f64)> {
        (1..=50).map(|s| (s as f64, 5.0 / s as f64 + 1.0)).collect()
    }

    #[test]
    fn draws_a_falling_curve_from_top_left_to_bottom_right() {
        let chart = render(
            "loss",
            &[Series {
                name: "train loss",
                points: falling(),
                color: Color::Blue,
            }],
            &[],
            20,
            5,
            false,
        )
        .unwrap();
        let rows: Vec<&str> = chart.lines().collect();
        // Title, 5 chart rows, axis, x labels, legend.
        assert_eq!(rows.len(), 9, "{chart}");
        let cells = |row: &str| -> Vec<char> {
            row.chars()
                .skip_while(|c| *c != '┤' && *c != '│')
                .skip(1)
                .collect()
        };
        let first = cells(rows[1]);
        let last = cells(rows[5]);
        assert_eq!(first.len(), 20, "{chart}");
        assert_ne!(first[0], '\u{2800}', "starts top left:\n{chart}");
        assert_eq!(first[19], '\u{2800}', "{chart}");
        assert_ne!(last[19], '\u{2800}', "ends bottom right:\n{chart}");
        assert!(rows[1].trim_start().starts_with("6.000"), "{chart}");
        assert!(rows[5].trim_start().starts_with("1.100"), "{chart}");
        assert!(rows[7].contains('1') && rows[7].contains("50"), "{chart}");
        assert!(rows[8].contains("train loss (last 1.100)"), "{chart}");
    }

    #[test]
    fn a_level_below_the_data_extends_the_axis_and_is_labelled() {
        let chart = render(
            "loss",
            &[Series {
                name: "val loss",
                points: falling(),
                color: Color::Red,
            }],
            &[Level {
                name: "entropy floor",
                y: 0.5,
                color: Color::Grey,
            }],
            30,
            8,
            true,
        )
        .unwrap();
        assert!(
            chart.contains("0.500 ┤"),
            "floor is the axis minimum:\n{chart}"
        );
        assert!(chart.contains("entropy floor 0.500"), "{chart}");
        assert!(chart.contains("\x1b[90m"), "the floor is grey:\n{chart}");
        assert!(chart.contains("\x1b[31m"), "the series is red:\n{chart}");
    }

    #[test]
    fn nothing_to_draw_is_none_and_one_point_is_a_dot() {
        assert!(render("x", &[], &[], 10, 4, false).is_none());
        let one = render(
            "x",
            &[Series {
                name: "s",
                points: vec![(3.0, 2.0)],
                color: Color::Blue,
            }],
            &[],
            10,
            4,
            false,
        )
        .unwrap();
        assert!(
            one.chars().any(|c| ('\u{2801}'..='\u{28ff}').contains(&c)),
            "{one}"
        );
    }
}
