//! The `lm` trainer's row-parallel split (`row_parallel`, `llmlab_train::row_split`) on a real
//! GPT at every option set: the same losses and weights as one whole-batch pass within float
//! summation noise, and a run resumed from a checkpoint is still bit-exact with the split on.
//! The trainer cuts as many parts as its rayon pool has threads, so each test runs inside a
//! 3-thread pool: 4-row batches split unevenly (2 + 1 + 1 rows) on any machine.

mod common;

use common::training::{train_steps, trainer};
use common::{option_sets, tiny};
use llmlab_plugin_api::serde_json::json;
use llmlab_plugin_api::Model;

fn in_three_threads<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    llmlab_plugin_api::rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap()
        .install(f)
}

fn weights(model: &dyn Model) -> Vec<(String, Vec<f32>)> {
    model
        .parameters()
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

#[test]
fn split_rows_train_like_the_whole_batch_at_every_option_set() {
    for options in option_sets() {
        let whole_dir = tempfile::tempdir().unwrap();
        let whole = tiny(options.clone());
        let whole_losses = in_three_threads(|| {
            let mut t = trainer(None, json!({ "row_parallel": false }));
            train_steps(&mut t, &whole, whole_dir.path(), 8)
        });
        let split_dir = tempfile::tempdir().unwrap();
        let split = tiny(options.clone());
        assert!(split.row_parallel_training(), "{options}");
        let split_losses = in_three_threads(|| {
            train_steps(&mut trainer(None, json!({})), &split, split_dir.path(), 8)
        });
        for (a, b) in whole_losses.iter().zip(&split_losses) {
            assert!(
                (a - b).abs() < 1e-4 * a.abs(),
                "{options}: {whole_losses:?} vs {split_losses:?}"
            );
        }
        // Summation order differs, so some bits do: the split really ran.
        assert_ne!(whole_losses, split_losses, "{options}: no split happened");
        for ((name, a), (_, b)) in weights(&whole).iter().zip(weights(&split)) {
            let diff = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "{options}: {name} differs by {diff}");
        }
    }
}

#[test]
fn training_resumed_with_the_split_is_bit_exact() {
    let straight_dir = tempfile::tempdir().unwrap();
    let straight = tiny(json!({}));
    let dir = tempfile::tempdir().unwrap();
    let first = tiny(json!({}));
    let resumed = tiny(json!({}));
    let (expected, losses) = in_three_threads(|| {
        let expected = train_steps(
            &mut trainer(None, json!({})),
            &straight,
            straight_dir.path(),
            8,
        );
        let mut losses = train_steps(&mut trainer(None, json!({})), &first, dir.path(), 4);
        losses.extend(train_steps(
            &mut trainer(Some(dir.path()), json!({})),
            &resumed,
            dir.path(),
            4,
        ));
        (expected, losses)
    });
    assert_eq!(losses, expected);
    assert_eq!(weights(&resumed), weights(&straight));
}

#[test]
fn dropout_and_mixed_precision_keep_one_pass() {
    assert!(!tiny(json!({ "dropout": 0.1 })).row_parallel_training());
    assert!(!tiny(json!({ "moe": { "experts": 4, "top_k": 2 } })).row_parallel_training());
    let model = tiny(json!({}));
    let dir = tempfile::tempdir().unwrap();
    // bf16 compute: the trainer keeps one pass (row_split::parts), and training still works.
    let losses = in_three_threads(|| {
        train_steps(
            &mut trainer(None, json!({ "precision": "bf16", "steps": 4 })),
            &model,
            dir.path(),
            4,
        )
    });
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
}
