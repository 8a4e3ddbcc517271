//! Tokenizers: `char` (the sorted characters of the training text, as nanoGPT's
//! shakespeare_char; the default) and `gpt2` (GPT-2's byte-level BPE, r50k_base: 50257
//! tokens, `<|endoftext|>` = 50256, from the `tiktoken-rs` crate, which embeds the ranks:
//! nothing is downloaded). The GPT-2 tokenizer is native only: the browser build trains on
//! characters.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which tokenizer a model reads: `[model] tokenizer` in a config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// The characters of the training text.
    #[default]
    Char,
    /// GPT-2's BPE (r50k_base).
    Gpt2,
}

impl TokenizerKind {
    pub fn is_char(&self) -> bool {
        *self == TokenizerKind::Char
    }
}

impl std::fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenizerKind::Char => "char",
            TokenizerKind::Gpt2 => "gpt2",
        })
    }
}

/// GPT-2's vocabulary: 50000 merges, 256 bytes and `<|endoftext|>`.
pub const GPT2_VOCAB: usize = 50257;
/// GPT-2's `<|endoftext|>`, the document separator.
pub const GPT2_EOT: u32 = 50256;
pub const EOT_TEXT: &str = "<|endoftext|>";

/// A tokenizer, saved with every checkpoint, export and run. A character tokenizer
/// serialises as it always has (`{"chars": [...]}`), so the checkpoints and exports of
/// earlier versions read as character tokenizers; GPT-2's as
/// `{"chars": [], "kind": "gpt2"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tokenizer {
    /// The vocabulary of a character tokenizer (sorted); empty for GPT-2.
    pub chars: Vec<char>,
    #[serde(default, skip_serializing_if = "TokenizerKind::is_char")]
    pub kind: TokenizerKind,
}

impl Tokenizer {
    /// The character tokenizer of `text`: its sorted set of characters.
    pub fn from_text(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Tokenizer { chars, kind: TokenizerKind::Char }
    }

    pub fn gpt2() -> Self {
        Tokenizer { chars: Vec::new(), kind: TokenizerKind::Gpt2 }
    }

    /// The tokenizer of `kind` for a corpus `text` (only `char` looks at it).
    pub fn for_text(kind: TokenizerKind, text: &str) -> Self {
        match kind {
            TokenizerKind::Char => Tokenizer::from_text(text),
            TokenizerKind::Gpt2 => Tokenizer::gpt2(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self.kind {
            TokenizerKind::Char => self.chars.len(),
            TokenizerKind::Gpt2 => GPT2_VOCAB,
        }
    }

    /// The document separator, where the tokenizer has one (GPT-2's `<|endoftext|>`).
    pub fn eot(&self) -> Option<u32> {
        (self.kind == TokenizerKind::Gpt2).then_some(GPT2_EOT)
    }

    /// The ids of `text`. With GPT-2, a literal `<|endoftext|>` is the separator token (as
    /// GPT-2's sample.py allows it in a prompt).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self.kind {
            TokenizerKind::Char => text
                .chars()
                .map(|ch| {
                    self.chars.binary_search(&ch).map(|i| i as u32).map_err(|_| {
                        Error::Input(format!("character {ch:?} is not in the model's vocabulary (the characters of its training text); use only those"))
                    })
                })
                .collect(),
            TokenizerKind::Gpt2 => gpt2::encode(text, true),
        }
    }

    /// The ids of `text` with no special token: `<|endoftext|>` in it is plain text (as
    /// nanoGPT's and llm.c's data scripts encode documents). Character tokenizers have no
    /// special tokens.
    pub fn encode_ordinary(&self, text: &str) -> Result<Vec<u32>> {
        match self.kind {
            TokenizerKind::Char => self.encode(text),
            TokenizerKind::Gpt2 => gpt2::encode(text, false),
        }
    }

    /// The text of `ids`; an id outside the vocabulary (a padded `vocab_size`'s) and bytes
    /// that are not UTF-8 (half a character) decode to U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        match self.kind {
            TokenizerKind::Char => {
                ids.iter().map(|&i| self.chars.get(i as usize).copied().unwrap_or('\u{fffd}')).collect()
            }
            TokenizerKind::Gpt2 => gpt2::decode(ids),
        }
    }
}

