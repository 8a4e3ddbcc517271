//! Token shards: reading them memory-mapped (never loaded whole) and writing them from text.
//!
//! Two formats, both of little-endian uint16 GPT-2 token ids:
//! - nanoGPT's: headerless, `train.bin` and `val.bin`;
//! - llm.c's: a header of 256 int32 (magic 20240520, version 1, the token count; the rest
//!   zero) then the tokens; `*_train_*.bin` and `*_val_*.bin` shards.
//!
//! A headerless file never starts with the magic when it holds GPT-2 ids: its first token
//! would be 0xED58 = 60760, past the vocabulary. A directory's validation split is its
//! `*_val_*` shards (or `val.bin`), else its last shard; a single file's is its last 10%.
//!
//! `prepare` tokenises text into shards: streaming (a file is read in blocks, a document is
//! cut into pieces only where GPT-2's pre-tokenizer splits anyway, see `safe_cut`, so the
//! ids are those of the document tokenised whole), on every core (rayon), with each document
//! preceded by `<|endoftext|>` (as llm.c's fineweb.py). The output depends on the input
//! alone, never on the number of threads.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

use crate::data::{Dataset, Tokens};
use crate::error::{Error, Result, io};
use crate::tokenizer::{Tokenizer, TokenizerKind};

/// llm.c's shard header: 256 int32.
pub const HEADER_BYTES: usize = 1024;
pub const MAGIC: i32 = 20240520;
/// llm.c's version 1: GPT-2 tokens as uint16 (version 2 holds LLaMA 3 tokens as uint32).
pub const VERSION: i32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Headerless uint16, `train.bin` / `val.bin`.
    NanoGpt,
    /// 1024-byte header, `*_train_*.bin` / `*_val_*.bin`.
    LlmC,
}

/// One memory-mapped shard file.
struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Bytes before the first token (0 or `HEADER_BYTES`).
    offset: usize,
    /// Tokens in it.
    len: usize,
    format: Format,
    /// llm.c's version: 1 (GPT-2 tokens, uint16) or 2 (LLaMA 3, uint32); 1 for nanoGPT's.
    version: i32,
}

impl Shard {
    fn bytes(&self, start: usize, n: usize) -> &[u8] {
        &self.map[self.offset + 2 * start..self.offset + 2 * (start + n)]
    }
}

/// A run of tokens of one shard.
#[derive(Clone)]
struct Segment {
    shard: Arc<Shard>,
    start: usize,
    len: usize,
    /// What it is, for messages ("shard X", "the last 10% of X").
    label: String,
}

/// Token ids in memory-mapped shards: their segments, concatenated.
#[derive(Clone)]
pub struct Mapped {
    segments: Vec<Segment>,
    /// Where each segment starts in the concatenation.
    starts: Vec<usize>,
    len: usize,
}

impl Mapped {
    fn new(segments: Vec<Segment>) -> Mapped {
        let mut starts = Vec::with_capacity(segments.len());
        let mut len = 0;
        for s in &segments {
            starts.push(len);
            len += s.len;
        }
        Mapped { segments, starts, len }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends tokens `start..start + n` of the concatenation to `out`.
    pub fn copy(&self, mut start: usize, mut n: usize, out: &mut Vec<u32>) {
        assert!(start + n <= self.len, "tokens {start}..{} of {}", start + n, self.len);
        let mut i = self.starts.partition_point(|&s| s <= start) - 1;
        while n > 0 {
            let seg = &self.segments[i];
            let within = start - self.starts[i];
            let take = n.min(seg.len - within);
            let bytes = seg.shard.bytes(seg.start + within, take);
            out.extend(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32));
            (start, n, i) = (start + take, n - take, i + 1);
        }
    }

    /// The segments as (label, tokens), for messages.
    pub fn segment_lengths(&self) -> impl Iterator<Item = (&str, usize)> {
        self.segments.iter().map(|s| (s.label.as_str(), s.len))
    }

