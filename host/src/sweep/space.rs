//! The search space: named dimensions (`choice`, `uniform`, `log_uniform`, `int_uniform`,
//! `grid`), their JSON form (recorded in `sweep.json`, compared on resume), uniform sampling,
//! the grid's cartesian product, and the map between parameter values and the coordinates the
//! TPE sampler models (the log of a log dimension, the index of a categorical value).

use std::collections::BTreeMap;

use llmlab_plugin_api::rng::SplitMix64;
use llmlab_plugin_api::serde_json::{json, Map, Value};

/// One dimension of the space.
#[derive(Debug, Clone, PartialEq)]
pub enum Dimension {
    /// One of a list of values (numbers, strings, booleans).
    Choice(Vec<Value>),
    /// A float uniform in `[low, high]`.
    Uniform { low: f64, high: f64 },
    /// A float whose logarithm is uniform in `[ln low, ln high]` (learning rates).
    LogUniform { low: f64, high: f64 },
    /// An integer uniform in `low..=high`.
    IntUniform { low: i64, high: i64 },
    /// A list of values the `grid` method enumerates; other methods treat it as a choice.
    Grid(Vec<Value>),
}

/// Where a dimension's value lives for the TPE sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Coordinates {
    /// A real interval (after the log for log dimensions); `round` for integers.
    Numeric { low: f64, high: f64, round: bool },
    /// An index into `n` unordered values.
    Categorical { n: usize },
}

