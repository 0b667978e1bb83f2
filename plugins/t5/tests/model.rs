//! The T5 model on its own: cached decoding equals the uncached reference, every decoding
//! option runs through the shared engine, save/load and quantization round trips, training
//! through the packed `Model::forward`, and errors that name their cause.

use llmlab_nn::sampling::argmax;
use llmlab_plugin_api::candle::quantized::{GgmlDType, QTensor};
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::serde_json::json;
use llmlab_plugin_api::{Context, ForwardOptions, GenerateOptions, Model, Quantizer};
use llmlab_t5::decoder::generate_uncached;
use llmlab_t5::{new_t5, T5};

fn tiny(extra: llmlab_plugin_api::serde_json::Value) -> T5 {
    let mut config = json!({
        "vocab_size": 40, "d_model": 32, "d_kv": 8, "d_ff": 48, "n_head": 4, "n_layer": 2,
        "n_decoder_layer": 3, "ctx": 24, "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16, "seed": 7
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    new_t5(&config, &Context::cpu()).unwrap()
}

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        temperature: 0.0,
        ..GenerateOptions::default()
    }
}

fn gen(model: &T5, prompts: &[Vec<u32>], o: &GenerateOptions) -> Vec<Vec<u32>> {
    model.generate(prompts, o, &mut |_, _| true).unwrap()
}

#[test]
fn cached_generation_equals_the_uncached_reference_and_batches_agree() {
    for ff in ["relu", "gated-gelu"] {
        let model = tiny(json!({ "feed_forward": ff, "tie_embeddings": ff == "relu" }));
        let prompts = [vec![5, 9, 3, 30, 2], vec![7, 8]];
        let batch = gen(&model, &prompts, &greedy(8));
        for (prompt, row) in prompts.iter().zip(&batch) {
            assert_eq!(row, &generate_uncached(&model, prompt, 8).unwrap(), "{ff}");
            assert_eq!(
                row,
                &gen(&model, std::slice::from_ref(prompt), &greedy(8))[0],
                "{ff} alone"
            );
        }
    }
}

#[test]
fn cached_logits_equal_uncached_logits_step_by_step() {
    let model = tiny(json!({ "feed_forward": "gated-gelu" }));
    let input = vec![5, 9, 3, 1];
    let decoded = vec![0, 12, 4, 33, 17];
    let full = model
        .seq2seq_logits(std::slice::from_ref(&input), std::slice::from_ref(&decoded))
        .unwrap();
    let mut cache = model.encode(std::slice::from_ref(&input), false).unwrap();
    for (j, &t) in decoded.iter().enumerate() {
        let ids = Tensor::new(&[[t]], &Device::Cpu).unwrap();
        let step = model
            .head(&model.decode_hidden(&ids, &mut cache, false).unwrap())
            .unwrap();
        let diff = (step.get(0).unwrap().get(0).unwrap() - full.get(0).unwrap().get(j).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            diff < 1e-5,
            "position {j}: cached and uncached differ by {diff}"
        );
    }
}

