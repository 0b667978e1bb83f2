//! Issue 29 items 9 and 12 against the plugin's public API: dropout masks come from the model's
//! seed (two runs agree), and saved weights are checksummed and checked against the config's
//! head layout on load.

mod common;

use common::{ids, max_abs_diff, tiny};
use llmlab_plugin_api::serde_json::json;
use llmlab_plugin_api::{Context, ForwardOptions, Model};

const TRAIN: ForwardOptions = ForwardOptions {
    train: true,
    hidden_states: false,
    no_grad: false,
};

#[test]
fn dropout_masks_follow_the_seed() {
    let x = ids(&[&[3, 1, 4, 1, 5, 9, 2, 6], &[2, 7, 1, 8, 2, 8, 1, 8]]);
    let a = tiny(json!({ "dropout": 0.3 }));
    let b = tiny(json!({ "dropout": 0.3 }));
    let (a1, b1) = (
        a.forward(&x, &TRAIN).unwrap().logits,
        b.forward(&x, &TRAIN).unwrap().logits,
    );
    assert_eq!(max_abs_diff(&a1, &b1), 0.0, "same seed, different masks");
    // The next pass draws new masks, the same ones in both models.
    let (a2, b2) = (
        a.forward(&x, &TRAIN).unwrap().logits,
        b.forward(&x, &TRAIN).unwrap().logits,
    );
    assert!(
        max_abs_diff(&a1, &a2) > 0.0,
        "masks did not change between passes"
    );
    assert_eq!(max_abs_diff(&a2, &b2), 0.0);
    // Another seed, other masks; evaluation is deterministic and dropout-free.
    let c = tiny(json!({ "dropout": 0.3, "seed": 4 }));
    let d = tiny(json!({ "dropout": 0.3, "seed": 4 }));
    let c1 = c.forward(&x, &TRAIN).unwrap().logits;
    let plain = d.forward(&x, &ForwardOptions::default()).unwrap().logits;
    assert!(max_abs_diff(&c1, &plain) > 0.0);
}

#[test]
fn saved_weights_are_checksummed_and_the_head_layout_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m");
    tiny(json!({})).save(&path).unwrap();
    llmlab_gpt::save_load::load(&path, &Context::cpu()).unwrap();

    let config_path = path.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(config.contains("llmlab_weights"), "{config}");
    std::fs::write(
        &config_path,
        config.replace("\"n_head\": 4", "\"n_head\": 2"),
    )
    .unwrap();
    let error = llmlab_gpt::save_load::load(&path, &Context::cpu())
        .err()
        .expect("n_head 2 over weights saved with 4 heads must be refused")
        .to_string();
    assert!(
        error.contains("n_head is 2") && error.contains("n_head = 4") && error.contains("c_attn"),
        "{error}"
    );
    std::fs::write(&config_path, &config).unwrap();

    let weights = path.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let at = bytes.len() / 2;
    bytes[at..at + 400].fill(0x7f);
    std::fs::write(&weights, &bytes).unwrap();
    let error = llmlab_gpt::save_load::load(&path, &Context::cpu())
        .err()
        .expect("overwritten weights must be refused")
        .to_string();
    assert!(
        error.contains("model.safetensors") && error.contains("checksum"),
        "{error}"
    );
    // Truncated.
    std::fs::write(&weights, &bytes[..bytes.len() - 10]).unwrap();
    let error = llmlab_gpt::save_load::load(&path, &Context::cpu())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("model.safetensors") && error.contains("bytes"),
        "{error}"
    );
}
