//! The boot configuration file (`\EFI\hv\hv.cfg`, see [`boot::CONFIG_PATH`]).
//!
//! The loader hands the kernel the file's bytes unchecked; this module turns
//! them into a [`Config`] plus a list of [`Diagnostic`]s for the operator.
//! A bad file never stops the boot: every problem falls back to a default and
//! is reported with its line number, so a typo costs a log line, not a
//! machine that does not come up.
//!
//! Format:
//!
//! ```text
//! # comment                 '#' starts a comment anywhere on a line
//! hostname = lab-3          one `key = value` per line, spaces around both trimmed
//! log      = Debug          values of `log` are case-insensitive
//! net.ip   = 10.0.0.1/24    static IPv4 address of the host NIC
//! net.gw   = 10.0.0.254     default gateway (optional; same subnet)
//! net.key  = 00112233...    channel key, 32 to 128 hex digits
//! net.max_pending = 4       unauthenticated connections a listener keeps (1-64)
//! ft.heartbeat_ms = 100     FT heartbeat interval (10-10000)
//! ft.timeout_ms = 1000      a twin silent this long is dead (2-100 heartbeats)
//! ft.check_s = 5            FT divergence check interval (1-3600 s)
//! ft.witness = 10.0.0.9     FT arbiter for `ft enable` (an address, or `none`)
//! ```
//!
//! Lines end in LF or CRLF and are numbered from 1. Keys are case-sensitive.
//! When a key is given twice, the later line wins (even when its value is
//! bad, in which case the default is used, as its diagnostic says).
//!
//! Not for: console commands (the shell parses those) or anything that needs
//! hardware.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use log::LevelFilter;
use netstack::codec::Key;
use netstack::stack::{IpConfig, Ipv4Address, parse_ip_config};

/// Longest hostname accepted (bytes; the allowed characters are ASCII).
pub const MAX_HOSTNAME_LEN: usize = 32;

/// How many characters of an operator-supplied key or value a diagnostic
/// quotes before cutting it with `...`, so one garbage line cannot flood the
/// serial console.
const QUOTE_MAX_CHARS: usize = crate::text::OPERATOR_CHARS;

const HOSTNAME_EXPECTED: &str = "1-32 letters, digits or '-'";
const LOG_EXPECTED: &str = "off, error, warn, info, debug, trace";
const MAX_PENDING_EXPECTED: &str = "a whole number from 1 to 64";
/// Largest `net.max_pending`.
pub const MAX_PENDING_LIMIT: usize = 64;

/// Fault tolerance's settings (`ft.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FtConfig {
    /// Interval of the heartbeats each twin sends the other.
    pub heartbeat_ms: u32,
    /// A twin that sent nothing this long is declared dead.
    pub timeout_ms: u32,
    /// Interval of the divergence checks.
    pub check_s: u32,
    /// The witness `ft enable` uses when none is given: `Some(None)` is
    /// `none` (no arbiter), `None` not configured.
    pub witness: Option<Option<Ipv4Address>>,
}

impl Default for FtConfig {
    fn default() -> Self {
        FtConfig {
            heartbeat_ms: 100,
            timeout_ms: 1000,
            check_s: 5,
            witness: None,
        }
    }
}

const HEARTBEAT_EXPECTED: &str = "a whole number of milliseconds from 10 to 10000";
const TIMEOUT_EXPECTED: &str = "a whole number of milliseconds from 20 to 600000";
const CHECK_EXPECTED: &str = "a whole number of seconds from 1 to 3600";
const WITNESS_EXPECTED: &str = "an IPv4 address or 'none'";

/// The settings the kernel takes from the boot configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Shown in the console prompt and in log lines that identify the host.
    pub hostname: String,
    /// Maximum level of the kernel logger.
    pub log_level: LevelFilter,
    /// Static address of the host NIC.
    pub net_ip: Option<IpConfig>,
    /// The pre-shared key of host-to-host channels.
    pub net_key: Option<Key>,
    /// Unauthenticated connections each listener keeps at once.
    pub net_max_pending: usize,
    /// Fault tolerance.
    pub ft: FtConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: String::from("hv"),
            log_level: LevelFilter::Info,
            net_ip: None,
            net_key: None,
            net_max_pending: netstack::channel::DEFAULT_MAX_PENDING,
            ft: FtConfig::default(),
        }
    }
}

