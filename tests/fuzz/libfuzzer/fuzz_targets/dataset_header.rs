#![no_main]
libfuzzer_sys::fuzz_target!(init: llmlab_fuzz::seed_corpus_from_env("dataset_header"), |data: &[u8]| {
    llmlab_fuzz::dataset_header(data);
});
