//! The build log, capped in memory: the first half of the budget keeps the beginning of the log
//! (what was installed, how the build started), the second half keeps its end (where it failed).
//! Whatever falls between is dropped and replaced by a `[log truncated: N bytes omitted]` line.

use std::collections::VecDeque;

/// A log that never holds more than its cap (plus the truncation marker).
#[derive(Debug)]
pub(crate) struct CappedLog {
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    omitted: u64,
}

impl CappedLog {
    /// A log keeping at most `cap` bytes of output.
    pub(crate) fn new(cap: usize) -> Self {
        let head_cap = cap / 2;
        Self {
            head_cap,
            tail_cap: cap - head_cap,
            head: Vec::new(),
            tail: VecDeque::new(),
            omitted: 0,
        }
    }

    /// Appends output.
    pub(crate) fn push(&mut self, mut bytes: &[u8]) {
        if self.head.len() < self.head_cap {
            let n = bytes.len().min(self.head_cap - self.head.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        if bytes.is_empty() {
            return;
        }
        if bytes.len() >= self.tail_cap {
            let skip = bytes.len() - self.tail_cap;
            self.omitted += (self.tail.len() + skip) as u64;
            self.tail.clear();
            self.tail.extend(&bytes[skip..]);
            return;
        }
        self.tail.extend(bytes);
        let excess = self.tail.len().saturating_sub(self.tail_cap);
        if excess > 0 {
            self.tail.drain(..excess);
            self.omitted += excess as u64;
        }
    }

    /// Appends a line written by the runtime itself (phase banners, exit codes).
    pub(crate) fn note(&mut self, line: &str) {
        self.push(format!("[lockstep] {line}\n").as_bytes());
    }

    /// The kept bytes, with the truncation marker where bytes were dropped.
    pub(crate) fn finish(self) -> Vec<u8> {
        let mut out = self.head;
        if self.omitted > 0 {
            out.extend_from_slice(
                format!("\n[log truncated: {} bytes omitted]\n", self.omitted).as_bytes(),
            );
        }
        out.extend(self.tail);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_logs_are_kept_whole() {
        let mut log = CappedLog::new(100);
        log.push(b"hello ");
        log.push(b"world");
        assert_eq!(log.finish(), b"hello world");
    }

    #[test]
    fn long_logs_keep_head_and_tail_with_a_marker() {
        let mut log = CappedLog::new(10);
        for chunk in [&b"ABCDE"[..], b"12345", b"6789", b"xyz"] {
            log.push(chunk);
        }
        // head "ABCDE", tail = last 5 bytes of "123456789xyz" = "89xyz", 7 dropped.
        assert_eq!(
            String::from_utf8(log.finish()).expect("ascii"),
            "ABCDE\n[log truncated: 7 bytes omitted]\n89xyz"
        );
    }

    #[test]
    fn one_huge_chunk_is_cut_to_the_cap() {
        let mut log = CappedLog::new(8);
        log.push(&[b'a'; 1000]);
        log.push(b"END");
        let out = String::from_utf8(log.finish()).expect("ascii");
        assert!(out.starts_with("aaaa\n[log truncated: 995 bytes omitted]\n"));
        assert!(out.ends_with("aEND"));
    }
}