/// A problem found in the configuration text, for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong and what the parser did about it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config: line {}: {}", self.line, self.message)
    }
}

/// Parses the configuration text.
///
/// Never fails and never panics: whatever is wrong is reported in the
/// returned diagnostics (in line order) and replaced by a default.
pub fn parse(text: &[u8]) -> (Config, Vec<Diagnostic>) {
    let mut config = Config::default();
    let mut diags = Vec::new();
    // Line on which each known key was last seen, for duplicate reports.
    let mut hostname_line: Option<usize> = None;
    let mut log_line: Option<usize> = None;
    let mut ip_line: Option<usize> = None;
    let mut gw_line: Option<usize> = None;
    let mut key_line: Option<usize> = None;
    let mut max_pending_line: Option<usize> = None;
    let mut heartbeat_line: Option<usize> = None;
    let mut timeout_line: Option<usize> = None;
    let mut check_line: Option<usize> = None;
    let mut witness_line: Option<usize> = None;
    // net.ip and net.gw are checked together once the whole file is read.
    let mut ip_text: Option<(usize, String)> = None;
    let mut gw_text: Option<(usize, String)> = None;

    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let mut diag = |message: String| diags.push(Diagnostic { line, message });

        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        // Cut the comment before checking UTF-8: '#' is ASCII and so can
        // never be part of a multi-byte sequence, and a Latin-1 byte in a
        // comment is no reason to throw away the setting in front of it.
        let content = match raw.iter().position(|&b| b == b'#') {
            Some(hash) => &raw[..hash],
            None => raw,
        };
        let Ok(content) = core::str::from_utf8(content) else {
            diag(String::from("not valid UTF-8 (ignored)"));
            continue;
        };
        let content = content.trim();
        if content.is_empty() {
            continue;
        }
        let Some((key, value)) = content.split_once('=') else {
            diag(String::from("expected 'key = value'"));
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            diag(String::from("expected 'key = value'"));
            continue;
        }

        let seen = match key {
            "hostname" => &mut hostname_line,
            "log" => &mut log_line,
            "net.ip" => &mut ip_line,
            "net.gw" => &mut gw_line,
            "net.key" => &mut key_line,
            "net.max_pending" => &mut max_pending_line,
            "ft.heartbeat_ms" => &mut heartbeat_line,
            "ft.timeout_ms" => &mut timeout_line,
            "ft.check_s" => &mut check_line,
            "ft.witness" => &mut witness_line,
            _ => {
                diag(format!("unknown key '{}' (ignored)", quote(key)));
                continue;
            }
        };
        if let Some(first) = seen.replace(line) {
            diag(format!("duplicate key '{key}' (line {first} overridden)"));
        }

        match key {
            "hostname" => {
                if is_valid_hostname(value) {
                    config.hostname = String::from(value);
                } else {
                    let default = Config::default().hostname;
                    diag(bad_value(value, key, HOSTNAME_EXPECTED, &default));
                    config.hostname = default;
                }
            }
            "net.max_pending" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_PENDING_LIMIT).contains(&n) => config.net_max_pending = n,
                _ => {
                    let default = Config::default().net_max_pending;
                    diag(bad_value(
                        value,
                        key,
                        MAX_PENDING_EXPECTED,
                        &format!("{default}"),
                    ));
                    config.net_max_pending = default;
                }
            },
            "ft.heartbeat_ms" | "ft.timeout_ms" | "ft.check_s" => {
                let d = FtConfig::default();
                let (slot, range, default, expected) = match key {
                    "ft.heartbeat_ms" => (
                        &mut config.ft.heartbeat_ms,
                        10..=10_000,
                        d.heartbeat_ms,
                        HEARTBEAT_EXPECTED,
                    ),
                    "ft.timeout_ms" => (
                        &mut config.ft.timeout_ms,
                        20..=600_000,
                        d.timeout_ms,
                        TIMEOUT_EXPECTED,
                    ),
                    _ => (&mut config.ft.check_s, 1..=3600, d.check_s, CHECK_EXPECTED),
                };
                match value.parse::<u32>() {
                    Ok(n) if range.contains(&n) => *slot = n,
                    _ => {
                        diag(bad_value(value, key, expected, &format!("{default}")));
                        *slot = default;
                    }
                }
            }
            "ft.witness" => {
                if value.eq_ignore_ascii_case("none") {
                    config.ft.witness = Some(None);
                } else {
                    match netstack::stack::parse_ipv4(value) {
                        Ok(ip) => config.ft.witness = Some(Some(ip)),
                        Err(_) => {
                            diag(format!(
                                "bad value '{}' for 'ft.witness' (expected {WITNESS_EXPECTED}); no witness set",
                                quote(value)
                            ));
                            config.ft.witness = None;
                        }
                    }
                }
            }
            "net.ip" => ip_text = Some((line, String::from(value))),
            "net.gw" => gw_text = Some((line, String::from(value))),
            "net.key" => match Key::from_hex(value) {
                Ok(k) => config.net_key = Some(k),
                Err(e) => {
                    // Never quote the value: it is (nearly) a secret.
                    diag(format!("bad value for 'net.key' ({e}); no key set"));
                    config.net_key = None;
                }
            },
            _ => match parse_level(value) {
                Some(level) => config.log_level = level,
                None => {
                    let default = Config::default().log_level;
                    diag(bad_value(value, key, LOG_EXPECTED, level_name(default)));
                    config.log_level = default;
                }
            },
        }
    }
    match (&ip_text, &gw_text) {
        (Some((line, ip)), gw) => {
            match parse_ip_config(ip, gw.as_ref().map(|(_, g)| g.as_str())) {
                Ok(c) => config.net_ip = Some(c),
                Err(e) => {
                    // Blame the gateway line when only the gateway is wrong.
                    let line = match (gw, parse_ip_config(ip, None)) {
                        (Some((gl, _)), Ok(_)) => *gl,
                        _ => *line,
                    };
                    let what = if line == ip_text.as_ref().map_or(0, |t| t.0) {
                        format!(
                            "bad value '{}' for 'net.ip' ({e}); no address set",
                            quote(ip)
                        )
                    } else {
                        let g = gw.as_ref().map_or("", |(_, g)| g.as_str());
                        format!(
                            "bad value '{}' for 'net.gw' ({e}); no address set",
                            quote(g)
                        )
                    };
                    diags.push(Diagnostic {
                        line,
                        message: what,
                    });
                }
            }
        }
        (None, Some((line, _))) => diags.push(Diagnostic {
            line: *line,
            message: String::from("'net.gw' without 'net.ip' (ignored)"),
        }),
        (None, None) => {}
    }
    // A timeout shorter than two heartbeats declares a live twin dead
    // whenever one heartbeat is late.
    let ft = &mut config.ft;
    if ft.timeout_ms < 2 * ft.heartbeat_ms {
        let fixed = (2 * ft.heartbeat_ms).max(FtConfig::default().timeout_ms);
        diags.push(Diagnostic {
            line: timeout_line.or(heartbeat_line).unwrap_or(1),
            message: format!(
                "'ft.timeout_ms' ({}) must be at least twice 'ft.heartbeat_ms' ({}); using {fixed}",
                ft.timeout_ms, ft.heartbeat_ms
            ),
        });
        ft.timeout_ms = fixed;
    }
    diags.sort_by_key(|d| d.line);
    (config, diags)
}

