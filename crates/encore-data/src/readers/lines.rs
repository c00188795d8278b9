//! A zero-copy line reader over plain or bzip2-compressed text (SPEC §2: "must stream, never load
//! whole").
//!
//! Lines are handed out as slices of one reused buffer, so reading a file allocates once no
//! matter how many rows it has. `\n` and `\r\n` line ends are both accepted; the returned slice
//! has neither. Decompression errors (a truncated or corrupt `.bz2`) become a
//! [`DataError::Format`] naming the file and the last line read, never a silent short read.

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// Initial buffer size: large enough that `read` calls are rare, small enough to stay in L2.
const INITIAL_BUFFER: usize = 1 << 20;
/// A line longer than this is refused rather than growing the buffer without bound (a binary
/// file fed to a text reader would otherwise be read whole into memory).
pub(crate) const MAX_LINE_BYTES: usize = 256 << 20;

/// Whether `path` names a bzip2 file, by extension or by its magic bytes.
fn is_bzip2(path: &Path, file: &mut File) -> Result<bool> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("bz2"))
    {
        return Ok(true);
    }
    let mut head = [0u8; 10];
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(DataError::io(path, e)),
        }
    }
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(0))
        .map_err(|e| DataError::io(path, e))?;
    // "BZh" + block size digit + the block magic (pi) or the end-of-stream magic (sqrt pi).
    Ok(got == 10
        && &head[..3] == b"BZh"
        && (b'1'..=b'9').contains(&head[3])
        && (head[4..] == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59]
            || head[4..] == [0x17, 0x72, 0x45, 0x38, 0x50, 0x90]))
}

/// Open a file for line reading, decompressing `.bz2` (including multi-stream files as written
/// by `pbzip2`) on the fly.
pub(crate) fn open_lines(path: &Path) -> Result<LineReader<Box<dyn Read>>> {
    let mut file = File::open(path).map_err(|e| DataError::io(path, e))?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(DataError::format(
            path,
            "is a directory where a file was expected",
        ));
    }
    let compressed = is_bzip2(path, &mut file)?;
    let src: Box<dyn Read> = if compressed {
        Box::new(bzip2::read::MultiBzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut reader = LineReader::new(src, path);
    reader.compressed = compressed;
    Ok(reader)
}

/// Streams lines out of any byte source with one reused buffer.
pub(crate) struct LineReader<R> {
    src: R,
    path: PathBuf,
    buf: Vec<u8>,
    /// Start of the unread data in `buf`.
    start: usize,
    /// End of the valid data in `buf`.
    end: usize,
    /// How far past `start` we have already searched for a newline.
    scanned: usize,
    eof: bool,
    line_no: u64,
    compressed: bool,
    /// The bytes of the line last returned, if the last call returned one.
    last: Option<std::ops::Range<usize>>,
}

impl<R: Read> LineReader<R> {
    /// Wrap a byte source; `path` is only used in error messages.
    pub(crate) fn new(src: R, path: &Path) -> Self {
        Self {
            src,
            path: path.to_path_buf(),
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            scanned: 0,
            eof: false,
            line_no: 0,
            compressed: false,
            last: None,
        }
    }

    /// The file the lines come from.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The line last returned by [`Self::next_line`] again (`None` if that call found the
    /// end). Lets a caller loop over lines and then return the one it stopped at.
    pub(crate) fn current(&self) -> Option<(u64, &[u8])> {
        self.last.clone().map(|r| (self.line_no, &self.buf[r]))
    }

    /// The next line (its 1-based number and its bytes without the line end), or `None` at the
    /// end of the input. A trailing line without a final newline is returned too.
    #[inline]
    pub(crate) fn next_line(&mut self) -> Result<Option<(u64, &[u8])>> {
        loop {
            let pending = &self.buf[self.start + self.scanned..self.end];
            if let Some(pos) = memchr::memchr(b'\n', pending) {
                let line_start = self.start;
                let mut line_end = self.start + self.scanned + pos;
                self.start = line_end + 1;
                self.scanned = 0;
                self.line_no += 1;
                if line_end > line_start && self.buf[line_end - 1] == b'\r' {
                    line_end -= 1;
                }
                self.last = Some(line_start..line_end);
                return Ok(Some((self.line_no, &self.buf[line_start..line_end])));
            }
            self.scanned = self.end - self.start;
            if self.eof {
                if self.start == self.end {
                    self.last = None;
                    return Ok(None);
                }
                let line_start = self.start;
                let mut line_end = self.end;
                self.start = self.end;
                self.scanned = 0;
                self.line_no += 1;
                if self.buf[line_end - 1] == b'\r' {
                    line_end -= 1;
                }
                self.last = Some(line_start..line_end);
                return Ok(Some((self.line_no, &self.buf[line_start..line_end])));
            }
            self.fill()?;
        }
    }

    /// Read more bytes, first moving the partial line to the front of the buffer.
    fn fill(&mut self) -> Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= MAX_LINE_BYTES {
                return Err(DataError::format(
                    &self.path,
                    format!(
                        "line {} is longer than {} MiB; is this a text file?",
                        self.line_no + 1,
                        MAX_LINE_BYTES >> 20
                    ),
                ));
            }
            let new_len = (self.buf.len() * 2).min(MAX_LINE_BYTES);
            self.buf.resize(new_len, 0);
        }
        loop {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let hint = if self.compressed {
                        "; the .bz2 stream is truncated or corrupt"
                    } else {
                        ""
                    };
                    return Err(DataError::format(
                        &self.path,
                        format!("read failed after line {}: {e}{hint}", self.line_no),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_lines(bytes: &[u8], initial: usize) -> Vec<Vec<u8>> {
        let mut r = LineReader::new(bytes, Path::new("mem"));
        r.buf = vec![0; initial];
        let mut out = Vec::new();
        while let Some((_, l)) = r.next_line().unwrap() {
            out.push(l.to_vec());
        }
        out
    }

    #[test]
    fn splits_lines_and_strips_crlf() {
        for initial in [1, 2, 3, 7, 1024] {
            let got = all_lines(b"a\tb\r\n\nccc\nlast", initial);
            assert_eq!(
                got,
                vec![b"a\tb".to_vec(), vec![], b"ccc".to_vec(), b"last".to_vec()]
            );
        }
    }

    #[test]
    fn counts_lines_and_remembers_the_current_one() {
        let mut r = LineReader::new(&b"x\ny\n"[..], Path::new("mem"));
        r.next_line().unwrap();
        r.next_line().unwrap();
        assert_eq!(r.current(), Some((2, &b"y"[..])));
        assert!(r.next_line().unwrap().is_none());
        assert_eq!(r.current(), None);
    }

    #[test]
    fn empty_input_has_no_lines() {
        assert!(all_lines(b"", 4).is_empty());
    }
}
