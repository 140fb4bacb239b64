//! The console line editor: turns the bytes a serial terminal sends into
//! whole command lines, echoing as it goes.
//!
//! A pure state machine with no I/O of its own: the caller feeds it one byte
//! at a time and passes a closure that writes the echo to the UART, so it is
//! tested on the host with a `Vec<u8>` as the terminal.
//!
//! ```text
//!                 ESC                    '['
//!   +--------+ ---------> +--------+ ----------> +-------+  0x20..=0x3f: stay
//!   | Normal |            |  Esc   |             |  Csi  |  (params, intermediates)
//!   +--------+ <--------- +--------+             +-------+
//!     ^   ^    any other      | 'O'                  |
//!     |   |    printable      v                      | final 0x40..=0x7e
//!     |   |    (swallowed) +-------+                 |
//!     |   +--------------- |  Ss3  |  one printable  |
//!     |      (swallowed)   +-------+                 |
//!     +----------------------------------------------+
//! ```
//!
//! In the escape states a control byte (Enter, Ctrl-C, ESC...) abandons the
//! sequence and is then handled as if it came in `Normal`, so a truncated
//! sequence can never swallow the Enter or Ctrl-C that follows it.
//!
//! Only printable ASCII enters the line, so the submitted line is always
//! valid UTF-8 and never carries terminal control sequences into the shell.
//!
//! Not for: command parsing (the shell trims and splits what
//! [`Action::Submit`] returns), history or cursor movement.

use alloc::string::String;

const CTRL_C: u8 = 0x03;
const BACKSPACE: u8 = 0x08;
const CTRL_U: u8 = 0x15;
const ESC: u8 = 0x1b;
const DEL: u8 = 0x7f;
const BEL: u8 = 0x07;

/// Erases one character on the terminal: back, overwrite with a space, back.
const RUB_OUT: &[u8] = b"\x08 \x08";

/// What the caller should do after a byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing yet; keep feeding bytes.
    Pending,
    /// Enter was pressed: the line as typed (untrimmed; possibly empty).
    Submit(String),
    /// Ctrl-C: the line was discarded; print a fresh prompt.
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Normal,
    /// After ESC.
    Esc,
    /// After ESC '[': a CSI sequence (ECMA-48 §5.4), ended by a final byte
    /// in 0x40..=0x7e. Arrow keys, Home/End, Delete and F5+ arrive like this.
    Csi,
    /// After ESC 'O': SS3, one more byte (F1-F4, and arrow keys in
    /// application cursor mode).
    Ss3,
}

/// Line editor state. One per console.
#[derive(Debug, Clone)]
pub struct LineEditor {
    line: String,
    max_len: usize,
    state: State,
    /// The previous byte was '\r': a '\n' right after it is the second half
    /// of a CRLF Enter (terminals differ in what Enter sends), not a second
    /// empty line.
    after_cr: bool,
}

impl LineEditor {
    /// An empty editor that accepts lines of up to `max_len` characters.
    pub fn new(max_len: usize) -> Self {
        LineEditor {
            line: String::new(),
            max_len,
            state: State::Normal,
            after_cr: false,
        }
    }

    /// The line typed so far.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The line as the terminal shows it (secrets masked), to redraw it
    /// after asynchronous output.
    pub fn shown(&self) -> String {
        match secret_start(&self.line) {
            Some(at) => {
                let mut s = String::from(&self.line[..at]);
                s.extend(core::iter::repeat_n('*', self.line.len() - at));
                s
            }
            None => self.line.clone(),
        }
    }

    /// Processes one byte from the terminal, writing any echo through `echo`.
    pub fn feed(&mut self, byte: u8, echo: &mut dyn FnMut(&[u8])) -> Action {
        let after_cr = core::mem::replace(&mut self.after_cr, byte == b'\r');

        match self.state {
            State::Normal => {}
            // A control byte ends any sequence and is handled normally below.
            _ if !(0x20..=0x7e).contains(&byte) => self.state = State::Normal,
            State::Esc => {
                self.state = match byte {
                    b'[' => State::Csi,
                    b'O' => State::Ss3,
                    // ESC plus one byte (Alt-x and friends): swallowed.
                    _ => State::Normal,
                };
                return Action::Pending;
            }
            State::Csi => {
                if (0x40..=0x7e).contains(&byte) {
                    self.state = State::Normal;
                }
                return Action::Pending;
            }
            State::Ss3 => {
                self.state = State::Normal;
                return Action::Pending;
            }
        }

        match byte {
            0x20..=0x7e => {
                if self.line.len() < self.max_len {
                    let secret = secret_start(&self.line).is_some();
                    self.line.push(char::from(byte));
                    echo(if secret {
                        b"*"
                    } else {
                        core::slice::from_ref(&byte)
                    });
                } else {
                    echo(&[BEL]);
                }
                Action::Pending
            }
            BACKSPACE | DEL => {
                if self.line.pop().is_some() {
                    echo(RUB_OUT);
                }
                Action::Pending
            }
            b'\n' if after_cr => Action::Pending,
            b'\r' | b'\n' => {
                echo(b"\r\n");
                Action::Submit(core::mem::take(&mut self.line))
            }
            CTRL_C => {
                self.line.clear();
                echo(b"^C\r\n");
                Action::Cancel
            }
            CTRL_U => {
                for _ in 0..self.line.len() {
                    echo(RUB_OUT);
                }
                self.line.clear();
                Action::Pending
            }
            ESC => {
                self.state = State::Esc;
                Action::Pending
            }
            // Tab, other control bytes, and anything >= 0x80 (no UTF-8
            // support on this console): dropped without echo.
            _ => Action::Pending,
        }
    }
}

