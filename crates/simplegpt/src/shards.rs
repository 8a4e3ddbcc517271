//! Token shards, read memory-mapped (never loaded whole); `prepare` writes them.
//!
//! Two formats, both of little-endian uint16 GPT-2 token ids:
//! - nanoGPT's: headerless, `train.bin` and `val.bin`;
//! - llm.c's: a header of 256 int32 (magic 20240520, version 1, the token count; the rest
//!   zero) then the tokens; `*_train_*.bin` and `*_val_*.bin` shards.
//!
//! A headerless file never starts with the magic when it holds GPT-2 ids: its first token
//! would be 0xED58 = 60760, past the vocabulary. A directory's validation split is its
//! `*_val_*` shards (or `val.bin`), else its last shard; a single file's is its last 10%.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use rayon::prelude::*;

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

    /// Gives back this process's hold on the pages of tokens [start, start + n) once read:
    /// they stay in the kernel's page cache, but no longer count in this process's memory,
    /// so reading a shard end to end (`check_ids`) costs none however large it is.
    fn release(&self, start: usize, n: usize) {
        #[cfg(unix)]
        // SAFETY: the map is read-only: once dropped, its pages are read again from the file,
        // the same bytes, where they are touched next. No slice into them is held here.
        let _ = unsafe {
            self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, self.offset + 2 * start, 2 * n)
        };
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
    pub fn copy(&self, start: usize, n: usize, out: &mut Vec<u32>) {
        for (shard, from, take) in self.pieces(start, n) {
            let bytes = shard.bytes(from, take);
            out.extend(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32));
        }
    }

    /// Gives back this process's hold on tokens `start..start + n` once read
    /// (`Shard::release`): for reading the whole concatenation a block at a time.
    pub fn release(&self, start: usize, n: usize) {
        for (shard, from, take) in self.pieces(start, n) {
            shard.release(from, take);
        }
    }

    /// Tokens `start..start + n` of the concatenation as (shard, its first token, count).
    fn pieces(&self, mut start: usize, mut n: usize) -> impl Iterator<Item = (&Shard, usize, usize)> {
        assert!(start + n <= self.len, "tokens {start}..{} of {}", start + n, self.len);
        let mut i = self.starts.partition_point(|&s| s <= start).saturating_sub(1);
        std::iter::from_fn(move || {
            (n > 0).then(|| {
                let seg = &self.segments[i];
                let within = start - self.starts[i];
                let take = n.min(seg.len - within);
                (start, n, i) = (start + take, n - take, i + 1);
                (&*seg.shard, seg.start + within, take)
            })
        })
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

/// Opens the shards at `path` (a directory of `.bin` shards or one `.bin` file) as the
/// training and validation splits of `tokenizer`'s ids, memory-mapped. Every shard's header, size and ids are
/// checked here (one pass over the data, which the OS pages in and out).
pub fn open(path: &Path, tokenizer: &Tokenizer) -> Result<(Mapped, Mapped)> {
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
    Ok((Mapped::new(train), Mapped::new(val)))
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
            let bad =
                shard.bytes(b * BLOCK, n).chunks_exact(2).any(|t| u16::from_le_bytes([t[0], t[1]]) as usize >= vocab);
            shard.release(b * BLOCK, n);
            bad
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
