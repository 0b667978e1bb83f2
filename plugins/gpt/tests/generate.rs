//! Decoding: the KV cache changes nothing but speed; greedy, sampling and beam search are
//! deterministic and agree where they must; batches equal single prompts; limits are clear.

mod common;

use common::{ids, max_abs_diff, option_sets, tiny};
use llmlab_gpt::decoder::generate_uncached;
use llmlab_nn::sampling::log_softmax;
use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::serde_json::json;
use llmlab_plugin_api::{ForwardOptions, GenerateOptions, KvCache, Model};

fn greedy(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        temperature: 0.0,
        ..GenerateOptions::default()
    }
}

fn gen(model: &dyn Model, prompts: &[Vec<u32>], options: &GenerateOptions) -> Vec<Vec<u32>> {
    model.generate(prompts, options, &mut |_, _| true).unwrap()
}

#[test]
fn cached_logits_equal_full_sequence_logits() {
    let seq: [u32; 12] = [1, 7, 3, 22, 9, 41, 0, 5, 5, 17, 30, 2];
    for extra in option_sets() {
        let model = tiny(extra.clone());
        let full = model
            .forward(&ids(&[&seq]), &ForwardOptions::default())
            .unwrap()
            .logits;
        let mut cache = model.new_cache(1).unwrap();
        // A 5-token prompt, single tokens, then a chunk of 3, then single tokens.
        let mut pieces = Vec::new();
        for (start, len) in [(0, 5), (5, 1), (6, 1), (7, 3), (10, 1), (11, 1)] {
            let out = model
                .forward_cached(&ids(&[&seq[start..start + len]]), cache.as_mut())
                .unwrap();
            pieces.push(out.logits);
        }
        assert_eq!(cache.seq_len(), 12);
        let cached = Tensor::cat(&pieces, 1).unwrap();
        let diff = max_abs_diff(&full, &cached);
        assert!(diff < 1e-5, "{extra}: cached logits differ by {diff}");
    }
}

#[test]
fn greedy_is_deterministic_and_equals_uncached_decoding() {
    for extra in option_sets() {
        let model = tiny(extra.clone());
        let prompt = vec![3u32, 14, 15, 9];
        let a = gen(&model, std::slice::from_ref(&prompt), &greedy(12));
        let b = gen(&model, std::slice::from_ref(&prompt), &greedy(12));
        assert_eq!(a, b, "{extra}");
        assert_eq!(a[0].len(), 12);
        assert_eq!(
            a[0],
            generate_uncached(&model, &prompt, 12).unwrap(),
            "{extra}"
        );
    }
}

#[test]
fn one_beam_equals_greedy() {
    for extra in option_sets() {
        let model = tiny(extra.clone());
        let prompt = vec![8u32, 1, 2];
        let beam = GenerateOptions {
            num_beams: 1,
            length_penalty: 0.7,
            ..greedy(10)
        };
        // num_beams = 1 is the sampling path; force the beam code with the module directly.
        let via_beam =
            llmlab_nn::beam::beam_search(&model, 0, &prompt, &beam, &mut |_, _| true).unwrap();
        assert_eq!(
            via_beam,
            gen(&model, std::slice::from_ref(&prompt), &greedy(10))[0],
            "{extra}"
        );
        // ... also with a stop token and a repetition penalty in play.
        let first = gen(&model, std::slice::from_ref(&prompt), &greedy(10))[0][3];
        let opts = GenerateOptions {
            stop_tokens: vec![first],
            repetition_penalty: 1.3,
            ..greedy(10)
        };
        let via_beam =
            llmlab_nn::beam::beam_search(&model, 0, &prompt, &opts, &mut |_, _| true).unwrap();
        assert_eq!(
            via_beam,
            gen(&model, std::slice::from_ref(&prompt), &opts)[0],
            "{extra}"
        );
    }
}

