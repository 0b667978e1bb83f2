//! The model calls behind every output type, batched: log-likelihoods of continuations (with
//! whether greedy decoding would have produced them), rolling log-likelihoods of whole documents
//! in windows of the model's context, and generation until a stop sequence. Between batches the
//! cancel flag (Ctrl-C) is polled.

use llmlab_plugin_api::candle::{DType, Tensor, D};
use llmlab_plugin_api::candle_nn::ops::log_softmax;
use llmlab_plugin_api::{
    CancelFlag, Error, ForwardOptions, GenerateOptions, Model, Result, SpecialToken, Tokenizer,
};

/// Log-likelihood of `continuation` ids after `context` ids.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Likelihood {
    pub ll: f64,
    pub is_greedy: bool,
    pub tokens: usize,
}

/// A model and its tokenizer, and how many rows go into one forward pass.
pub struct Lm<'a> {
    pub model: &'a dyn Model,
    pub tokenizer: &'a dyn Tokenizer,
    pub batch: usize,
    pub cancel: &'a CancelFlag,
}

impl Lm<'_> {
    fn check_cancel(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }

    /// The end-of-text id: what an empty context starts from.
    pub fn end_of_text(&self) -> Result<u32> {
        self.tokenizer.end_of_text()
    }

    /// Log-likelihoods of `(context, continuation)` texts.
    pub fn loglikelihood(&self, pairs: &[(String, String)]) -> Result<Vec<Likelihood>> {
        let eot = self.end_of_text()?;
        let ids = pairs
            .iter()
            .map(|(context, continuation)| {
                let mut c = self.encode(context)?;
                if c.is_empty() {
                    c.push(eot);
                }
                Ok((c, self.encode(continuation)?))
            })
            .collect::<Result<Vec<_>>>()?;
        self.loglikelihood_ids(&ids)
    }

    /// Log-likelihoods of `(context, continuation)` id lists (context non-empty). Too long rows
    /// lose context tokens from the left; a continuation longer than the context window is an
    /// error.
    pub fn loglikelihood_ids(&self, pairs: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<Likelihood>> {
        let window = self.model.ctx_len();
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(self.batch.max(1)) {
            self.check_cancel()?;
            // Row r: the model reads `inputs[r]` and predicts its continuation at `starts[r]..`.
            let mut rows = Vec::new();
            for (context, continuation) in chunk {
                if continuation.is_empty() {
                    return Err(Error::Data("loglikelihood: an empty continuation".into()));
                }
                if continuation.len() > window {
                    return Err(Error::Data(format!(
                        "loglikelihood: a continuation of {} tokens is longer than the model's context ({window})",
                        continuation.len()
                    )));
                }
                let mut ids: Vec<u32> = context.iter().chain(continuation).copied().collect();
                ids.pop(); // the last token is only predicted
                let cut = ids.len().saturating_sub(window);
                let ids = ids[cut..].to_vec();
                let start = ids.len() - continuation.len();
                rows.push((ids, start, continuation));
            }
            let len = rows.iter().map(|(ids, ..)| ids.len()).max().unwrap_or(1);
            // Right padding: a causal model's earlier positions never see it.
            let flat: Vec<u32> = rows
                .iter()
                .flat_map(|(ids, ..)| ids.iter().copied().chain(std::iter::repeat(0)).take(len))
                .collect();
            let input = Tensor::from_vec(flat, (rows.len(), len), self.model.device())?;
            let logits = self
                .model
                .forward(&input, &ForwardOptions::inference())?
                .logits
                .to_dtype(DType::F32)?;
            for (r, (_, start, continuation)) in rows.iter().enumerate() {
                let span = logits.get(r)?.narrow(0, *start, continuation.len())?;
                let logp = log_softmax(&span, D::Minus1)?;
                let greedy: Vec<u32> = span.argmax(D::Minus1)?.to_vec1()?;
                let logp: Vec<Vec<f32>> = logp.to_vec2()?;
                let ll = continuation
                    .iter()
                    .zip(&logp)
                    .map(|(&t, row)| row[t as usize] as f64)
                    .sum();
                out.push(Likelihood {
                    ll,
                    is_greedy: greedy.as_slice() == continuation.as_slice(),
                    tokens: continuation.len(),
                });
            }
        }
        Ok(out)
    }

    /// Log-likelihood of each whole text: its tokens in disjoint windows of the model's context,
    /// each window read after the token before it (end-of-text before the first), as
    /// lm-evaluation-harness's rolling windows with a context of one token.
    pub fn loglikelihood_rolling(&self, texts: &[String]) -> Result<Vec<Likelihood>> {
        let eot = self.end_of_text()?;
        let window = self.model.ctx_len();
        let mut pairs = Vec::new();
        let mut owner = Vec::new();
        for (d, text) in texts.iter().enumerate() {
            let ids = self.encode(text)?;
            for start in (0..ids.len()).step_by(window) {
                let before = if start == 0 { eot } else { ids[start - 1] };
                let end = (start + window).min(ids.len());
                pairs.push((vec![before], ids[start..end].to_vec()));
                owner.push(d);
            }
        }
        let parts = self.loglikelihood_ids(&pairs)?;
        let mut totals = vec![
            Likelihood {
                ll: 0.0,
                is_greedy: true,
                tokens: 0
            };
            texts.len()
        ];
        for (part, d) in parts.into_iter().zip(owner) {
            totals[d].ll += part.ll;
            totals[d].tokens += part.tokens;
            totals[d].is_greedy &= part.is_greedy;
        }
        Ok(totals)
    }

    /// Continues each prompt `repeats` times (row `j` of prompt `i` seeded `seed + i·repeats + j`),
    /// stopping at end-of-text, at a stop string (the text is cut before it) or at `max_tokens`.
    /// Returns `repeats` texts per prompt, prompt-major.
    pub fn generate(
        &self,
        prompts: &[String],
        repeats: usize,
        stop: &[String],
        max_tokens: usize,
        temperature: f64,
        seed: u64,
    ) -> Result<Vec<Vec<String>>> {
        let eot = self.tokenizer.special_token(SpecialToken::EndOfText);
        let mut jobs = Vec::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let mut ids = self.encode(prompt)?;
            if ids.is_empty() {
                ids.extend(eot);
            }
            for j in 0..repeats {
                jobs.push((i, ids.clone(), seed.wrapping_add((i * repeats + j) as u64)));
            }
        }
        let mut out = vec![Vec::with_capacity(repeats); prompts.len()];
        for chunk in jobs.chunks(self.batch.max(1)) {
            self.check_cancel()?;
            let options = GenerateOptions {
                max_tokens,
                temperature,
                stop_tokens: eot.into_iter().collect(),
                seed,
                row_seeds: chunk.iter().map(|(_, _, s)| *s).collect(),
                truncate_prompt: true,
                ..GenerateOptions::default()
            };
            let rows: Vec<Vec<u32>> = chunk.iter().map(|(_, ids, _)| ids.clone()).collect();
            let mut texts: Vec<(Vec<u32>, String, bool)> =
                vec![(Vec::new(), String::new(), false); rows.len()];
            let tok = self.tokenizer;
            let mut on_token = |row: usize, token: u32| -> bool {
                let Some((ids, text, stopped)) = texts.get_mut(row) else {
                    return false;
                };
                ids.push(token);
                if let Ok(decoded) = tok.decode(ids) {
                    *text = decoded;
                }
                *stopped = stop
                    .iter()
                    .any(|s| !s.is_empty() && text.contains(s.as_str()));
                !*stopped && !self.cancel.is_cancelled()
            };
            self.model.generate(&rows, &options, &mut on_token)?;
            self.check_cancel()?;
            for ((i, ..), (_, text, _)) in chunk.iter().zip(texts) {
                out[*i].push(cut_at_stop(&text, stop).to_string());
            }
        }
        Ok(out)
    }
}

/// `text` before the first of the stop strings.
pub fn cut_at_stop<'t>(text: &'t str, stop: &[String]) -> &'t str {
    let cut = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    &text[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_cut_at_the_first() {
        let stop = vec!["\n".to_string(), "def ".to_string()];
        assert_eq!(cut_at_stop("x + 1\ndef g", &stop), "x + 1");
        assert_eq!(cut_at_stop("abc", &stop), "abc");
        assert_eq!(cut_at_stop("abc", &[String::new()]), "abc");
    }
}
