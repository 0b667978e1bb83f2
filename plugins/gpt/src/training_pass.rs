//! The training pass (`Model::forward_backward`): plain, mixed precision (`autocast.rs`), and
//! with activation checkpointing (`checkpoint_activations: true`). With `pass: "auto"` (the
//! default) or `"owned"`, a call the hand-written owned pass covers goes there instead
//! (`owned_pass/`); everything below is the autograd path, the reference it is tested against.
//!
//! candle's autograd keeps every intermediate tensor of the forward pass alive until backward
//! (each result holds its inputs), and it has no hook to drop and recompute them. So the
//! checkpointed pass is a *segmented backward* driven here, with one ordinary `backward()` per
//! segment:
//!
//! 1. forward through the embeddings; then through each block with its input detached, keeping
//!    only that input (`(batch, seq, d_model)` per block) and dropping the block's graph;
//! 2. the head segment: the last block's output as a fresh variable → final norm → logits →
//!    the caller's loss → `backward()`: head gradients and `g`, the gradient of that variable;
//! 3. blocks last to first: recompute the block from its saved input (a fresh variable) with
//!    tracking on, and backpropagate `sum(output · g)`, whose gradient with respect to the
//!    output is exactly `g`: the block's parameter gradients, and the new `g` for its input;
//! 4. the embedding segment the same way, from `g` of the first block's input.
//!
//! MoE blocks add aux loss terms that depend on the block's input. Step 1 sums them (values
//! only) and hands the sum to the loss as a fresh variable; its gradient `a` (how the loss
//! scales the aux loss) comes back from the head segment, and each recomputed block
//! backpropagates `sum(output · g) + a · aux_i`. Recomputation runs as `Pass::Recompute`: the
//! routing repeats the first pass (same selection bias), and statistics are recorded once.
//!
//! The parameters' gradients of each segment are added into one store (a tied embedding/head
//! gets both of its contributions); the rest of each segment's store is dropped with it. Recomputation must repeat the forward exactly, so dropout must be 0 (checked
//! by the config); everything else in a block is deterministic.

use llmlab_plugin_api::candle::backprop::GradStore;
use llmlab_plugin_api::candle::{DType, Module, Tensor, Var};
use llmlab_plugin_api::{Error, ForwardOptions, ForwardOutput, Model, Result};

use crate::autocast;
use crate::model::Gpt;
use crate::moe::Pass;
use crate::owned_pass::{self, PassKind};
use llmlab_nn::cache::Positions;

/// The loss the trainer puts on the forward output.
pub type LossFn<'a> = dyn FnMut(&ForwardOutput) -> Result<Tensor> + 'a;

/// `Model::forward_backward` for the GPT: gradients of `loss(forward(ids))` by parameter, in
/// the parameters' dtype, computing in `compute`.
pub fn forward_backward(
    gpt: &Gpt,
    ids: &Tensor,
    options: &ForwardOptions,
    compute: DType,
    loss: &mut LossFn<'_>,
) -> Result<GradStore> {
    let pass = gpt.gpt_config().pass;
    if pass != PassKind::Autograd {
        match owned_pass::eligibility(gpt, ids, options, compute) {
            None => return owned_pass::forward_backward(gpt, ids, options, loss),
            Some(why) if pass == PassKind::Owned => return Err(owned_refusal(&why)),
            Some(_) => {}
        }
    }
    let cast;
    let model = if compute == gpt.dtype() {
        gpt
    } else {
        cast = autocast::cast(gpt, compute)?;
        &cast
    };
    if !gpt.gpt_config().checkpoint_activations {
        let out = model.forward(ids, options)?;
        let out = to_dtype(out, gpt.dtype())?;
        return Ok(loss(&out)?.backward()?);
    }
    if options.train && gpt.gpt_config().dropout > 0.0 {
        return Err(Error::invalid_config(
            "gpt",
            "checkpoint_activations needs dropout 0: recomputing a block would draw new dropout masks",
        ));
    }
    checkpointed(model, &gpt.parameters(), ids, options, gpt.dtype(), loss)
}

/// The error for `pass: "owned"` on a config or call the owned pass does not cover.
fn owned_refusal(why: &str) -> Error {
    Error::invalid_config(
        "gpt",
        format!(
            "pass \"owned\" cannot train this model: {why}; use pass \"auto\" (falls back to \
             autograd) or \"autograd\""
        ),
    )
}

/// Refuses when the config asks for the owned pass explicitly, for a pass that never takes it.
pub fn refuse_owned_pass(gpt: &Gpt, why: &str) -> Result<()> {
    if gpt.gpt_config().pass == PassKind::Owned {
        return Err(owned_refusal(why));
    }
    Ok(())
}

/// Logits and hidden states in the parameters' dtype, as the loss expects.
fn to_dtype(out: ForwardOutput, dtype: DType) -> Result<ForwardOutput> {
    if out.logits.dtype() == dtype {
        return Ok(out);
    }
    Ok(ForwardOutput {
        logits: out.logits.to_dtype(dtype)?,
        aux_loss: out.aux_loss,
        hidden: out.hidden.map(|h| h.to_dtype(dtype)).transpose()?,
    })
}

