//! The generation engine on two small [`Decoder`]s with known logits: a decoder-only "count up"
//! model and an encoder–decoder that reads its prompt once, as T5 would. Every option the engine
//! owns is checked here once, for every model that uses it.

use llmlab_nn::generate::{generate, Decoder};
use llmlab_plugin_api::candle::{Device, Tensor};
use llmlab_plugin_api::{Error, GenerateOptions, Result};

const VOCAB: usize = 8;

/// Next-token logits after `last`: `table(last)[next]`.
type Table = fn(u32) -> [f32; VOCAB];

/// A decoder-only model whose cache is each row's tokens so far.
struct CountUp {
    device: Device,
    table: Table,
    ctx: usize,
}

fn count_up(last: u32) -> [f32; VOCAB] {
    let mut row = [0.0; VOCAB];
    row[(last as usize + 1) % VOCAB] = 10.0;
    row
}

impl CountUp {
    fn new(table: Table) -> Self {
        CountUp {
            device: Device::Cpu,
            table,
            ctx: 16,
        }
    }

    fn logits(&self, rows: &[Vec<u32>]) -> Result<Tensor> {
        let flat: Vec<f32> = rows
            .iter()
            .flat_map(|r| (self.table)(*r.last().unwrap()))
            .collect();
        Ok(Tensor::from_vec(flat, (rows.len(), VOCAB), &self.device)?)
    }
}

impl Decoder for CountUp {
    type Cache = Vec<Vec<u32>>;
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn ctx_len(&self) -> usize {
        self.ctx
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn prefill(&self, prompts: &[Vec<u32>]) -> Result<(Self::Cache, Tensor)> {
        let cache = prompts.to_vec();
        let logits = self.logits(&cache)?;
        Ok((cache, logits))
    }
    fn step(&self, tokens: &Tensor, cache: &mut Self::Cache) -> Result<Tensor> {
        for (row, t) in cache
            .iter_mut()
            .zip(tokens.flatten_all()?.to_vec1::<u32>()?)
        {
            row.push(t);
        }
        self.logits(cache)
    }
    fn select_rows(&self, cache: &mut Self::Cache, rows: &[u32]) -> Result<()> {
        *cache = rows.iter().map(|&r| cache[r as usize].clone()).collect();
        Ok(())
    }
}

fn run(
    model: &impl Decoder<Cache = impl Sized>,
    prompts: &[Vec<u32>],
    o: &GenerateOptions,
) -> Vec<Vec<u32>> {
    generate(model, prompts, o, &mut |_, _| true).unwrap()
}

fn options(max_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens,
        temperature: 0.0,
        ..GenerateOptions::default()
    }
}

#[test]
fn greedy_follows_the_logits_and_stop_tokens_end_a_row_unprinted() {
    let model = CountUp::new(count_up);
    assert_eq!(run(&model, &[vec![1]], &options(3)), vec![vec![2, 3, 4]]);
    let stop = GenerateOptions {
        stop_tokens: vec![4],
        ..options(6)
    };
    assert_eq!(run(&model, &[vec![1]], &stop), vec![vec![2, 3]]);
}

#[test]
fn streaming_sees_each_token_in_order_and_can_stop_a_row() {
    let model = CountUp::new(count_up);
    let mut seen = Vec::new();
    let out = generate(
        &model,
        &[vec![0], vec![4]],
        &options(5),
        &mut |row, token| {
            seen.push((row, token));
            !(row == 1 && token == 6)
        },
    )
    .unwrap();
    assert_eq!(out, vec![vec![1, 2, 3, 4, 5], vec![5, 6]]);
    let row0: Vec<u32> = seen
        .iter()
        .filter(|(r, _)| *r == 0)
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(row0, out[0]);
}

#[test]
fn a_batch_of_different_lengths_gives_each_prompt_its_own_text() {
    let model = CountUp::new(count_up);
    let batch = run(&model, &[vec![1], vec![5, 6, 7]], &options(3));
    assert_eq!(batch[0], run(&model, &[vec![1]], &options(3))[0]);
    assert_eq!(batch[1], vec![0, 1, 2]);
}

fn flat(_: u32) -> [f32; VOCAB] {
    [0.0; VOCAB]
}

#[test]
fn per_row_seeds_give_a_row_the_text_it_has_alone() {
    let model = CountUp::new(flat);
    let sample = |seed: u64| GenerateOptions {
        temperature: 1.0,
        seed,
        ..options(12)
    };
    let alone = |seed| run(&model, &[vec![0]], &sample(seed)).remove(0);
    let batch = run(
        &model,
        &[vec![0], vec![0]],
        &GenerateOptions {
            row_seeds: vec![3, 4],
            ..sample(0)
        },
    );
    assert_eq!(batch, vec![alone(3), alone(4)]);
    assert_ne!(alone(3), alone(4), "different seeds, different samples");
    let bad = GenerateOptions {
        row_seeds: vec![1],
        ..sample(0)
    };
    let err = generate(&model, &[vec![0], vec![0]], &bad, &mut |_, _| true).unwrap_err();
    assert!(
        err.to_string()
            .contains("row_seeds has 1 seeds for 2 prompts"),
        "{err}"
    );
}

/// From 0: token 1 (p ≈ 0.6) then anything (uniform), or token 2 (p ≈ 0.4) then surely 3.
fn trap(last: u32) -> [f32; VOCAB] {
    let mut row = [f32::NEG_INFINITY; VOCAB];
    match last {
        0 => {
            row[1] = 0.6f32.ln();
            row[2] = 0.4f32.ln();
        }
        1 => row = [0.0; VOCAB],
        _ => row[3] = 0.0,
    }
    row
}

