//! Reads newline-delimited requests with a hard cap on line length, checked before the buffer
//! grows: a line longer than the cap is skipped up to its newline and reported once.

use std::io::{self, Read};

/// What [`LineReader::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line (without `\n`); the range indexes [`LineReader::buf`].
    Complete(std::ops::Range<usize>),
    /// A line over the cap (its bytes are being discarded).
    TooLong,
    /// No complete line is buffered; call [`LineReader::fill`].
    NeedMore,
}

/// Buffered line reader with a cap.
pub struct LineReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
    discarding: bool,
}

const INITIAL: usize = 64 << 10;

impl LineReader {
    /// A reader accepting lines of at most `max` bytes.
    pub fn new(max: usize) -> LineReader {
        LineReader {
            buf: vec![0; INITIAL.min(max + 1)],
            start: 0,
            end: 0,
            max,
            discarding: false,
        }
    }

    /// The buffer that [`Line::Complete`] ranges index.
    pub fn buf(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes buffered but not yet returned (a partial line at end of input).
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// The next buffered line, if any.
    pub fn next_line(&mut self) -> Line {
        loop {
            let avail = &self.buf[self.start..self.end];
            match avail.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let range = self.start..self.start + i;
                    self.start += i + 1;
                    if self.discarding {
                        self.discarding = false;
                        continue;
                    }
                    if i > self.max {
                        return Line::TooLong;
                    }
                    return Line::Complete(range);
                }
                None => {
                    if self.discarding {
                        self.start = self.end;
                        return Line::NeedMore;
                    }
                    if avail.len() > self.max {
                        self.discarding = true;
                        self.start = self.end;
                        return Line::TooLong;
                    }
                    return Line::NeedMore;
                }
            }
        }
    }

    /// Reads more input; `Ok(0)` at end of input.
    pub fn fill(&mut self, r: &mut impl Read) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // Grow only while a line under the cap could still need it. A buffer of max + 1 bytes
            // without a newline has already been turned into TooLong by next_line().
            let new = (self.buf.len() * 2).min(self.max + 1);
            if new <= self.buf.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "fill() before next_line()",
                ));
            }
            self.buf.resize(new, 0);
        }
        loop {
            match r.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[u8], max: usize) -> Vec<Result<String, &'static str>> {
        let mut r = LineReader::new(max);
        let mut src = input;
        let mut out = Vec::new();
        loop {
            match r.next_line() {
                Line::Complete(range) => {
                    out.push(Ok(String::from_utf8_lossy(&r.buf()[range]).into_owned()))
                }
                Line::TooLong => out.push(Err("too long")),
                Line::NeedMore => {
                    if r.fill(&mut src).unwrap() == 0 {
                        break;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn splits_lines_and_caps_length() {
        assert_eq!(all(b"a\nbb\n", 10), vec![Ok("a".into()), Ok("bb".into())]);
        let mut long = vec![b'x'; 5000];
        long.extend_from_slice(b"\nok\n");
        assert_eq!(all(&long, 1024), vec![Err("too long"), Ok("ok".into())]);
        // Exactly at the cap is fine.
        let mut exact = vec![b'y'; 1024];
        exact.push(b'\n');
        assert_eq!(all(&exact, 1024).len(), 1);
        assert!(all(&exact, 1024)[0].is_ok());
    }

    #[test]
    fn huge_line_never_grows_the_buffer_past_the_cap() {
        let mut r = LineReader::new(2048);
        let big = vec![b'z'; 1 << 20];
        let mut src: &[u8] = &big;
        let mut reported = 0;
        for _ in 0..2000 {
            match r.next_line() {
                Line::TooLong => reported += 1,
                Line::Complete(_) => panic!("no newline was sent"),
                Line::NeedMore => {
                    if r.fill(&mut src).unwrap() == 0 {
                        break;
                    }
                }
            }
            assert!(r.buf().len() <= 2049);
        }
        assert_eq!(reported, 1);
    }
}