    /// The shard files, in order (each once).
    pub fn files(&self) -> Vec<&Path> {
        let mut files: Vec<&Path> = self.segments.iter().map(|s| s.shard.path.as_path()).collect();
        files.dedup();
        files
    }
}

/// Opens the shards at `path` (a directory of `.bin` shards or one `.bin` file) as a
/// dataset of `tokenizer`'s ids, memory-mapped. Every shard's header, size and ids are
/// checked here (one pass over the data, which the OS pages in and out).
pub fn open(path: &Path, tokenizer: &Tokenizer) -> Result<Dataset> {
    if tokenizer.kind != TokenizerKind::Gpt2 {
        return Err(Error::Input(format!(
            "{} holds token shards, which are GPT-2 token ids; train them with tokenizer = \"gpt2\" \
             (--set tokenizer=gpt2, or --preset gpt2-small)",
            path.display()
        )));
    }
    let (train, val) = if path.is_dir() { dir_splits(path)? } else { file_splits(path)? };
    let all: Vec<&Segment> = train.iter().chain(&val).collect();
    // One tokenizer and one format: llm.c's version says which tokenizer wrote a shard.
    for pair in all.windows(2) {
        let (a, b) = (&pair[0].shard, &pair[1].shard);
        if a.format != b.format {
            return Err(Error::Input(format!(
                "{} is {} and {} is {}: one dataset's shards must share a format; prepare them again together",
                a.path.display(),
                format_name(a.format),
                b.path.display(),
                format_name(b.format)
            )));
        }
    }
    if let Some(pair) = all.windows(2).find(|p| p[0].shard.version != p[1].shard.version) {
        let (a, b) = (&pair[0].shard, &pair[1].shard);
        return Err(Error::Input(format!(
            "{} is llm.c version {} and {} version {}: shards of different tokenizers (1: GPT-2, 2: LLaMA 3) \
             are mixed; keep one tokenizer's shards in a directory",
            a.path.display(),
            a.version,
            b.path.display(),
            b.version
        )));
    }
    if let Some(s) = all.iter().find(|s| s.shard.version != VERSION) {
        return Err(Error::Input(format!(
            "{}: llm.c shard version {} holds LLaMA 3 tokens (uint32); simplegpt reads version {VERSION} \
             (GPT-2 tokens): prepare the text with simplegpt prepare",
            s.shard.path.display(),
            s.shard.version
        )));
    }
    check_ids(&all, tokenizer)?;
    let name = format!("token shards {}", path.display());
    Ok(Dataset {
        name,
        tokenizer: tokenizer.clone(),
        train: Tokens::Mapped(Mapped::new(train)),
        val: Tokens::Mapped(Mapped::new(val)),
    })
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::NanoGpt => "a headerless (nanoGPT) token file",
        Format::LlmC => "an llm.c shard (with a header)",
    }
}

/// Whether `path` names token shards (a directory, or a `.bin` file) rather than text.
pub fn is_shards(path: &Path) -> bool {
    path.is_dir() || path.extension().is_some_and(|e| e == "bin")
}

fn whole(shard: Arc<Shard>) -> Segment {
    let label = format!("shard {}", shard.path.display());
    Segment { len: shard.len, start: 0, shard, label }
}

/// A single file: the first 90% trains, the last 10% validates.
fn file_splits(path: &Path) -> Result<(Vec<Segment>, Vec<Segment>)> {
    let shard = Arc::new(map(path, None)?);
    let n = shard.len * 9 / 10;
    let label = |what: &str| format!("{what} of {}", path.display());
    let train = Segment { shard: shard.clone(), start: 0, len: n, label: label("the first 90%") };
    let val = Segment { shard: shard.clone(), start: n, len: shard.len - n, label: label("the last 10% (validation)") };
    Ok((vec![train], vec![val]))
}

