//! The row-parallel training pass (`row_parallel`, issue 25): on CPU, a micro-batch's rows are
//! split into one part per core and each part runs its own forward and backward on its own
//! rayon thread, the gradients summed once afterwards.
//!
//! Why: with intra-op parallelism every op of a small model's step (a few hundred of them, most
//! well under a millisecond) ends in a barrier where both cores wait for the slower one; a part
//! per core runs the whole graph without meeting the other core until the step's sum. Measured
//! on 2 cores in docs/benchmarks.md ("Round 3": `tiny:split`, then the `lm` trainer itself).
//!
//! Only where it changes nothing but float summation order: the model says its passes are pure
//! functions of weights and rows ([`Model::row_parallel_training`]: no dropout stream, no MoE
//! routing state), the objective's loss is the plain token loss of the rows
//! ([`crate::Objective::row_parallel`]), the pass computes in the parameters' dtype on the CPU.
//! The parts are cut and weighted like data-parallel shards ([`Batch::rows`]), so their losses
//! add up to the whole micro-batch's loss. The number of parts is the rayon pool's size, so a
//! run's losses depend on the core count in the last bits; a resumed run on the same machine
//! is still bit-exact.

use llmlab_plugin_api::candle::backprop::GradStore;
use llmlab_plugin_api::candle::{DType, Tensor, Var};
use llmlab_plugin_api::{ForwardOptions, ForwardOutput, Model, Result};

use crate::batches::Batch;
use crate::rayon::prelude::*;

/// One part's pass: its gradients (already weighted), and its loss and aux loss weighted by the
/// part's share of the micro-batch, so the parts' values add up to the micro-batch's.
pub struct PartPass {
    pub grads: GradStore,
    pub loss: f64,
    pub aux: Option<f64>,
}

/// How many parts to split `batch` into: the rayon pool's size (at most one row per part), or
/// 1, one ordinary pass, where splitting is off or not allowed. `params` are the model's
/// parameters, which the trainer already holds for the step.
pub fn parts(
    allowed: bool,
    model: &dyn Model,
    params: &[(String, Var)],
    batch: &Batch,
    compute: DType,
) -> Result<usize> {
    let params_dtype = params.first().map(|(_, v)| v.dtype());
    if !allowed
        || !model.device().is_cpu()
        || params_dtype != Some(compute)
        || !model.row_parallel_training()
    {
        return Ok(1);
    }
    let rows = batch.inputs.dim(0)?;
    Ok(crate::rayon::current_num_threads().clamp(1, rows.max(1)))
}

/// The loss a pass minimises from its output: `loss_of` the f32 logits plus the aux loss, times
/// `factor` (micro-batch average, data-parallel share, f16 loss scale), with the unscaled loss
/// and aux loss values for the metrics.
pub fn pass_loss(
    out: &ForwardOutput,
    loss_of: impl FnOnce(&Tensor) -> Result<Tensor>,
    factor: f64,
) -> Result<(Tensor, f64, Option<f64>)> {
    let logits = out.logits.to_dtype(DType::F32)?;
    let mut total = loss_of(&logits)?;
    let loss = total.to_scalar::<f32>()? as f64;
    let mut aux_value = None;
    if let Some(aux) = &out.aux_loss {
        let aux = aux.to_dtype(total.dtype())?;
        aux_value = Some(aux.to_scalar::<f32>()? as f64);
        total = (total + aux)?;
    }
    if factor != 1.0 {
        total = total.affine(factor, 0.0)?;
    }
    Ok((total, loss, aux_value))
}

