#![no_main]
libfuzzer_sys::fuzz_target!(init: llmlab_fuzz::seed_corpus_from_env("jsonl"), |data: &[u8]| {
    llmlab_fuzz::jsonl(data);
});