/// A directory: nanoGPT's `train.bin` + `val.bin`, or llm.c's `*_train_*` / `*_val_*`
/// shards, or any `.bin` files (the last validates; one alone splits 90/10).
fn dir_splits(dir: &Path) -> Result<(Vec<Segment>, Vec<Segment>)> {
    let mut bins: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io("cannot read data directory", dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "bin"))
        .collect();
    bins.sort();
    if bins.is_empty() {
        return Err(Error::Input(format!(
            "{} holds no .bin token shards; write them with `simplegpt prepare TEXT --out {}`",
            dir.display(),
            dir.display()
        )));
    }
    let file_name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let (train_bin, val_bin) = (dir.join("train.bin"), dir.join("val.bin"));
    if train_bin.is_file() && val_bin.is_file() {
        return Ok((vec![whole(Arc::new(map(&train_bin, None)?))], vec![whole(Arc::new(map(&val_bin, None)?))]));
    }
    let named: Vec<&PathBuf> =
        bins.iter().filter(|p| file_name(p).contains("_train_") || file_name(p).contains("_val_")).collect();
    if !named.is_empty() {
        let mut train = Vec::new();
        let mut val = Vec::new();
        for p in named {
            let shard = whole(Arc::new(map(p, Some(Format::LlmC))?));
            if file_name(p).contains("_val_") { val.push(shard) } else { train.push(shard) }
        }
        if val.is_empty() && train.len() > 1 {
            val.push(train.pop().expect("two or more"));
        }
        if train.is_empty() || val.is_empty() {
            return Err(Error::Input(format!(
                "{} has {} of its shards: a run needs train and validation tokens; add a *_train_* shard \
                 and a *_val_* shard (or two train shards: the last validates)",
                dir.display(),
                if train.is_empty() { "only validation" } else { "just one" }
            )));
        }
        return Ok((train, val));
    }
    if bins.len() == 1 {
        return file_splits(&bins[0]);
    }
    let mut shards = bins.iter().map(|p| Ok(whole(Arc::new(map(p, None)?)))).collect::<Result<Vec<_>>>()?;
    let val = shards.pop().expect("two or more");
    Ok((shards, vec![val]))
}

