//! Mixed precision: the GPT rebuilt to compute in bf16 or f16 over its f32 master weights.
//!
//! Each training pass casts every parameter to the compute dtype once and builds the same
//! modules from those casts ([`Source::Cast`]). The casts stay in candle's autograd graph, so
//! the backward pass runs in the compute dtype and converts each parameter's gradient back to
//! f32 through its cast: the optimiser sees f32 gradients on the f32 `Var`s. A tied head reuses
//! the embedding's cast, as the f32 model reuses the embedding. Fake quantization (QAT) carries
//! over to the rebuilt layers; quantized models do not train, so they are refused.

use std::collections::HashMap;

use llmlab_plugin_api::candle::DType;
use llmlab_plugin_api::{Error, Model, Result};

use crate::model::Gpt;
use llmlab_nn::params::Source;

/// `gpt` computing in `dtype`, with gradients flowing to `gpt`'s parameters.
pub fn cast(gpt: &Gpt, dtype: DType) -> Result<Gpt> {
    if !matches!(dtype, DType::BF16 | DType::F16) {
        return Err(Error::msg(format!(
            "gpt: mixed precision computes in bf16 or f16, not {dtype:?}"
        )));
    }
    if let Some(scheme) = gpt.scheme() {
        return Err(Error::unsupported(
            "gpt",
            format!("mixed-precision training of a {scheme}-quantized model"),
        ));
    }
    let mut tensors = gpt
        .parameters()
        .into_iter()
        .map(|(name, var)| Ok((name, var.as_tensor().to_dtype(dtype)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    // MoE state stays f32 and is the parent's own variables: the pass updates them in place.
    for (name, var) in gpt.state_vars() {
        tensors.insert(name.clone(), var.as_tensor().clone());
    }
    let mut shadow = Gpt::new(
        gpt.gpt_config().clone(),
        Source::Cast(tensors),
        gpt.device(),
        dtype,
        gpt.cancel_flag().clone(),
    )?;
    shadow.share_dropout_with(gpt);
    for ((name, layer), (shadow_name, shadow_layer)) in
        gpt.dense_layers().iter().zip(shadow.dense_layers())
    {
        debug_assert_eq!(name, shadow_name);
        shadow_layer.set_fake_quant(layer.fake_quantizer());
    }
    Ok(shadow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GptConfig;
    use llmlab_plugin_api::candle::{Device, Tensor};
    use llmlab_plugin_api::{CancelFlag, ForwardOptions};

    #[test]
    fn cast_model_computes_in_bf16_and_gradients_reach_the_f32_weights() {
        let config = GptConfig {
            vocab_size: 32,
            n_layer: 1,
            n_head: 2,
            d_model: 16,
            ctx: 8,
            ..GptConfig::default()
        };
        let gpt = Gpt::new(
            config,
            Source::Init { seed: 3 },
            &Device::Cpu,
            DType::F32,
            CancelFlag::default(),
        )
        .unwrap();
        let ids = Tensor::new(&[[1u32, 5, 7, 2]], &Device::Cpu).unwrap();
        let shadow = cast(&gpt, DType::BF16).unwrap();
        let out = shadow.forward(&ids, &ForwardOptions::default()).unwrap();
        assert_eq!(out.logits.dtype(), DType::BF16);
        let full = gpt.forward(&ids, &ForwardOptions::default()).unwrap();
        let diff = (out.logits.to_dtype(DType::F32).unwrap() - &full.logits)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 0.05, "bf16 logits differ from f32 by {diff}");
        let grads = out
            .logits
            .to_dtype(DType::F32)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, var) in gpt.parameters() {
            let grad = grads.get(var.as_tensor());
            let grad = grad.unwrap_or_else(|| panic!("no gradient for {name}"));
            assert_eq!(grad.dtype(), DType::F32, "{name}");
        }
    }
}
