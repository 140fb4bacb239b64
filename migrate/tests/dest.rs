//! Destination validation: everything a malicious or buggy source may send.

mod common;

use common::{SimHost, desc};
use migrate::dest::{self, Dest, DestAction};
use migrate::proto::Message;

fn host() -> SimHost {
    common::host_for(&desc(16))
}

fn hello_named(vm: &str) -> Message {
    let mut d = desc(16);
    d.vm = vm.into();
    d.hello()
}

/// Names the console would refuse, and how the reason must show them.
const BAD_NAMES: [(&str, &str); 5] = [
    ("web 1", "'web 1'"),
    ("web\x1b[2J", "'web\\u{1b}[2J'"),
    ("abcdefghijklmnopq", "'abcdefghijklmnopq'"),
    ("", "''"),
    ("caf\u{e9}", "'caf\\u{e9}'"),
];

#[test]
fn bad_names_in_hello_are_refused_escaped() {
    for (name, shown) in BAD_NAMES {
        let hello = hello_named(name);
        let reasons = dest::check(&hello, &host());
        let expected = format!("bad VM name {shown} (1-16 letters, digits, '-' or '_')");
        assert_eq!(reasons, std::slice::from_ref(&expected), "{name:?}");
        let mut dst = Dest::new();
        let out = dst.on_message(hello, None, &host());
        assert!(
            !out.iter().any(|a| matches!(a, DestAction::Reserve { .. })),
            "{name:?}: {out:?}"
        );
        let Some(DestAction::Send(Message::Refuse { reasons })) = out.first() else {
            panic!("{name:?}: {out:?}")
        };
        assert_eq!(reasons, &[expected]);
        assert!(!reasons[0].chars().any(char::is_control));
    }
}

#[test]
fn long_names_are_cut_in_reasons() {
    let reasons = dest::check(&hello_named(&"\x07".repeat(1000)), &host());
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].len() < 400, "{}", reasons[0]);
    assert!(reasons[0].contains("\\u{7}...'"), "{}", reasons[0]);
}

#[test]
fn a_refusal_with_many_blockers_still_decodes() {
    // Every CPU feature missing, 16 unknown devices, a bad name and no RAM.
    let mut d = desc(1 << 20);
    d.vm = "bad name".into();
    d.cpu_features = u64::MAX;
    d.devices = (0..16).map(|i| format!("dev{i}")).collect();
    let host = SimHost {
        free: 0,
        features: 0,
        devices: vec![],
    };
    let mut dst = Dest::new();
    let out = dst.on_message(d.hello(), None, &host);
    let Some(DestAction::Send(refuse)) = out.first() else {
        panic!("{out:?}")
    };
    let (ty, payload) = migrate::proto::encode(refuse);
    let Ok(Message::Refuse { reasons }) = migrate::proto::decode(ty, &payload) else {
        panic!("undecodable {refuse:?}")
    };
    assert_eq!(reasons.len(), migrate::proto::MAX_REASONS);
    assert!(reasons[0].starts_with("bad VM name"), "{reasons:?}");
    assert!(reasons.last().unwrap().ends_with("more"), "{reasons:?}");
}
