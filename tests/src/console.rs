//! The serial console over TCP, with an expect-style API.
//!
//! A reader thread appends every byte received to a shared buffer (all of it
//! is kept, and also written to a log file) and wakes waiters through a
//! condition variable. [`Console::expect`] searches the output received after
//! the *cursor* (the end of the previous match) and moves the cursor past its
//! own match, so a sequence of expects walks forward through the output and
//! never matches the same text twice.
//!
//! Patterns are searched in the output as it arrives: a pattern whose end is
//! open (`\d+` last, or `$` in multi-line mode, which also matches at the end
//! of what has arrived so far) can match a line that is still being printed.
//! End patterns with literal text or `\r?\n`, as [`line_pattern`] does.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use regex::bytes::Regex;

#[derive(Default)]
struct Buffer {
    data: Vec<u8>,
    /// Why the console stopped delivering (EOF, read error), once it has.
    closed: Option<String>,
}

struct Shared {
    buf: Mutex<Buffer>,
    cond: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // The reader never panics while holding the lock; if some waiter did,
        // the buffer is still consistent (append-only).
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A match of [`Console::expect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The matched text.
    pub text: String,
    /// Output between the previous cursor and the start of the match.
    pub before: String,
    groups: Vec<Option<String>>,
    names: Vec<Option<String>>,
}

impl Found {
    /// Capture group `i` (0 is the whole match).
    pub fn get(&self, i: usize) -> Option<&str> {
        self.groups.get(i).and_then(|g| g.as_deref())
    }

    /// Named capture group.
    pub fn name(&self, name: &str) -> Option<&str> {
        let i = self.names.iter().position(|n| n.as_deref() == Some(name))?;
        self.get(i)
    }

    /// Capture group `i` parsed as a number; panics (with the match) if the
    /// group did not participate or is not a number.
    pub fn num(&self, i: usize) -> u64 {
        self.get(i)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("group {i} of {:?} is not a number", self.text))
    }

    /// Capture group `i` parsed as a decimal number (e.g. `12.345`).
    pub fn float(&self, i: usize) -> f64 {
        self.get(i)
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| panic!("group {i} of {:?} is not a number", self.text))
    }
}

/// Why an expect failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectError {
    /// The pattern is not a valid regex.
    BadPattern(String),
    /// Nothing matched in time.
    Timeout,
    /// The console closed (the emulator exited) before a match.
    Closed(String),
}

/// A regex that matches one whole, completely received line whose text
/// (without the line ending) matches `pattern`.
pub fn line_pattern(pattern: &str) -> String {
    format!(r"(?m)^(?:{pattern})\r?\n")
}

/// The serial console of a running machine.
pub struct Console {
    shared: Arc<Shared>,
    writer: TcpStream,
    cursor: usize,
    reader: Option<JoinHandle<()>>,
}

impl Console {
    /// Starts reading `stream` on a thread; everything received is also
    /// appended to `log`.
    pub fn new(stream: TcpStream, log: Option<File>) -> io::Result<Console> {
        let writer = stream.try_clone()?;
        let shared = Arc::new(Shared {
            buf: Mutex::new(Buffer::default()),
            cond: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name("hv-console".into())
            .spawn(move || read_loop(stream, log, &s))?;
        Ok(Console {
            shared,
            writer,
            cursor: 0,
            reader: Some(reader),
        })
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)?;
        self.writer.flush()
    }

    /// Sends `line` followed by `\r` (Enter on a terminal).
    pub fn send_line(&mut self, line: &str) -> io::Result<()> {
        let mut b = line.as_bytes().to_vec();
        b.push(b'\r');
        self.send_raw(&b)
    }

    /// Waits until `pattern` matches the output after the cursor, then moves
    /// the cursor to the end of the match.
    pub fn expect(&mut self, pattern: &str, timeout: Duration) -> Result<Found, ExpectError> {
        let re = Regex::new(pattern).map_err(|e| ExpectError::BadPattern(e.to_string()))?;
        self.expect_re(&re, timeout)
    }

    /// [`Console::expect`] with a compiled regex.
    pub fn expect_re(&mut self, re: &Regex, timeout: Duration) -> Result<Found, ExpectError> {
        let deadline = Instant::now() + timeout;
        let mut buf = self.shared.lock();
        loop {
            let hay = &buf.data[self.cursor..];
            if let Some(caps) = re.captures(hay) {
                let whole = caps.get(0).expect("group 0 always participates");
                let text = |r: Option<regex::bytes::Match<'_>>| {
                    r.map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                };
                let found = Found {
                    text: text(Some(whole)).unwrap_or_default(),
                    before: String::from_utf8_lossy(&hay[..whole.start()]).into_owned(),
                    groups: caps.iter().map(text).collect(),
                    names: re.capture_names().map(|n| n.map(str::to_string)).collect(),
                };
                self.cursor += whole.end();
                return Ok(found);
            }
            if let Some(why) = &buf.closed {
                return Err(ExpectError::Closed(why.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(ExpectError::Timeout);
            }
            buf = self
                .shared
                .cond
                .wait_timeout(buf, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Everything received so far.
    pub fn output(&self) -> Vec<u8> {
        self.shared.lock().data.clone()
    }

    /// Output received after the cursor (not yet consumed by an expect).
    pub fn pending(&self) -> Vec<u8> {
        self.shared.lock().data[self.cursor..].to_vec()
    }

    /// Byte offset of the cursor in [`Console::output`].
    pub fn cursor(&self) -> usize {
        self.cursor
    }

    /// Moves the cursor to the end of what has been received so far.
    pub fn skip_pending(&mut self) {
        self.cursor = self.shared.lock().data.len();
    }

    /// Whether the console has closed, and why.
    pub fn closed(&self) -> Option<String> {
        self.shared.lock().closed.clone()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.writer.shutdown(Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

fn read_loop(mut stream: TcpStream, mut log: Option<File>, shared: &Shared) {
    let mut chunk = [0u8; 4096];
    let why = loop {
        match stream.read(&mut chunk) {
            Ok(0) => break "the console closed (emulator exited?)".to_string(),
            Ok(n) => {
                if let Some(f) = log.as_mut() {
                    // The log is a convenience copy; the buffer is what counts.
                    let _ = f.write_all(&chunk[..n]);
                }
                shared.lock().data.extend_from_slice(&chunk[..n]);
                shared.cond.notify_all();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break format!("console read error: {e}"),
        }
    };
    shared.lock().closed = Some(why);
    shared.cond.notify_all();
}

/// Console text made readable for a failure message: ANSI escape sequences
/// (the firmware draws its screen with them) removed, line endings
/// normalised, other control characters shown as `^X`.
pub fn readable(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let ansi = regex::Regex::new(r"\x1b\[[0-9;?=]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>c]")
        .expect("static regex");
    let text = ansi.replace_all(&text, "");
    let mut out = String::with_capacity(text.len());
    for c in text.replace("\r\n", "\n").chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\r' => {}
            c if (c as u32) < 0x20 => {
                out.push('^');
                out.push(char::from(b'@' + c as u8));
            }
            '\x7f' => out.push_str("^?"),
            c => out.push(c),
        }
    }
    out
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `text` with every line longer than `max` characters cut to `max` and
/// marked with how much was left out: a failure message stays readable
/// when the machine printed something huge.
pub fn shorten_lines(text: &str, max: usize) -> String {
    text.lines()
        .map(|l| match l.char_indices().nth(max) {
            Some((cut, _)) => format!("{}... ({} more bytes)", &l[..cut], l.len() - cut),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A console connected to a fake machine; returns the console and the
    /// fake's end of the connection.
    fn pair() -> (Console, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (Console::new(c, None).unwrap(), s)
    }

    const T: Duration = Duration::from_secs(5);

    #[test]
    fn expect_walks_forward_through_the_output() {
        let (mut con, mut fake) = pair();
        fake.write_all(b"one 1\r\ntwo 2\r\none 3\r\n").unwrap();
        let f = con.expect(r"one (\d)\r\n", T).unwrap();
        assert_eq!(f.get(1), Some("1"));
        assert_eq!(f.before, "");
        let f = con.expect(r"one (?<n>\d)", T).unwrap();
        assert_eq!(f.name("n"), Some("3"));
        assert_eq!(f.num(1), 3);
        assert_eq!(f.before, "two 2\r\n");
        // "two" is behind the cursor now.
        assert_eq!(
            con.expect("two", Duration::from_millis(50)),
            Err(ExpectError::Timeout)
        );
    }

    #[test]
    fn expect_waits_for_output_that_arrives_later() {
        let (mut con, mut fake) = pair();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            fake.write_all(b"hv: rea").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            fake.write_all(b"dy\r\n").unwrap();
            fake
        });
        con.expect(&line_pattern("hv: ready"), T).unwrap();
        drop(t.join().unwrap());
    }

    #[test]
    fn a_closed_console_fails_at_once() {
        let (mut con, fake) = pair();
        drop(fake);
        let start = Instant::now();
        assert!(matches!(
            con.expect("never", T),
            Err(ExpectError::Closed(_))
        ));
        assert!(start.elapsed() < T);
    }

    #[test]
    fn send_line_ends_with_carriage_return() {
        let (mut con, mut fake) = pair();
        con.send_line("help").unwrap();
        con.send_raw(b"\x03").unwrap();
        let mut got = [0u8; 6];
        fake.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"help\r\x03");
    }

    #[test]
    fn bad_patterns_are_reported() {
        let (mut con, _fake) = pair();
        assert!(matches!(
            con.expect("(", T),
            Err(ExpectError::BadPattern(_))
        ));
    }

    #[test]
    fn readable_strips_escapes() {
        let s = readable(b"\x1b[2J\x1b[01;01HShell> \x1b[0mok\r\nnext\x03\x7f");
        assert_eq!(s, "Shell> ok\nnext^C^?");
        assert_eq!(last_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(shorten_lines("abcdef\nab", 3), "abc... (3 more bytes)\nab");
    }
}