impl Dimension {
    /// Checks the bounds and values; the message names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Dimension::Choice(v) | Dimension::Grid(v) if v.is_empty() => {
                Err(format!("{} needs at least one value", self.kind()))
            }
            Dimension::Uniform { low, high }
                if !(low.is_finite() && high.is_finite() && low < high) =>
            {
                Err(format!("uniform({low}, {high}): needs finite low < high"))
            }
            Dimension::LogUniform { low, high }
                if !(*low > 0.0 && high.is_finite() && low < high) =>
            {
                Err(format!("log_uniform({low}, {high}): needs 0 < low < high"))
            }
            Dimension::IntUniform { low, high } if low > high => {
                Err(format!("int_uniform({low}, {high}): needs low <= high"))
            }
            _ => Ok(()),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Dimension::Choice(_) => "choice",
            Dimension::Uniform { .. } => "uniform",
            Dimension::LogUniform { .. } => "log_uniform",
            Dimension::IntUniform { .. } => "int_uniform",
            Dimension::Grid(_) => "grid",
        }
    }

    /// Whether plots draw this dimension on a log axis.
    pub fn is_log(&self) -> bool {
        matches!(self, Dimension::LogUniform { .. })
    }

    /// The values of a discrete dimension (`choice`, `grid`).
    pub fn values(&self) -> Option<&[Value]> {
        match self {
            Dimension::Choice(v) | Dimension::Grid(v) => Some(v),
            _ => None,
        }
    }

    pub fn coordinates(&self) -> Coordinates {
        match self {
            Dimension::Choice(v) | Dimension::Grid(v) => Coordinates::Categorical { n: v.len() },
            Dimension::Uniform { low, high } => Coordinates::Numeric {
                low: *low,
                high: *high,
                round: false,
            },
            Dimension::LogUniform { low, high } => Coordinates::Numeric {
                low: low.ln(),
                high: high.ln(),
                round: false,
            },
            // Each integer owns the unit cell around it, so the end values are as likely as
            // the inner ones.
            Dimension::IntUniform { low, high } => Coordinates::Numeric {
                low: *low as f64 - 0.5,
                high: *high as f64 + 0.5,
                round: true,
            },
        }
    }

    /// A parameter value's coordinate; `None` when the value is not in this dimension.
    pub fn to_coordinate(&self, value: &Value) -> Option<f64> {
        match self {
            Dimension::Choice(v) | Dimension::Grid(v) => v
                .iter()
                .position(|x| same_value(x, value))
                .map(|i| i as f64),
            Dimension::LogUniform { .. } => value.as_f64().filter(|x| *x > 0.0).map(f64::ln),
            Dimension::Uniform { .. } | Dimension::IntUniform { .. } => value.as_f64(),
        }
    }

    /// The parameter value at coordinate `x` (clamped into the dimension).
    pub fn from_coordinate(&self, x: f64) -> Value {
        match self {
            Dimension::Choice(v) | Dimension::Grid(v) => {
                v[(x.round().max(0.0) as usize).min(v.len() - 1)].clone()
            }
            Dimension::Uniform { low, high } => json!(x.clamp(*low, *high)),
            Dimension::LogUniform { low, high } => json!(x.exp().clamp(*low, *high)),
            Dimension::IntUniform { low, high } => json!((x.round() as i64).clamp(*low, *high)),
        }
    }

    /// A value drawn uniformly (in log space for log dimensions).
    pub fn sample_uniform(&self, rng: &mut SplitMix64) -> Value {
        match self.coordinates() {
            Coordinates::Categorical { n } => self.from_coordinate(rng.below(n) as f64),
            Coordinates::Numeric { low, high, .. } => {
                self.from_coordinate(low + rng.next_unit() * (high - low))
            }
        }
    }

    pub fn to_json(&self) -> Value {
        match self {
            Dimension::Choice(v) | Dimension::Grid(v) => {
                json!({ "kind": self.kind(), "values": v })
            }
            Dimension::Uniform { low, high } | Dimension::LogUniform { low, high } => {
                json!({ "kind": self.kind(), "low": low, "high": high })
            }
            Dimension::IntUniform { low, high } => {
                json!({ "kind": self.kind(), "low": low, "high": high })
            }
        }
    }

    pub fn from_json(value: &Value) -> Result<Dimension, String> {
        let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
        let values = || {
            value
                .get("values")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| format!("{kind} without values"))
        };
        let float = |k: &str| {
            value
                .get(k)
                .and_then(Value::as_f64)
                .ok_or_else(|| format!("{kind} without {k}"))
        };
        let int = |k: &str| {
            value
                .get(k)
                .and_then(Value::as_i64)
                .ok_or_else(|| format!("{kind} without {k}"))
        };
        let dim = match kind {
            "choice" => Dimension::Choice(values()?),
            "grid" => Dimension::Grid(values()?),
            "uniform" => Dimension::Uniform {
                low: float("low")?,
                high: float("high")?,
            },
            "log_uniform" => Dimension::LogUniform {
                low: float("low")?,
                high: float("high")?,
            },
            "int_uniform" => Dimension::IntUniform {
                low: int("low")?,
                high: int("high")?,
            },
            other => return Err(format!("unknown dimension kind {other:?}")),
        };
        dim.validate()?;
        Ok(dim)
    }

    /// How the dimension reads in a table or a script (`log_uniform(1e-4, 1e-2)`).
    pub fn describe(&self) -> String {
        match self {
            Dimension::Choice(v) | Dimension::Grid(v) => {
                let items: Vec<String> = v.iter().map(Value::to_string).collect();
                format!("{}([{}])", self.kind(), items.join(", "))
            }
            Dimension::Uniform { low, high } | Dimension::LogUniform { low, high } => {
                format!("{}({low}, {high})", self.kind())
            }
            Dimension::IntUniform { low, high } => format!("int_uniform({low}, {high})"),
        }
    }
}

