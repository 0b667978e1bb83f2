//! The hand-written pre-tokenizers (`llmlab_tokenizers::pretokenize`) against the regexes as the
//! `tokenizers` crate runs them (fancy-regex, `Isolated` splits): identical byte ranges on
//! arbitrary Unicode biased toward the classes the patterns distinguish, and on real files.

use llmlab_tokenizers::pretokenize::{Splitter, GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN};
use proptest::prelude::*;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, SplitDelimiterBehavior,
};

/// The pieces `tokenizers` makes of `text` with `pre`, as byte ranges of `text`.
fn reference(pre: &dyn PreTokenizer, text: &str) -> Vec<(usize, usize)> {
    let mut pts = PreTokenizedString::from(text);
    pre.pre_tokenize(&mut pts).unwrap();
    pts.get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(_, offsets, _)| offsets)
        .collect()
}

fn gpt2_reference() -> ByteLevel {
    ByteLevel::new(false, true, true)
}

fn split_reference(pattern: &str) -> Split {
    Split::new(
        SplitPattern::Regex(pattern.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .unwrap()
}

fn check_all(text: &str) -> std::result::Result<(), String> {
    let cases: [(&str, Splitter, Box<dyn PreTokenizer>); 3] = [
        ("gpt2", Splitter::GPT2, Box::new(gpt2_reference())),
        (
            "llama3",
            Splitter::LLAMA3,
            Box::new(split_reference(LLAMA3_PATTERN)),
        ),
        (
            "qwen2",
            Splitter::QWEN2,
            Box::new(split_reference(QWEN2_PATTERN)),
        ),
    ];
    for (name, ours, theirs) in cases {
        let want = reference(theirs.as_ref(), text);
        let got = ours.offsets(text);
        if got != want {
            let show = |v: &[(usize, usize)]| -> Vec<&str> {
                v.iter().map(|&(a, b)| &text[a..b]).collect()
            };
            return Err(format!(
                "{name} differs on {text:?}:\n  ours   {:?}\n  regex  {:?}",
                show(&got),
                show(&want)
            ));
        }
    }
    Ok(())
}

/// Chars the patterns treat specially, weighted toward the boundaries between classes.
fn tricky_char() -> impl Strategy<Value = char> {
    let specials: Vec<char> = vec![
        ' ',
        ' ',
        ' ',
        '\'',
        '\'',
        '\t',
        '\n',
        '\n',
        '\r',
        '\u{b}',
        '\u{c}',
        '\u{85}',
        '\u{a0}',
        '\u{1680}',
        '\u{2000}',
        '\u{2009}',
        '\u{200a}',
        '\u{2028}',
        '\u{2029}',
        '\u{202f}',
        '\u{205f}',
        '\u{3000}',
        '\u{180e}',
        '\u{200b}',
        '\u{feff}',
        's',
        'S',
        't',
        'T',
        'r',
        'R',
        'e',
        'E',
        'v',
        'V',
        'm',
        'M',
        'l',
        'L',
        'd',
        'D',
        '\u{17f}',
        '\u{212a}',
        'K',
        'a',
        'z',
        '0',
        '9',
        '½',
        '²',
        'Ⅻ',
        '٣',
        '१',
        '\u{301}',
        '\u{308}',
        '\u{20dd}',
        'é',
        'ß',
        'İ',
        'ı',
        '中',
        '文',
        'の',
        'ㄱ',
        '한',
        'й',
        'Ω',
        'ا',
        'א',
        '😀',
        '👍',
        '\u{1f3fd}',
        '\u{200d}',
        '\u{fe0f}',
        '.',
        ',',
        '!',
        '?',
        '-',
        '_',
        '(',
        ')',
        '"',
        '’',
        '\\',
        '/',
        '#',
        '\0',
        '\u{7f}',
        '\u{ad}',
        '\u{10ffff}',
        '\u{e000}',
    ];
    prop_oneof![
        6 => proptest::sample::select(specials),
        2 => any::<char>(),
        1 => proptest::char::range('\u{0}', '\u{7f}'),
        1 => proptest::char::range('\u{80}', '\u{3000}'),
    ]
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

/// Short fragments that exercise multi-char alternatives.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::collection::vec(tricky_char(), 1..4).prop_map(|v| v.into_iter().collect()),
        1 => proptest::sample::select(vec![
            "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'RE", "'Ll", "'ſ", "\r\n", "\r\n\r\n",
            "  ", "   ", " \n ", "\n\n", "123456", " 42", "''s", "?!'", " '", "\t\t",
        ])
        .prop_map(String::from),
    ]
}

proptest! {
    // 20,000 cases each passed when this was written; PROPTEST_CASES raises the default.
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn splitters_equal_the_regexes(parts in proptest::collection::vec(fragment(), 0..24)) {
        let text: String = parts.concat();
        check_all(&text).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn splitters_equal_the_regexes_on_any_unicode(text in any::<String>()) {
        check_all(&text).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn gpt2_pattern_is_the_one_tokenizers_uses() {
    // The constant documents the pattern; the reference above is ByteLevel's own copy of it.
    let text = "Hello world's  end\n\n 12 ab?! \u{3000}x";
    assert_eq!(
        reference(&split_reference(GPT2_PATTERN), text),
        reference(&gpt2_reference(), text)
    );
}

#[test]
fn known_splits() {
    let pieces = |s: Splitter, t: &str| -> Vec<String> {
        s.offsets(t)
            .into_iter()
            .map(|(a, b)| t[a..b].to_string())
            .collect()
    };
    assert_eq!(
        pieces(Splitter::GPT2, "Hello  world's 123\n\n"),
        ["Hello", " ", " world", "'s", " 123", "\n\n"]
    );
    assert_eq!(
        pieces(Splitter::LLAMA3, "HE'LL pay 12345!\r\n\r\n  ok"),
        [
            "HE",
            "'LL",
            " pay",
            " ",
            "123",
            "45",
            "!\r\n\r\n",
            " ",
            " ok"
        ]
    );
    assert_eq!(pieces(Splitter::QWEN2, "x 123"), ["x", " ", "1", "2", "3"]);
}

/// Real text: the repository's docs and sources, the system's licence texts and a multilingual
/// sample, whole files and line by line.
#[test]
fn splitters_equal_the_regexes_on_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for dir in [
        "docs",
        "plugins/tokenizers/src",
        "host/src",
        "/usr/share/common-licenses",
    ] {
        let dir = if dir.starts_with('/') {
            dir.into()
        } else {
            root.join(dir)
        };
        if let Ok(entries) = std::fs::read_dir(&dir) {
            files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    assert!(
        files.len() > 10,
        "expected some files to split, found {}",
        files.len()
    );
    let mut texts: Vec<String> = files
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b[..b.len().min(40_000)]).into_owned())
        .collect();
    texts.push(MULTILINGUAL.to_string());
    for text in &texts {
        check_all(text).unwrap();
        // Lines start documents in dataset writing: the first 100 of each file.
        for line in text.split_inclusive('\n').take(100) {
            check_all(line).unwrap();
        }
    }
}

const MULTILINGUAL: &str = "Der Bär läuft schnell über die Straße. L'homme qu'il a vu n'était pas là.\n\
    Быстрая коричневая лиса перепрыгивает через ленивую собаку. 2024年3月15日、東京で会議が行われました。\n\
    这是一个测试句子，包含中文标点符号！ 한국어 문장도 포함합니다: 안녕하세요 12,345원.\r\n\
    مرحبا بالعالم ١٢٣ שלום עולם. नमस्ते दुनिया १२३४. Ελληνικά: Καλημέρα κόσμε!\u{3000}全角スペース\n\
    Emoji: 👍🏽 👨‍👩‍👧 ❤️ café naïve coöperate e\u{301}\u{302} ½ ⅓ Ⅻ ²³ I'M YOU'RE we've they'LL\u{2028}next\u{85}line\n";