/// Commands whose argument is a secret, as words: what follows them is
/// echoed as `*`, so a channel key never appears on the console (or in its
/// log). Decided on the words, as the shell parses them: `" net  key x"`
/// is the same command as `"net key x"` and is masked the same.
const SECRET_COMMANDS: &[&[&str]] = &[&["net", "key"]];

/// Where the secret part of `line` starts, if the line has one: just after
/// the first blank that follows the command's last word.
fn secret_start(line: &str) -> Option<usize> {
    SECRET_COMMANDS.iter().find_map(|words| {
        let mut at = 0;
        for word in *words {
            let rest = &line[at..];
            let trimmed = rest.trim_start();
            at += rest.len() - trimmed.len();
            let end = trimmed.find(char::is_whitespace)?;
            if &trimmed[..end] != *word {
                return None;
            }
            at += end;
        }
        // `line[at..]` starts with the blank that ends the last word.
        Some(at + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Feeds `input` and returns the actions other than `Pending`, and the echo.
    fn run(ed: &mut LineEditor, input: &[u8]) -> (Vec<Action>, Vec<u8>) {
        let mut out = Vec::new();
        let mut actions = Vec::new();
        for &b in input {
            let a = ed.feed(b, &mut |bytes: &[u8]| out.extend_from_slice(bytes));
            if a != Action::Pending {
                actions.push(a);
            }
        }
        (actions, out)
    }

    fn submit(s: &str) -> Action {
        Action::Submit(String::from(s))
    }

    #[test]
    fn typing_echoes_and_enter_submits() {
        let mut ed = LineEditor::new(80);
        let (a, out) = run(&mut ed, b"help\r");
        assert_eq!(a, [submit("help")]);
        assert_eq!(out, b"help\r\n");
        assert_eq!(ed.line(), "");
    }

    #[test]
    fn line_is_returned_raw() {
        let mut ed = LineEditor::new(80);
        let (a, _) = run(&mut ed, b"  log  debug \n");
        assert_eq!(a, [submit("  log  debug ")]);
    }

    #[test]
    fn crlf_is_one_enter_but_other_pairs_are_two() {
        let mut ed = LineEditor::new(80);
        let (a, out) = run(&mut ed, b"a\r\nb\n\nc\r\rd\n\r");
        assert_eq!(
            a,
            [
                submit("a"),
                submit("b"),
                submit(""),
                submit("c"),
                submit(""),
                submit("d"),
                submit("")
            ]
        );
        assert_eq!(out, b"a\r\nb\r\n\r\nc\r\n\r\nd\r\n\r\n");
        // The LF must follow the CR immediately.
        let (a, _) = run(&mut ed, b"\rx\n");
        assert_eq!(a, [submit(""), submit("x")]);
        // A swallowed byte between CR and LF also breaks the pair.
        let (a, _) = run(&mut ed, b"\r\x01\n");
        assert_eq!(a, [submit(""), submit("")]);
    }

    #[test]
    fn backspace_and_del() {
        let mut ed = LineEditor::new(80);
        let (a, out) = run(&mut ed, b"lx\x08\x7fog\r");
        assert_eq!(a, [submit("og")]);
        assert_eq!(out, b"lx\x08 \x08\x08 \x08og\r\n");
    }

    #[test]
    fn backspace_on_empty_line_echoes_nothing() {
        let mut ed = LineEditor::new(80);
        let (a, out) = run(&mut ed, b"\x08\x7f\x08");
        assert!(a.is_empty());
        assert!(out.is_empty());
    }

    #[test]
    fn full_line_rings_the_bell() {
        let mut ed = LineEditor::new(3);
        let (a, out) = run(&mut ed, b"abcde\x08f\r");
        assert_eq!(a, [submit("abf")]);
        assert_eq!(out, b"abc\x07\x07\x08 \x08f\r\n");
        let mut ed = LineEditor::new(0);
        let (a, out) = run(&mut ed, b"x\r");
        assert_eq!(a, [submit("")]);
        assert_eq!(out, b"\x07\r\n");
    }

    #[test]
    fn ctrl_c_cancels() {
        let mut ed = LineEditor::new(80);
        let (a, out) = run(&mut ed, b"reboot\x03ls\r");
        assert_eq!(a, [Action::Cancel, submit("ls")]);
        assert_eq!(out, b"reboot^C\r\nls\r\n");
        // Also on an empty line.
        let (a, out) = run(&mut ed, b"\x03");
        assert_eq!(a, [Action::Cancel]);
        assert_eq!(out, b"^C\r\n");
    }

    #[test]
    fn ctrl_u_erases_the_line() {
        let mut ed = LineEditor::new(80);
        let (a, out) = run(&mut ed, b"abc\x15x\r");
        assert_eq!(a, [submit("x")]);
        assert_eq!(out, b"abc\x08 \x08\x08 \x08\x08 \x08x\r\n");
        let (_, out) = run(&mut ed, b"\x15");
        assert!(out.is_empty());
    }

    #[test]
    fn escape_sequences_are_swallowed() {
        let mut ed = LineEditor::new(80);
        // Up, Down, Right, Left; Delete (ESC [ 3 ~); Ctrl-Right (ESC [ 1 ; 5 C);
        // F1 (ESC O P); Home in application mode (ESC O H); Alt-x (ESC x);
        // a private-mode CSI with intermediates (ESC [ ? 2 5 h).
        let input = b"a\x1b[A\x1b[B\x1b[C\x1b[Db\x1b[3~\x1b[1;5Cc\x1bOP\x1bOHd\x1bxe\x1b[?25hf\r";
        let (a, out) = run(&mut ed, input);
        assert_eq!(a, [submit("abcdef")]);
        assert_eq!(out, b"abcdef\r\n");
    }

    #[test]
    fn escape_state_is_abandoned_by_control_bytes() {
        let mut ed = LineEditor::new(80);
        // A lone ESC then Enter: the Enter still submits.
        let (a, _) = run(&mut ed, b"ab\x1b\r");
        assert_eq!(a, [submit("ab")]);
        // An unfinished CSI then Ctrl-C: still cancels.
        let (a, _) = run(&mut ed, b"x\x1b[12\x03");
        assert_eq!(a, [Action::Cancel]);
        // ESC O then Enter.
        let (a, _) = run(&mut ed, b"y\x1bO\r");
        assert_eq!(a, [submit("y")]);
        // ESC ESC [ A: the second ESC restarts the sequence.
        let (a, out) = run(&mut ed, b"\x1b\x1b[Az\r");
        assert_eq!(a, [submit("z")]);
        assert_eq!(out, b"z\r\n");
        // A byte >= 0x80 inside a CSI ends it too, and is itself dropped.
        let (a, _) = run(&mut ed, b"\x1b[1\x9bq\r");
        assert_eq!(a, [submit("q")]);
        // Backspace inside a CSI abandons it and erases a character.
        let (a, _) = run(&mut ed, b"rs\x1b[5\x7f\r");
        assert_eq!(a, [submit("r")]);
    }

    #[test]
    fn other_control_and_high_bytes_are_dropped() {
        let mut ed = LineEditor::new(80);
        let (a, out) = run(&mut ed, b"a\x00\x01\t\x07\x0b\x0c\x1f\x80\xc3\xa9\xffb\r");
        assert_eq!(a, [submit("ab")]);
        assert_eq!(out, b"ab\r\n");
    }

    #[test]
    fn every_byte_value_is_safe_and_lines_stay_printable() {
        let mut ed = LineEditor::new(8);
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for _ in 0..50_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let byte = (seed >> 24) as u8;
            let action = ed.feed(byte, &mut |_| {});
            assert!(ed.line().len() <= 8);
            if let Action::Submit(line) = action {
                assert!(line.len() <= 8);
                assert!(line.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{line:?}");
            }
        }
    }

    #[test]
    fn secrets_are_masked_whatever_the_spacing() {
        for typed in [
            " net key 00ff",
            "net  key 00ff",
            "net key  00ff",
            "  net   key 00ff",
        ] {
            let mut ed = LineEditor::new(80);
            let (_, echo) = run(&mut ed, typed.as_bytes());
            let echo = String::from_utf8(echo).unwrap();
            assert!(
                !echo.contains("00ff") && !echo.contains('0'),
                "{typed:?} echoed {echo:?}"
            );
            assert!(echo.ends_with("****"), "{typed:?} echoed {echo:?}");
            assert!(
                !ed.shown().contains('0'),
                "{typed:?} shown as {:?}",
                ed.shown()
            );
            assert_eq!(ed.line(), typed);
        }
        // Not the key command: echoed as typed.
        for typed in ["net keys 00ff", "net show 00ff", "netkey 00ff"] {
            let mut ed = LineEditor::new(80);
            let (_, echo) = run(&mut ed, typed.as_bytes());
            assert_eq!(echo, typed.as_bytes());
        }
    }

    #[test]
    fn secrets_are_echoed_as_stars() {
        let mut ed = LineEditor::new(64);
        let (actions, echo) = run(&mut ed, b"net key 00ff");
        assert!(actions.is_empty());
        assert_eq!(echo, b"net key ****");
        assert_eq!(ed.shown(), "net key ****");
        assert_eq!(ed.line(), "net key 00ff");
        let (actions, _) = run(&mut ed, b"\r");
        assert_eq!(actions, [Action::Submit("net key 00ff".into())]);
        // Other commands echo as typed.
        let (_, echo) = run(&mut ed, b"net show");
        assert_eq!(echo, b"net show");
    }
}
