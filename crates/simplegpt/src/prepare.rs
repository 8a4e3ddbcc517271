//! `simplegpt prepare`: text tokenised into token shards (see `shards` for the formats),
//! streaming (a file is read in blocks, a document is cut into pieces only where GPT-2's
//! pre-tokenizer splits anyway, see `safe_cut`, so the ids are those of the document
//! tokenised whole), on every core (rayon), with each document preceded by
//! `<|endoftext|>` (as llm.c's fineweb.py). The output depends on the input alone, never on
//! the number of threads.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;

use crate::error::{Error, Result, io};
use crate::shards::{Format, HEADER_BYTES, MAGIC, VERSION};
use crate::tokenizer::{Tokenizer, TokenizerKind};

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
