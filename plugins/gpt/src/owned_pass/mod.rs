//! The owned training pass (`pass: "owned"`, issue 25 item 2): the GPT's forward and backward
//! written out by hand over preallocated buffers, llm.c style, instead of candle's autograd.
//!
//! What it owns: the whole model graph from token ids to logits and back to every parameter's
//! gradient, for the standard stack (see [`eligibility`] for what is covered). Every activation
//! the backward needs and every gradient live in an [`arena::Arena`] sized once per
//! `(rows, seq)` and reused each step ([`arena::ArenaPool`]: one per concurrent pass, so the
//! row-parallel parts of `llmlab_train::row_split` each take their own). The products are
//! `llmlab_nn::ops::linear`'s gemm calls with transposes as strides; norms, activations, rope and
//! attention are the same slice kernels the fused candle ops run (`llmlab_nn::ops::*`).
//!
//! What it does not own: the loss. The logits are handed to the trainer's loss closure as a fresh
//! candle variable; candle differentiates the loss (cheap: a cross-entropy), and the owned
//! backward starts from that gradient. The parameters' gradients go back in the same
//! `GradStore`, keyed by the parameters' variables, so trainers cannot tell the paths apart.
//! The autograd path (`training_pass.rs`) stays the reference; `tests/owned_pass.rs` compares
//! the two at every covered option set.
//!
//! Threads: a pass on a thread of the rayon pool (a row-parallel part) runs every kernel
//! single-threaded; a pass from outside the pool runs them on the pool. Either way the sums are
//! in a fixed order, so the same rows give the same bits.
//!
//! Inference (`Model::forward` without `train`) runs [`inference`]: the same kernels over a
//! much smaller arena, nothing kept for a backward.
//!
//! Copies per step: the logits into the loss's variable, and each parameter's gradient into its
//! tensor (candle tensors own their storage; one copy of the parameters' size is small next to
//! the step's products).

pub mod arena;
pub mod backward;
pub mod forward;
pub mod inference;
pub mod weights;

use llmlab_plugin_api::candle::backprop::GradStore;
use llmlab_plugin_api::candle::{DType, Device, Storage, Tensor, Var};
use llmlab_plugin_api::serde::{Deserialize, Serialize};
use llmlab_plugin_api::{Error, ForwardOptions, ForwardOutput, Result};

use crate::config::Kernels;
use crate::model::Gpt;
use crate::training_pass::LossFn;

pub use arena::ArenaPool;

/// Which training pass `forward_backward` runs (`pass` key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(crate = "llmlab_plugin_api::serde", rename_all = "lowercase")]
pub enum PassKind {
    /// The owned pass where the config is covered, autograd otherwise.
    #[default]
    Auto,
    /// The owned pass; a config it does not cover is refused, naming why.
    Owned,
    /// candle's autograd over the model's modules (the reference).
    Autograd,
}

/// Why the owned pass cannot run `gpt` on this call, or `None` when it can.
pub fn eligibility(
    gpt: &Gpt,
    ids: &Tensor,
    options: &ForwardOptions,
    compute: DType,
) -> Option<String> {
    let c = gpt.gpt_config();
    let reasons: [(bool, &str); 8] = [
        (
            !matches!(llmlab_plugin_api::Model::device(gpt), Device::Cpu),
            "it runs on the CPU only",
        ),
        (
            gpt.dtype() != DType::F32 || compute != DType::F32,
            "it computes in f32 over f32 parameters only (no mixed precision)",
        ),
        (gpt.lora().is_some(), "LoRA adapters take their own pass"),
        (gpt.scheme().is_some(), "a quantized model does not train"),
        (c.moe.is_some(), "MoE feed-forward layers are not covered"),
        (
            c.checkpoint_activations,
            "checkpoint_activations has its own segmented pass",
        ),
        (
            options.train && c.dropout > 0.0,
            "dropout is not covered (set dropout 0)",
        ),
        (
            c.kernels != Kernels::Fused,
            "kernels \"reference\" asks for the composed reference path",
        ),
    ];
    if let Some((_, why)) = reasons.iter().find(|(bad, _)| *bad) {
        return Some(why.to_string());
    }
    if let Some(why) = weights::layer_changes(gpt) {
        return Some(why);
    }
    match ids.dims2() {
        Ok((_, t)) if t >= 1 && t <= c.ctx => None,
        Ok((_, t)) => Some(format!("a sequence of {t} tokens with ctx = {}", c.ctx)),
        Err(e) => Some(format!("ids must be (batch, seq): {e}")),
    }
}