#[test]
fn wide_beam_finds_the_most_likely_continuation() {
    // vocab 6, two new tokens: 16 beams keep every one of the 36 sequences' prefixes, so the
    // search is exhaustive and must return the argmax of the summed log-probability.
    let model = tiny(json!({ "vocab_size": 6 }));
    let prompt = vec![1u32, 2, 3];
    let opts = GenerateOptions {
        num_beams: 16,
        length_penalty: 0.0,
        ..greedy(2)
    };
    let best = gen(&model, std::slice::from_ref(&prompt), &opts)[0].clone();
    let logp = |seq: &[u32]| -> f64 {
        let mut total = 0.0;
        for n in 0..seq.len() {
            let mut input = prompt.clone();
            input.extend_from_slice(&seq[..n]);
            let logits = model
                .forward(&ids(&[&input]), &ForwardOptions::default())
                .unwrap()
                .logits;
            let row: Vec<f32> = logits
                .get(0)
                .unwrap()
                .get(input.len() - 1)
                .unwrap()
                .to_vec1()
                .unwrap();
            total += log_softmax(&row)[seq[n] as usize];
        }
        total
    };
    let mut exhaustive = (vec![0, 0], f64::NEG_INFINITY);
    for a in 0..6u32 {
        for b in 0..6u32 {
            let s = logp(&[a, b]);
            if s > exhaustive.1 {
                exhaustive = (vec![a, b], s);
            }
        }
    }
    assert_eq!(best, exhaustive.0);
    assert!((logp(&best) - exhaustive.1).abs() < 1e-9);
}

#[test]
fn row_seeds_give_each_row_its_own_draws() {
    let model = tiny(json!({ "pos": "rope" }));
    let opts = |row_seeds: Vec<u64>| GenerateOptions {
        max_tokens: 20,
        temperature: 1.5,
        seed: 1,
        row_seeds,
        ..GenerateOptions::default()
    };
    let same = vec![vec![5u32, 6]; 2];
    // One seed for all rows: copies of a prompt sample the same text.
    let shared = gen(&model, &same, &opts(Vec::new()));
    assert_eq!(shared[0], shared[1]);
    let own = gen(&model, &same, &opts(vec![1, 2]));
    assert_ne!(own[0], own[1]);
    // A row's text depends only on its own seed: row 0 (seed 1) is the shared-seed text, row 1
    // is what seed 2 gives alone.
    assert_eq!(own[0], shared[0]);
    assert_eq!(own[1], gen(&model, &same[..1], &opts(vec![2]))[0]);
}

#[test]
fn row_seeds_of_the_wrong_length_are_refused() {
    let model = tiny(json!({ "pos": "rope" }));
    let options = GenerateOptions {
        max_tokens: 4,
        row_seeds: vec![1, 2, 3],
        ..GenerateOptions::default()
    };
    let error = model
        .generate(&[vec![5u32, 6], vec![7]], &options, &mut |_, _| true)
        .expect_err("3 seeds for 2 prompts must be refused")
        .to_string();
    assert!(
        error.contains("row_seeds has 3 seeds for 2 prompts"),
        "{error}"
    );
}

#[test]
fn seeded_sampling_is_reproducible_and_seeds_differ() {
    let model = tiny(json!({ "pos": "rope" }));
    let opts = |seed| GenerateOptions {
        max_tokens: 20,
        temperature: 1.5,
        top_k: 30,
        top_p: 0.95,
        seed,
        ..GenerateOptions::default()
    };
    let prompt = vec![vec![5u32, 6]];
    assert_eq!(
        gen(&model, &prompt, &opts(1)),
        gen(&model, &prompt, &opts(1))
    );
    assert_ne!(
        gen(&model, &prompt, &opts(1)),
        gen(&model, &prompt, &opts(2))
    );
    // top_k 1 is greedy at any temperature.
    let k1 = GenerateOptions {
        top_k: 1,
        ..opts(9)
    };
    assert_eq!(gen(&model, &prompt, &k1), gen(&model, &prompt, &greedy(20)));
}

