//! Beam search: keep the `num_beams` best partial continuations by summed log-probability; a
//! beam that emits a stop token is finished with score `sum_logprob / length^length_penalty`
//! (length = generated tokens, as in Hugging Face); search ends when `num_beams` beams have
//! finished or at `max_tokens`, and the best-scoring finished beam wins.
//!
//! Sampling options (temperature, top-k, top-p) do not apply; the repetition penalty does, on
//! the logits before the log-softmax, so that one beam is exactly greedy decoding.
//! Tokens reach `on_token` once the search is over (beams change until then).

use llmlab_plugin_api::candle::Tensor;
use llmlab_plugin_api::{GenerateOptions, Result};

use crate::generate::{check_cancelled, Decoder};
use crate::sampling::{apply_repetition_penalty, log_softmax};

struct Beam {
    tokens: Vec<u32>,
    logprob: f64,
}

fn normalised(logprob: f64, len: usize, length_penalty: f64) -> f64 {
    logprob / (len.max(1) as f64).powf(length_penalty)
}

/// Beam search for one prompt (`index` is its place in the batch, for `on_token`).
pub fn beam_search<D: Decoder + ?Sized>(
    model: &D,
    index: usize,
    prompt: &[u32],
    options: &GenerateOptions,
    on_token: &mut dyn FnMut(usize, u32) -> bool,
) -> Result<Vec<u32>> {
    let n = options.num_beams;
    let device = model.device();
    model.check_beams(n)?;
    let (mut cache, mut logits) =
        model.prefill_with_room(&[prompt.to_vec()], options.max_tokens.saturating_sub(1))?;
    // The prompt counts for the repetition penalty only where it is part of the sequence.
    let context: &[u32] = if model.prompt_in_context() {
        prompt
    } else {
        &[]
    };
    let mut beams = vec![Beam {
        tokens: Vec::new(),
        logprob: 0.0,
    }];
    let mut finished: Vec<(Vec<u32>, f64)> = Vec::new();
    for step in 0..options.max_tokens {
        check_cancelled(model)?;
        let rows: Vec<Vec<f32>> = logits.to_vec2()?;
        // (score, beam, token), best first; 2n candidates leave n even if n of them stop.
        let mut candidates: Vec<(f64, usize, u32)> = Vec::new();
        for (b, mut row) in rows.into_iter().enumerate() {
            let seen: Vec<u32> = context.iter().chain(&beams[b].tokens).copied().collect();
            apply_repetition_penalty(&mut row, &seen, options.repetition_penalty);
            let lp = log_softmax(&row);
            let mut order: Vec<usize> = (0..lp.len()).collect();
            let keep = (2 * n).min(lp.len());
            order
                .select_nth_unstable_by(keep - 1, |&x, &y| lp[y].total_cmp(&lp[x]).then(x.cmp(&y)));
            candidates.extend(
                order[..keep]
                    .iter()
                    .map(|&t| (beams[b].logprob + lp[t], b, t as u32)),
            );
        }
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut next = Vec::with_capacity(n);
        let mut parents = Vec::with_capacity(n);
        for (score, b, token) in candidates {
            if next.len() == n {
                break;
            }
            if options.stop_tokens.contains(&token) {
                let tokens = beams[b].tokens.clone();
                let len = tokens.len();
                finished.push((tokens, normalised(score, len, options.length_penalty)));
                continue;
            }
            let mut tokens = beams[b].tokens.clone();
            tokens.push(token);
            next.push(Beam {
                tokens,
                logprob: score,
            });
            parents.push(b as u32);
        }
        if finished.len() >= n {
            break;
        }
        beams = next;
        if step + 1 == options.max_tokens {
            break;
        }
        model.select_rows(&mut cache, &parents)?;
        let last: Vec<u32> = beams
            .iter()
            .map(|b| *b.tokens.last().unwrap_or(&0))
            .collect();
        let k = last.len();
        logits = model.step(&Tensor::from_vec(last, (k, 1), device)?, &mut cache)?;
    }
    if finished.len() < n {
        for beam in &beams {
            let len = beam.tokens.len();
            finished.push((
                beam.tokens.clone(),
                normalised(beam.logprob, len, options.length_penalty),
            ));
        }
    }
    let best = finished
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(tokens, _)| tokens)
        .unwrap_or_default();
    let mut output = Vec::with_capacity(best.len());
    for token in best {
        output.push(token);
        if !on_token(index, token) {
            break;
        }
    }
    Ok(output)
}
