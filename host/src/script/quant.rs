//! Quantization from scripts: `quantize(model, "q4_0", #{ skip: ["lm_head"], pad: true })` → a
//! new model with quantized linear weights (the schemes are the registered Quantizer
//! components; `skip` goes to the model, the other keys to the quantizer's config), or
//! `quantize(model, quantizer("q4_0", #{..}))`; `m.save_gguf(path)` → file sizes; and
//! `quant_eval(model, qmodel, ds, #{ windows, batch, gen_tokens })` → perplexity of both on the
//! validation split, its change in percent, file sizes, and generation speed of both.
//!
//! GGUF crosses the Model trait as `Model::save` with a path ending in `.gguf`, and loads with
//! `model_load("x.gguf")`: the model plugin decides the format by the extension.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use llmlab_plugin_api::{GenerateOptions, Instance, Kind, Model, Split, TokenData};
use llmlab_train::batches::windows_to_batch;
use llmlab_train::evaluate::evaluate;
use rhai::{Dynamic, Engine, Map, FLOAT, INT};

use super::data::DatasetHandle;
use super::model::ModelHandle;
use super::{plugin_call, positive_int_option, script_error, Host, QuantizerHandle, ScriptResult};

/// `skip` from the options map, the rest as the quantizer's config.
pub(super) fn split_options(options: Map) -> ScriptResult<(Vec<String>, Map)> {
    let mut options = options;
    let skip = match options.remove("skip") {
        None => Vec::new(),
        Some(value) => {
            let items = value
                .into_typed_array::<rhai::ImmutableString>()
                .map_err(|_| {
                    script_error(
                        "quantize: `skip` must be an array of strings (parameter name parts)",
                    )
                })?;
            items.into_iter().map(|s| s.to_string()).collect()
        }
    };
    Ok((skip, options))
}

/// The quantizer named `scheme`; an unknown name lists the schemes there are.
pub(super) fn quantizer(host: &Host, scheme: &str, config: Map) -> ScriptResult<QuantizerHandle> {
    let schemes = host.registry().names(Kind::Quantizer);
    if !schemes.contains(&scheme) {
        let mut schemes: Vec<&str> = schemes;
        schemes.sort();
        let list = if schemes.is_empty() {
            "none loaded (is the quant plugin built? see `llmlab plugins`)".to_string()
        } else {
            schemes.join(", ")
        };
        return Err(script_error(format!(
            "quantize: unknown scheme `{scheme}`; schemes: {list}"
        )));
    }
    match host.create(Kind::Quantizer, scheme, config.into())? {
        Instance::Quantizer(q) => Ok(QuantizerHandle(Arc::from(q))),
        _ => Err(script_error(format!("`{scheme}` is not a quantizer"))),
    }
}

fn quantize_with(
    model: &ModelHandle,
    q: &QuantizerHandle,
    skip: &[String],
) -> ScriptResult<ModelHandle> {
    let quantized = plugin_call(model.0.name(), || model.0.quantized(q.0.as_ref(), skip))?;
    Ok(ModelHandle::new(quantized))
}

/// Size of `path` in bytes: a file, or all files in a directory.
fn size_bytes(path: &Path) -> std::io::Result<u64> {
    let meta = std::fs::metadata(path)?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(path)? {
        total += size_bytes(&entry?.path())?;
    }
    Ok(total)
}

/// Mean negative log-likelihood in nats per token over the same fixed windows for each model:
/// `windows` consecutive non-overlapping windows of `ctx + 1` tokens from the validation split,
/// measured by the trainers' own validation loss (`llmlab_train::evaluate`), so `quant_eval`'s
/// perplexity and a training run's `val_ppl` are the same quantity.
fn val_nll(
    models: &[&dyn Model],
    data: &dyn TokenData,
    windows: usize,
    batch: usize,
) -> ScriptResult<(Vec<f64>, usize)> {
    let ctx = models.iter().map(|m| m.ctx_len()).min().unwrap_or(0);
    let val = data.len(Split::Val);
    let window = (ctx + 1).min(val);
    if window < 2 {
        return Err(script_error(format!(
            "quant_eval: the validation split has {val} tokens; it needs at least 2"
        )));
    }
    let windows = windows.min(val / window).max(1);
    let device = models[0].device();
    let mut batches = Vec::new();
    for start in (0..windows).step_by(batch) {
        let rows = batch.min(windows - start);
        let mut tokens = vec![0u32; rows * window];
        for (r, row) in tokens.chunks_exact_mut(window).enumerate() {
            data.read(Split::Val, (start + r) * window, row)
                .map_err(script_error)?;
        }
        batches.push(windows_to_batch(&tokens, window - 1, device).map_err(script_error)?);
    }
    let count = batches.iter().map(|b| b.loss_tokens).sum();
    let nll = models
        .iter()
        .map(|model| {
            plugin_call(model.name(), || {
                Ok(evaluate(*model, &batches)?.map_or(f64::NAN, |e| e.loss))
            })
        })
        .collect::<ScriptResult<Vec<f64>>>()?;
    Ok((nll, count))
}

