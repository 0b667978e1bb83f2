#![no_main]
libfuzzer_sys::fuzz_target!(init: llmlab_fuzz::seed_corpus_from_env("checkpoint_manifest"), |data: &[u8]| {
    llmlab_fuzz::checkpoint_manifest(data);
});
