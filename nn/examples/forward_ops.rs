//! The forward pass op by op (issue 25): each kernel of the owned inference pass timed alone at
//! the bench shapes of `shared/bench/torch_gpt.py` (tiny, small), with the kernels and
//! threading the pass uses (whole batch, every kernel over the rayon pool). Prints one JSON
//! line per op: the median of `reps` calls, how many calls one pass makes, and their product,
//! the op's milliseconds per pass — the llmlab half of the side-by-side forward profile in
//! docs/benchmarks.md; `bench/torch_profile.py --forward` is PyTorch's half.
//!
//! `cargo run --release --example forward_ops -- [tiny|small] [reps]`

use std::time::Instant;

use llmlab_nn::ops::linear::{forward_product, LinearDims};
use llmlab_nn::ops::{attention, gelu, layer_norm};
use llmlab_plugin_api::rng::SplitMix64;

struct Config {
    name: &'static str,
    layers: usize,
    heads: usize,
    d: usize,
    ctx: usize,
    vocab: usize,
    batch: usize,
}

const CONFIGS: [Config; 2] = [
    Config {
        name: "tiny",
        layers: 4,
        heads: 4,
        d: 256,
        ctx: 128,
        vocab: 2048,
        batch: 16,
    },
    Config {
        name: "small",
        layers: 6,
        heads: 6,
        d: 384,
        ctx: 256,
        vocab: 4096,
        batch: 8,
    },
];

fn random(len: usize, rng: &mut SplitMix64) -> Vec<f32> {
    (0..len)
        .map(|_| (rng.below(2001) as f32 - 1000.0) * 1e-4)
        .collect()
}

/// Median seconds of `reps` calls of `op` after one warm-up call.
fn median_seconds(reps: usize, mut op: impl FnMut()) -> f64 {
    op();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            op();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_else(|| "tiny".into());
    let reps: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(20);
    let Some(cfg) = CONFIGS.iter().find(|c| c.name == which) else {
        eprintln!("unknown config {which}: tiny or small");
        std::process::exit(2);
    };
    let (n, d, f, v, l) = (cfg.batch * cfg.ctx, cfg.d, 4 * cfg.d, cfg.vocab, cfg.layers);
    let mut rng = SplitMix64::new(1);
    let x = random(n * d, &mut rng);
    let ln_w = vec![1f32; d];
    let ln_b = vec![0f32; d];
    let mut xn = vec![0f32; n * d];
    let mut qkv = random(n * 3 * d, &mut rng);
    let mut att = vec![0f32; n * d];
    let mut residual = x.clone();
    let fc_in = random(n * f, &mut rng);
    let mut fc_out = vec![0f32; n * f];
    let mut logits = vec![0f32; n * v];
    let (w_qkv, w_proj) = (random(3 * d * d, &mut rng), random(d * d, &mut rng));
    let (w_fc, w_out, w_head) = (
        random(f * d, &mut rng),
        random(d * f, &mut rng),
        random(v * d, &mut rng),
    );
    let linear = |rows, in_dim, out_dim| LinearDims {
        rows,
        in_dim,
        out_dim,
    };
    let dims = attention::Dims {
        b: cfg.batch,
        t: cfg.ctx,
        h: cfg.heads,
        kv: cfg.heads,
        hd: d / cfg.heads,
    };
    let mut ops: Vec<(&str, usize, f64)> = Vec::new();
    ops.push((
        "layer_norm",
        2 * l + 1,
        median_seconds(reps, || {
            layer_norm::forward(&x, &ln_w, Some(&ln_b), &mut xn, 1e-5, n, true)
        }),
    ));
    ops.push((
        "linear qkv (n×d·d×3d)",
        l,
        median_seconds(reps, || {
            forward_product(linear(n, d, 3 * d), &xn, &w_qkv, &mut qkv, false, true)
        }),
    ));
    ops.push((
        "attention (causal, packed)",
        l,
        median_seconds(reps, || {
            attention::packed_forward(dims, &qkv, &mut att, true)
        }),
    ));
    ops.push((
        "linear proj (n×d·d×d, onto the stream)",
        l,
        median_seconds(reps, || {
            forward_product(linear(n, d, d), &att, &w_proj, &mut residual, true, true)
        }),
    ));
    ops.push((
        "linear fc (n×d·d×4d)",
        l,
        median_seconds(reps, || {
            forward_product(linear(n, d, f), &xn, &w_fc, &mut fc_out, false, true)
        }),
    ));
    ops.push((
        "gelu (n×4d)",
        l,
        median_seconds(reps, || gelu::forward(&fc_in, &mut fc_out, true)),
    ));
    ops.push((
        "linear out (n×4d·4d×d, onto the stream)",
        l,
        median_seconds(reps, || {
            forward_product(linear(n, f, d), &fc_in, &w_out, &mut residual, true, true)
        }),
    ));
    ops.push((
        "head (n×d·d×V)",
        1,
        median_seconds(reps, || {
            forward_product(linear(n, d, v), &xn, &w_head, &mut logits, false, true)
        }),
    ));
    let total: f64 = ops.iter().map(|(_, calls, s)| *calls as f64 * s).sum();
    for (op, calls, seconds) in &ops {
        let ms = *calls as f64 * seconds * 1e3;
        println!(
            "{{\"config\":\"{}\",\"op\":\"{op}\",\"calls\":{calls},\"ms_per_call\":{:.4},\"ms_per_pass\":{ms:.3},\"share\":{:.4}}}",
            cfg.name,
            seconds * 1e3,
            ms / (total * 1e3)
        );
    }
    println!(
        "{{\"config\":\"{}\",\"op\":\"sum of the ops\",\"ms_per_pass\":{:.3},\"tok_s\":{:.0}}}",
        cfg.name,
        total * 1e3,
        n as f64 / total
    );
}