/// Maps one shard, checking its header (`expect`: the format its name says, if any).
fn map(path: &Path, expect: Option<Format>) -> Result<Shard> {
    let file = File::open(path).map_err(io("cannot open token shard", path))?;
    // SAFETY: the map is read only; a shard changed by another process while it trains
    // would change the tokens read, never the memory safety of reading bytes.
    let map = unsafe { Mmap::map(&file) }.map_err(io("cannot map token shard", path))?;
    let size = map.len();
    let int = |i: usize| i32::from_le_bytes(map[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    let headered = size >= 4 && int(0) == MAGIC;
    let p = path.display();
    if expect == Some(Format::LlmC) && !headered {
        let magic = if size >= 4 { int(0).to_string() } else { "none: the file is shorter than 4 bytes".into() };
        return Err(Error::Input(format!(
            "{p}: not an llm.c shard (magic {magic}, expected {MAGIC}); rename it unless it is one \
             (*_train_*/*_val_* names are llm.c shards), or write it again with simplegpt prepare"
        )));
    }
    if headered {
        if size < HEADER_BYTES {
            return Err(Error::Input(format!(
                "{p}: an llm.c shard must be at least {HEADER_BYTES} bytes (its header), this one has {size}; \
                 it is truncated: write it again"
            )));
        }
        // Version 1: GPT-2 tokens as uint16; 2: LLaMA 3 tokens as uint32 (read for its
        // size, so that mixing it with version 1 is named as such, then refused).
        let version = int(1);
        let width = match version {
            1 => 2,
            2 => 4,
            _ => {
                return Err(Error::Input(format!(
                    "{p}: llm.c shard version {version}, which is no version llm.c writes (1: GPT-2 tokens, \
                     2: LLaMA 3 tokens); it is damaged or not a shard: write it again"
                )));
            }
        };
        let count = int(2);
        let body = size - HEADER_BYTES;
        if count < 0 || body as u64 != width * count as u64 {
            return Err(Error::Input(format!(
                "{p}: its header says {count} tokens ({} bytes after the header) but the file holds {body}; \
                 it is truncated or damaged: write it again",
                width as i64 * count as i64
            )));
        }
        return Ok(Shard {
            path: path.to_path_buf(),
            map,
            offset: HEADER_BYTES,
            len: count as usize,
            format: Format::LlmC,
            version,
        });
    } else {
        if size % 2 != 0 {
            return Err(Error::Input(format!(
                "{p}: {size} bytes, an odd number, so not uint16 tokens; it is truncated or not a token file: \
                 write it again (simplegpt prepare)"
            )));
        }
        Ok(Shard { path: path.to_path_buf(), map, offset: 0, len: size / 2, format: Format::NanoGpt, version: 1 })
    }
}

/// Every id below the vocabulary size, in parallel over blocks of each shard.
fn check_ids(segments: &[&Segment], tokenizer: &Tokenizer) -> Result<()> {
    let vocab = tokenizer.vocab_size();
    let mut shards: Vec<&Arc<Shard>> = segments.iter().map(|s| &s.shard).collect();
    shards.dedup_by(|a, b| Arc::ptr_eq(a, b));
    for shard in shards {
        const BLOCK: usize = 1 << 20;
        let bad = (0..shard.len.div_ceil(BLOCK)).into_par_iter().find_first(|&b| {
            let n = BLOCK.min(shard.len - b * BLOCK);
            shard.bytes(b * BLOCK, n).chunks_exact(2).any(|t| u16::from_le_bytes([t[0], t[1]]) as usize >= vocab)
        });
        if let Some(b) = bad {
            let n = BLOCK.min(shard.len - b * BLOCK);
            let (i, id) = shard
                .bytes(b * BLOCK, n)
                .chunks_exact(2)
                .map(|t| u16::from_le_bytes([t[0], t[1]]))
                .enumerate()
                .find(|&(_, id)| id as usize >= vocab)
                .expect("found above");
            return Err(Error::Input(format!(
                "{}: token {} is id {id}, not below the vocabulary size {vocab} ({}): the shard holds \
                 another tokenizer's ids; prepare it again with simplegpt prepare",
                shard.path.display(),
                b * BLOCK + i,
                tokenizer.kind
            )));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Writing: tokenising text into shards.

/// Whether ids can be cut between bytes `i - 1` and `i` of `text` without changing them:
/// GPT-2's pre-tokenizer splits there whatever follows. Two places, where none of its
/// patterns can span the cut and no look-ahead sees across it:
/// - after a newline that follows a non-space and precedes a non-space ("x\n|y": the
///   newline is a piece on its own either way);
/// - before a space between two ASCII letters ("x| y": a letter run ends at the space,
///   and " y..." starts a piece either way).
pub fn safe_cut(text: &str, i: usize) -> bool {
    let b = text.as_bytes();
    if i < 2 || i + 1 >= b.len() || !text.is_char_boundary(i) {
        return false;
    }
    let after_newline = b[i - 1] == b'\n' && {
        let before = text[..i - 1].chars().next_back().expect("i >= 2");
        let next = text[i..].chars().next().expect("i < len");
        !before.is_whitespace() && !next.is_whitespace()
    };
    let space_in_words = b[i] == b' ' && b[i - 1].is_ascii_alphabetic() && b[i + 1].is_ascii_alphabetic();
    after_newline || space_in_words
}

/// The first safe cut at or after byte `from` and before `to`, if any.
fn find_cut(text: &str, from: usize, to: usize) -> Option<usize> {
    let b = text.as_bytes();
    (from.max(2)..to.min(b.len().saturating_sub(1))).find(|&i| (b[i - 1] == b'\n' || b[i] == b' ') && safe_cut(text, i))
}

/// The pieces a text is cut into for tokenising: about `CHUNK` bytes each.
const CHUNK: usize = 1 << 20;

/// `text` cut at safe places into pieces of about `chunk` bytes.
fn pieces(text: &str, chunk: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while text.len() - start > 2 * chunk {
        match find_cut(text, start + chunk, text.len()) {
            Some(cut) => {
                out.push(&text[start..cut]);
                start = cut;
            }
            None => break,
        }
    }
    out.push(&text[start..]);
    out
}

/// `text` encoded by `tokenizer` (`Tokenizer::encode`), in pieces on every core: the same
/// ids as one call.
pub fn encode_parallel(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    if tokenizer.kind == TokenizerKind::Char {
        return tokenizer.encode(text);
    }
    let parts = pieces(text, CHUNK);
    let ids = parts.par_iter().map(|p| tokenizer.encode(p)).collect::<Result<Vec<_>>>()?;
    Ok(ids.concat())
}

/// What `prepare` writes.
pub struct PrepareOptions {
    pub format: Format,
    /// Documents are separated by this string in a file; without it, a file is a document.
    pub delimiter: Option<String>,
    /// The fraction of the tokens (from the document boundary at or after it) that validates.
    pub val_fraction: f64,
    /// llm.c format: the most tokens in one shard.
    pub shard_tokens: usize,
    /// llm.c format: shard names are `{name}_train_000000.bin`, `{name}_val_000000.bin`.
    pub name: String,
}

/// What `prepare` wrote.
#[derive(Debug)]
pub struct Prepared {
    pub documents: u64,
    pub bytes: u64,
    pub train_tokens: u64,
    pub val_tokens: u64,
    pub files: Vec<PathBuf>,
}

/// The text files under `paths` (files, and the files under directories, recursively,
/// hidden ones left out), in a fixed order: the order given, each directory sorted.
pub fn input_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io("cannot read directory", dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.is_file() {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            walk(p, &mut out)?;
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::Input(format!("{}: no such file or directory", p.display())));
        }
    }
    if out.is_empty() {
        return Err(Error::Input("no input files: give text files or directories that hold some".into()));
    }
    Ok(out)
}

/// A piece of text to tokenise: `doc_start` when a document begins with it.
struct Piece {
    text: String,
    doc_start: bool,
}

/// Reads one file in blocks and cuts it into documents and safe pieces.
struct FileReader<'a> {
    path: &'a Path,
    file: File,
    /// Text read but not yet handed out.
    buf: String,
    /// Bytes of an incomplete UTF-8 character at the end of the last block.
    pending: Vec<u8>,
    /// File offset of `pending`'s first byte (= bytes read into `buf` so far plus consumed).
    offset: u64,
    eof: bool,
    in_doc: bool,
    delimiter: Option<&'a str>,
}

impl<'a> FileReader<'a> {
    fn new(path: &'a Path, delimiter: Option<&'a str>) -> Result<Self> {
        let file = File::open(path).map_err(io("cannot read", path))?;
        Ok(FileReader {
            path,
            file,
            buf: String::new(),
            pending: Vec::new(),
            offset: 0,
            eof: false,
            in_doc: false,
            delimiter,
        })
    }

    /// Reads one block into `buf`; returns the bytes read.
    fn fill(&mut self) -> Result<usize> {
        let mut block = std::mem::take(&mut self.pending);
        let had = block.len();
        block.resize(had + CHUNK, 0);
        let n = self.file.read(&mut block[had..]).map_err(io("cannot read", self.path))?;
        block.truncate(had + n);
        if n == 0 {
            self.eof = true;
        }
        let first = self.offset == 0;
        let (valid, rest) = match std::str::from_utf8(&block) {
            Ok(_) => (block.len(), 0),
            Err(e) if e.error_len().is_none() && !self.eof => (e.valid_up_to(), block.len() - e.valid_up_to()),
            Err(e) => {
                return Err(Error::Input(format!(
                    "{} is not UTF-8 text (invalid byte at offset {}); convert it, e.g. with iconv -t UTF-8",
                    self.path.display(),
                    self.offset + e.valid_up_to() as u64
                )));
            }
        };
        let text = std::str::from_utf8(&block[..valid]).expect("checked");
        // A byte-order mark marks the encoding; it is not text.
        let text = if first { text.strip_prefix('\u{feff}').unwrap_or(text) } else { text };
        self.buf.push_str(text);
        self.offset += valid as u64;
        self.pending = block[valid..valid + rest].to_vec();
        Ok(n)
    }

    /// The next piece, or None at the end of the file.
    fn next(&mut self) -> Result<Option<Piece>> {
        loop {
            let keep = self.delimiter.map_or(0, str::len);
            // A whole document in the buffer.
            if let Some(d) = self.delimiter
                && let Some(at) = self.buf.find(d)
            {
                let text: String = self.buf[..at].to_string();
                self.buf.drain(..at + d.len());
                let doc_start = !self.in_doc;
                self.in_doc = false;
                if text.is_empty() && doc_start {
                    continue; // an empty document: nothing to write
                }
                return Ok(Some(Piece { text, doc_start }));
            }
            // A piece of a document longer than the buffer, cut where the ids allow.
            if self.buf.len() >= 2 * CHUNK
                && let Some(cut) = find_cut(&self.buf, CHUNK, self.buf.len() - keep)
            {
                let text: String = self.buf[..cut].to_string();
                self.buf.drain(..cut);
                let doc_start = !self.in_doc;
                self.in_doc = true;
                return Ok(Some(Piece { text, doc_start }));
            }
            if self.eof {
                if self.buf.is_empty() && !self.in_doc {
                    return Ok(None);
                }
                let text = std::mem::take(&mut self.buf);
                let doc_start = !self.in_doc;
                self.in_doc = false;
                if text.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Piece { text, doc_start }));
            }
            self.fill()?;
        }
    }
}