/// Equality of parameter values where `1` and `1.0` are the same number.
pub fn same_value(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Named dimensions, in name order (the order of the grid's product and of the plots).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Space {
    pub dims: BTreeMap<String, Dimension>,
}

impl Space {
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.dims
                .iter()
                .map(|(k, d)| (k.clone(), d.to_json()))
                .collect(),
        )
    }

    pub fn from_json(value: &Value) -> Result<Space, String> {
        let object = value.as_object().ok_or("the space is not a map")?;
        let mut dims = BTreeMap::new();
        for (name, d) in object {
            dims.insert(
                name.clone(),
                Dimension::from_json(d).map_err(|e| format!("dimension {name}: {e}"))?,
            );
        }
        Ok(Space { dims })
    }

    /// Parameters drawn uniformly in every dimension.
    pub fn sample_uniform(&self, rng: &mut SplitMix64) -> Map<String, Value> {
        self.dims
            .iter()
            .map(|(k, d)| (k.clone(), d.sample_uniform(rng)))
            .collect()
    }

    /// The number of points of the grid over every dimension, or the first dimension that is
    /// not discrete.
    pub fn grid_size(&self) -> Result<usize, String> {
        let mut size = 1usize;
        for (name, dim) in &self.dims {
            let n = match dim {
                Dimension::IntUniform { low, high } => (high - low + 1) as usize,
                _ => dim.values().map(<[Value]>::len).ok_or_else(|| {
                    format!(
                        "method \"grid\" needs discrete dimensions (grid, choice, int_uniform); \
                         {name} is {}",
                        dim.describe()
                    )
                })?,
            };
            size = size.saturating_mul(n);
        }
        Ok(size)
    }

    /// Point `index` of the grid: dimensions in name order, the last one varying fastest.
    pub fn grid_point(&self, mut index: usize) -> Result<Map<String, Value>, String> {
        let size = self.grid_size()?;
        if index >= size {
            return Err(format!("grid point {index} past the grid's {size} points"));
        }
        let mut point = Map::new();
        for (name, dim) in self.dims.iter().rev() {
            let value = match dim {
                Dimension::IntUniform { low, high } => {
                    let n = (high - low + 1) as usize;
                    let v = json!(low + (index % n) as i64);
                    index /= n;
                    v
                }
                _ => {
                    let values = dim.values().expect("grid_size checked");
                    let v = values[index % values.len()].clone();
                    index /= values.len();
                    v
                }
            };
            point.insert(name.clone(), value);
        }
        Ok(point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space() -> Space {
        let mut dims = BTreeMap::new();
        dims.insert("a".into(), Dimension::Grid(vec![json!(1), json!(2)]));
        dims.insert(
            "b".into(),
            Dimension::Choice(vec![json!("x"), json!("y"), json!("z")]),
        );
        dims.insert(
            "lr".into(),
            Dimension::LogUniform {
                low: 1e-4,
                high: 1e-1,
            },
        );
        Space { dims }
    }

    #[test]
    fn json_round_trips_and_bad_bounds_are_named() {
        let s = space();
        assert_eq!(Space::from_json(&s.to_json()).unwrap(), s);
        let err = Dimension::from_json(&json!({ "kind": "log_uniform", "low": 0.0, "high": 1.0 }))
            .unwrap_err();
        assert!(err.contains("0 < low"), "{err}");
    }

    #[test]
    fn log_dimension_samples_cover_decades_evenly() {
        let d = Dimension::LogUniform {
            low: 1e-4,
            high: 1e-1,
        };
        let mut rng = SplitMix64::new(3);
        let below_1e3 = (0..3000)
            .filter(|_| d.sample_uniform(&mut rng).as_f64().unwrap() < 1e-3)
            .count();
        // One decade of three: a third of the draws.
        assert!((800..1200).contains(&below_1e3), "{below_1e3}");
    }

    #[test]
    fn grid_enumerates_the_product_of_discrete_dimensions() {
        let mut s = space();
        assert!(s.grid_size().unwrap_err().contains("lr"));
        s.dims.remove("lr");
        s.dims
            .insert("n".into(), Dimension::IntUniform { low: 0, high: 1 });
        assert_eq!(s.grid_size().unwrap(), 12);
        let points: Vec<_> = (0..12).map(|i| s.grid_point(i).unwrap()).collect();
        for (i, p) in points.iter().enumerate() {
            assert!(!points[..i].contains(p), "point {i} repeats");
        }
        assert_eq!(points[0]["n"], json!(0));
        assert_eq!(points[1]["n"], json!(1));
    }
}