#[test]
fn every_decoding_option_runs_through_the_engine() {
    let model = tiny(json!({}));
    let prompt = vec![vec![5, 9, 3]];
    let sample = |seed| GenerateOptions {
        temperature: 1.0,
        top_k: 10,
        top_p: 0.9,
        repetition_penalty: 1.3,
        seed,
        ..greedy(6)
    };
    assert_eq!(
        gen(&model, &prompt, &sample(3)),
        gen(&model, &prompt, &sample(3))
    );
    let beams = GenerateOptions {
        num_beams: 3,
        ..greedy(6)
    };
    let beam = gen(&model, &prompt, &beams);
    assert_eq!(beam[0].len(), 6);
    // Beam search never scores worse than greedy under the model.
    let score = |out: &[u32]| -> f32 {
        let input = model.encoder_input(&prompt[0]);
        let dec: Vec<u32> = std::iter::once(0).chain(out.iter().copied()).collect();
        let logits = model
            .seq2seq_logits(&[input], &[dec])
            .unwrap()
            .get(0)
            .unwrap();
        let logp = llmlab_plugin_api::candle_nn::ops::log_softmax(&logits, 1).unwrap();
        let rows: Vec<Vec<f32>> = logp.to_vec2().unwrap();
        out.iter()
            .enumerate()
            .map(|(j, &t)| rows[j][t as usize])
            .sum()
    };
    let g = gen(&model, &prompt, &greedy(6));
    assert!(score(&beam[0]) >= score(&g[0]) - 1e-4);
    let first = argmax(
        &model
            .seq2seq_logits(&[model.encoder_input(&prompt[0])], &[vec![0]])
            .unwrap()
            .get(0)
            .unwrap()
            .get(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
    );
    let stop = GenerateOptions {
        stop_tokens: vec![first],
        ..greedy(6)
    };
    assert_eq!(gen(&model, &prompt, &stop), vec![Vec::<u32>::new()]);
}

#[test]
fn a_prompt_over_the_encoder_length_is_refused_naming_it() {
    let model = tiny(json!({}));
    let long = vec![vec![5u32; 24]];
    let err = model
        .generate(&long, &greedy(4), &mut |_, _| true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("prompt 0 has 25 tokens"), "{err}");
    assert!(err.contains("encoder length (ctx = 24)"), "{err}");
    let cut = GenerateOptions {
        truncate_prompt: true,
        ..greedy(4)
    };
    assert_eq!(gen(&model, &long, &cut)[0].len(), 4);
    // The packed forward refuses it too.
    let ids = Tensor::new(&[[5u32; 30]], &Device::Cpu).unwrap();
    let err = model
        .forward(&ids, &ForwardOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("encoder takes at most ctx = 24"), "{err}");
}

#[test]
fn save_and_load_round_trip_bit_exactly_and_a_corrupt_file_is_named() {
    let model = tiny(json!({ "feed_forward": "gated-gelu", "tie_embeddings": false }));
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let loaded = llmlab_t5::save_load::load(dir.path(), &Context::cpu()).unwrap();
    let ids = Tensor::new(&[[5u32, 9, 1, 4, 6]], &Device::Cpu).unwrap();
    let a = model
        .forward(&ids, &ForwardOptions::default())
        .unwrap()
        .logits;
    let b = loaded
        .forward(&ids, &ForwardOptions::default())
        .unwrap()
        .logits;
    assert_eq!(
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    assert!(model
        .parameters()
        .iter()
        .any(|(n, _)| n == "lm_head.weight"));
    std::fs::write(dir.path().join("model.safetensors"), b"junk").unwrap();
    let err = llmlab_t5::save_load::load(dir.path(), &Context::cpu())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

struct Q8;
impl Quantizer for Q8 {
    fn name(&self) -> &str {
        "q8_0"
    }
    fn quantize(&self, _: &str, weight: &Tensor) -> llmlab_plugin_api::Result<QTensor> {
        Ok(QTensor::quantize(weight, GgmlDType::Q8_0)?)
    }
    fn fake_quantize(&self, weight: &Tensor) -> llmlab_plugin_api::Result<Tensor> {
        Ok(weight.clone())
    }
}

#[test]
fn quantizing_replaces_every_linear_but_keeps_embeddings_and_norms() {
    let model = tiny(json!({ "d_model": 64, "d_kv": 16, "d_ff": 64 }));
    let q = model.quantized(&Q8, &["lm_head".to_string()]).unwrap();
    let names: Vec<String> = q.parameters().into_iter().map(|(n, _)| n).collect();
    assert!(!names
        .iter()
        .any(|n| n.ends_with(".q.weight") || n.contains(".wi.")));
    assert!(names.contains(&"shared.weight".to_string()));
    assert!(names.contains(&"encoder.final_layer_norm.weight".to_string()));
    let ids = Tensor::new(&[[5u32, 9, 3, 1, 4, 6]], &Device::Cpu).unwrap();
    let dense = model
        .forward(&ids, &ForwardOptions::default())
        .unwrap()
        .logits;
    let quant = q.forward(&ids, &ForwardOptions::default()).unwrap().logits;
    let diff = (dense - quant)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 0.0 && diff < 0.1, "q8_0 logits differ by {diff}");
    let out = q
        .generate(&[vec![5, 9]], &greedy(3), &mut |_, _| true)
        .unwrap();
    assert_eq!(out[0].len(), 3);
}

#[test]
fn the_packed_forward_trains_a_copy_task() {
    // Learn target = input through the `input </s> target` rows: loss must fall.
    let model = tiny(json!({ "d_model": 32 }));
    let params: Vec<_> = model.parameters().into_iter().map(|(_, v)| v).collect();
    let mut opt = llmlab_plugin_api::candle_nn::AdamW::new(
        params,
        llmlab_plugin_api::candle_nn::ParamsAdamW {
            lr: 1e-2,
            ..Default::default()
        },
    )
    .unwrap();
    use llmlab_plugin_api::candle_nn::Optimizer;
    let rows: Vec<Vec<u32>> = (0..4)
        .map(|i| {
            let x = vec![3 + i, 10 + i, 20 + i];
            x.iter()
                .chain(&[1])
                .chain(&x)
                .chain(&[1])
                .copied()
                .collect()
        })
        .collect();
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    let ids = Tensor::from_vec(flat, (4, 8), &Device::Cpu).unwrap();
    let inputs = ids.narrow(1, 0, 7).unwrap();
    let targets = ids.narrow(1, 1, 7).unwrap();
    let mut losses = Vec::new();
    for _ in 0..30 {
        let logits = model
            .forward(
                &inputs,
                &ForwardOptions {
                    train: true,
                    hidden_states: false,
                    no_grad: false,
                },
            )
            .unwrap()
            .logits;
        // Positions 3.. (the input's </s> onwards) predict the target.
        let l = logits.narrow(1, 3, 4).unwrap().reshape((16, 40)).unwrap();
        let t = targets.narrow(1, 3, 4).unwrap().flatten_all().unwrap();
        let loss = llmlab_plugin_api::candle_nn::loss::cross_entropy(&l, &t).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.backward_step(&loss).unwrap();
    }
    assert!(
        losses[29] < 0.5 * losses[0],
        "loss did not fall: {losses:?}"
    );
}

/// Logits of `rows` (each `input </s> target`, right-padded with `pad` to the longest) as
/// `[row][position][vocab]`.
fn packed_logits(model: &T5, rows: &[Vec<u32>], pad: u32) -> Vec<Vec<Vec<f32>>> {
    let ids = llmlab_t5::packing::pad_rows(rows, pad, &Device::Cpu).unwrap();
    let options = ForwardOptions {
        train: true,
        hidden_states: false,
        no_grad: false,
    };
    model
        .forward(&ids, &options)
        .unwrap()
        .logits
        .to_vec3()
        .unwrap()
}

#[test]
fn a_batch_of_mixed_input_and_target_lengths_gives_each_row_its_own_logits() {
    // A multitask batch: the input's </s> (id 1) lands at a different position in every row and
    // the targets differ in length too, so every row is padded by a different amount. Training
    // must see each row as if it were alone: the same logits, and non-zero logits exactly at
    // the positions that predict the target and its </s> (the input's </s> onwards).
    let model = tiny(json!({ "feed_forward": "gated-gelu" }));
    let row = |input: &[u32], target: &[u32]| -> (Vec<u32>, usize) {
        // What the trainers feed: `input </s> target </s>` without its last token.
        let mut r: Vec<u32> = input.to_vec();
        r.push(1);
        r.extend_from_slice(target);
        (r, input.len())
    };
    let rows = [
        row(&[5, 9], &[12, 13, 14, 15, 16, 17, 18]),
        row(&[5, 9, 3, 30, 2, 7, 8, 21, 22, 23, 24, 25], &[33]),
        row(&[7, 8, 9, 10, 11, 6], &[20, 21, 22]),
        row(&[4], &[]),
    ];
    let ids: Vec<Vec<u32>> = rows.iter().map(|(r, _)| r.clone()).collect();
    // Padding with the pad id (the seq2seq trainer with a tokenizer that has one) and with
    // end-of-text (one without).
    for pad in [0, 1] {
        let batched = packed_logits(&model, &ids, pad);
        for (r, (ids, eos_at)) in rows.iter().enumerate() {
            let alone = packed_logits(&model, std::slice::from_ref(ids), pad);
            for (p, logits) in alone[0].iter().enumerate() {
                let diff = logits
                    .iter()
                    .zip(&batched[r][p])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff < 1e-5,
                    "pad {pad}, row {r}, position {p}: batched and alone differ by {diff}"
                );
                let predicts = logits.iter().any(|&x| x != 0.0);
                assert_eq!(
                    predicts,
                    p >= *eos_at,
                    "pad {pad}, row {r}, position {p}: logits {} but the input's </s> is at {eos_at}",
                    if predicts { "non-zero" } else { "zero" }
                );
            }
        }
    }
}