/// Tokenises the text files `files` into shards in `out` (a directory, created), with
/// GPT-2's BPE; `progress` is called with the input bytes done so far.
pub fn prepare(
    files: &[PathBuf],
    out: &Path,
    tokenizer: &Tokenizer,
    opts: &PrepareOptions,
    progress: &dyn Fn(u64),
) -> Result<Prepared> {
    let Some(eot) = tokenizer.eot() else {
        return Err(Error::Input(
            "prepare writes GPT-2 token shards (--tokenizer gpt2); character-level text needs no preparing: \
             pass the text file to train --data"
                .into(),
        ));
    };
    if !(opts.val_fraction > 0.0 && opts.val_fraction < 1.0) {
        return Err(Error::Input(format!("--val-fraction must be between 0 and 1, got {}", opts.val_fraction)));
    }
    std::fs::create_dir_all(out).map_err(io("cannot create", out))?;
    // Every id first goes to one headerless file; the split and the shards are cut from it
    // at the end, when the number of tokens is known.
    let all_path = out.join(".prepare-all.tmp");
    let mut all = BufWriter::new(File::create(&all_path).map_err(io("cannot create", &all_path))?);
    let mut doc_starts: Vec<u64> = Vec::new();
    let mut tokens: u64 = 0;
    let mut bytes_done: u64 = 0;
    let batch_bytes = CHUNK * 4 * rayon::current_num_threads().max(1);
    let mut batch: Vec<Piece> = Vec::new();
    let mut batch_len = 0;
    let mut flush = |batch: &mut Vec<Piece>, bytes_done: &mut u64, tokens: &mut u64| -> Result<()> {
        let ids: Vec<Vec<u32>> = batch.par_iter().map(|p| tokenizer.encode_ordinary(&p.text)).collect::<Result<_>>()?;
        for (piece, ids) in batch.iter().zip(ids) {
            if piece.doc_start {
                doc_starts.push(*tokens);
                all.write_all(&(eot as u16).to_le_bytes()).map_err(io("cannot write", &all_path))?;
                *tokens += 1;
            }
            let mut buf = Vec::with_capacity(2 * ids.len());
            for id in &ids {
                buf.extend_from_slice(&(*id as u16).to_le_bytes());
            }
            all.write_all(&buf).map_err(io("cannot write", &all_path))?;
            *tokens += ids.len() as u64;
            *bytes_done += piece.text.len() as u64;
        }
        batch.clear();
        progress(*bytes_done);
        Ok(())
    };
    for file in files {
        let mut reader = FileReader::new(file, opts.delimiter.as_deref())?;
        while let Some(piece) = reader.next()? {
            batch_len += piece.text.len();
            batch.push(piece);
            if batch_len >= batch_bytes {
                flush(&mut batch, &mut bytes_done, &mut tokens)?;
                batch_len = 0;
            }
        }
    }
    flush(&mut batch, &mut bytes_done, &mut tokens)?;
    drop(flush);
    all.into_inner().map_err(|e| Error::Input(format!("cannot write {}: {e}", all_path.display())))?;
    let documents = doc_starts.len() as u64;
    // Validation: from the first document start at or after (1 - val_fraction) of the
    // tokens; a single document is cut at that token.
    let at = ((tokens as f64) * (1.0 - opts.val_fraction)) as u64;
    let cut = doc_starts.iter().copied().find(|&s| s >= at && s > 0).unwrap_or(at);
    let result = write_split(&all_path, out, cut, tokens, opts);
    let _ = std::fs::remove_file(&all_path);
    let files = result?;
    Ok(Prepared { documents, bytes: bytes_done, train_tokens: cut, val_tokens: tokens - cut, files })
}

