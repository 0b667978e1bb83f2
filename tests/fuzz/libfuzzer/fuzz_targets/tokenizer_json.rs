#![no_main]
libfuzzer_sys::fuzz_target!(init: llmlab_fuzz::seed_corpus_from_env("tokenizer_json"), |data: &[u8]| {
    llmlab_fuzz::tokenizer_json(data);
});