#[test]
fn batched_prompts_of_different_lengths_equal_single_prompts() {
    for extra in option_sets() {
        let model = tiny(extra.clone());
        let prompts = vec![vec![1u32, 2, 3, 4, 5, 6, 7], vec![9u32], vec![30u32, 31, 2]];
        for options in [
            greedy(8),
            GenerateOptions {
                max_tokens: 8,
                temperature: 0.9,
                top_p: 0.9,
                seed: 4,
                ..GenerateOptions::default()
            },
        ] {
            let batch = gen(&model, &prompts, &options);
            for (i, p) in prompts.iter().enumerate() {
                assert_eq!(
                    batch[i],
                    gen(&model, std::slice::from_ref(p), &options)[0],
                    "{extra} prompt {i}"
                );
            }
        }
    }
}

#[test]
fn stop_tokens_and_callbacks_end_a_sequence() {
    let model = tiny(json!({}));
    let prompt = vec![vec![4u32, 4, 2]];
    let free = gen(&model, &prompt, &greedy(10))[0].clone();
    let stop = GenerateOptions {
        stop_tokens: vec![free[3]],
        ..greedy(10)
    };
    let cut = gen(&model, &prompt, &stop)[0].clone();
    let first_stop = free.iter().position(|t| *t == free[3]).unwrap();
    assert_eq!(
        cut,
        free[..first_stop].to_vec(),
        "stop token ends it, and is not included"
    );

    let mut seen = Vec::new();
    let out = model
        .generate(&prompt, &greedy(10), &mut |row, token| {
            seen.push((row, token));
            seen.len() < 4
        })
        .unwrap();
    assert_eq!(
        out[0],
        free[..4].to_vec(),
        "on_token returning false stops after that token"
    );
    assert_eq!(
        seen.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
        free[..4].to_vec()
    );
}

#[test]
fn repetition_penalty_discourages_repeats() {
    let model = tiny(json!({ "vocab_size": 12 }));
    let distinct = |opts: &GenerateOptions| {
        let mut out = gen(&model, &[vec![1u32]], opts)[0].clone();
        out.sort();
        out.dedup();
        out.len()
    };
    let plain = distinct(&greedy(11));
    let penalised = distinct(&GenerateOptions {
        repetition_penalty: 50.0,
        ..greedy(11)
    });
    assert!(penalised > plain, "penalised {penalised} vs plain {plain}");
}

#[test]
fn long_prompts_are_refused_or_truncated() {
    let model = tiny(json!({}));
    let long: Vec<u32> = (0..40).map(|i| i % 48).collect();
    let e = model
        .generate(std::slice::from_ref(&long), &greedy(8), &mut |_, _| true)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("40 tokens") && e.contains("truncate_prompt"),
        "{e}"
    );
    let opts = GenerateOptions {
        truncate_prompt: true,
        ..greedy(8)
    };
    let out = gen(&model, std::slice::from_ref(&long), &opts);
    assert_eq!(out[0], gen(&model, &[long[16..].to_vec()], &greedy(8))[0]);
    let e = model
        .generate(&[vec![1]], &greedy(32), &mut |_, _| true)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("max_tokens (32)") && e.contains("ctx (32)"),
        "{e}"
    );
    let e = model
        .generate(&[vec![]], &greedy(4), &mut |_, _| true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("prompt 0 is empty"), "{e}");
    let e = model
        .generate(&[vec![100]], &greedy(4), &mut |_, _| true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("token id 100"), "{e}");
}