/// Writes tokens `0..cut` of the headerless file `all` as the training shards and
/// `cut..total` as the validation ones.
fn write_split(all: &Path, out: &Path, cut: u64, total: u64, opts: &PrepareOptions) -> Result<Vec<PathBuf>> {
    let file = File::open(all).map_err(io("cannot read", all))?;
    // SAFETY: our own temporary file, written and closed above.
    let map = unsafe { Mmap::map(&file) }.map_err(io("cannot map", all))?;
    let tokens = |a: u64, b: u64| &map[2 * a as usize..2 * b as usize];
    let mut written = Vec::new();
    match opts.format {
        Format::NanoGpt => {
            for (name, range) in [("train.bin", (0, cut)), ("val.bin", (cut, total))] {
                let path = out.join(name);
                write_file(&path, None, tokens(range.0, range.1))?;
                written.push(path);
            }
        }
        Format::LlmC => {
            for (split, (from, to)) in [("train", (0, cut)), ("val", (cut, total))] {
                let per = opts.shard_tokens.max(1) as u64;
                let mut start = from;
                let mut index = 0;
                loop {
                    let end = (start + per).min(to);
                    let path = out.join(format!("{}_{split}_{index:06}.bin", opts.name));
                    write_file(&path, Some(end - start), tokens(start, end))?;
                    written.push(path);
                    index += 1;
                    start = end;
                    if start >= to {
                        break;
                    }
                }
            }
        }
    }
    Ok(written)
}