/// Parses a log level name (`off`, `error`, `warn`, `info`, `debug`,
/// `trace`), ignoring ASCII case. Surrounding spaces are not accepted: the
/// callers trim.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    [
        LevelFilter::Off,
        LevelFilter::Error,
        LevelFilter::Warn,
        LevelFilter::Info,
        LevelFilter::Debug,
        LevelFilter::Trace,
    ]
    .into_iter()
    .find(|&l| level_name(l).eq_ignore_ascii_case(s))
}

/// The lower-case name of a level, as [`parse_level`] accepts it.
pub fn level_name(level: LevelFilter) -> &'static str {
    match level {
        LevelFilter::Off => "off",
        LevelFilter::Error => "error",
        LevelFilter::Warn => "warn",
        LevelFilter::Info => "info",
        LevelFilter::Debug => "debug",
        LevelFilter::Trace => "trace",
    }
}

/// 1 to [`MAX_HOSTNAME_LEN`] ASCII letters, digits or '-', not starting with
/// '-' (RFC 1123 labels may not start with a hyphen, and a leading '-' would
/// read as an option wherever the name is passed on).
fn is_valid_hostname(s: &str) -> bool {
    (1..=MAX_HOSTNAME_LEN).contains(&s.len())
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn bad_value(value: &str, key: &str, expected: &str, default: &str) -> String {
    format!(
        "bad value '{}' for '{key}' (expected {expected}); using default '{default}'",
        quote(value)
    )
}

/// Operator text for a diagnostic: cut and escaped (see [`crate::text`]).
fn quote(s: &str) -> String {
    crate::text::quote(s, QUOTE_MAX_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    fn diag_lines(diags: &[Diagnostic]) -> Vec<String> {
        diags.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn empty_input_gives_defaults() {
        for text in [&b""[..], b"\n", b"\r\n\r\n", b"   \t  \n# only a comment\n"] {
            let (c, d) = parse(text);
            assert_eq!(c, Config::default());
            assert!(d.is_empty(), "{d:?}");
        }
        assert_eq!(Config::default().hostname, "hv");
        assert_eq!(Config::default().log_level, LevelFilter::Info);
    }

    #[test]
    fn parses_both_keys() {
        let (c, d) = parse(b"hostname = lab-3\nlog = debug\n");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(c.hostname, "lab-3");
        assert_eq!(c.log_level, LevelFilter::Debug);
    }

    #[test]
    fn whitespace_comments_and_crlf() {
        let text = b"# hv.cfg\r\n\r\n  \thostname\t=   box1   # the lab box\r\n\
                     log=TRACE#no space\r\n   # indented comment\r\n";
        let (c, d) = parse(text);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(c.hostname, "box1");
        assert_eq!(c.log_level, LevelFilter::Trace);
    }

    #[test]
    fn last_line_without_newline() {
        let (c, d) = parse(b"log = warn");
        assert!(d.is_empty());
        assert_eq!(c.log_level, LevelFilter::Warn);
    }

    #[test]
    fn log_values_are_case_insensitive() {
        for (s, l) in [
            ("off", LevelFilter::Off),
            ("ERROR", LevelFilter::Error),
            ("Warn", LevelFilter::Warn),
            ("iNfO", LevelFilter::Info),
            ("debug", LevelFilter::Debug),
            ("Trace", LevelFilter::Trace),
        ] {
            let (c, d) = parse(format!("log = {s}").as_bytes());
            assert!(d.is_empty(), "{s}: {d:?}");
            assert_eq!(c.log_level, l, "{s}");
        }
    }

    #[test]
    fn parse_level_and_level_name_round_trip() {
        for l in [
            LevelFilter::Off,
            LevelFilter::Error,
            LevelFilter::Warn,
            LevelFilter::Info,
            LevelFilter::Debug,
            LevelFilter::Trace,
        ] {
            let name = level_name(l);
            assert_eq!(name, name.to_ascii_lowercase());
            assert_eq!(parse_level(name), Some(l));
            assert_eq!(parse_level(&name.to_ascii_uppercase()), Some(l));
        }
        assert_eq!(parse_level(""), None);
        assert_eq!(parse_level(" info"), None);
        assert_eq!(parse_level("warning"), None);
        assert_eq!(parse_level("inf"), None);
        assert_eq!(parse_level("3"), None);
    }

    #[test]
    fn unknown_key() {
        let (c, d) = parse(b"\nHostname = x\nspeed = 9600\n");
        assert_eq!(c, Config::default());
        assert_eq!(
            diag_lines(&d),
            vec![
                "config: line 2: unknown key 'Hostname' (ignored)",
                "config: line 3: unknown key 'speed' (ignored)",
            ]
        );
    }

    #[test]
    fn bad_hostnames_fall_back_to_default() {
        let too_long = "a".repeat(33);
        for bad in [
            "",
            "-lab",
            "lab_3",
            "lab.example",
            "l a b",
            "héte",
            too_long.as_str(),
        ] {
            let (c, d) = parse(format!("hostname = kept\nhostname = {bad}").as_bytes());
            assert_eq!(c.hostname, "hv", "{bad:?}");
            assert_eq!(
                diag_lines(&d),
                vec![
                    "config: line 2: duplicate key 'hostname' (line 1 overridden)".to_string(),
                    format!(
                        "config: line 2: bad value '{bad}' for 'hostname' (expected 1-32 \
                         letters, digits or '-'); using default 'hv'"
                    ),
                ],
                "{bad:?}"
            );
        }
    }

    #[test]
    fn good_hostnames() {
        let longest = "Z".repeat(32);
        for good in ["a", "0", "lab-3", "A-b-C-", "x--y", "123", longest.as_str()] {
            let (c, d) = parse(format!("hostname={good}").as_bytes());
            assert!(d.is_empty(), "{good}: {d:?}");
            assert_eq!(c.hostname, good);
        }
    }

    #[test]
    fn bad_log_level() {
        let (c, d) = parse(b"log = loud\n");
        assert_eq!(c.log_level, LevelFilter::Info);
        assert_eq!(
            diag_lines(&d),
            vec![
                "config: line 1: bad value 'loud' for 'log' (expected off, error, warn, info, \
                 debug, trace); using default 'info'"
            ]
        );
        let (_, d) = parse(b"log =\n");
        assert_eq!(
            d[0].message,
            "bad value '' for 'log' (expected off, error, warn, info, debug, trace); \
             using default 'info'"
        );
    }

    #[test]
    fn missing_equals_or_key() {
        let (c, d) = parse(b"hostname lab\n= debug\n  =  \nlog = debug\n");
        assert_eq!(c.log_level, LevelFilter::Debug);
        assert_eq!(
            diag_lines(&d),
            vec![
                "config: line 1: expected 'key = value'",
                "config: line 2: expected 'key = value'",
                "config: line 3: expected 'key = value'",
            ]
        );
    }

    #[test]
    fn value_may_contain_equals_sign() {
        // Split at the first '=' only; the rest is the (here invalid) value.
        let (_, d) = parse(b"log = a=b\n");
        assert_eq!(d.len(), 1);
        assert!(
            d[0].message.starts_with("bad value 'a=b' for 'log'"),
            "{}",
            d[0]
        );
    }

    #[test]
    fn duplicate_key_later_wins() {
        let (c, d) = parse(b"log = debug\nhostname = a\nlog = error\n\nlog = trace\n");
        assert_eq!(c.log_level, LevelFilter::Trace);
        assert_eq!(c.hostname, "a");
        assert_eq!(
            diag_lines(&d),
            vec![
                "config: line 3: duplicate key 'log' (line 1 overridden)",
                "config: line 5: duplicate key 'log' (line 3 overridden)",
            ]
        );
    }

    #[test]
    fn duplicate_with_bad_later_value_uses_default() {
        // The later line wins even when it is bad; its message says the
        // default is used, and it is.
        let (c, d) = parse(b"log = debug\nlog = bogus\n");
        assert_eq!(c.log_level, LevelFilter::Info);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].message, "duplicate key 'log' (line 1 overridden)");
        assert!(d[1].message.ends_with("using default 'info'"));
    }

    #[test]
    fn invalid_utf8_line_is_ignored() {
        let (c, d) = parse(b"hostname = caf\xe9\nlog = debug\n\xff\xfe = x\n");
        assert_eq!(c.hostname, "hv");
        assert_eq!(c.log_level, LevelFilter::Debug);
        assert_eq!(
            diag_lines(&d),
            vec![
                "config: line 1: not valid UTF-8 (ignored)",
                "config: line 3: not valid UTF-8 (ignored)"
            ]
        );
    }

    #[test]
    fn invalid_utf8_in_comment_only_is_tolerated() {
        let (c, d) = parse(b"hostname = cafe # caf\xe9\r\n");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(c.hostname, "cafe");
    }

    #[test]
    fn long_values_and_keys_are_truncated_in_messages() {
        let value = "x".repeat(100);
        let (_, d) = parse(format!("log = {value}").as_bytes());
        let shown = format!("{}...", "x".repeat(40));
        assert_eq!(
            d[0].message,
            format!(
                "bad value '{shown}' for 'log' (expected off, error, warn, info, debug, \
                 trace); using default 'info'"
            )
        );
        let (_, d) = parse(format!("{value} = 1").as_bytes());
        assert_eq!(d[0].message, format!("unknown key '{shown}' (ignored)"));
        // Exactly 40 characters: not cut.
        let forty = "y".repeat(40);
        let (_, d) = parse(format!("log = {forty}").as_bytes());
        assert!(d[0].message.contains(&format!("'{forty}'")), "{}", d[0]);
        // Multi-byte characters are counted as characters, not bytes.
        let wide = "é".repeat(41);
        let (_, d) = parse(format!("log = {wide}").as_bytes());
        assert!(
            d[0].message.contains(&format!("'{}...'", "é".repeat(40))),
            "{}",
            d[0]
        );
    }

    #[test]
    fn control_characters_are_escaped_in_messages() {
        let (_, d) = parse(b"log = a\x1b[2Jb\x07\n");
        assert_eq!(
            d[0].message,
            "bad value 'a\\u{1b}[2Jb\\u{7}' for 'log' (expected off, error, warn, info, \
             debug, trace); using default 'info'"
        );
        // A lone CR inside a line is whitespace for trimming, not a line end.
        let (c, d) = parse(b"log = warn\r\r\n");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(c.log_level, LevelFilter::Warn);
    }

    #[test]
    fn line_numbers_count_every_line() {
        let (_, d) = parse(b"\n\n# c\n\r\nbogus\n");
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].line, 5);
    }

    /// xorshift64: deterministic pseudo-random bytes without a dependency.
    fn xorshift(state: &mut u64) -> u64 {
        let mut x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        x
    }

    #[test]
    fn never_panics_on_generated_input() {
        // Bytes biased toward the ones the parser cares about, so lines with
        // keys, '=', comments and broken UTF-8 are common.
        const ALPHABET: &[u8] = b"=#\r\n \t-aZ9_loghstname\x00\x1b\x7f\x80\xc3\xa9\xe9\xff";
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..20_000 {
            let len = (xorshift(&mut seed) % 200) as usize;
            let mut text = Vec::with_capacity(len + 16);
            if round % 4 == 0 {
                text.extend_from_slice(if round % 8 == 0 {
                    b"hostname = "
                } else {
                    b"log = "
                });
            }
            for _ in 0..len {
                let r = xorshift(&mut seed);
                let b = if r.is_multiple_of(3) {
                    (r >> 8) as u8
                } else {
                    ALPHABET[((r >> 8) % ALPHABET.len() as u64) as usize]
                };
                text.push(b);
            }
            let (c, diags) = parse(&text);
            // What comes out is always something the kernel can use.
            assert!(
                is_valid_hostname(&c.hostname),
                "{:?} from {text:?}",
                c.hostname
            );
            let lines = text.split(|&b| b == b'\n').count();
            let mut last = 0;
            for d in &diags {
                assert!((1..=lines).contains(&d.line), "{d} of {lines} lines");
                assert!(d.line >= last, "diagnostics out of order");
                last = d.line;
                // Messages stay short whatever the input was.
                assert!(d.message.chars().count() < 500, "{d}");
                assert!(!d.message.chars().any(char::is_control), "{d:?}");
            }
        }
    }

    #[test]
    fn max_pending_connections() {
        assert_eq!(parse(b"").0.net_max_pending, 4);
        let (c, d) = parse(b"net.max_pending = 16\n");
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(c.net_max_pending, 16);
        for bad in ["0", "65", "-1", "four", ""] {
            let (c, d) = parse(format!("net.max_pending = {bad}\n").as_bytes());
            assert_eq!(c.net_max_pending, 4, "{bad}");
            assert_eq!(d.len(), 1, "{bad}: {d:?}");
            assert!(
                d[0].message.contains("for 'net.max_pending' (expected a whole number from 1 to 64); using default '4'"),
                "{}",
                d[0]
            );
        }
    }

    #[test]
    fn ft_settings() {
        let d = FtConfig::default();
        assert_eq!(
            (d.heartbeat_ms, d.timeout_ms, d.check_s, d.witness),
            (100, 1000, 5, None)
        );
        let (c, diags) = parse(
            b"ft.heartbeat_ms = 50\nft.timeout_ms = 400\nft.check_s = 2\nft.witness = 10.0.0.9\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(c.ft.heartbeat_ms, 50);
        assert_eq!(c.ft.timeout_ms, 400);
        assert_eq!(c.ft.check_s, 2);
        assert_eq!(c.ft.witness.unwrap().unwrap().to_string(), "10.0.0.9");
        assert_eq!(parse(b"ft.witness = None\n").0.ft.witness, Some(None));
        for (text, want) in [
            (
                "ft.heartbeat_ms = 5",
                "for 'ft.heartbeat_ms' (expected a whole number of milliseconds from 10 to 10000); using default '100'",
            ),
            (
                "ft.timeout_ms = fast",
                "for 'ft.timeout_ms' (expected a whole number of milliseconds from 20 to 600000); using default '1000'",
            ),
            (
                "ft.check_s = 0",
                "for 'ft.check_s' (expected a whole number of seconds from 1 to 3600); using default '5'",
            ),
            (
                "ft.witness = 10.0.0",
                "for 'ft.witness' (expected an IPv4 address or 'none'); no witness set",
            ),
        ] {
            let (c, diags) = parse(text.as_bytes());
            assert_eq!(diags.len(), 1, "{text}: {diags:?}");
            assert!(diags[0].message.contains(want), "{text}: {}", diags[0]);
            assert_eq!(
                (c.ft.heartbeat_ms, c.ft.timeout_ms, c.ft.check_s),
                (100, 1000, 5)
            );
        }
        let (c, diags) = parse(b"ft.heartbeat_ms = 800\nft.timeout_ms = 1000\n");
        assert_eq!(c.ft.timeout_ms, 1600);
        assert_eq!(
            diags[0].to_string(),
            "config: line 2: 'ft.timeout_ms' (1000) must be at least twice 'ft.heartbeat_ms' (800); using 1600"
        );
    }

    #[test]
    fn network_settings() {
        let (c, d) = parse(b"net.ip = 10.0.0.1/24\nnet.gw = 10.0.0.254\nnet.key = 00112233445566778899aabbccddeeff\n");
        assert!(d.is_empty(), "{d:?}");
        let ip = c.net_ip.unwrap();
        assert_eq!(ip.to_string(), "10.0.0.1/24 gw 10.0.0.254");
        assert_eq!(c.net_key.unwrap().len(), 16);
    }

    #[test]
    fn bad_network_settings_are_reported_and_never_quote_the_key() {
        let (c, d) = parse(b"net.ip = 10.0.0.1\nnet.key = 0011zz\n");
        assert_eq!(c.net_ip, None);
        assert_eq!(c.net_key, None);
        let lines: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("config: line 1: bad value '10.0.0.1' for 'net.ip'"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("config: line 2: bad value for 'net.key'"),
            "{lines:?}"
        );
        assert!(!lines[1].contains("0011zz"));
        let (c, d) = parse(b"net.ip = 10.0.0.1/24\nnet.gw = 10.9.0.1\n");
        assert_eq!(c.net_ip, None);
        assert!(
            d[0].to_string()
                .starts_with("config: line 2: bad value '10.9.0.1' for 'net.gw'"),
            "{d:?}"
        );
        let (_, d) = parse(b"net.gw = 10.9.0.1\n");
        assert_eq!(
            d[0].to_string(),
            "config: line 1: 'net.gw' without 'net.ip' (ignored)"
        );
    }
}