#[test]
fn beam_search_finds_the_likelier_sequence_greedy_misses() {
    let model = CountUp::new(trap);
    assert_eq!(run(&model, &[vec![0]], &options(2))[0][0], 1);
    let beams = GenerateOptions {
        num_beams: 2,
        ..options(2)
    };
    assert_eq!(run(&model, &[vec![0]], &beams), vec![vec![2, 3]]);
}

#[test]
fn repetition_penalty_steers_away_from_prompt_tokens() {
    let model = CountUp::new(|_| [1.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    assert_eq!(run(&model, &[vec![0]], &options(1)), vec![vec![0]]);
    let penalised = GenerateOptions {
        repetition_penalty: 2.0,
        ..options(1)
    };
    assert_eq!(run(&model, &[vec![0]], &penalised), vec![vec![1]]);
}

#[test]
fn prompts_that_do_not_fit_are_refused_naming_the_room() {
    let model = CountUp::new(count_up);
    let err = generate(&model, &[vec![1; 14]], &options(4), &mut |_, _| true).unwrap_err();
    assert!(err.to_string().contains("leaves room for 12"), "{err}");
    let truncated = GenerateOptions {
        truncate_prompt: true,
        ..options(4)
    };
    assert_eq!(run(&model, &[vec![1; 14]], &truncated)[0].len(), 4);
    let err = generate(&model, &[vec![9]], &options(1), &mut |_, _| true).unwrap_err();
    assert!(err.to_string().contains("token id 9"), "{err}");
}

/// An encoder–decoder: `prefill` "encodes" each prompt once (the sum of its tokens) into the
/// cache, and the decoder counts up from that, starting at its start token; the prompt is not
/// part of the decoded sequence.
struct EncoderDecoder {
    device: Device,
    encodes: std::cell::Cell<usize>,
}

/// Per row: the encoder output, and the decoder tokens so far.
struct CrossCache {
    encoded: Vec<u32>,
    decoded: Vec<Vec<u32>>,
}

const START: u32 = 0;

impl EncoderDecoder {
    fn logits(&self, cache: &CrossCache) -> Result<Tensor> {
        let flat: Vec<f32> = cache
            .encoded
            .iter()
            .zip(&cache.decoded)
            .flat_map(|(e, d)| {
                // Every other token at 1.0, so a penalty on the likeliest would change the choice.
                count_up((e + d.len() as u32 - 1) % VOCAB as u32).map(|l| l.max(1.0))
            })
            .collect();
        Ok(Tensor::from_vec(
            flat,
            (cache.encoded.len(), VOCAB),
            &self.device,
        )?)
    }
}

impl Decoder for EncoderDecoder {
    type Cache = CrossCache;
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn ctx_len(&self) -> usize {
        4
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn prompt_in_context(&self) -> bool {
        false
    }
    fn prefill(&self, prompts: &[Vec<u32>]) -> Result<(CrossCache, Tensor)> {
        self.encodes.set(self.encodes.get() + 1);
        let cache = CrossCache {
            encoded: prompts
                .iter()
                .map(|p| p.iter().sum::<u32>() % VOCAB as u32)
                .collect(),
            decoded: vec![vec![START]; prompts.len()],
        };
        let logits = self.logits(&cache)?;
        Ok((cache, logits))
    }
    fn step(&self, tokens: &Tensor, cache: &mut CrossCache) -> Result<Tensor> {
        if cache.decoded.len() != tokens.dim(0)? {
            return Err(Error::msg("rows out of step"));
        }
        for (row, t) in cache
            .decoded
            .iter_mut()
            .zip(tokens.flatten_all()?.to_vec1::<u32>()?)
        {
            row.push(t);
        }
        self.logits(cache)
    }
    fn select_rows(&self, cache: &mut CrossCache, rows: &[u32]) -> Result<()> {
        cache.encoded = rows.iter().map(|&r| cache.encoded[r as usize]).collect();
        cache.decoded = rows
            .iter()
            .map(|&r| cache.decoded[r as usize].clone())
            .collect();
        Ok(())
    }
}

#[test]
fn an_encoder_decoder_drives_the_same_engine_encoding_once() {
    let model = EncoderDecoder {
        device: Device::Cpu,
        encodes: Default::default(),
    };
    // The whole context is the prompt's (the decoder has its own): 4 prompt tokens, 3 new ones.
    assert_eq!(
        run(&model, &[vec![1, 1, 1, 2]], &options(3)),
        vec![vec![6, 7, 0]]
    );
    assert_eq!(model.encodes.get(), 1, "the encoder runs once per generate");
    // Beams reorder the encoder output with the decoder cache; one beam or two agree here.
    let beams = GenerateOptions {
        num_beams: 2,
        ..options(3)
    };
    assert_eq!(
        run(&model, &[vec![3], vec![2]], &beams),
        vec![vec![4, 5, 6], vec![3, 4, 5]]
    );
    // The prompt is not "already generated": a repetition penalty does not push the decoder
    // away from a token only the prompt holds.
    let penalised = GenerateOptions {
        repetition_penalty: 100.0,
        ..options(1)
    };
    assert_eq!(run(&model, &[vec![6, 7]], &penalised), vec![vec![6]]);
}
