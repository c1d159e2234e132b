//! JSON-lines input: files (plain, `.gz`, `.zst`) or stdin, cut into blocks of whole lines.
//!
//! Blocks are the unit of parallel decoding: each holds about [`BLOCK_BYTES`] of complete
//! lines and the line number of its first line, so dead letters can name `{file, line}`.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::PathBuf;

/// Target size of one block; large enough to amortise hand-offs, small enough to pipeline.
pub const BLOCK_BYTES: usize = 1 << 20;

/// Errors reading input; all are operational.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    #[error("cannot open input {name}")]
    Open {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read input {name}")]
    Read {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// One input as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    Path(PathBuf),
}

impl Input {
    /// `-` is standard input; anything else a file path.
    pub fn parse(text: &str) -> Self {
        if text == "-" {
            Input::Stdin
        } else {
            Input::Path(PathBuf::from(text))
        }
    }

    /// The name written into dead letters.
    pub fn name(&self) -> String {
        match self {
            Input::Stdin => "-".into(),
            Input::Path(path) => path.display().to_string(),
        }
    }

    /// Opens the input, decompressing by file extension.
    fn open(&self) -> Result<Box<dyn Read + Send>, SourceError> {
        let path = match self {
            Input::Stdin => return Ok(Box::new(io::stdin())),
            Input::Path(path) => path,
        };
        let fail = |source| SourceError::Open {
            name: self.name(),
            source,
        };
        let file = BufReader::with_capacity(1 << 16, File::open(path).map_err(fail)?);
        Ok(match path.extension().and_then(|e| e.to_str()) {
            Some("gz") => Box::new(flate2::read::MultiGzDecoder::new(file)),
            Some("zst") => Box::new(zstd::Decoder::with_buffer(file).map_err(fail)?),
            _ => Box::new(file),
        })
    }
}

/// A run of whole lines from one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Index into the input list.
    pub input: usize,
    /// 1-based line number of the block's first line.
    pub first_line: u64,
    pub bytes: Vec<u8>,
}

impl Block {
    /// Non-blank lines as (line number, byte range without the line ending).
    pub fn lines(&self) -> impl Iterator<Item = (u64, std::ops::Range<usize>)> + '_ {
        let mut start = 0;
        let mut number = self.first_line;
        std::iter::from_fn(move || loop {
            if start >= self.bytes.len() {
                return None;
            }
            let end =
                memchr::memchr(b'\n', &self.bytes[start..]).map_or(self.bytes.len(), |i| start + i);
            let line = (number, trim(&self.bytes, start..end));
            start = end + 1;
            number += 1;
            if !line.1.is_empty() {
                return Some(line);
            }
        })
    }
}

/// Drops surrounding ASCII white space (including a CR of CRLF files).
fn trim(bytes: &[u8], mut range: std::ops::Range<usize>) -> std::ops::Range<usize> {
    while range.start < range.end && bytes[range.start].is_ascii_whitespace() {
        range.start += 1;
    }
    while range.end > range.start && bytes[range.end - 1].is_ascii_whitespace() {
        range.end -= 1;
    }
    range
}

/// Reads the inputs in order, yielding blocks of whole lines.
pub struct BlockReader {
    inputs: Vec<Input>,
    next_input: usize,
    current: Option<Box<dyn Read + Send>>,
    /// Bytes of an unfinished line carried into the next block.
    carry: Vec<u8>,
    next_line: u64,
    /// Bytes read so far from files, for progress.
    pub bytes_read: u64,
}

impl BlockReader {
    pub fn new(inputs: Vec<Input>) -> Self {
        BlockReader {
            inputs,
            next_input: 0,
            current: None,
            carry: Vec::new(),
            next_line: 1,
            bytes_read: 0,
        }
    }

    /// The next block, or `None` after the last input.
    pub fn next_block(&mut self) -> Result<Option<Block>, SourceError> {
        loop {
            if self.current.is_none() {
                if self.next_input == self.inputs.len() {
                    return Ok(None);
                }
                self.current = Some(self.inputs[self.next_input].open()?);
                self.next_input += 1;
                self.next_line = 1;
            }
            let input = self.next_input - 1;
            let mut bytes = std::mem::take(&mut self.carry);
            let cut = if self.fill(&mut bytes, input)? {
                self.current = None;
                bytes.len()
            } else if let Some(i) = memchr::memrchr(b'\n', &bytes) {
                i + 1
            } else {
                // One line longer than a block: keep reading into it.
                self.carry = bytes;
                continue;
            };
            self.carry = bytes.split_off(cut);
            if bytes.is_empty() {
                continue;
            }
            let first_line = self.next_line;
            self.next_line += memchr::memchr_iter(b'\n', &bytes).count() as u64;
            return Ok(Some(Block {
                input,
                first_line,
                bytes,
            }));
        }
    }

    /// Reads until `bytes` holds at least a block; returns whether the input ended.
    fn fill(&mut self, bytes: &mut Vec<u8>, input: usize) -> Result<bool, SourceError> {
        let Some(reader) = self.current.as_mut() else {
            return Ok(true);
        };
        let want = bytes.len() + BLOCK_BYTES;
        bytes.reserve(BLOCK_BYTES);
        while bytes.len() < want {
            let before = bytes.len();
            let read = reader
                .by_ref()
                .take((want - before) as u64)
                .read_to_end(bytes)
                .map_err(|source| SourceError::Read {
                    name: self.inputs[input].name(),
                    source,
                })?;
            self.bytes_read += read as u64;
            if read == 0 {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(inputs: Vec<Input>) -> Vec<(usize, u64, String)> {
        let mut reader = BlockReader::new(inputs);
        let mut lines = Vec::new();
        while let Some(block) = reader.next_block().unwrap() {
            for (number, range) in block.lines() {
                lines.push((
                    block.input,
                    number,
                    String::from_utf8(block.bytes[range].to_vec()).unwrap(),
                ));
            }
        }
        lines
    }

    #[test]
    fn numbers_lines_skips_blanks_and_handles_crlf_and_no_final_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        std::fs::write(&path, "one\r\n\n  \ntwo\nthree").unwrap();
        let got = read_all(vec![Input::Path(path)]);
        assert_eq!(
            got,
            vec![
                (0, 1, "one".into()),
                (0, 4, "two".into()),
                (0, 5, "three".into())
            ]
        );
    }

    #[test]
    fn long_lines_span_blocks_and_compressed_inputs_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let long = "x".repeat(BLOCK_BYTES * 2 + 17);
        let text = format!("first\n{long}\nlast\n");
        let gz = dir.path().join("b.jsonl.gz");
        let mut encoder =
            flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::fast());
        encoder.write_all(text.as_bytes()).unwrap();
        encoder.finish().unwrap();
        let zst = dir.path().join("c.jsonl.zst");
        std::fs::write(&zst, zstd::encode_all(text.as_bytes(), 1).unwrap()).unwrap();
        let got = read_all(vec![Input::Path(gz), Input::Path(zst)]);
        let summary: Vec<_> = got.iter().map(|(i, n, l)| (*i, *n, l.len())).collect();
        assert_eq!(
            summary,
            vec![
                (0, 1, 5),
                (0, 2, long.len()),
                (0, 3, 4),
                (1, 1, 5),
                (1, 2, long.len()),
                (1, 3, 4)
            ]
        );
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let mut reader = BlockReader::new(vec![Input::parse("/nonexistent/in.jsonl")]);
        let error = reader.next_block().unwrap_err();
        assert!(error.to_string().contains("/nonexistent/in.jsonl"));
    }
}