/// Forward and backward of each of `parts` row ranges of `batch` on its own rayon thread, the
/// loss of each being `loss_of(logits, part)` weighted by the part's share and `factor`.
/// Returns the passes in row order (the caller sums them in that order, so a step is
/// deterministic).
pub fn passes(
    model: &dyn Model,
    batch: &Batch,
    parts: usize,
    options: &ForwardOptions,
    compute: DType,
    factor: f64,
    loss_of: &(dyn Fn(&Tensor, &Batch) -> Result<Tensor> + Sync),
) -> Result<Vec<PartPass>> {
    let rows = batch.inputs.dim(0)?;
    (0..parts)
        .into_par_iter()
        .map(|p| {
            let (start, end) = (p * rows / parts, (p + 1) * rows / parts);
            let (part, share) = batch.rows(start, end - start)?;
            let mut values = (0.0, None);
            let mut objective = |out: &ForwardOutput| -> Result<Tensor> {
                let (total, loss, aux) =
                    pass_loss(out, |logits| loss_of(logits, &part), factor * share)?;
                values = (loss * share, aux.map(|a| a * share));
                Ok(total)
            };
            let grads = model.forward_backward_with(
                &part.inputs,
                &part.forward_inputs,
                options,
                compute,
                &mut objective,
            )?;
            Ok(PartPass {
                grads,
                loss: values.0,
                aux: values.1,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batches::windows_to_batch;
    use crate::train_loop::hard_label_loss;
    use llmlab_plugin_api::candle::Device;
    use llmlab_plugin_api::{Error, GenerateOptions, KvCache};

    /// A bigram "model": logits are rows of one weight matrix picked by the input token. Its
    /// passes are pure, so it allows the split.
    struct Bigram {
        table: Var,
        device: Device,
    }

    impl Model for Bigram {
        fn name(&self) -> &str {
            "bigram"
        }
        fn config(&self) -> llmlab_plugin_api::serde_json::Value {
            llmlab_plugin_api::serde_json::json!({})
        }
        fn vocab_size(&self) -> usize {
            self.table.dim(0).unwrap()
        }
        fn ctx_len(&self) -> usize {
            64
        }
        fn device(&self) -> &Device {
            &self.device
        }
        fn forward(&self, ids: &Tensor, _: &ForwardOptions) -> Result<ForwardOutput> {
            let (b, t) = ids.dims2()?;
            let logits = self
                .table
                .as_tensor()
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((b, t, self.vocab_size()))?;
            Ok(ForwardOutput {
                logits,
                aux_loss: None,
                hidden: None,
            })
        }
        fn new_cache(&self, _: usize) -> Result<Box<dyn KvCache>> {
            Err(Error::unsupported("bigram", "kv cache"))
        }
        fn forward_cached(&self, _: &Tensor, _: &mut dyn KvCache) -> Result<ForwardOutput> {
            Err(Error::unsupported("bigram", "kv cache"))
        }
        fn generate(
            &self,
            _: &[Vec<u32>],
            _: &GenerateOptions,
            _: &mut dyn FnMut(usize, u32) -> bool,
        ) -> Result<Vec<Vec<u32>>> {
            Err(Error::unsupported("bigram", "generate"))
        }
        fn parameters(&self) -> Vec<(String, Var)> {
            vec![("table".into(), self.table.clone())]
        }
        fn save(&self, _: &std::path::Path) -> Result<()> {
            Err(Error::unsupported("bigram", "save"))
        }
        fn frozen_copy(&self) -> Result<Box<dyn Model>> {
            Err(Error::unsupported("bigram", "frozen_copy"))
        }
        fn row_parallel_training(&self) -> bool {
            true
        }
    }

    fn bigram() -> Bigram {
        let device = Device::Cpu;
        let init: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
            .collect();
        Bigram {
            table: Var::from_tensor(&Tensor::from_vec(init, (8, 8), &device).unwrap()).unwrap(),
            device,
        }
    }

    fn batch(masked: bool) -> Batch {
        let windows: Vec<u32> = (0..5 * 7).map(|i| (i * 5 % 8) as u32).collect();
        let mut batch = windows_to_batch(&windows, 6, &Device::Cpu).unwrap();
        if masked {
            // Uneven loss positions per row: the masked loss keeps the whole batch's divisor.
            let mask: Vec<f32> = (0..5 * 6).map(|i| f32::from(i % 3 != 0)).collect();
            batch.loss_tokens = mask.iter().filter(|m| **m > 0.0).count();
            batch.mask = Some(Tensor::from_vec(mask, (5, 6), &Device::Cpu).unwrap());
        }
        batch
    }

    /// Three uneven parts of a five-row batch give the whole batch's loss and gradient, with
    /// and without a loss mask.
    #[test]
    fn parts_add_up_to_the_whole_batch() {
        let model = bigram();
        let options = ForwardOptions {
            train: true,
            ..ForwardOptions::default()
        };
        for masked in [false, true] {
            let batch = batch(masked);
            let whole = hard_label_loss(
                &model.forward(&batch.inputs, &options).unwrap().logits,
                &batch,
            )
            .unwrap();
            let whole_grad = whole.backward().unwrap();
            let whole_grad = whole_grad.get(model.table.as_tensor()).unwrap();
            let whole = whole.to_scalar::<f32>().unwrap() as f64;
            let passes = passes(
                &model,
                &batch,
                3,
                &options,
                DType::F32,
                1.0,
                &hard_label_loss,
            )
            .unwrap();
            assert_eq!(passes.len(), 3);
            let loss: f64 = passes.iter().map(|p| p.loss).sum();
            assert!(
                (loss - whole).abs() < 1e-6,
                "masked {masked}: {loss} vs {whole}"
            );
            let mut sum = passes[0]
                .grads
                .get(model.table.as_tensor())
                .unwrap()
                .clone();
            for pass in &passes[1..] {
                sum = (sum + pass.grads.get(model.table.as_tensor()).unwrap()).unwrap();
            }
            let diff = (sum - whole_grad)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            assert!(diff.to_scalar::<f32>().unwrap() < 1e-6, "masked {masked}");
        }
    }

    #[test]
    fn one_part_where_the_model_or_dtype_forbids_the_split() {
        let model = bigram();
        let batch = batch(false);
        let params = model.parameters();
        assert_eq!(
            parts(false, &model, &params, &batch, DType::F32).unwrap(),
            1
        );
        assert_eq!(
            parts(true, &model, &params, &batch, DType::BF16).unwrap(),
            1
        );
        let threads = crate::rayon::current_num_threads();
        assert_eq!(
            parts(true, &model, &params, &batch, DType::F32).unwrap(),
            threads.clamp(1, 5)
        );
    }
}
