//! Text from outside the host (the config file, the console, a peer over
//! the network, a guest's saved state) made safe to print.
//!
//! Every such string goes through [`quote`] before it reaches the operator's
//! terminal: it is cut to a bounded number of characters and its control
//! characters are escaped, so one garbage line cannot flood the console or
//! drive the terminal with escape sequences.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

/// Columns of the operator's terminal that console output fits in.
pub const WIDTH: usize = 80;

/// Characters of operator text (a config value, a console word) quoted in
/// a diagnostic.
pub const OPERATOR_CHARS: usize = 40;

/// Characters of a peer's text (a refusal or abort reason, a VM name from
/// another host) printed on the console.
pub const PEER_CHARS: usize = 400;

/// At most `max_chars` characters of `s` (then `...` when cut), with
/// control characters escaped (`\u{1b}`, `\n`, ...).
pub fn quote(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    for c in chars.by_ref().take(max_chars) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if chars.next().is_some() {
        out.push_str("...");
    }
    out
}

/// A peer's text for the console: [`quote`] at [`PEER_CHARS`].
pub fn peer(s: &str) -> String {
    quote(s, PEER_CHARS)
}

/// Cuts `items` joined by `, ` after `label` into lines of at most
/// [`WIDTH`] columns, each starting with two spaces (`vm help`'s list
/// of images, `vm show`'s CPU features).
pub fn wrap_list(label: &str, items: &[&str]) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = format!("  {label}");
    let indent = line.len();
    for (i, item) in items.iter().enumerate() {
        let sep = if i + 1 < items.len() { "," } else { "" };
        let fresh = line.len() == indent;
        if !fresh && line.len() + 1 + item.len() + sep.len() > WIDTH {
            lines.push(line);
            line = format!("{:indent$}", "");
        }
        if line.len() > indent {
            line.push(' ');
        }
        line.push_str(item);
        line.push_str(sep);
    }
    lines.push(line);
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_long_text_cut() {
        assert_eq!(quote("plain", 10), "plain");
        assert_eq!(quote("a\x1b[2Jb\n", 10), "a\\u{1b}[2Jb\\n");
        assert_eq!(quote("abcdef", 3), "abc...");
        let long = "x".repeat(10_000);
        assert_eq!(peer(&long).chars().count(), PEER_CHARS + 3);
        assert!(!peer("\u{7}\u{9b}").chars().any(char::is_control));
    }
}