/// Greedy generation speed in new tokens per second (batch 1, after a short warm-up).
fn tokens_per_s(
    model: &dyn Model,
    prompt: &[u32],
    max_tokens: usize,
    reps: usize,
) -> ScriptResult<f64> {
    let options = |max_tokens| GenerateOptions {
        max_tokens,
        temperature: 0.0,
        ..GenerateOptions::default()
    };
    let prompts = vec![prompt.to_vec()];
    plugin_call(model.name(), || {
        model.generate(&prompts, &options(4), &mut |_, _| true)
    })?;
    let started = Instant::now();
    let mut generated = 0;
    for _ in 0..reps {
        let out = plugin_call(model.name(), || {
            model.generate(&prompts, &options(max_tokens), &mut |_, _| true)
        })?;
        generated += out.iter().map(Vec::len).sum::<usize>();
    }
    Ok(generated as f64 / started.elapsed().as_secs_f64())
}

/// Perplexity, size and speed of `model` and its quantized copy `qmodel`.
fn quant_eval(
    model: &ModelHandle,
    qmodel: &ModelHandle,
    ds: &DatasetHandle,
    options: Map,
) -> ScriptResult<Map> {
    const KEYS: [&str; 4] = ["windows", "batch", "gen_tokens", "reps"];
    if let Some(key) = options.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(script_error(format!(
            "unknown quant_eval option `{key}`; accepted: {}",
            KEYS.join(", ")
        )));
    }
    let windows = positive_int_option("quant_eval", &options, "windows", 32)?;
    let batch = positive_int_option("quant_eval", &options, "batch", 8)?;
    let reps = positive_int_option("quant_eval", &options, "reps", 3)?;
    let data = ds.data();
    let (nll, eval_tokens) = val_nll(&[model.0.as_ref(), qmodel.0.as_ref()], data, windows, batch)?;
    let (ppl, quant_ppl) = (nll[0].exp(), nll[1].exp());

    let scratch = std::env::temp_dir().join(format!(
        "llmlab-quant-eval-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let sizes = (|| -> ScriptResult<(u64, u64)> {
        let dense_dir = scratch.join("f32");
        let gguf = scratch.join("quant.gguf");
        plugin_call(model.0.name(), || model.0.save(&dense_dir))?;
        plugin_call(qmodel.0.name(), || qmodel.0.save(&gguf))?;
        let bytes =
            |p: &PathBuf| size_bytes(p).map_err(|e| script_error(format!("{}: {e}", p.display())));
        Ok((
            bytes(&dense_dir.join("model.safetensors")).or_else(|_| bytes(&dense_dir))?,
            bytes(&gguf)?,
        ))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let (f32_bytes, quant_bytes) = sizes?;

    let prompt_len = 8.min(data.len(Split::Val));
    let mut prompt = vec![0u32; prompt_len];
    data.read(Split::Val, 0, &mut prompt)
        .map_err(script_error)?;
    let ctx = model.0.ctx_len().min(qmodel.0.ctx_len());
    let gen_tokens = positive_int_option("quant_eval", &options, "gen_tokens", 64)?
        .min(ctx.saturating_sub(prompt_len + 1))
        .max(1);
    let speed = tokens_per_s(model.0.as_ref(), &prompt, gen_tokens, reps)?;
    let quant_speed = tokens_per_s(qmodel.0.as_ref(), &prompt, gen_tokens, reps)?;

    let mut m = Map::new();
    let mut put = |k: &str, v: Dynamic| {
        m.insert(k.into(), v);
    };
    put("ppl", Dynamic::from(ppl as FLOAT));
    put("quant_ppl", Dynamic::from(quant_ppl as FLOAT));
    put(
        "ppl_delta_pct",
        Dynamic::from(((quant_ppl / ppl - 1.0) * 100.0) as FLOAT),
    );
    put("eval_tokens", Dynamic::from(eval_tokens as INT));
    put("f32_bytes", Dynamic::from(f32_bytes as INT));
    put("quant_bytes", Dynamic::from(quant_bytes as INT));
    put(
        "size_ratio",
        Dynamic::from(quant_bytes as FLOAT / f32_bytes.max(1) as FLOAT),
    );
    put("tokens_per_s", Dynamic::from(speed as FLOAT));
    put("quant_tokens_per_s", Dynamic::from(quant_speed as FLOAT));
    put("speedup", Dynamic::from((quant_speed / speed) as FLOAT));
    Ok(m)
}

pub fn register(engine: &mut Engine, host: &Arc<Host>) {
    let h = host.clone();
    engine.register_fn(
        "quantize",
        move |model: ModelHandle, scheme: &str, options: Map| {
            let (skip, config) = split_options(options)?;
            let q = quantizer(&h, scheme, config)?;
            quantize_with(&model, &q, &skip)
        },
    );
    let h = host.clone();
    engine.register_fn("quantize", move |model: ModelHandle, scheme: &str| {
        let q = quantizer(&h, scheme, Map::new())?;
        quantize_with(&model, &q, &[])
    });
    engine.register_fn("quantize", |model: ModelHandle, q: QuantizerHandle, options: Map| {
        let (skip, config) = split_options(options)?;
        if let Some(key) = config.keys().next() {
            return Err(script_error(format!(
                "quantize: unknown option `{key}` with a quantizer object (its config is set in quantizer(..)); accepted: skip"
            )));
        }
        quantize_with(&model, &q, &skip)
    });
    engine.register_fn("quantize", |model: ModelHandle, q: QuantizerHandle| {
        quantize_with(&model, &q, &[])
    });
    engine.register_fn(
        "save_gguf",
        |m: &mut ModelHandle, path: &str| -> ScriptResult<Map> {
            let path = Path::new(path);
            if !path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
            {
                return Err(script_error(format!(
                    "save_gguf: `{}` must end in .gguf",
                    path.display()
                )));
            }
            plugin_call(m.0.name(), || m.0.save(path))?;
            let bytes =
                size_bytes(path).map_err(|e| script_error(format!("{}: {e}", path.display())))?;
            let f32_bytes = 4 * m.0.num_params() as u64;
            let mut out = Map::new();
            out.insert("path".into(), path.display().to_string().into());
            out.insert("bytes".into(), (bytes as INT).into());
            out.insert("f32_bytes".into(), (f32_bytes as INT).into());
            out.insert(
                "size_ratio".into(),
                (bytes as FLOAT / f32_bytes.max(1) as FLOAT).into(),
            );
            Ok(out)
        },
    );
    engine.register_fn(
        "quant_eval",
        |model: ModelHandle, qmodel: ModelHandle, ds: DatasetHandle| {
            quant_eval(&model, &qmodel, &ds, Map::new())
        },
    );
    engine.register_fn(
        "quant_eval",
        |model: ModelHandle, qmodel: ModelHandle, ds: DatasetHandle, options: Map| {
            quant_eval(&model, &qmodel, &ds, options)
        },
    );
}

#[cfg(test)]
mod tests {
    use llmlab_plugin_api::Context;

    use super::super::{Overrides, Session};
    use crate::registry::Registry;

    /// A session with the workspace's built plugins (`target/<profile>/`, next to `deps/`).
    fn session() -> Session {
        let exe = std::env::current_exe().expect("test executable path");
        let target = exe
            .parent()
            .and_then(std::path::Path::parent)
            .expect("test binary lives in target/<profile>/deps");
        let registry = Registry::discover(&[target.to_path_buf()]);
        assert!(
            registry.get("q8_0").is_some() && registry.get("gpt").is_some(),
            "the quant and gpt plugins are not built in {}: run `cargo build --release --workspace` \
             first; problems: {:?}",
            target.display(),
            registry.problems
        );
        Session::new(registry, Context::cpu(), Overrides::default())
    }

    const TINY: &str =
        r#"let m = model("gpt", #{ vocab_size: 16, n_layer: 1, n_head: 2, d_model: 32, ctx: 8 });"#;

    #[test]
    fn unknown_scheme_error_lists_the_schemes() {
        let mut s = session();
        let err = s
            .eval(&format!(
                r#"{TINY} quantize(m, "q3_0", #{{ skip: ["lm_head"] }})"#
            ))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown scheme `q3_0`"), "{err}");
        assert!(
            err.contains("schemes: q4_0, q4_1, q4k, q6k, q8_0"),
            "schemes listed in order: {err}"
        );
    }

    #[test]
    fn quantize_takes_skip_and_passes_other_keys_to_the_quantizer() {
        let mut s = session();
        let n = s
            .eval(&format!(r#"{TINY} let q = quantize(m, "q8_0", #{{ skip: ["lm_head"] }}); [m.num_params(), q.num_params(), q.params().len()]"#))
            .unwrap()
            .into_typed_array::<rhai::INT>()
            .unwrap();
        assert_eq!(n[0], n[1], "quantized model counts the same parameters");
        let err = s
            .eval(&format!(r#"{TINY} quantize(m, "q4k", #{{ pad: false }})"#))
            .unwrap_err()
            .to_string();
        assert!(err.contains("[96, 32]") && err.contains("256"), "{err}");
        let err = s
            .eval(&format!(
                r#"{TINY} quantize(m, "q8_0", #{{ skip: "lm_head" }})"#
            ))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`skip` must be an array"), "{err}");
    }
}
