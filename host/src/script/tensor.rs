//! candle tensors as a Rhai type, so a researcher can poke at logits and weights: shape, dtype,
//! indexing and slicing, reductions, elementwise arithmetic, `to_array`.

use llmlab_plugin_api::candle::{DType, Device, Tensor};
use rhai::{Array, Dynamic, Engine, FLOAT, INT};

use llmlab_plugin_api::error::candle_message;
use llmlab_plugin_api::rng::SplitMix64;

use super::{script_error, ScriptResult};

/// A tensor value in scripts (cheap to clone: candle tensors are reference counted).
#[derive(Clone, Debug)]
pub struct TensorHandle(pub Tensor);

fn wrap(result: llmlab_plugin_api::candle::Result<Tensor>) -> ScriptResult<TensorHandle> {
    result.map(TensorHandle).map_err(candle_error)
}

fn candle_error(error: llmlab_plugin_api::candle::Error) -> Box<rhai::EvalAltResult> {
    script_error(candle_message(&error))
}

/// Standard normal samples from `seed` (the runtime's SplitMix64): candle's CPU RNG cannot be
/// seeded, and a script's `randn([2, 3], 7)` must give the same tensor every run.
fn seeded_normal(count: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    (0..count).map(|_| rng.normal() as f32).collect()
}

fn dim_index(t: &Tensor, dim: INT) -> ScriptResult<usize> {
    let rank = t.rank() as INT;
    let d = if dim < 0 { rank + dim } else { dim };
    if d < 0 || d >= rank {
        return Err(script_error(format!(
            "dimension {dim} out of range for a tensor of rank {rank}"
        )));
    }
    Ok(d as usize)
}

fn to_usizes(shape: &Array) -> ScriptResult<Vec<usize>> {
    shape
        .iter()
        .map(|d| {
            d.as_int()
                .ok()
                .filter(|v| *v >= 0)
                .map(|v| v as usize)
                .ok_or_else(|| script_error("shape entries must be non-negative integers"))
        })
        .collect()
}

/// Flattens a nested Rhai array of numbers into values and a shape.
fn flatten(
    value: &Dynamic,
    depth: usize,
    shape: &mut Vec<usize>,
    out: &mut Vec<f32>,
) -> ScriptResult<()> {
    if let Some(array) = value.read_lock::<Array>() {
        if shape.len() == depth {
            // A new innermost dimension after numbers were already taken at a shallower one
            // (`[[1, [2]]]`): the rows are ragged.
            if !out.is_empty() {
                return Err(script_error(
                    "tensor(): mixed numbers and arrays at the same depth (ragged rows)",
                ));
            }
            shape.push(array.len());
        } else if shape[depth] != array.len() {
            return Err(script_error("tensor(): rows have different lengths"));
        }
        for item in array.iter() {
            flatten(item, depth + 1, shape, out)?;
        }
        return Ok(());
    }
    if depth != shape.len() {
        return Err(script_error(
            "tensor(): mixed numbers and arrays at the same depth",
        ));
    }
    let number = value
        .as_float()
        .or_else(|_| value.as_int().map(|i| i as FLOAT))
        .map_err(|t| script_error(format!("tensor(): expected numbers, found {t}")))?;
    out.push(number as f32);
    Ok(())
}

fn to_array(t: &Tensor) -> ScriptResult<Dynamic> {
    let is_int = matches!(t.dtype(), DType::U8 | DType::U32 | DType::I64);
    let flat = t
        .flatten_all()
        .and_then(|f| f.to_dtype(DType::F64))
        .and_then(|f| f.to_vec1::<f64>())
        .map_err(candle_error)?;
    fn build(dims: &[usize], flat: &[f64], is_int: bool) -> Dynamic {
        match dims.split_first() {
            None => {
                if is_int {
                    Dynamic::from(flat[0] as INT)
                } else {
                    Dynamic::from(flat[0] as FLOAT)
                }
            }
            Some((&n, rest)) => {
                let stride: usize = rest.iter().product();
                (0..n)
                    .map(|i| build(rest, &flat[i * stride..(i + 1) * stride], is_int))
                    .collect::<Array>()
                    .into()
            }
        }
    }
    Ok(build(t.dims(), &flat, is_int))
}

fn scalar(t: &Tensor) -> ScriptResult<FLOAT> {
    t.to_dtype(DType::F64)
        .and_then(|s| s.to_scalar::<f64>())
        .map_err(candle_error)
}

