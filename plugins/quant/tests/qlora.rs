//! QLoRA (issue 22): LoRA adapters over a q4_0 / q4_k quantized base. The frozen quantized
//! weights stay as they are; the adapters train through them (the backward pass dequantizes on
//! the fly), and their gradients match those of the same adapters over the dense model holding
//! the dequantized weights.

mod common;

use common::*;
use llmlab_plugin_api::candle::DType;

fn next_token_loss(
    model: &dyn Model,
    x: &Tensor,
) -> (f32, llmlab_plugin_api::candle::backprop::GradStore) {
    let len = x.dim(1).unwrap();
    let inputs = x.narrow(1, 0, len - 1).unwrap();
    let targets = x.narrow(1, 1, len - 1).unwrap();
    let mut value = 0.0;
    let grads = model
        .forward_backward(
            &inputs,
            &ForwardOptions::default(),
            DType::F32,
            &mut |out| {
                let l = llmlab_gpt::model::cross_entropy(&out.logits, &targets)?;
                value = l.to_scalar::<f32>()?;
                Ok(l)
            },
        )
        .unwrap();
    (value, grads)
}

/// The dense model whose linear weights are `quantized`'s, dequantized.
fn dequantized_twin(dense: &Gpt, quantized: &Gpt) -> Gpt {
    let twin = dense.copy().unwrap();
    let vars = twin.parameters_by_name();
    for (name, q) in quantized.quantized_weights() {
        let var = &vars[name];
        let (_, in_dim) = var.dims2().unwrap();
        let w = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .narrow(1, 0, in_dim)
            .unwrap();
        var.set(&w.contiguous().unwrap()).unwrap();
    }
    twin
}

#[test]
fn adapters_train_over_a_quantized_base_with_the_dequantized_gradients() {
    for scheme in [&legacy::Q4_0, &kquants::Q4K] {
        let dense = tiny(json!({ "d_model": 256, "n_head": 4, "vocab_size": 64 }));
        let quantized = llmlab_gpt::quantize::quantized(
            &dense,
            &scheme.quantizer(QuantConfig::default()),
            &["lm_head".to_string()],
        )
        .unwrap();
        let reference = dequantized_twin(&dense, &quantized);
        let config = json!({ "rank": 4, "alpha": 8, "targets": ["c_attn", "c_fc"] });
        quantized.set_lora(Some(&config)).unwrap();
        reference.set_lora(Some(&config)).unwrap();
        // Nonzero B so that every adapter gets a gradient through the layers after it.
        for ((name, q), (_, r)) in quantized.parameters().iter().zip(reference.parameters()) {
            if name.contains("lora_B") {
                let b = (Tensor::ones(q.dims(), DType::F32, &Device::Cpu).unwrap() * 0.01).unwrap();
                q.set(&b).unwrap();
                r.set(&b).unwrap();
            }
        }
        let x = ids(17, 2);
        let (_, q_grads) = next_token_loss(&quantized, &x);
        let (_, r_grads) = next_token_loss(&reference, &x);
        for ((name, q), (_, r)) in quantized.parameters().iter().zip(reference.parameters()) {
            let gq = q_grads.get(q.as_tensor()).expect("adapter gradient");
            let gr = r_grads.get(r.as_tensor()).expect("adapter gradient");
            // The quantized forward also rounds activations to 8 bits (ggml's dot products),
            // so the two agree to that rounding, not bit for bit.
            let err = relative_error(gq, gr);
            assert!(err < 0.1, "{}: {name} relative error {err}", scheme.name);
        }

        // Training moves the adapters only; the quantized weights are shared, never written.
        let before: Vec<Vec<u8>> = quantized
            .quantized_weights()
            .values()
            .map(|q| q.data().unwrap().to_vec())
            .collect();
        let mut opt = llmlab_plugin_api::candle_nn::AdamW::new(
            quantized.parameters().into_iter().map(|(_, v)| v).collect(),
            llmlab_plugin_api::candle_nn::ParamsAdamW {
                lr: 1e-2,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        use llmlab_plugin_api::candle_nn::Optimizer;
        let (first, _) = next_token_loss(&quantized, &x);
        for _ in 0..10 {
            let (_, grads) = next_token_loss(&quantized, &x);
            opt.step(&grads).unwrap();
        }
        let (last, _) = next_token_loss(&quantized, &x);
        assert!(last < first * 0.9, "{}: {first} -> {last}", scheme.name);
        let after: Vec<Vec<u8>> = quantized
            .quantized_weights()
            .values()
            .map(|q| q.data().unwrap().to_vec())
            .collect();
        assert!(before == after);
        // Merging into blocks is refused with the reason.
        let err = quantized.lora_merge(true).unwrap_err().to_string();
        assert!(err.contains("quantized"), "{err}");
    }
}