#[cfg(not(target_family = "wasm"))]
mod gpt2 {
    use super::{GPT2_VOCAB, Result};

    use std::sync::OnceLock;

    use regex::Regex;
    use rustc_hash::FxHashMap;

    /// GPT-2's pre-tokenizer without its look-ahead, which a DFA (the `regex` crate) cannot
    /// run and which sends tiktoken's own pattern to a backtracking VM (fancy_regex, most of
    /// the time of `prepare`). GPT-2's `...|\s+(?!\S)|\s+` is `\s+` here, and then a run of
    /// two or more whitespace characters followed by a non-space gives its last character
    /// back to the next piece (`pieces`): the same pieces, as the tests check against
    /// tiktoken-rs's encoder.
    const PIECE: &str = r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";
    const END_OF_TEXT: &str = "<|endoftext|>";

    struct Bpe {
        piece: Regex,
        /// Each token's bytes and its id (rank), as tiktoken-rs's: its `byte_pair_split`
        /// merges a piece that is not a token itself into tokens.
        ranks: FxHashMap<Vec<u8>, u32>,
    }

    fn bpe() -> &'static Bpe {
        static BPE: OnceLock<Bpe> = OnceLock::new();
        BPE.get_or_init(|| {
            let tiktoken = tiktoken_rs::r50k_base_singleton();
            let ranks = (0..GPT2_VOCAB as u32 - 1)
                .map(|id| (tiktoken._decode_native_and_split(vec![id]).flatten().collect(), id))
                .collect();
            Bpe { piece: Regex::new(PIECE).expect("a valid pattern"), ranks }
        })
    }

    /// GPT-2's pre-tokenizer pieces of `text`, in order.
    fn pieces<'t>(piece: &'t Regex, text: &'t str) -> impl Iterator<Item = &'t str> + 't {
        let mut at = 0;
        std::iter::from_fn(move || {
            let m = piece.find_at(text, at)?;
            let mut end = m.end();
            let run = m.as_str();
            // `\s+(?!\S)`: a whitespace run (only that alternative ends in whitespace) before
            // a non-space keeps its last character for the next piece (" word"), unless
            // the run is that one character.
            if let Some(last) = run.chars().next_back().filter(|c| c.is_whitespace())
                && end < text.len()
                && run.len() > last.len_utf8()
            {
                end -= last.len_utf8();
            }
            at = end;
            Some(&text[m.start()..end])
        })
    }

    fn encode_ordinary(bpe: &Bpe, text: &str, out: &mut Vec<u32>) {
        for piece in pieces(&bpe.piece, text) {
            match bpe.ranks.get(piece.as_bytes()) {
                Some(&id) => out.push(id),
                None => out.extend(
                    tiktoken_rs::byte_pair_split(piece.as_bytes(), &bpe.ranks).into_iter().map(|t| bpe.ranks[t]),
                ),
            }
        }
    }

    /// The ids of `text`; with `special`, a literal `<|endoftext|>` is its token (50256).
    pub fn encode(text: &str, special: bool) -> Result<Vec<u32>> {
        let bpe = bpe();
        let mut out = Vec::with_capacity(text.len() / 3);
        if special {
            for (i, part) in text.split(END_OF_TEXT).enumerate() {
                if i > 0 {
                    out.push(GPT2_VOCAB as u32 - 1);
                }
                encode_ordinary(bpe, part, &mut out);
            }
        } else {
            encode_ordinary(bpe, text, &mut out);
        }
        Ok(out)
    }

    pub fn decode(ids: &[u32]) -> String {
        let bpe = tiktoken_rs::r50k_base_singleton();
        let mut bytes = Vec::new();
        let flush = |bytes: &mut Vec<u8>, out: &mut String| {
            out.push_str(&String::from_utf8_lossy(bytes));
            bytes.clear();
        };
        let mut out = String::new();
        for &id in ids {
            if (id as usize) < GPT2_VOCAB {
                bytes.extend(bpe._decode_native_and_split(vec![id]).flatten());
            } else {
                flush(&mut bytes, &mut out);
                out.push('\u{fffd}');
            }
        }
        flush(&mut bytes, &mut out);
        out
    }
}

#[cfg(target_family = "wasm")]
mod gpt2 {
    use super::{Error, Result};