/// Forward and backward of `gpt` on `ids` by the owned pass (the caller checked
/// [`eligibility`]): the gradients of `loss(forward(ids))` by parameter.
pub fn forward_backward(
    gpt: &Gpt,
    ids: &Tensor,
    options: &ForwardOptions,
    loss: &mut LossFn<'_>,
) -> Result<GradStore> {
    let (b, t) = ids.dims2()?;
    let ids: Vec<u32> = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    let params = gpt.parameters_owned();
    let layout = weights::Layout::of(gpt, params)?;
    let vocab = gpt.gpt_config().vocab_size;
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(Error::msg(format!(
            "gpt: token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    // Inside the pool (a row-parallel part) kernels stay on this thread: letting them spread
    // over the pool as nested tasks measured 5-8% slower on 2 cores (docs/kernels.md).
    let parallel = llmlab_plugin_api::rayon::current_thread_index().is_none()
        && llmlab_plugin_api::rayon::current_num_threads() > 1;
    let pool = gpt.owned_arenas();
    let mut arena = pool.take_for(gpt, &layout, b, t)?;
    let hidden = options.hidden_states;
    let result = run(
        gpt,
        &layout,
        &mut arena,
        &ids,
        (b, t),
        hidden,
        parallel,
        loss,
    );
    pool.give(arena);
    result
}

#[allow(clippy::too_many_arguments)]
fn run(
    gpt: &Gpt,
    layout: &weights::Layout,
    arena: &mut arena::Arena,
    ids: &[u32],
    (b, t): (usize, usize),
    hidden_states: bool,
    parallel: bool,
    loss: &mut LossFn<'_>,
) -> Result<GradStore> {
    let params = gpt.parameters_owned();
    let store = with_weights(gpt, |w| {
        let cfg = gpt.gpt_config();
        let shape = forward::Shape::new(cfg, b, t);
        forward::forward(&shape, cfg, layout, w, arena, ids, parallel);

        // The loss on the logits (and the final norm's output, when asked for) as fresh
        // variables; their gradients start the owned backward.
        let logits = Var::from_slice(
            &arena.logits[..shape.n * shape.v],
            (b, t, shape.v),
            &Device::Cpu,
        )?;
        let hidden = hidden_states
            .then(|| {
                Var::from_slice(
                    &arena.xf[..shape.n * shape.c],
                    (b, t, shape.c),
                    &Device::Cpu,
                )
            })
            .transpose()?;
        let out = ForwardOutput {
            logits: logits.as_tensor().clone(),
            aux_loss: None,
            hidden: hidden.as_ref().map(|h| h.as_tensor().clone()),
        };
        let mut store = loss(&out)?.backward()?;
        drop(out);
        let dlogits = store.remove(logits.as_tensor());
        let dhidden = hidden.and_then(|h| store.remove(h.as_tensor()));
        if dlogits.is_none() && dhidden.is_none() {
            return Err(Error::msg(
                "gpt owned pass: the loss does not depend on the model's output",
            ));
        }
        let dhidden = dhidden.map(|g| f32_values(&g)).transpose()?;
        // A loss on the hidden states alone leaves the head without a gradient, as autograd does.
        let head_unused = dlogits.is_none();
        let dlogits = match dlogits {
            Some(g) => g.to_dtype(DType::F32)?.contiguous()?,
            None => Tensor::zeros((b, t, shape.v), DType::F32, &Device::Cpu)?,
        };
        {
            let (storage, l) = dlogits.storage_and_layout();
            let (Storage::Cpu(llmlab_plugin_api::candle::CpuStorage::F32(data)), Some((s, e))) =
                (&*storage, l.contiguous_offsets())
            else {
                return Err(Error::msg(
                    "gpt owned pass: the logits' gradient is not contiguous f32 on the CPU",
                ));
            };
            let grads_in = (&data[s..e], dhidden.as_deref());
            backward::backward(&shape, cfg, layout, w, arena, ids, grads_in, parallel);
        }
        Ok((store, head_unused))
    })?;
    let (mut store, head_unused) = store;
    for (i, (_, var)) in params.iter().enumerate() {
        if head_unused && i == layout.head && layout.head != layout.wte {
            continue;
        }
        let g = Tensor::from_slice(&arena.grads[i], var.shape(), &Device::Cpu)?;
        let g = match store.remove(var.as_tensor()) {
            Some(previous) => (previous + g)?,
            None => g,
        };
        store.insert(var.as_tensor(), g);
    }
    Ok(store)
}

/// Runs `f` on every parameter's values as f32 slices, in parameter order (read-locked for
/// the call: no copy).
pub(crate) fn with_weights<R>(gpt: &Gpt, f: impl FnOnce(&[&[f32]]) -> Result<R>) -> Result<R> {
    let params = gpt.parameters_owned();
    let guards: Vec<_> = params
        .iter()
        .map(|(_, v)| v.as_tensor().storage_and_layout())
        .collect();
    let w = guards
        .iter()
        .zip(params)
        .map(
            |((storage, l), (name, _))| match (&**storage, l.contiguous_offsets()) {
                (Storage::Cpu(llmlab_plugin_api::candle::CpuStorage::F32(data)), Some((s, e))) => {
                    Ok(&data[s..e])
                }
                _ => Err(Error::msg(format!(
                    "gpt owned pass: parameter {name} is not a contiguous f32 CPU tensor"
                ))),
            },
        )
        .collect::<Result<Vec<&[f32]>>>()?;
    f(&w)
}

/// The values of a gradient tensor as f32.
fn f32_values(g: &Tensor) -> Result<Vec<f32>> {
    Ok(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}