fn all_reduce(
    t: &Tensor,
    op: fn(&Tensor) -> llmlab_plugin_api::candle::Result<Tensor>,
) -> ScriptResult<FLOAT> {
    let flat = t
        .flatten_all()
        .and_then(|f| f.to_dtype(DType::F32))
        .map_err(candle_error)?;
    scalar(&op(&flat).map_err(candle_error)?)
}

/// Refuses a new f32 tensor of `count` elements (a product of script numbers, so `f64`) that
/// cannot fit in memory, naming the call: `zeros([1e5, 1e5, 1e5])` aborted the process and
/// `arange(1e11)` grew until the machine gave out.
fn ensure_tensor_fits(call: impl FnOnce() -> String, count: f64) -> ScriptResult<()> {
    llmlab_plugin_api::memory::check_fits(&call(), count * 4.0, "make it smaller")
        .map_err(script_error)
}

fn shape_call<'a>(name: &'a str, shape: &'a [usize]) -> impl FnOnce() -> String + 'a {
    move || format!("{name}({shape:?})")
}

fn element_count(shape: &[usize]) -> f64 {
    shape.iter().map(|&d| d as f64).product()
}

pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<TensorHandle>("Tensor");
    engine.register_fn("tensor", |values: Array| -> ScriptResult<TensorHandle> {
        let (mut shape, mut out) = (Vec::new(), Vec::new());
        flatten(&Dynamic::from(values), 0, &mut shape, &mut out)?;
        wrap(Tensor::from_vec(out, shape, &Device::Cpu))
    });
    engine.register_fn("zeros", |shape: Array| {
        let shape = to_usizes(&shape)?;
        ensure_tensor_fits(shape_call("zeros", &shape), element_count(&shape))?;
        wrap(Tensor::zeros(shape, DType::F32, &Device::Cpu))
    });
    engine.register_fn("ones", |shape: Array| {
        let shape = to_usizes(&shape)?;
        ensure_tensor_fits(shape_call("ones", &shape), element_count(&shape))?;
        wrap(Tensor::ones(shape, DType::F32, &Device::Cpu))
    });
    engine.register_fn("arange", |n: INT| {
        ensure_tensor_fits(|| format!("arange({n})"), n.max(0) as f64)?;
        wrap(Tensor::arange(0f32, n as f32, &Device::Cpu))
    });
    engine.register_fn(
        "randn",
        |shape: Array, seed: INT| -> ScriptResult<TensorHandle> {
            let shape = to_usizes(&shape)?;
            ensure_tensor_fits(shape_call("randn", &shape), element_count(&shape))?;
            let values = seeded_normal(shape.iter().product(), seed as u64);
            wrap(Tensor::from_vec(values, shape, &Device::Cpu))
        },
    );

    engine.register_fn("shape", |t: &mut TensorHandle| -> Array {
        t.0.dims()
            .iter()
            .map(|&d| Dynamic::from(d as INT))
            .collect()
    });
    engine.register_fn("rank", |t: &mut TensorHandle| t.0.rank() as INT);
    engine.register_fn("len", |t: &mut TensorHandle| {
        t.0.dims().first().copied().unwrap_or(0) as INT
    });
    engine.register_fn("numel", |t: &mut TensorHandle| t.0.elem_count() as INT);
    engine.register_fn("dtype", |t: &mut TensorHandle| {
        format!("{:?}", t.0.dtype()).to_lowercase()
    });
    engine.register_fn("to_array", |t: &mut TensorHandle| to_array(&t.0));
    engine.register_fn("item", |t: &mut TensorHandle| -> ScriptResult<FLOAT> {
        if t.0.elem_count() != 1 {
            return Err(script_error(format!(
                "item() needs a single-element tensor, this one has shape {:?}",
                t.0.dims()
            )));
        }
        scalar(
            &t.0.flatten_all()
                .and_then(|f| f.get(0))
                .map_err(candle_error)?,
        )
    });
    engine.register_fn("to_string", |t: &mut TensorHandle| format!("{}", t.0));
    engine.register_fn("to_debug", |t: &mut TensorHandle| {
        format!("Tensor{:?} {:?}", t.0.dims(), t.0.dtype())
    });

    engine.register_indexer_get(
        |t: &mut TensorHandle, i: INT| -> ScriptResult<TensorHandle> {
            let n = t.0.dims().first().copied().unwrap_or(0) as INT;
            let index = if i < 0 { n + i } else { i };
            if index < 0 || index >= n {
                return Err(script_error(format!(
                    "index {i} out of range for dimension 0 of size {n}"
                )));
            }
            wrap(t.0.get(index as usize))
        },
    );
    engine.register_fn(
        "slice",
        |t: &mut TensorHandle, dim: INT, start: INT, len: INT| -> ScriptResult<TensorHandle> {
            let d = dim_index(&t.0, dim)?;
            let size = t.0.dim(d).map_err(candle_error)? as INT;
            if start < 0 || len < 0 || start + len > size {
                return Err(script_error(format!(
                    "slice {start}..{} out of range for dimension {d} of size {size}",
                    start + len
                )));
            }
            wrap(t.0.narrow(d, start as usize, len as usize))
        },
    );
    engine.register_fn("reshape", |t: &mut TensorHandle, shape: Array| {
        wrap(t.0.reshape(to_usizes(&shape)?))
    });
    engine.register_fn("transpose", |t: &mut TensorHandle, a: INT, b: INT| {
        let (a, b) = (dim_index(&t.0, a)?, dim_index(&t.0, b)?);
        wrap(t.0.transpose(a, b))
    });
    engine.register_fn("matmul", |a: &mut TensorHandle, b: TensorHandle| {
        wrap(a.0.matmul(&b.0))
    });

    engine.register_fn("sum", |t: &mut TensorHandle| {
        all_reduce(&t.0, |f| f.sum_all())
    });
    engine.register_fn("mean", |t: &mut TensorHandle| {
        all_reduce(&t.0, |f| f.mean_all())
    });
    engine.register_fn("max", |t: &mut TensorHandle| all_reduce(&t.0, |f| f.max(0)));
    engine.register_fn("min", |t: &mut TensorHandle| all_reduce(&t.0, |f| f.min(0)));
    engine.register_fn("sum", |t: &mut TensorHandle, dim: INT| {
        wrap(t.0.sum(dim_index(&t.0, dim)?))
    });
    engine.register_fn("mean", |t: &mut TensorHandle, dim: INT| {
        wrap(t.0.mean(dim_index(&t.0, dim)?))
    });
    engine.register_fn("max", |t: &mut TensorHandle, dim: INT| {
        wrap(t.0.max(dim_index(&t.0, dim)?))
    });
    engine.register_fn("min", |t: &mut TensorHandle, dim: INT| {
        wrap(t.0.min(dim_index(&t.0, dim)?))
    });
    engine.register_fn("argmax", |t: &mut TensorHandle, dim: INT| {
        wrap(t.0.argmax(dim_index(&t.0, dim)?))
    });
    engine.register_fn("argmax", |t: &mut TensorHandle| -> ScriptResult<INT> {
        let flat = t.0.flatten_all().map_err(candle_error)?;
        Ok(scalar(&flat.argmax(0).map_err(candle_error)?)? as INT)
    });
    engine.register_fn("softmax", |t: &mut TensorHandle, dim: INT| {
        let d = dim_index(&t.0, dim)?;
        let x = t.0.to_dtype(DType::F32).map_err(candle_error)?;
        wrap(
            x.broadcast_sub(&x.max_keepdim(d).map_err(candle_error)?)
                .and_then(|z| z.exp())
                .and_then(|e| {
                    let total = e.sum_keepdim(d)?;
                    e.broadcast_div(&total)
                }),
        )
    });
    engine.register_fn("exp", |t: &mut TensorHandle| wrap(t.0.exp()));
    engine.register_fn("log", |t: &mut TensorHandle| wrap(t.0.log()));
    engine.register_fn("abs", |t: &mut TensorHandle| wrap(t.0.abs()));
    engine.register_fn("sqrt", |t: &mut TensorHandle| wrap(t.0.sqrt()));
    engine.register_fn("norm", |t: &mut TensorHandle| {
        all_reduce(&t.0, |f| f.sqr()?.sum_all()?.sqrt())
    });
    engine.register_fn("to_float", |t: &mut TensorHandle| {
        wrap(t.0.to_dtype(DType::F32))
    });
    engine.register_fn("norm", |t: &mut TensorHandle, dim: INT| {
        let d = dim_index(&t.0, dim)?;
        wrap(
            t.0.to_dtype(DType::F32)
                .and_then(|f| f.sqr()?.sum(d)?.sqrt()),
        )
    });
    engine.register_fn("-", |t: TensorHandle| wrap(t.0.neg()));
    engine.register_indexer_get(
        |t: &mut TensorHandle, range: std::ops::Range<INT>| -> ScriptResult<TensorHandle> {
            let n = t.0.dims().first().copied().unwrap_or(0) as INT;
            let (start, end) = (range.start, range.end);
            if start < 0 || end > n || start > end {
                return Err(script_error(format!(
                    "range {start}..{end} out of range for dimension 0 of size {n}"
                )));
            }
            wrap(t.0.narrow(0, start as usize, (end - start) as usize))
        },
    );
    // `t.topk(k)`: the k largest entries of a 1-D tensor as [index, value] pairs, largest
    // first (for looking at next-token logits).
    engine.register_fn(
        "topk",
        |t: &mut TensorHandle, k: INT| -> ScriptResult<Array> {
            if t.0.rank() != 1 {
                return Err(script_error(format!(
                    "topk() needs a 1-D tensor, this one has shape {:?}; index it first",
                    t.0.dims()
                )));
            }
            if k < 0 {
                return Err(script_error(format!(
                    "topk({k}): k must be 0 or more (the number of entries to return)"
                )));
            }
            let values: Vec<f64> =
                t.0.to_dtype(DType::F64)
                    .and_then(|f| f.to_vec1())
                    .map_err(script_error)?;
            let mut order: Vec<usize> = (0..values.len()).collect();
            order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
            Ok(order
                .into_iter()
                .take(k.max(0) as usize)
                .map(|i| {
                    let pair: Array = vec![Dynamic::from(i as INT), Dynamic::from(values[i])];
                    Dynamic::from(pair)
                })
                .collect())
        },
    );

    macro_rules! binary {
        ($op:literal, $method:ident, $scalar:expr) => {
            engine.register_fn($op, |a: TensorHandle, b: TensorHandle| {
                wrap(a.0.$method(&b.0))
            });
            engine.register_fn($op, |a: TensorHandle, b: FLOAT| wrap(($scalar)(&a.0, b)));
            engine.register_fn($op, |a: TensorHandle, b: INT| {
                wrap(($scalar)(&a.0, b as FLOAT))
            });
        };
    }
    binary!("+", broadcast_add, |t: &Tensor, s: f64| t.affine(1.0, s));
    binary!("-", broadcast_sub, |t: &Tensor, s: f64| t.affine(1.0, -s));
    binary!("*", broadcast_mul, |t: &Tensor, s: f64| t.affine(s, 0.0));
    binary!("/", broadcast_div, |t: &Tensor, s: f64| t
        .affine(1.0 / s, 0.0));

    // Numbers on the left: `2 * t`, `1 - t`, `1 / t`.
    macro_rules! number_first {
        ($op:literal, $f:expr) => {
            engine.register_fn($op, |s: FLOAT, t: TensorHandle| wrap(($f)(s, &t.0)));
            engine.register_fn($op, |s: INT, t: TensorHandle| wrap(($f)(s as FLOAT, &t.0)));
        };
    }
    number_first!("+", |s: f64, t: &Tensor| t.affine(1.0, s));
    number_first!("-", |s: f64, t: &Tensor| t.affine(-1.0, s));
    number_first!("*", |s: f64, t: &Tensor| t.affine(s, 0.0));
    number_first!("/", |s: f64, t: &Tensor| t.recip()?.affine(s, 0.0));
}