/// `params`: the variables gradients are wanted for (the f32 master weights under autocast).
fn checkpointed(
    model: &Gpt,
    params: &[(String, Var)],
    ids: &Tensor,
    options: &ForwardOptions,
    out_dtype: DType,
    loss: &mut LossFn<'_>,
) -> Result<GradStore> {
    let stages = model.stages();
    let (_, t) = ids.dims2()?;
    if t == 0 || t > model.ctx_len() {
        return Err(Error::msg(format!(
            "gpt: cannot train on a sequence of {t} tokens with context length ctx = {}",
            model.ctx_len()
        )));
    }
    let mask = if t > 1 {
        Some(stages.causal_mask.narrow(0, 0, t)?.narrow(1, 0, t)?)
    } else {
        None
    };
    let positions = Positions::Offset(0);
    let block = |i: usize, x: &Tensor, pass: Pass| {
        stages.blocks[i].forward_routed(x, stages.rope, &positions, mask.as_ref(), None, pass)
    };
    let first_pass = Pass::from_train(options.train);
    let recompute = if options.train {
        Pass::Recompute
    } else {
        Pass::Eval
    };

    // 1. Forward, keeping only block inputs (and the aux loss's value).
    let embedded = stages.embed(ids)?;
    let mut inputs = Vec::with_capacity(stages.blocks.len());
    let mut x = embedded.detach();
    let mut aux_value = None;
    for i in 0..stages.blocks.len() {
        let (y, aux) = block(i, &x, first_pass)?;
        if let Some(term) = aux.and_then(|a| a.loss) {
            aux_value = crate::moe::add_loss(aux_value, Some(term.detach()))?;
        }
        inputs.push(std::mem::replace(&mut x, y.detach()));
    }

    // 2. Head segment.
    let last = Var::from_tensor(&x)?;
    drop(x);
    let aux_var = aux_value.map(|v| Var::from_tensor(&v)).transpose()?;
    let hidden = stages.ln_f.forward(last.as_tensor())?;
    let logits = stages.lm_head.forward(&hidden)?;
    let out = to_dtype(
        ForwardOutput {
            logits,
            aux_loss: aux_var.as_ref().map(|v| v.as_tensor().clone()),
            hidden: options.hidden_states.then_some(hidden),
        },
        out_dtype,
    )?;
    let mut segment = loss(&out)?.backward()?;
    drop(out);
    let mut upstream = take_input_grad(&mut segment, &last)?;
    // How the caller's loss scales the aux loss (none when it leaves the aux loss out).
    let aux_scale = aux_var.and_then(|v| segment.remove(v.as_tensor()));
    let mut grads = empty_store()?;
    merge(&mut grads, segment, params)?;

    // 3. Blocks, last to first, each recomputed from its input.
    for (i, input) in inputs.into_iter().enumerate().rev() {
        let input = Var::from_tensor(&input)?;
        let (y, aux) = block(i, input.as_tensor(), recompute)?;
        let mut objective = (y * &upstream)?.sum_all()?;
        if let (Some(term), Some(scale)) = (aux.and_then(|a| a.loss), &aux_scale) {
            let scale = scale.to_dtype(term.dtype())?;
            let term = (term * scale)?;
            objective = (objective.to_dtype(term.dtype())? + term)?;
        }
        let mut segment = objective.backward()?;
        upstream = take_input_grad(&mut segment, &input)?;
        merge(&mut grads, segment, params)?;
    }

    // 4. Embedding segment.
    let segment = (embedded * &upstream)?.sum_all()?.backward()?;
    merge(&mut grads, segment, params)?;
    Ok(grads)
}

/// Adds the parameters' gradients of one segment into `into` and drops the rest of the
/// segment's store: candle's store also keeps gradients of constants the segment touched (masks,
/// rope tables, broadcast views: attention-sized tensors), which would otherwise pile up for
/// every block and cost the memory checkpointing saves.
fn merge(into: &mut GradStore, mut segment: GradStore, params: &[(String, Var)]) -> Result<()> {
    for (_, var) in params {
        if let Some(grad) = segment.remove(var.as_tensor()) {
            let sum = match into.remove(var.as_tensor()) {
                Some(previous) => (previous + grad)?,
                None => grad,
            };
            into.insert(var.as_tensor(), sum);
        }
    }
    Ok(())
}

/// candle's `GradStore` has no public constructor: the store of an untracked scalar's backward,
/// emptied.
fn empty_store() -> Result<GradStore> {
    let scalar = Tensor::new(0f32, &llmlab_plugin_api::candle::Device::Cpu)?;
    let mut store = scalar.backward()?;
    store.remove(&scalar);
    Ok(store)
}

/// The gradient of a segment's input, removed from the segment's store (it is no parameter).
fn take_input_grad(grads: &mut GradStore, input: &Var) -> Result<Tensor> {
    grads.remove(input.as_tensor()).ok_or_else(|| {
        Error::msg("gpt: checkpointed backward: the loss does not depend on the model's output")
    })
}
