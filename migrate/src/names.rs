//! The VM name rule, shared by the console and the migration destination,
//! and a helper to show untrusted strings in messages.
//!
//! A VM name is 1 to [`MAX_VM_NAME`] bytes of ASCII letters, digits, `-` or
//! `_`. Whatever a peer or a user typed, [`check_vm_name`]'s error shows it
//! escaped and shortened, so printing the error cannot move the cursor,
//! clear the screen or flood the console.

use alloc::string::String;

/// Longest VM name, in bytes.
pub const MAX_VM_NAME: usize = 16;

/// Characters of an untrusted string [`printable`] keeps by default.
pub const SHOWN_CHARS: usize = 40;

/// A VM name that breaks the rule; displays as
/// `bad VM name '<name>' (1-16 letters, digits, '-' or '_')`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad VM name '{shown}' (1-{MAX_VM_NAME} letters, digits, '-' or '_')")]
pub struct NameError {
    shown: String,
}

impl NameError {
    /// The offending name as shown in the message: escaped and shortened.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// Whether `name` is a valid VM name: 1 to [`MAX_VM_NAME`] bytes of ASCII
/// letters, digits, `-` or `_`.
pub fn is_valid_vm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_VM_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks `name` against the VM name rule; the error shows the name through
/// [`printable`].
pub fn check_vm_name(name: &str) -> Result<(), NameError> {
    if is_valid_vm_name(name) {
        Ok(())
    } else {
        Err(NameError {
            shown: printable(name, SHOWN_CHARS),
        })
    }
}

/// `s` made safe to print: its first `max_chars` characters, each passed
/// through [`char::escape_default`] (control characters, quotes, backslashes
/// and non-ASCII become escapes such as `\u{1b}`), then `...` if `s` had more.
pub fn printable(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars) + 3);
    let mut chars = s.chars();
    for c in chars.by_ref().take(max_chars) {
        out.extend(c.escape_default());
    }
    if chars.next().is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn the_rule() {
        for ok in ["a", "web-1", "db_2", "ABCDEFGHIJKLMNOP"] {
            assert_eq!(check_vm_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a\x1b[2J",
            "ABCDEFGHIJKLMNOPQ",
            "caf\u{e9}",
            "a/b",
            "a.b",
        ] {
            assert!(check_vm_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_escape_and_shorten() {
        let e = check_vm_name("a\x1b[2Jb").unwrap_err();
        assert_eq!(
            e.to_string(),
            "bad VM name 'a\\u{1b}[2Jb' (1-16 letters, digits, '-' or '_')"
        );
        assert_eq!(check_vm_name("").unwrap_err().shown(), "");
        assert_eq!(check_vm_name("it's").unwrap_err().shown(), "it\\'s");
        let long = "x".repeat(100);
        let shown = check_vm_name(&long).unwrap_err().shown().to_string();
        assert_eq!(shown, alloc::format!("{}...", "x".repeat(SHOWN_CHARS)));
        assert!(
            !printable("\u{7}\r\n\u{9b}", 10)
                .chars()
                .any(char::is_control)
        );
        assert_eq!(printable("abc", 3), "abc");
        assert_eq!(printable("abcd", 3), "abc...");
    }
}