/// Continuous batching: `decode_step` over sequences of different lengths, joining and leaving
/// between steps, gives each sequence the logits it gets decoding alone, and leaves each cache
/// as long as decoding alone does.
#[test]
fn decode_step_batches_sequences_of_different_lengths_like_decoding_each_alone() {
    let prompts: [&[u32]; 4] = [
        &[1, 7, 3],
        &[4, 9, 2, 8, 5, 6, 11],
        &[12, 3, 3, 40, 2],
        &[9, 1],
    ];
    // Which sequences decode at each step: 3 start, the 4th joins, the 2nd finishes, the
    // order changes, and a last step has one sequence left.
    let schedule: [&[usize]; 6] = [
        &[0, 1, 2],
        &[0, 1, 2, 3],
        &[0, 2, 3],
        &[3, 2, 0],
        &[2, 3],
        &[3],
    ];
    let token = |seq: usize, step: usize| ((seq * 11 + step * 7 + 5) % 48) as u32;
    for extra in option_sets() {
        let model = tiny(extra.clone());
        let last = |logits: &Tensor| {
            let t = logits.dim(1).unwrap();
            logits.narrow(1, t - 1, 1).unwrap().squeeze(1).unwrap()
        };
        // Alone: each sequence's logits for its j-th decoded token.
        let alone: Vec<Vec<Tensor>> = (0..prompts.len())
            .map(|s| {
                let mut cache = model.new_cache(1).unwrap();
                model
                    .forward_cached(&ids(&[prompts[s]]), cache.as_mut())
                    .unwrap();
                (0..schedule.len())
                    .map(|j| {
                        let out = model
                            .forward_cached(&ids(&[&[token(s, j)]]), cache.as_mut())
                            .unwrap();
                        last(&out.logits)
                    })
                    .collect()
            })
            .collect();
        let mut caches: Vec<Option<Box<dyn KvCache>>> = (0..prompts.len()).map(|_| None).collect();
        let mut decoded = vec![0usize; prompts.len()];
        for step in schedule {
            for &s in step.iter() {
                if caches[s].is_none() {
                    let mut cache = model.new_cache(1).unwrap();
                    model
                        .forward_cached(&ids(&[prompts[s]]), cache.as_mut())
                        .unwrap();
                    caches[s] = Some(cache);
                }
            }
            let tokens: Vec<u32> = step.iter().map(|&s| token(s, decoded[s])).collect();
            // The step's caches, in the step's order.
            let mut taken: Vec<Box<dyn KvCache>> =
                step.iter().map(|&s| caches[s].take().unwrap()).collect();
            let logits = {
                let mut rows: Vec<&mut dyn KvCache> = Vec::new();
                for cache in taken.iter_mut() {
                    rows.push(cache.as_mut());
                }
                model.decode_step(&tokens, &mut rows).unwrap()
            };
            for (&s, cache) in step.iter().zip(taken) {
                caches[s] = Some(cache);
            }
            assert_eq!(logits.dims(), &[step.len(), 48], "{extra}");
            for (row, &s) in step.iter().enumerate() {
                let diff = max_abs_diff(
                    &logits.get(row).unwrap(),
                    &alone[s][decoded[s]].get(0).unwrap(),
                );
                assert!(
                    diff < 1e-5,
                    "{extra}: sequence {s}, token {}: differs by {diff}",
                    decoded[s]
                );
                decoded[s] += 1;
            }
        }
        for (s, cache) in caches.iter().enumerate() {
            let len = cache.as_ref().unwrap().seq_len();
            assert_eq!(
                len,
                prompts[s].len() + decoded[s],
                "{extra}: sequence {s}'s cache"
            );
            assert!(cache.as_ref().unwrap().memory_bytes() > 0);
        }
    }
}