#[cfg(test)]
mod tests {
    use rhai::Engine;

    fn engine() -> Engine {
        let mut engine = Engine::new();
        super::register(&mut engine);
        engine
    }

    #[test]
    fn tensors_too_large_for_memory_are_refused_before_allocating() {
        let e = engine();
        for (call, shown) in [
            (
                "zeros([100000, 100000, 100000])",
                "zeros([100000, 100000, 100000])",
            ),
            (
                "ones([100000, 100000, 100000])",
                "ones([100000, 100000, 100000])",
            ),
            (
                "randn([100000, 100000, 100000], 1)",
                "randn([100000, 100000, 100000])",
            ),
            ("arange(100000000000)", "arange(100000000000)"),
        ] {
            let error = e.eval::<super::TensorHandle>(call).unwrap_err().to_string();
            assert!(
                error.contains(shown) && error.contains("available"),
                "{call}: {error}"
            );
        }
        assert_eq!(
            e.eval::<rhai::INT>("zeros([1000, 1000]).numel()").unwrap(),
            1_000_000
        );
    }

    #[test]
    fn tensors_index_slice_and_reduce() {
        let e = engine();
        let r: rhai::Array = e
            .eval("let t = tensor([[1, 2, 3], [4, 5, 6]]); t.shape()")
            .unwrap();
        assert_eq!(
            r.iter().map(|d| d.as_int().unwrap()).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(
            e.eval::<f64>("tensor([[1, 2, 3], [4, 5, 6]]).sum()")
                .unwrap(),
            21.0
        );
        assert_eq!(
            e.eval::<f64>("tensor([[1, 2, 3], [4, 5, 6]])[1].mean()")
                .unwrap(),
            5.0
        );
        assert_eq!(
            e.eval::<f64>("tensor([[1, 2, 3], [4, 5, 6]]).slice(1, 1, 2).max()")
                .unwrap(),
            6.0
        );
        assert_eq!(
            e.eval::<i64>("tensor([0.1, 0.7, 0.2]).argmax()").unwrap(),
            1
        );
        let s = e
            .eval::<f64>("tensor([[1.0, 2.0], [3.0, 4.0]]).softmax(-1).sum()")
            .unwrap();
        assert!((s - 2.0).abs() < 1e-6);
        assert_eq!(
            e.eval::<f64>("((tensor([1, 2]) * 3) + tensor([1, 1])).sum()")
                .unwrap(),
            11.0
        );
    }

    #[test]
    fn numbers_on_either_side_ranges_norms_and_topk() {
        let e = engine();
        assert_eq!(e.eval::<f64>("(2 * tensor([1, 2])).sum()").unwrap(), 6.0);
        assert_eq!(e.eval::<f64>("(1 - tensor([1, 2])).sum()").unwrap(), -1.0);
        assert_eq!(e.eval::<f64>("(4.0 / tensor([1, 2])).sum()").unwrap(), 6.0);
        assert_eq!(e.eval::<f64>("(-tensor([1, 2])).sum()").unwrap(), -3.0);
        assert_eq!(
            e.eval::<f64>("tensor([[1, 2], [3, 4], [5, 6]])[1..3].sum()")
                .unwrap(),
            18.0
        );
        let norms: rhai::Array = e
            .eval("tensor([[3, 4], [6, 8]]).norm(-1).to_array()")
            .unwrap();
        assert_eq!(norms[1].as_float().unwrap(), 10.0);
        let negative = e.eval::<rhai::Array>("tensor([0.1, 0.7]).topk(-1)");
        assert!(negative.unwrap_err().to_string().contains("topk(-1)"));
        for ragged in [
            "tensor([[1, [2]]])",
            "tensor([[1, 2], [[3], [4]]])",
            "tensor([1, [2]])",
        ] {
            let error = e
                .eval::<super::TensorHandle>(ragged)
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("mixed numbers and arrays"),
                "{ragged}: {error}"
            );
        }
        let top: rhai::Array = e.eval("tensor([0.1, 0.7, 0.2]).topk(2)").unwrap();
        let first: rhai::Array = top[0].clone().cast();
        assert_eq!(first[0].as_int().unwrap(), 1);
        assert_eq!(top.len(), 2);
        let err = e
            .eval::<rhai::Dynamic>("tensor([1, 2])[1..5]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of range"), "{err}");
    }

    #[test]
    fn bad_indices_are_script_errors() {
        let e = engine();
        let err = e
            .eval::<rhai::Dynamic>("tensor([1, 2])[5]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("index 5 out of range"), "{err}");
        let err = e
            .eval::<rhai::Dynamic>("tensor([[1], [2, 3]])")
            .unwrap_err()
            .to_string();
        assert!(err.contains("different lengths"), "{err}");
    }

    #[test]
    fn randn_is_seeded_and_roughly_standard() {
        let e = engine();
        let a: f64 = e.eval("randn([1000], 3).mean()").unwrap();
        let b: f64 = e.eval("randn([1000], 3).mean()").unwrap();
        assert_eq!(a, b);
        assert!(a.abs() < 0.1, "mean {a}");
        let var: f64 = e.eval("let x = randn([4000], 5); (x * x).mean()").unwrap();
        assert!((var - 1.0).abs() < 0.1, "variance {var}");
    }

    #[test]
    fn to_array_round_trips() {
        let e = engine();
        let r: rhai::Array = e
            .eval("tensor([[1.5, 2.0], [3.0, 4.0]]).to_array()")
            .unwrap();
        let row: rhai::Array = r[1].clone().cast();
        assert_eq!(row[0].as_float().unwrap(), 3.0);
    }
}