/// One shard file: llm.c's header when `count` is given, then the token bytes.
fn write_file(path: &Path, count: Option<u64>, body: &[u8]) -> Result<()> {
    let mut f = BufWriter::new(File::create(path).map_err(io("cannot create", path))?);
    if let Some(count) = count {
        let count = i32::try_from(count).map_err(|_| {
            Error::Input(format!(
                "{}: {count} tokens do not fit llm.c's header; use a smaller --shard-tokens",
                path.display()
            ))
        })?;
        let mut header = [0i32; HEADER_BYTES / 4];
        (header[0], header[1], header[2]) = (MAGIC, VERSION, count);
        let bytes: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
        f.write_all(&bytes).map_err(io("cannot write", path))?;
    }
    f.write_all(body).map_err(io("cannot write", path))?;
    f.into_inner().map_err(|e| Error::Input(format!("cannot write {}: {e}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Stream;

    /// Random text over an alphabet that exercises every pattern of the pre-tokenizer:
    /// letters, digits, punctuation, contractions, every kind of whitespace, marks, CJK.
    fn random_text(seed: u64, len: usize) -> String {
        const PARTS: &[&str] = &[
            "a",
            "b",
            "Z",
            "x",
            " ",
            " ",
            "  ",
            "\n",
            "\n",
            "\n\n",
            "\t",
            "\r\n",
            "'s",
            "'ll",
            "'",
            "1",
            "42",
            ".",
            ",",
            "!?",
            "e\u{301}",
            "中",
            "文",
            "🦀",
            " the",
            "\u{a0}",
            "-",
            "<|endoftext|>",
        ];
        let mut rng = Stream::new(seed, "random-text", 0);
        let mut s = String::new();
        while s.len() < len {
            s.push_str(PARTS[rng.below(PARTS.len())]);
        }
        s
    }

    #[test]
    fn cutting_at_safe_places_keeps_the_ids() {
        let t = Tokenizer::gpt2();
        let mut cuts = 0;
        for seed in 0..40 {
            let text = random_text(seed, 400);
            let whole = t.encode_ordinary(&text).unwrap();
            for i in 0..text.len() {
                if safe_cut(&text, i) {
                    cuts += 1;
                    let mut parts = t.encode_ordinary(&text[..i]).unwrap();
                    parts.extend(t.encode_ordinary(&text[i..]).unwrap());
                    assert_eq!(parts, whole, "cut at {i} of {text:?}");
                }
            }
            // And in many pieces at once, with special tokens too.
            let pieces = pieces(&text, 8);
            assert!(pieces.len() > 1);
            assert_eq!(pieces.concat(), text);
            let ids: Vec<u32> = pieces.iter().flat_map(|p| t.encode(p).unwrap()).collect();
            assert_eq!(ids, t.encode(&text).unwrap());
        }
        assert!(cuts > 200, "{cuts}");
    }

    #[test]
    fn unsafe_places_are_refused() {
        // Where cutting would change the ids: after a space (" b" is one piece), in a word.
        let t = Tokenizer::gpt2();
        for (text, i) in [("a b", 2), ("hello world", 2), ("it's", 3)] {
            assert!(!safe_cut(text, i), "{text:?} {i}");
            let mut parts = t.encode_ordinary(&text[..i]).unwrap();
            parts.extend(t.encode_ordinary(&text[i..]).unwrap());
            assert_ne!(parts, t.encode_ordinary(text).unwrap(), "{text:?} is an example of why");
        }
    }

    #[test]
    fn a_file_is_read_in_pieces_with_the_ids_of_the_whole() {
        let dir = std::env::temp_dir().join(format!("simplegpt-shards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Over two reader blocks, so that pieces are cut; a multi-byte character at a block edge.
        let mut text = String::new();
        let mut seed = 0;
        while text.len() < 3 * CHUNK {
            text.push_str(&random_text(seed, 1000).replace("<|endoftext|>", ""));
            text.push_str("é\n");
            seed += 1;
        }
        let path = dir.join("doc.txt");
        std::fs::write(&path, &text).unwrap();
        let mut reader = FileReader::new(&path, None).unwrap();
        let mut pieces = Vec::new();
        while let Some(p) = reader.next().unwrap() {
            pieces.push(p);
        }
        assert!(pieces.len() > 1);
        assert!(pieces[0].doc_start && pieces[1..].iter().all(|p| !p.doc_start));
        let t = Tokenizer::gpt2();
        let ids: Vec<u32> = pieces.iter().flat_map(|p| t.encode_ordinary(&p.text).unwrap()).collect();
        assert_eq!(ids, t.encode_ordinary(&text).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