/// Continuous batching through the persistent batch cache: sequences join (prefilled together,
/// as the server admits them) and leave (the last row moving into the leaver's slot) while the
/// others decode; the storage grows in rows and in columns mid-run and a leaver's slot is reused
/// by a newcomer over its old entries. Every row's logits equal decoding that sequence alone, for
/// the architectures of the other tests and the composed (`kernels: "reference"`) attention.
#[test]
fn decode_batch_decodes_a_changing_batch_in_one_cache_like_decoding_each_alone() {
    // (prompt, step it joins, tokens it decodes): the batch peaks at 6 rows (the storage starts
    // with 4), sequence 0 reaches 19 tokens (16 columns at first), sequence 5 takes the slot
    // sequence 1 left.
    let seqs: [(&[u32], usize, usize); 7] = [
        (&[1, 7, 3], 0, 16),
        (&[4, 9, 2, 8, 5, 6, 11], 0, 3),
        (&[12, 3, 3, 40, 2], 0, 10),
        (&[9, 1], 1, 12),
        (&[5], 2, 6),
        (&[30, 31, 32, 33, 34, 35, 36, 37, 38, 39], 4, 8),
        (&[2, 2], 7, 9),
    ];
    let token = |seq: usize, j: usize| ((seq * 11 + j * 7 + 5) % 48) as u32;
    let mut sets = option_sets();
    sets.push(json!({ "pos": "rope", "n_kv_head": 2, "kernels": "reference" }));
    for extra in sets {
        let model = tiny(extra.clone());
        let alone: Vec<Vec<Tensor>> = seqs
            .iter()
            .enumerate()
            .map(|(s, &(prompt, _, n))| {
                let mut cache = model.new_cache(1).unwrap();
                model
                    .forward_cached(&ids(&[prompt]), cache.as_mut())
                    .unwrap();
                (0..n)
                    .map(|j| {
                        let out = model
                            .forward_cached(&ids(&[&[token(s, j)]]), cache.as_mut())
                            .unwrap();
                        out.logits.get(0).unwrap().get(0).unwrap()
                    })
                    .collect()
            })
            .collect();
        let mut batch = model.new_batch_cache();
        // The sequence in each row, kept aligned with the cache as the scheduler keeps `running`.
        let mut rows: Vec<usize> = Vec::new();
        let mut decoded = vec![0usize; seqs.len()];
        let mut peak_bytes = 0;
        for step in 0.. {
            for row in (0..rows.len()).rev() {
                if decoded[rows[row]] == seqs[rows[row]].2 {
                    rows.swap_remove(row);
                    batch.swap_remove(row).unwrap();
                }
            }
            let joining: Vec<usize> = (0..seqs.len()).filter(|&s| seqs[s].1 == step).collect();
            if !joining.is_empty() {
                let prompts: Vec<Vec<u32>> = joining.iter().map(|&s| seqs[s].0.to_vec()).collect();
                let (caches, _) = model.prefill_sequences(&prompts).unwrap();
                for (&s, cache) in joining.iter().zip(caches) {
                    batch.push(cache).unwrap();
                    rows.push(s);
                }
            }
            if rows.is_empty() {
                break;
            }
            assert_eq!(batch.rows(), rows.len(), "{extra}");
            let tokens: Vec<u32> = rows.iter().map(|&s| token(s, decoded[s])).collect();
            let logits = model.decode_batch(&tokens, batch.as_mut()).unwrap();
            assert_eq!(logits.dims(), &[rows.len(), 48], "{extra}");
            for (row, &s) in rows.iter().enumerate() {
                let diff = max_abs_diff(&logits.get(row).unwrap(), &alone[s][decoded[s]]);
                assert!(
                    diff < 1e-5,
                    "{extra}: step {step}, sequence {s} (row {row}), token {}: differs by {diff}",
                    decoded[s]
                );
                decoded[s] += 1;
                assert_eq!(
                    batch.seq_len(row),
                    seqs[s].0.len() + decoded[s],
                    "{extra}: sequence {s}'s row"
                );
            }
            peak_bytes = peak_bytes.max(batch.memory_bytes());
        }
        assert_eq!(
            decoded,
            seqs.iter().map(|s| s.2).collect::<Vec<_>>(),
            "{extra}"
        );
        // 6 rows of 19 tokens at the peak, 2 layers of keys and values, f32.
        let kv_width = 32 / 4 * extra["n_kv_head"].as_u64().unwrap_or(4) as usize;
        assert!(
            peak_bytes >= 6 * 19 * 2 * 2 * kv_width * 4,
            "{extra}: {peak_bytes}"
        );
    }
}

