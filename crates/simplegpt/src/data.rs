//! Data: a character tokenizer, the train/val split (first 90% / last 10%, as nanoGPT),
//! seeded random batches, and the embedded default corpus.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{Error, Result};
use crate::rng::Stream;

pub use crate::tokenizer::{Tokenizer, TokenizerKind};

/// The token ids of one split: in memory, or (native only) in memory-mapped shards that
/// are never loaded whole.
#[derive(Clone)]
pub enum Tokens {
    Ids(Vec<u32>),
    #[cfg(not(target_family = "wasm"))]
    Mapped(crate::shards::Mapped),
}

impl Tokens {
    pub fn len(&self) -> usize {
        match self {
            Tokens::Ids(v) => v.len(),
            #[cfg(not(target_family = "wasm"))]
            Tokens::Mapped(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends ids `start..start + n` to `out`.
    pub fn copy(&self, start: usize, n: usize, out: &mut Vec<u32>) {
        match self {
            Tokens::Ids(v) => out.extend_from_slice(&v[start..start + n]),
            #[cfg(not(target_family = "wasm"))]
            Tokens::Mapped(m) => m.copy(start, n, out),
        }
    }

    /// Calls `f` with every id, in order, a block at a time (no copy of the whole).
    pub fn for_each_block(&self, mut f: impl FnMut(&[u32])) {
        match self {
            Tokens::Ids(v) => f(v),
            #[cfg(not(target_family = "wasm"))]
            Tokens::Mapped(m) => {
                const BLOCK: usize = 1 << 16;
                let mut buf = Vec::with_capacity(BLOCK);
                let mut start = 0;
                while start < m.len() {
                    let n = BLOCK.min(m.len() - start);
                    buf.clear();
                    m.copy(start, n, &mut buf);
                    m.release(start, n);
                    f(&buf);
                    start += n;
                }
            }
        }
    }
}

impl PartialEq for Tokens {
    // Irrefutable where shards do not exist (the browser build).
    #[allow(irrefutable_let_patterns)]
    fn eq(&self, other: &Tokens) -> bool {
        if let (Tokens::Ids(a), Tokens::Ids(b)) = (self, other) {
            return a == b;
        }
        if self.len() != other.len() {
            return false;
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut start = 0;
        while start < self.len() {
            let n = (1 << 16).min(self.len() - start);
            (a.clear(), b.clear());
            self.copy(start, n, &mut a);
            other.copy(start, n, &mut b);
            if a != b {
                return false;
            }
            start += n;
        }
        true
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tokens::Ids(v) => v.fmt(f),
            #[cfg(not(target_family = "wasm"))]
            Tokens::Mapped(m) => write!(f, "Mapped({} tokens in {:?})", m.len(), m.files()),
        }
    }
}

impl From<Vec<u32>> for Tokens {
    fn from(v: Vec<u32>) -> Tokens {
        Tokens::Ids(v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// A tokenized corpus: a text split 90/10, or token shards (see `shards`).
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Where the text came from ("data file input.txt"), for messages.
    pub name: String,
    pub tokenizer: Tokenizer,
    pub train: Tokens,
    pub val: Tokens,
}

/// One batch as flat row-major token ids: `x[b*T + t]` predicts `y[b*T + t]`.
pub struct Batch {
    pub x: Vec<u32>,
    pub y: Vec<u32>,
    pub batch_size: usize,
    pub block_size: usize,
}

impl Batch {
    /// Inputs and targets as [B, T] id tensors on `device`.
    pub fn tensors(&self, device: &Device) -> (Tensor<2, Int>, Tensor<2, Int>) {
        let ids = |v: &[u32]| {
            let data =
                TensorData::new(v.iter().map(|&i| i as i32).collect::<Vec<i32>>(), [self.batch_size, self.block_size]);
            Tensor::<2, Int>::from_data(data, device)
        };
        (ids(&self.x), ids(&self.y))
    }
}

impl Dataset {
    /// `name` says where the text came from, for error messages. Character-level.
    pub fn from_text(text: &str, name: &str) -> Result<Dataset> {
        Dataset::from_text_with(text, name, TokenizerKind::Char)
    }

    /// `text` tokenised by a tokenizer of `kind` (on every core where there are several).
    pub fn from_text_with(text: &str, name: &str, kind: TokenizerKind) -> Result<Dataset> {
        // A byte-order mark (as some Windows editors write) marks the encoding; it is not text.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.is_empty() {
            return Err(Error::Input(format!("{name} is empty; give a UTF-8 text file with some text in it")));
        }
        let tokenizer = Tokenizer::for_text(kind, text);
        #[cfg(not(target_family = "wasm"))]
        let ids = crate::prepare::encode_parallel(&tokenizer, text)?;
        #[cfg(target_family = "wasm")]
        let ids = tokenizer.encode(text)?;
        let n = ids.len() * 9 / 10;
        let (train, val) = (ids[..n].to_vec().into(), ids[n..].to_vec().into());
        Ok(Dataset { name: name.to_string(), tokenizer, train, val })
    }

    /// The token shards at `path` (see `shards`), memory-mapped, as `tokenizer`'s ids.
    #[cfg(not(target_family = "wasm"))]
    pub fn from_shards(path: &std::path::Path, tokenizer: &Tokenizer) -> Result<Dataset> {
        let (train, val) = crate::shards::open(path, tokenizer)?;
        Ok(Dataset {
            name: format!("token shards {}", path.display()),
            tokenizer: tokenizer.clone(),
            train: Tokens::Mapped(train),
            val: Tokens::Mapped(val),
        })
    }

    /// Checks that both splits hold a batch row: block_size + 1 consecutive tokens (inputs
    /// and shifted targets). The validation split, the last 10%, is the shorter.
    pub fn check_block_size(&self, block_size: usize) -> Result<()> {
        #[cfg(not(target_family = "wasm"))]
        for split in [&self.train, &self.val] {
            if let Tokens::Mapped(m) = split
                && let Some((label, n)) = m.segment_lengths().find(|&(_, n)| n <= block_size)
            {
                return Err(Error::Input(format!(
                    "{label} has {n} tokens, fewer than block_size + 1 = {}: every shard must hold a \
                     batch row; use a smaller block (--set block_size=...) or more tokens per shard",
                    block_size + 1
                )));
            }
        }
        if self.val.len() <= block_size {
            return Err(Error::Input(format!(
                "{} is too short for block_size {block_size}: it has {} characters, and its \
                 last 10% (the validation split, {} characters) must be longer than the block; \
                 use more text or a smaller block (--set block_size=...)",
                self.name,
                self.train.len() + self.val.len(),
                self.val.len()
            )));
        }
        Ok(())
    }

    /// Reads a UTF-8 text file, character-level.
    pub fn from_file(path: &std::path::Path) -> Result<Dataset> {
        Dataset::from_file_with(path, TokenizerKind::Char)
    }

    /// Reads a UTF-8 text file, tokenised by a tokenizer of `kind`.
    pub fn from_file_with(path: &std::path::Path, kind: TokenizerKind) -> Result<Dataset> {
        let bytes = std::fs::read(path).map_err(crate::error::io("cannot read data file", path))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::Input(format!(
                "data file {} is not UTF-8 text (invalid byte at offset {}); convert it, e.g. \
                 with iconv -t UTF-8",
                path.display(),
                e.utf8_error().valid_up_to()
            ))
        })?;
        Dataset::from_text_with(&text, &format!("data file {}", path.display()), kind)
    }

    /// Training batch number `index` (`step * grad_accum + micro_step`): the one rule that
    /// training, the run header's batch checksum and `export --batches` share.
    pub fn train_batch(&self, config: &crate::Config, index: u64) -> Batch {
        let t = &config.train;
        self.batch(Split::Train, "train", t.seed, index, t.batch_size, config.model.block_size)
    }

    /// Batch number `index` of the stream `purpose` ("train", "eval-val", ...): a pure
    /// function of its arguments, so a resumed run sees exactly the batches the
    /// uninterrupted run would have.
    pub fn batch(
        &self,
        split: Split,
        purpose: &str,
        seed: u64,
        index: u64,
        batch_size: usize,
        block_size: usize,
    ) -> Batch {
        let data = match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        };
        let mut rng = Stream::new(seed, purpose, index);
        let mut x = Vec::with_capacity(batch_size * block_size);
        let mut y = Vec::with_capacity(batch_size * block_size);
        let mut row = Vec::with_capacity(block_size + 1);
        for _ in 0..batch_size {
            let start = rng.below(data.len() - block_size);
            row.clear();
            data.copy(start, block_size + 1, &mut row);
            x.extend_from_slice(&row[..block_size]);
            y.extend_from_slice(&row[1..]);
        }
        Batch { x, y, batch_size, block_size }
    }

    /// The validation loss of a model that knows only how often each character occurs in
    /// the training split (add-one smoothed, so an unseen character costs a finite loss):
    /// where a model that has learned no context stalls. Below it, a run has learned
    /// something about the text; at it, only the alphabet.
    pub fn unigram_loss(&self) -> f64 {
        let mut counts = vec![1.0f64; self.tokenizer.vocab_size()];
        self.train.for_each_block(|ids| {
            for &t in ids {
                counts[t as usize] += 1.0;
            }
        });
        let total: f64 = counts.iter().sum();
        let mut sum = 0.0;
        self.val.for_each_block(|ids| sum += ids.iter().map(|&t| -(counts[t as usize] / total).ln()).sum::<f64>());
        sum / self.val.len() as f64
    }
}

/// The embedded default corpus: plays in the layout of tiny Shakespeare (a speaker's name,
/// a colon, lines of verse, a blank line) written by a small grammar from a fixed seed.
/// It has real structure at every scale a small model can learn (spelling, agreement,
/// speaker turns) and needs no download. About 300 kB.
pub fn default_corpus() -> String {
    const NAMES: &[&str] =
        &["KING", "QUEEN", "DUKE", "HERALD", "NURSE", "FOOL", "CAPTAIN", "SERVANT", "LADY", "PRIEST"];
    const ADJ: &[&str] =
        &["old", "young", "gentle", "bold", "noble", "weary", "fair", "dark", "proud", "sweet", "cruel", "honest"];
    const NOUN_S: &[&str] =
        &["king", "queen", "sword", "crown", "heart", "night", "ship", "letter", "horse", "friend", "storm", "garden"];
    const NOUN_P: &[&str] = &[
        "kings", "queens", "swords", "crowns", "hearts", "nights", "ships", "letters", "horses", "friends", "storms",
        "gardens",
    ];
    const VERB_S: &[&str] =
        &["loves", "fears", "keeps", "finds", "breaks", "calls", "sees", "seeks", "holds", "leaves"];
    const VERB_P: &[&str] = &["love", "fear", "keep", "find", "break", "call", "see", "seek", "hold", "leave"];
    const ADV: &[&str] = &["tonight", "again", "in silence", "with honour", "before the dawn", "for ever", "at last"];
    const OPEN: &[&str] = &["O", "Alas", "Good", "Hark", "Nay", "Ay", "Come"];

    let mut rng = Stream::new(2026, "default-corpus", 0);
    let mut pick = |list: &[&'static str]| list[rng.below(list.len())];
    let mut out = String::new();
    while out.len() < 300_000 {
        out.push_str(pick(NAMES));
        out.push_str(":\n");
        let lines = 1 + pick(&["1", "2", "2", "3", "4"]).parse::<usize>().unwrap();
        for line in 0..lines {
            let plural = pick(&["s", "p"]) == "p";
            let (subject, verb) = if plural { (pick(NOUN_P), pick(VERB_P)) } else { (pick(NOUN_S), pick(VERB_S)) };
            let article = if plural { pick(&["the", "my", "our", "these"]) } else { pick(&["the", "my", "a", "this"]) };
            let mut sentence = format!("{article} {} {subject} {verb} ", pick(ADJ));
            let object_plural = pick(&["s", "p"]) == "p";
            let object = if object_plural { pick(NOUN_P) } else { pick(NOUN_S) };
            sentence.push_str(&format!("{} {} {object}", pick(&["the", "thy", "his", "her"]), pick(ADJ)));
            if pick(&["a", "b", "c"]) == "a" {
                sentence.push(' ');
                sentence.push_str(pick(ADV));
            }
            let mut sentence =
                if line == 0 && pick(&["a", "b"]) == "a" { format!("{}, {sentence}", pick(OPEN)) } else { sentence };
            if let Some(first) = sentence.get(0..1) {
                sentence.replace_range(0..1, &first.to_uppercase());
            }
            out.push_str(&sentence);
            out.push_str(if line + 1 == lines { pick(&[".", "!", "?"]) } else { pick(&[",", ";"]) });
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizer_round_trips_and_rejects_unknown_chars() {
        let t = Tokenizer::from_text("hello, world\n");
        assert_eq!(t.vocab_size(), 10); // h e l o , space w r d newline
        let ids = t.encode("hello world").unwrap();
        assert_eq!(t.decode(&ids), "hello world");
        assert!(t.encode("HELLO").is_err());
    }

    #[test]
    fn a_byte_order_mark_is_not_text() {
        let text: String = (0..200).map(|i| char::from(b'a' + (i % 3) as u8)).collect();
        let plain = Dataset::from_text(&text, "test").unwrap();
        let marked = Dataset::from_text(&format!("\u{feff}{text}"), "test").unwrap();
        assert_eq!(marked.tokenizer.chars, vec!['a', 'b', 'c']);
        assert_eq!((marked.train, marked.val), (plain.train, plain.val));
    }

    #[test]
    fn split_is_90_10_and_batches_are_shifted_and_seeded() {
        let text: String = (0..1000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let d = Dataset::from_text(&text, "test").unwrap();
        assert_eq!((d.train.len(), d.val.len()), (900, 100));
        let b = d.batch(Split::Train, "train", 1, 5, 4, 8);
        assert_eq!(b.x.len(), 32);
        for i in 0..4 {
            assert_eq!(&b.x[i * 8 + 1..i * 8 + 8], &b.y[i * 8..i * 8 + 7]);
        }
        assert_eq!(b.x, d.batch(Split::Train, "train", 1, 5, 4, 8).x);
        assert_ne!(b.x, d.batch(Split::Train, "train", 1, 6, 4, 8).x);
    }

    #[test]
    fn unigram_loss_is_the_cross_entropy_of_the_character_frequencies() {
        // Two characters, equally frequent in the training split: ln 2 per character.
        let d = Dataset::from_text(&"ab".repeat(100), "test").unwrap();
        assert!((d.unigram_loss() - std::f64::consts::LN_2).abs() < 1e-12);
        // 'a' three times as frequent as 'b' in training (counts 135+1, 45+1), and the
        // validation split has the same mix.
        let d = Dataset::from_text(&"aaab".repeat(50), "test").unwrap();
        let (pa, pb) = (136.0f64 / 182.0, 46.0f64 / 182.0);
        assert!((d.unigram_loss() - -(0.75 * pa.ln() + 0.25 * pb.ln())).abs() < 1e-12);
    }

    #[test]
    fn too_short_or_empty_data_is_an_input_error() {
        assert!(Dataset::from_text("", "x").unwrap_err().to_string().contains("empty"));
        let e = Dataset::from_text("abcdefghij", "x").unwrap().check_block_size(8).unwrap_err().to_string();
        assert!(e.contains("too short for block_size 8"), "{e}");
    }

    /// (That it is the same text everywhere is checked where it matters: the browser test's
    /// `repro` compares the data checksum of a wasm run with a native one.)
    #[test]
    fn default_corpus_is_speeches_of_two_to_five_lines() {
        let a = default_corpus();
        assert!(a.len() >= 300_000);
        let mut speakers = std::collections::BTreeSet::new();
        for speech in a.strip_suffix("\n\n").expect("ends with a blank line").split("\n\n") {
            let (speaker, text) = speech.split_once(":\n").expect(speech);
            assert!(!speaker.is_empty() && speaker.chars().all(|c| c.is_ascii_uppercase()), "{speech}");
            speakers.insert(speaker);
            let lines: Vec<&str> = text.split('\n').collect();
            assert!((2..=5).contains(&lines.len()), "{speech}");
            for (i, line) in lines.iter().enumerate() {
                let ends = if i + 1 == lines.len() { ['.', '!', '?'] } else { [',', ';', ','] };
                assert!(line.starts_with(char::is_uppercase) && line.ends_with(ends), "{speech}");
            }
        }
        assert_eq!(speakers.len(), 10, "{speakers:?}");
        assert!(Tokenizer::from_text(&a).vocab_size() < 60);
    }
}
