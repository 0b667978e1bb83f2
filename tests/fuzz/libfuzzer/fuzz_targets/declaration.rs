#![no_main]
libfuzzer_sys::fuzz_target!(init: llmlab_fuzz::seed_corpus_from_env("declaration"), |data: &[u8]| {
    llmlab_fuzz::declaration(data);
});