#[test]
fn decode_batch_refuses_mismatched_tokens_and_foreign_batch_caches() {
    let model = tiny(json!({}));
    let mut batch = model.new_batch_cache();
    let (caches, _) = model.prefill_sequences(&[vec![1, 2]]).unwrap();
    for cache in caches {
        batch.push(cache).unwrap();
    }
    let e = model
        .decode_batch(&[1, 2], batch.as_mut())
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 tokens for a batch of 1"), "{e}");
    let mut foreign = llmlab_plugin_api::model::SequenceCaches::default();
    let e = model
        .decode_batch(&[1], &mut foreign)
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch cache of new_batch_cache"), "{e}");
    let e = batch.swap_remove(3).unwrap_err().to_string();
    assert!(e.contains("no row 3 in 1 rows"), "{e}");
}

#[test]
fn decode_step_refuses_mismatched_tokens_and_foreign_caches() {
    let model = tiny(json!({}));
    let mut cache = model.new_cache(1).unwrap();
    model
        .forward_cached(&ids(&[&[1, 2]]), cache.as_mut())
        .unwrap();
    let e = model
        .decode_step(&[1, 2], &mut [cache.as_mut()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 tokens for 1 caches"), "{e}");
}

/// Continuous batching's prefill: prompts of different lengths prefilled as one padded batch give
/// each prompt the next-token logits and the cache prefilling it alone gives, and decoding then
/// continues from those caches exactly as from the lone ones.
#[test]
fn prefill_sequences_batches_prompts_like_prefilling_each_alone() {
    let prompts: Vec<Vec<u32>> = vec![
        vec![1, 7, 3],
        vec![4, 9, 2, 8, 5, 6, 11],
        vec![9],
        vec![12, 3, 3, 40, 2],
    ];
    for extra in option_sets() {
        let model = tiny(extra.clone());
        let (mut batched, logits) = model.prefill_sequences(&prompts).unwrap();
        assert_eq!(logits.dims(), &[prompts.len(), 48], "{extra}");
        assert_eq!(batched.len(), prompts.len());
        let next: Vec<u32> = (0..prompts.len()).map(|s| (s * 13 + 2) as u32).collect();
        let stepped = {
            let mut rows: Vec<&mut dyn KvCache> = Vec::new();
            for cache in batched.iter_mut() {
                rows.push(cache.as_mut());
            }
            model.decode_step(&next, &mut rows).unwrap()
        };
        for (s, prompt) in prompts.iter().enumerate() {
            let mut alone = model.new_cache(1).unwrap();
            let out = model
                .forward_cached(&ids(&[prompt.as_slice()]), alone.as_mut())
                .unwrap();
            let first = out.logits.get(0).unwrap().get(prompt.len() - 1).unwrap();
            let diff = max_abs_diff(&logits.get(s).unwrap(), &first);
            assert!(
                diff < 1e-5,
                "{extra}: prompt {s}'s prefill differs by {diff}"
            );
            assert_eq!(
                batched[s].seq_len(),
                prompt.len() + 1,
                "{extra}: prompt {s}'s cache"
            );
            let out = model
                .forward_cached(&ids(&[&[next[s]]]), alone.as_mut())
                .unwrap();
            let diff = max_abs_diff(
                &stepped.get(s).unwrap(),
                &out.logits.get(0).unwrap().get(0).unwrap(),
            );
            assert!(
                diff < 1e-5,
                "{extra}: prompt {s}'s next step differs by {diff}"
            );
            assert_eq!(batched[s].memory_bytes(), alone.memory_bytes(), "{extra}");
        }
    }
    let e = tiny(json!({}))
        .prefill_sequences(&[vec![1], vec![]])
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("none of them empty"), "{e}");
}

/// q8_0 through candle, as the quant plugin's schemes do.
struct Q8;
impl llmlab_plugin_api::Quantizer for Q8 {
    fn name(&self) -> &str {
        "q8_0"
    }
    fn quantize(
        &self,
        _: &str,
        weight: &Tensor,
    ) -> llmlab_plugin_api::Result<llmlab_plugin_api::candle::quantized::QTensor> {
        use llmlab_plugin_api::candle::quantized::{GgmlDType, QTensor};
        Ok(QTensor::quantize(weight, GgmlDType::Q8_0)?)
    }
    fn fake_quantize(&self, weight: &Tensor) -> llmlab_plugin_api::Result<Tensor> {
        Ok(weight.clone())
    }
}

/// Generation's cache is sized once for the longest prompt and the new tokens and written in
/// place: a long greedy run of a left-padded batch gives each row exactly the uncached
/// reference's tokens, and stepping the decoder by hand never grows the storage it made.
#[test]
fn long_padded_batches_decode_in_a_preallocated_cache_like_the_uncached_reference() {
    let models: Vec<(String, llmlab_gpt::Gpt)> = option_sets()
        .into_iter()
        .map(|extra| (extra.to_string(), tiny(extra)))
        .chain([(
            "q8_0".to_string(),
            llmlab_gpt::quantize::quantized(&tiny(json!({})), &Q8, &[]).unwrap(),
        )])
        .collect();
    for (name, model) in &models {
        decodes_in_place_like_uncached(name, model, model);
    }
    let adapted = tiny(json!({ "pos": "rope", "n_kv_head": 2 }));
    adapted
        .set_lora(Some(&json!({ "rank": 2, "targets": ["c_attn", "c_fc"] })))
        .unwrap();
    // An adapted model generates through its twin (base and adapters as one model).
    let lora = adapted.lora().unwrap();
    decodes_in_place_like_uncached("lora", &adapted, &lora.twin);
}

/// [`long_padded_batches_decode_in_a_preallocated_cache_like_the_uncached_reference`] for
/// `model`, which `Model::generate`s through `decoder`.
fn decodes_in_place_like_uncached(name: &str, model: &dyn Model, decoder: &llmlab_gpt::Gpt) {
    use llmlab_nn::generate::Decoder;
    use llmlab_nn::sampling::argmax;

    let prompts = vec![
        vec![5u32, 9, 2, 40, 7, 7, 1],
        vec![11u32],
        vec![3u32, 30, 12],
    ];
    // ctx 32: the longest prompt and 24 new tokens fill 31 positions.
    let (longest, max_tokens) = (7, 24);
    let out = gen(model, &prompts, &greedy(max_tokens));
    for (i, p) in prompts.iter().enumerate() {
        assert_eq!(out[i].len(), max_tokens, "{name} row {i}");
        assert_eq!(
            out[i],
            generate_uncached(decoder, p, max_tokens).unwrap(),
            "{name} row {i}"
        );
    }
    let (mut cache, mut logits) = decoder.prefill_with_room(&prompts, max_tokens - 1).unwrap();
    assert!(cache.is_preallocated());
    let size = (cache.capacity(), KvCache::memory_bytes(&cache));
    assert_eq!(size.0, (3, longest + max_tokens - 1), "{name}");
    let mut greedy_rows = vec![Vec::new(); 3];
    for step in 0..max_tokens {
        let next: Vec<u32> = logits
            .to_vec2::<f32>()
            .unwrap()
            .iter()
            .map(|row| argmax(row))
            .collect();
        for (row, &t) in greedy_rows.iter_mut().zip(&next) {
            row.push(t);
        }
        if step + 1 == max_tokens {
            break;
        }
        let ids = Tensor::from_vec(next, (3, 1), &llmlab_plugin_api::candle::Device::Cpu).unwrap();
        logits = Decoder::step(decoder, &ids, &mut cache).unwrap();
        assert_eq!(
            (cache.capacity(), KvCache::memory_bytes(&cache)),
            size,
            "{name}: step {step} grew the cache"
        );
    }
    assert_eq!(cache.seq_len(), longest + max_tokens - 1);
    assert_eq!(greedy_rows, out, "{name}");
}

/// q4_0 through candle, as the quant plugin's q4_0 scheme does.
struct Q4;
impl llmlab_plugin_api::Quantizer for Q4 {
    fn name(&self) -> &str {
        "q4_0"
    }
    fn quantize(
        &self,
        _: &str,
        weight: &Tensor,
    ) -> llmlab_plugin_api::Result<llmlab_plugin_api::candle::quantized::QTensor> {
        use llmlab_plugin_api::candle::quantized::{GgmlDType, QTensor};
        Ok(QTensor::quantize(weight, GgmlDType::Q4_0)?)
    }
    fn fake_quantize(&self, weight: &Tensor) -> llmlab_plugin_api::Result<Tensor> {
        Ok(weight.clone())
    }
}

/// A q4_0 model's products run `ops::quant_rows` at every row count (decoding's few rows and a
/// padded batch's prefill alike), with `QMatMul`'s numbers: continuous batching of 16 sequences
/// gives every row the logits decoding that sequence alone gives, bit for bit, and greedy
/// generation of a padded batch equals the uncached reference's tokens.
#[test]
fn q4_0_batched_decoding_gives_each_sequence_the_bits_it_gets_alone() {
    let extras = [
        json!({}),
        // Not swiglu: its hidden width (88) is no multiple of the q4_0 block.
        json!({ "norm": "rms", "pos": "rope", "n_kv_head": 2, "bias": false }),
    ];
    // Prompts of 1..=20 tokens: prefilled alone (1..=20 rows) and padded together (16 × 20).
    let prompts: Vec<Vec<u32>> = (0..16)
        .map(|s| {
            (0..1 + (s * 5) % 20)
                .map(|j| ((s * 7 + j * 3 + 1) % 48) as u32)
                .collect()
        })
        .collect();
    let steps = 6;
    let token = |s: usize, j: usize| ((s * 11 + j * 7 + 5) % 48) as u32;
    for extra in extras {
        let model = llmlab_gpt::quantize::quantized(&tiny(extra.clone()), &Q4, &[]).unwrap();
        let alone: Vec<Vec<Vec<f32>>> = prompts
            .iter()
            .enumerate()
            .map(|(s, prompt)| {
                let mut cache = model.new_cache(1).unwrap();
                model
                    .forward_cached(&ids(&[prompt.as_slice()]), cache.as_mut())
                    .unwrap();
                (0..steps)
                    .map(|j| {
                        let out = model
                            .forward_cached(&ids(&[&[token(s, j)]]), cache.as_mut())
                            .unwrap();
                        out.logits.flatten_all().unwrap().to_vec1().unwrap()
                    })
                    .collect()
            })
            .collect();
        let mut batch = model.new_batch_cache();
        let (caches, _) = model.prefill_sequences(&prompts).unwrap();
        for cache in caches {
            batch.push(cache).unwrap();
        }
        for j in 0..steps {
            let tokens: Vec<u32> = (0..prompts.len()).map(|s| token(s, j)).collect();
            let logits: Vec<Vec<f32>> = model
                .decode_batch(&tokens, batch.as_mut())
                .unwrap()
                .to_vec2()
                .unwrap();
            for (s, row) in logits.iter().enumerate() {
                assert_eq!(
                    Some(row),
                    alone[s].get(j),
                    "{extra}: sequence {s}, step {j}: batched logits differ from alone"
                );
            }
        }
        decodes_in_place_like_uncached(&format!("q4_0 {extra}"), &model, &model);
    }
}