    pub fn encode(_text: &str, _special: bool) -> Result<Vec<u32>> {
        Err(Error::Input("the GPT-2 tokenizer is not in the browser build; use tokenizer = \"char\"".into()))
    }

    pub fn decode(ids: &[u32]) -> String {
        ids.iter().map(|_| '\u{fffd}').collect()
    }
}

#[cfg(all(test, not(target_family = "wasm")))]
mod tests {
    use super::*;

    #[test]
    fn gpt2_gives_gpt2_ids() {
        let t = Tokenizer::gpt2();
        assert_eq!(t.encode("Hello world").unwrap(), vec![15496, 995]);
        assert_eq!(t.encode("<|endoftext|>").unwrap(), vec![GPT2_EOT]);
        assert_ne!(t.encode_ordinary("<|endoftext|>").unwrap(), vec![GPT2_EOT]);
        assert_eq!(t.vocab_size(), 50257);
        assert_eq!(t.eot(), Some(50256));
    }

    #[test]
    fn gpt2_pieces_and_ids_are_tiktokens() {
        // tiktoken-rs, with GPT-2's own pattern (look-ahead and all), is the reference: random
        // strings over the characters where the pre-tokenizer's rules meet (runs of mixed
        // whitespace before words and at the end, contractions, digits, marks, CJK, emoji).
        let tiktoken = tiktoken_rs::r50k_base_singleton();
        let alphabet: Vec<&str> = vec![
            " ",
            " ",
            "  ",
            "\t",
            "\n",
            "\r\n",
            "\u{a0}",
            "\u{3000}",
            "a",
            "Z",
            "é",
            "e\u{301}",
            "ß",
            "7",
            "٣",
            "½",
            "'",
            "'s",
            "'ll",
            "'T",
            "'re",
            ".",
            ",!",
            "-",
            "中",
            "日本",
            "🦀",
            "👩‍👩‍👧",
            "\u{200b}",
            "<|endoftext|>",
        ];
        let mut state = 0x2545f4914f6cdd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for _ in 0..3000 {
            let s: String = (0..next(24)).map(|_| alphabet[next(alphabet.len())]).collect();
            assert_eq!(gpt2::encode(&s, false).unwrap(), tiktoken.encode_ordinary(&s), "{s:?}");
            assert_eq!(gpt2::encode(&s, true).unwrap(), tiktoken.encode_with_special_tokens(&s), "{s:?}");
        }
    }

    #[test]
    fn gpt2_round_trips() {
        let t = Tokenizer::gpt2();
        for s in [
            "The quick brown fox jumps over the lazy dog. It's 2024!",
            "   leading, \t tabs\t\t and   runs    of spaces   \n\n\n  newlines \r\n",
            "emoji 🦀👩‍👩‍👧 and flags 🇫🇷",
            "中文字符和日本語のテキスト、한국어",
            "combining: e\u{301} a\u{308} n\u{303}\u{323}",
            "<|endoftext|>",
            "a<|endoftext|>b <|endoftext|>\n",
        ] {
            assert_eq!(t.decode(&t.encode(s).unwrap()), s, "{s:?}");
            assert_eq!(t.decode(&t.encode_ordinary(s).unwrap()), s, "{s:?}");
        }
        // Half a character, and an id past the vocabulary (a padded vocab_size), are U+FFFD.
        let crab = t.encode("🦀").unwrap();
        assert!(crab.len() > 1);
        assert_eq!(t.decode(&crab[..1]), "\u{fffd}");
        assert_eq!(t.decode(&[15496, 50300]), "Hello\u{fffd}");
    }

    #[test]
    fn char_tokenizers_serialise_as_before_and_gpt2_says_so() {
        let t = Tokenizer::from_text("ba");
        assert_eq!(serde_json::to_string(&t).unwrap(), r#"{"chars":["a","b"]}"#);
        let old: Tokenizer = serde_json::from_str(r#"{"chars":["a","b"]}"#).unwrap();
        assert_eq!(old, t);
        let g = serde_json::to_string(&Tokenizer::gpt2()).unwrap();
        assert_eq!(serde_json::from_str::<Tokenizer>(&g).unwrap(), Tokenizer::gpt2());
    }
}
