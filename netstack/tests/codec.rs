//! Integration tests for the encrypted, authenticated channel codec.

use netstack::codec::*;
use proptest::prelude::*;

const TY: FrameType = 16;

fn key(b: u8) -> Key {
    Key::from_bytes(&[b; 32]).unwrap()
}

/// Moves pending output of `from` into `to`, `chunk` bytes at a time.
/// Returns the first error from `to`, and the bytes `to` did not consume.
fn shuttle(
    from: &mut Handshake,
    to: &mut Handshake,
    chunk: usize,
) -> Result<Vec<u8>, ChannelError> {
    let bytes = from.take_output();
    let mut off = 0;
    while off < bytes.len() {
        let end = off.saturating_add(chunk).min(bytes.len());
        let n = to.feed(&bytes[off..end])?;
        let offered = end - off;
        off += n;
        if n < offered {
            break;
        }
    }
    Ok(bytes[off..].to_vec())
}

type Pair = (Sealer, Opener);
/// Outcome of each side when a handshake fails: (client, server).
type Failure = (Result<(), ChannelError>, Result<(), ChannelError>);

/// Runs a full handshake in memory, delivering bytes `chunk` at a time.
fn handshake_with(
    ck: &Key,
    sk: &Key,
    cmax: u32,
    smax: u32,
    chunk: usize,
) -> Result<(Pair, Pair), Failure> {
    let mut c = Handshake::client(ck, [0x11; 32], cmax);
    let mut s = Handshake::server(sk, [0x22; 32], smax);
    for _ in 0..4 {
        let r1 = shuttle(&mut c, &mut s, chunk);
        let r2 = shuttle(&mut s, &mut c, chunk);
        if r1.is_err() || r2.is_err() {
            return Err((r2.map(|_| ()), r1.map(|_| ())));
        }
        assert!(r1.unwrap().is_empty() && r2.unwrap().is_empty());
        if c.is_done() && s.is_done() {
            break;
        }
    }
    // The client's Auth must be flushed before the server can be done.
    assert!(c.is_done() && s.is_done(), "handshake did not finish");
    assert!(c.take_output().is_empty() && s.take_output().is_empty());
    Ok((c.into_session().unwrap(), s.into_session().unwrap()))
}

fn handshake() -> (Pair, Pair) {
    handshake_with(
        &key(1),
        &key(1),
        DEFAULT_MAX_PAYLOAD,
        DEFAULT_MAX_PAYLOAD,
        usize::MAX,
    )
    .unwrap()
}

fn seal(s: &mut Sealer, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    s.seal(TY, payload, &mut out).unwrap();
    out
}

// ---------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------

#[test]
fn handshake_byte_at_a_time() {
    let ((mut cs, mut co), (mut ss, mut so)) =
        handshake_with(&key(3), &key(3), 1000, 2000, 1).unwrap();
    assert_eq!(cs.max_payload(), 2000);
    assert_eq!(ss.max_payload(), 1000);
    assert_eq!(co.max_payload(), 1000);
    assert_eq!(so.max_payload(), 2000);
    let f = seal(&mut cs, b"ping");
    let (fr, n) = so.decode(&f).unwrap().unwrap();
    assert_eq!(
        (fr.ty, fr.seq, fr.payload, n),
        (TY, 0, &b"ping"[..], f.len())
    );
    let f = seal(&mut ss, b"pong");
    assert_eq!(co.decode(&f).unwrap().unwrap().0.payload, b"pong");
}

#[test]
fn handshake_leaves_trailing_data_frames() {
    let k = key(4);
    let mut c = Handshake::client(&k, [1; 32], 500);
    let mut s = Handshake::server(&k, [2; 32], 500);
    let hello = c.take_output();
    assert_eq!(hello.len(), 44);
    assert_eq!(s.feed(&hello), Ok(44));
    let ch = s.take_output();
    assert_eq!(ch.len(), 76);
    assert_eq!(c.feed(&ch), Ok(76));
    assert!(c.is_done());
    let mut wire = c.take_output();
    assert_eq!(wire.len(), 36);
    let (mut cs, _co) = c.into_session().unwrap();
    cs.seal(TY, b"first", &mut wire).unwrap();
    cs.seal(TY, b"second", &mut wire).unwrap();
    // Everything arrives in one segment: the handshake takes only the Auth.
    assert_eq!(s.feed(&wire), Ok(36));
    assert!(s.is_done());
    assert_eq!(s.feed(&wire[36..]), Ok(0));
    let (_ss, mut so) = s.into_session().unwrap();
    let mut rest = &wire[36..];
    let (f, n) = so.decode(rest).unwrap().unwrap();
    assert_eq!(f.payload, b"first");
    rest = &rest[n..];
    let (f, n) = so.decode(rest).unwrap().unwrap();
    assert_eq!((f.payload, f.seq), (&b"second"[..], 1));
    assert_eq!(n, rest.len());
}

#[test]
fn handshake_truncated_and_not_done() {
    let k = key(5);
    let mut c = Handshake::client(&k, [1; 32], 500);
    let mut s = Handshake::server(&k, [2; 32], 500);
    let hello = c.take_output();
    assert_eq!(s.feed(&hello[..20]), Ok(20));
    assert!(!s.is_done());
    assert_eq!(s.at_eof(), Err(ChannelError::HandshakeTruncated));
    assert_eq!(c.at_eof(), Err(ChannelError::HandshakeTruncated));
    assert!(s.into_session().is_none());
    assert!(c.into_session().is_none());
}

#[test]
fn wrong_key_detected_by_client() {
    let err = handshake_with(&key(1), &key(2), 100, 100, 7).unwrap_err();
    assert_eq!(err.0, Err(ChannelError::WrongKey));
}

#[test]
fn wrong_key_poisons_client() {
    let mut c = Handshake::client(&key(1), [1; 32], 100);
    let mut s = Handshake::server(&key(2), [2; 32], 100);
    s.feed(&c.take_output()).unwrap();
    let ch = s.take_output();
    assert_eq!(c.feed(&ch), Err(ChannelError::WrongKey));
    assert_eq!(c.feed(&[]), Err(ChannelError::WrongKey));
    assert_eq!(c.at_eof(), Err(ChannelError::WrongKey));
    assert!(c.take_output().is_empty(), "no Auth after a failed check");
    assert!(!c.is_done());
    assert!(c.into_session().is_none());
}

#[test]
fn forged_auth_rejected_by_server() {
    // An impostor client that does not know the key and skips the check.
    let mut impostor = Handshake::client(&key(9), [1; 32], 100);
    let mut s = Handshake::server(&key(1), [2; 32], 100);
    s.feed(&impostor.take_output()).unwrap();
    let _challenge = s.take_output();
    let mut auth = b"HVCA".to_vec();
    auth.extend_from_slice(&[0x5a; 32]);
    assert_eq!(s.feed(&auth), Err(ChannelError::WrongKey));
    assert_eq!(s.feed(&auth), Err(ChannelError::WrongKey));
    assert!(!s.is_done());
}

#[test]
fn auth_for_other_challenge_rejected() {
    // A valid Auth from one session replayed into another session fails.
    let k = key(1);
    let mut c = Handshake::client(&k, [1; 32], 100);
    let mut s1 = Handshake::server(&k, [2; 32], 100);
    let mut s2 = Handshake::server(&k, [3; 32], 100);
    let hello = c.take_output();
    s1.feed(&hello).unwrap();
    s2.feed(&hello).unwrap();
    c.feed(&s1.take_output()).unwrap();
    let auth = c.take_output();
    assert_eq!(s2.feed(&auth), Err(ChannelError::WrongKey));
    assert_eq!(s1.feed(&auth), Ok(36));
}

#[test]
fn bad_magic_auth() {
    let k = key(1);
    let mut c = Handshake::client(&k, [1; 32], 100);
    let mut s = Handshake::server(&k, [2; 32], 100);
    s.feed(&c.take_output()).unwrap();
    assert_eq!(s.feed(b"HVCX"), Err(ChannelError::BadMagic));
}

#[test]
fn bad_magic_challenge() {
    let mut c = Handshake::client(&key(1), [1; 32], 100);
    let _ = c.take_output();
    assert_eq!(
        c.feed(b"HTTP/1.1 400 Bad Request\r\n"),
        Err(ChannelError::BadMagic)
    );
}

fn hello_bytes(version: u16) -> Vec<u8> {
    let mut h = b"HVCH".to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&0u16.to_le_bytes());
    h.extend_from_slice(&[7; 32]);
    h.extend_from_slice(&1000u32.to_le_bytes());
    h
}

#[test]
fn protocol_version_is_2() {
    assert_eq!(PROTOCOL_VERSION, 2);
    let mut c = Handshake::client(&key(1), [1; 32], 100);
    let hello = c.take_output();
    assert_eq!(u16::from_le_bytes([hello[4], hello[5]]), 2);
}

const V1_REFUSED: &str = "protocol version mismatch: we speak version 2, the peer speaks version 1 \
     (version 1 sends frames in clear; upgrade the peer)";

#[test]
fn v1_client_is_refused_by_v2_server() {
    // The Hello of a version-1 client (same layout in both versions).
    let mut s = Handshake::server(&key(1), [2; 32], 100);
    let err = s.feed(&hello_bytes(1)).unwrap_err();
    assert_eq!(err, ChannelError::Version { ours: 2, theirs: 1 });
    assert_eq!(err.to_string(), V1_REFUSED);
    // The server still answers, so that the old client learns why: a
    // Challenge with our version and status 1 ("version not supported"),
    // which a version-1 client reports as "we speak version 1, the peer
    // speaks version 2".
    let ch = s.take_output();
    assert_eq!(ch.len(), CHALLENGE_LEN);
    assert_eq!(&ch[..4], b"HVCS");
    assert_eq!(u16::from_le_bytes([ch[4], ch[5]]), 2, "our version");
    assert_eq!(
        u16::from_le_bytes([ch[6], ch[7]]),
        1,
        "status: version not supported"
    );
    // Poisoned, and nothing more to send.
    assert_eq!(s.feed(&[]), Err(err.clone()));
    assert_eq!(s.at_eof(), Err(err));
    assert!(s.take_output().is_empty());
    assert!(!s.is_done());
}

/// The Challenge a version-1 server sends to a client it cannot serve.
fn v1_refusal(hello: &[u8]) -> Vec<u8> {
    let mut ch = b"HVCS".to_vec();
    ch.extend_from_slice(&1u16.to_le_bytes()); // version 1
    ch.extend_from_slice(&1u16.to_le_bytes()); // status: version not supported
    ch.extend_from_slice(&[0x33; 32]);
    ch.extend_from_slice(&1000u32.to_le_bytes());
    // mac_s: a v1 server computes it over `hello`, but a v2 client refuses
    // on the version before it looks at the MAC, so any bytes will do.
    ch.extend_from_slice(&hello[8..40]);
    assert_eq!(ch.len(), CHALLENGE_LEN);
    ch
}

#[test]
fn v2_client_is_refused_by_v1_server() {
    let mut c = Handshake::client(&key(1), [1; 32], 100);
    let hello = c.take_output();
    let err = c.feed(&v1_refusal(&hello)).unwrap_err();
    assert_eq!(err, ChannelError::Version { ours: 2, theirs: 1 });
    assert_eq!(err.to_string(), V1_REFUSED);
    assert!(c.take_output().is_empty(), "no Auth to a refused server");
    assert_eq!(c.at_eof(), Err(err));
    assert!(c.into_session().is_none());

    // Even a version-1 Challenge that claims success is refused: a v2 client
    // never falls back to clear frames.
    let mut c = Handshake::client(&key(1), [1; 32], 100);
    let hello = c.take_output();
    let mut ch = v1_refusal(&hello);
    ch[6..8].copy_from_slice(&0u16.to_le_bytes());
    assert_eq!(
        c.feed(&ch),
        Err(ChannelError::Version { ours: 2, theirs: 1 })
    );
}

#[test]
fn other_version_mismatches() {
    // A client receiving a Challenge from a version-3 server.
    let mut c = Handshake::client(&key(1), [1; 32], 100);
    let mut s = Handshake::server(&key(1), [2; 32], 100);
    s.feed(&c.take_output()).unwrap();
    let mut ch3 = s.take_output();
    ch3[4..6].copy_from_slice(&3u16.to_le_bytes());
    let err = c.feed(&ch3).unwrap_err();
    assert_eq!(err, ChannelError::Version { ours: 2, theirs: 3 });
    assert!(
        err.to_string().ends_with("version 3 (upgrade this host)"),
        "{err}"
    );

    // A server receiving the Hello of a version-3 client.
    let mut s = Handshake::server(&key(1), [2; 32], 100);
    assert_eq!(
        s.feed(&hello_bytes(3)),
        Err(ChannelError::Version { ours: 2, theirs: 3 })
    );

    // A same-version server that answers "version not supported" (only a
    // forger would): still a clean refusal.
    let mut c = Handshake::client(&key(1), [1; 32], 100);
    let mut s = Handshake::server(&key(1), [2; 32], 100);
    s.feed(&c.take_output()).unwrap();
    let mut ch = s.take_output();
    ch[6..8].copy_from_slice(&1u16.to_le_bytes());
    let err = c.feed(&ch).unwrap_err();
    assert_eq!(err, ChannelError::Version { ours: 2, theirs: 2 });
}

#[test]
fn unknown_status() {
    let k = key(1);
    let mut c = Handshake::client(&k, [1; 32], 100);
    let mut s = Handshake::server(&k, [2; 32], 100);
    s.feed(&c.take_output()).unwrap();
    let mut ch = s.take_output();
    ch[6] = 9;
    assert_eq!(c.feed(&ch), Err(ChannelError::BadStatus(9)));
}

#[test]
fn tampered_challenge_is_wrong_key() {
    let k = key(1);
    let mut c = Handshake::client(&k, [1; 32], 100);
    let mut s = Handshake::server(&k, [2; 32], 100);
    s.feed(&c.take_output()).unwrap();
    let mut ch = s.take_output();
    ch[40] ^= 0xff; // attacker tries to change the server's max_payload
    assert_eq!(c.feed(&ch), Err(ChannelError::WrongKey));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn garbage_hello_is_bad_magic(bytes in proptest::collection::vec(any::<u8>(), 44)) {
        prop_assume!(&bytes[..4] != b"HVCH");
        let mut s = Handshake::server(&key(1), [2; 32], 100);
        prop_assert_eq!(s.feed(&bytes), Err(ChannelError::BadMagic));
        prop_assert!(s.take_output().is_empty());
    }

    #[test]
    fn handshake_any_chunking(chunk in 1usize..100, cmax in 0u32..10_000, smax in 0u32..10_000) {
        let ((cs, co), (ss, so)) = handshake_with(&key(8), &key(8), cmax, smax, chunk).unwrap();
        prop_assert_eq!(cs.max_payload(), smax);
        prop_assert_eq!(so.max_payload(), smax);
        prop_assert_eq!(ss.max_payload(), cmax);
        prop_assert_eq!(co.max_payload(), cmax);
    }
}

// ---------------------------------------------------------------------------
// Data frames
// ---------------------------------------------------------------------------

#[test]
fn round_trip_many_frames_both_ways() {
    let ((mut cs, mut co), (mut ss, mut so)) = handshake();
    let mut c2s = Vec::new();
    let mut s2c = Vec::new();
    for i in 0..200u32 {
        let p: Vec<u8> = (0..i).map(|b| b as u8).collect();
        cs.seal(16 + (i % 200) as u8, &p, &mut c2s).unwrap();
        ss.seal(255, &i.to_le_bytes(), &mut s2c).unwrap();
    }
    cs.seal_close(&mut c2s);
    ss.seal_close(&mut s2c);
    assert_eq!(cs.next_seq(), 201);

    let mut buf = &c2s[..];
    for i in 0..200u32 {
        let (f, n) = so.decode(buf).unwrap().unwrap();
        assert_eq!(f.seq, u64::from(i));
        assert_eq!(f.ty, 16 + (i % 200) as u8);
        assert_eq!(f.payload.len(), i as usize);
        assert_eq!(n, i as usize + Sealer::overhead());
        buf = &buf[n..];
    }
    let (f, n) = so.decode(buf).unwrap().unwrap();
    assert_eq!((f.ty, f.seq, f.payload), (TYPE_CLOSE, 200, &[][..]));
    assert!(so.is_closed());
    buf = &buf[n..];
    assert!(buf.is_empty());
    assert_eq!(so.decode(buf), Ok(None));
    assert_eq!(so.at_eof(buf), Ok(()));

    let mut buf = &s2c[..];
    for i in 0..200u32 {
        let (f, n) = co.decode(buf).unwrap().unwrap();
        assert_eq!(
            (f.ty, f.seq, f.payload),
            (255, u64::from(i), &i.to_le_bytes()[..])
        );
        buf = &buf[n..];
    }
    assert_eq!(co.decode(buf).unwrap().unwrap().0.ty, TYPE_CLOSE);
    assert_eq!(co.next_seq(), 201);
}

#[test]
fn data_after_close_rejected() {
    let ((mut cs, _), (_, mut so)) = handshake();
    let mut w = Vec::new();
    cs.seal_close(&mut w);
    cs.seal(TY, b"late", &mut w).unwrap();
    let (f, n) = so.decode(&w).unwrap().unwrap();
    assert_eq!(f.ty, TYPE_CLOSE);
    assert_eq!(so.decode(&w[n..]), Err(ChannelError::DataAfterClose));
}

#[test]
fn reserved_types() {
    let ((mut cs, _), _) = handshake();
    let mut out = Vec::new();
    for ty in 0..16u8 {
        assert_eq!(
            cs.seal(ty, b"x", &mut out),
            Err(ChannelError::ReservedType(ty))
        );
    }
    assert!(out.is_empty());
    assert_eq!(cs.next_seq(), 0);
}

#[test]
fn truncated_prefixes() {
    let ((mut cs, _), (_, so)) = handshake();
    let frame = seal(&mut cs, &[0xee; 100]);
    assert_eq!(frame.len(), 100 + 29);
    for cut in 1..frame.len() {
        let mut o = so.clone();
        assert_eq!(o.decode(&frame[..cut]), Ok(None), "prefix {cut}");
        let need = if cut < HEADER_LEN {
            HEADER_LEN
        } else {
            frame.len()
        };
        assert_eq!(
            o.at_eof(&frame[..cut]),
            Err(ChannelError::Truncated { have: cut, need })
        );
        // The whole frame still decodes after a partial attempt.
        assert_eq!(o.decode(&frame).unwrap().unwrap().1, frame.len());
    }
    assert_eq!(so.at_eof(&[]), Ok(()));
}

#[test]
fn oversized_header_reported_immediately() {
    let ((_, co), (mut ss, _)) =
        handshake_with(&key(1), &key(1), 64, DEFAULT_MAX_PAYLOAD, usize::MAX).unwrap();
    // The server's sealer knows the client only accepts 64 bytes.
    let mut out = Vec::new();
    assert_eq!(
        ss.seal(TY, &[0; 65], &mut out),
        Err(ChannelError::Oversized { len: 65, max: 64 })
    );
    assert!(out.is_empty());
    ss.seal(TY, &[0; 64], &mut out).unwrap();

    // A header announcing 65 bytes, with no body at all.
    let mut o = co.clone();
    let mut hdr = 65u32.to_le_bytes().to_vec();
    hdr.extend_from_slice(&0u64.to_le_bytes());
    assert_eq!(hdr.len(), HEADER_LEN);
    assert_eq!(
        o.decode(&hdr),
        Err(ChannelError::Oversized { len: 65, max: 64 })
    );
    // Poisoned: the same error again, even for a valid frame.
    assert_eq!(
        o.decode(&out),
        Err(ChannelError::Oversized { len: 65, max: 64 })
    );

    let mut o = co.clone();
    let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0];
    assert_eq!(
        o.decode(&huge),
        Err(ChannelError::Oversized {
            len: u64::from(u32::MAX),
            max: 64
        })
    );

    let mut o = co;
    assert_eq!(o.decode(&out).unwrap().unwrap().0.payload.len(), 64);
}

#[test]
fn replayed_frame() {
    let ((mut cs, _), (_, mut so)) = handshake();
    let f0 = seal(&mut cs, b"zero");
    let f1 = seal(&mut cs, b"one");
    so.decode(&f0).unwrap().unwrap();
    so.decode(&f1).unwrap().unwrap();
    assert_eq!(
        so.decode(&f0),
        Err(ChannelError::Replayed {
            got: 0,
            expected: 2
        })
    );
    // Poisoned.
    let f2 = seal(&mut cs, b"two");
    assert_eq!(
        so.decode(&f2),
        Err(ChannelError::Replayed {
            got: 0,
            expected: 2
        })
    );
}

#[test]
fn reordered_frames() {
    let ((mut cs, _), (_, mut so)) = handshake();
    let f0 = seal(&mut cs, b"zero");
    let f1 = seal(&mut cs, b"one");
    let f2 = seal(&mut cs, b"two");
    so.decode(&f0).unwrap().unwrap();
    assert_eq!(
        so.decode(&f2),
        Err(ChannelError::OutOfOrder {
            got: 2,
            expected: 1
        })
    );
    assert_eq!(
        so.decode(&f1),
        Err(ChannelError::OutOfOrder {
            got: 2,
            expected: 1
        })
    );
}

#[test]
fn reflected_frame_is_bad_mac() {
    let ((mut cs, mut co), (mut ss, mut so)) = handshake();
    let f = seal(&mut cs, b"to the server");
    assert_eq!(co.decode(&f), Err(ChannelError::BadMac { seq: 0 }));
    let f = seal(&mut ss, b"to the client");
    assert_eq!(so.decode(&f), Err(ChannelError::BadMac { seq: 0 }));
}

#[test]
fn frames_from_another_session_are_bad_mac() {
    let ((mut cs, _), _) = handshake();
    // Same key, different server nonce ⇒ different session keys.
    let mut c = Handshake::client(&key(1), [0x11; 32], 100);
    let mut s = Handshake::server(&key(1), [0x33; 32], 100);
    s.feed(&c.take_output()).unwrap();
    c.feed(&s.take_output()).unwrap();
    s.feed(&c.take_output()).unwrap();
    let (_, mut so) = s.into_session().unwrap();
    let f = seal(&mut cs, b"x");
    assert_eq!(so.decode(&f), Err(ChannelError::BadMac { seq: 0 }));
}

fn frames_strategy() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    proptest::collection::vec(
        (
            16u8..=255,
            (0usize..4096).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n)),
        ),
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_chunking_round_trips(
        frames in frames_strategy(),
        cuts in proptest::collection::vec(1usize..3000, 1..40),
    ) {
        let ((mut cs, _), (_, mut so)) = handshake();
        let mut wire = Vec::new();
        for (ty, p) in &frames {
            cs.seal(*ty, p, &mut wire).unwrap();
        }
        // Deliver in chunks of the given sizes (cycled), like a TCP receiver.
        let mut rx: Vec<u8> = Vec::new();
        let mut got = Vec::new();
        let mut off = 0;
        let mut i = 0;
        while off < wire.len() {
            let end = (off + cuts[i % cuts.len()]).min(wire.len());
            i += 1;
            rx.extend_from_slice(&wire[off..end]);
            off = end;
            while let Some((f, n)) = so.decode(&rx).unwrap() {
                got.push((f.ty, f.seq, f.payload.to_vec()));
                rx.drain(..n);
            }
        }
        prop_assert!(rx.is_empty());
        prop_assert_eq!(so.at_eof(&rx), Ok(()));
        prop_assert_eq!(got.len(), frames.len());
        for (k, ((ty, p), (gty, gseq, gp))) in frames.iter().zip(&got).enumerate() {
            prop_assert_eq!(ty, gty);
            prop_assert_eq!(*gseq, k as u64);
            prop_assert_eq!(p, gp);
        }
    }

    /// Any single flipped bit, in the header, the ciphertext or the tag, is
    /// refused and never yields a payload: a changed length is oversized or
    /// mis-frames the frame (then it fails authentication, or waits for bytes
    /// that never come and is truncated at EOF); anything else fails
    /// authentication, a changed sequence number included.
    #[test]
    fn any_single_bit_flip_is_rejected(
        len in 0usize..300,
        prior in 0usize..3,
        bit in any::<proptest::sample::Index>(),
    ) {
        let ((mut cs, _), (_, mut so)) =
            handshake_with(&key(1), &key(1), 100_000, 100_000, usize::MAX).unwrap();
        // Advance both sides a few frames so seq is non-zero.
        for _ in 0..prior {
            let f = seal(&mut cs, b"warm-up");
            so.decode(&f).unwrap().unwrap();
        }
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        let mut frame = seal(&mut cs, &payload);
        prop_assert_eq!(frame.len(), len + Sealer::overhead());
        let bit = bit.index(frame.len() * 8);
        let byte = bit / 8;
        frame[byte] ^= 1 << (bit % 8);
        let announced = u32::from_le_bytes(frame[0..4].try_into().unwrap());
        let seq = u64::from_le_bytes(frame[4..12].try_into().unwrap());
        if (4..12).contains(&byte) {
            prop_assert_ne!(seq, prior as u64);
        }
        let r = so.decode(&frame).map(|o| o.map(|(f, n)| (f.payload.to_vec(), n)));
        if announced > 100_000 {
            prop_assert_eq!(r, Err(ChannelError::Oversized { len: u64::from(announced), max: 100_000 }));
        } else if announced as usize > len {
            prop_assert_eq!(r, Ok(None));
            prop_assert_eq!(
                so.at_eof(&frame),
                Err(ChannelError::Truncated {
                    have: frame.len(),
                    need: announced as usize + Sealer::overhead()
                })
            );
        } else {
            prop_assert_eq!(r, Err(ChannelError::BadMac { seq }));
        }
    }

    /// A stream cut anywhere inside a frame yields the whole frames before
    /// the cut, then nothing, and `Truncated` at EOF.
    #[test]
    fn any_truncation_then_eof_is_truncated(
        frames in frames_strategy(),
        cut in any::<proptest::sample::Index>(),
    ) {
        let ((mut cs, _), (_, mut so)) = handshake();
        let mut wire = Vec::new();
        let mut ends = Vec::new();
        for (ty, p) in &frames {
            cs.seal(*ty, p, &mut wire).unwrap();
            ends.push(wire.len());
        }
        let cut = cut.index(wire.len());
        // Frames that end at or before the cut are whole.
        let whole = ends.iter().filter(|&&e| e <= cut).count();
        let start = if whole == 0 { 0 } else { ends[whole - 1] };
        let mut rest = &wire[..cut];
        for (k, (ty, p)) in frames.iter().enumerate().take(whole) {
            let (f, n) = so.decode(rest).unwrap().unwrap();
            prop_assert_eq!((f.ty, f.seq, f.payload), (*ty, k as u64, &p[..]));
            rest = &rest[n..];
        }
        prop_assert_eq!(rest.len(), cut - start);
        prop_assert_eq!(so.decode(rest), Ok(None));
        if rest.is_empty() {
            prop_assert_eq!(so.at_eof(rest), Ok(()));
        } else {
            let need = if rest.len() < HEADER_LEN { HEADER_LEN } else { ends[whole] - start };
            prop_assert_eq!(
                so.at_eof(rest),
                Err(ChannelError::Truncated { have: rest.len(), need })
            );
        }
    }

    /// Frames delivered in any order, with duplicates: each frame in order is
    /// accepted; the first one out of place is `Replayed` (seen before) or
    /// `OutOfOrder` (ahead) and yields nothing, and the Opener stays poisoned.
    #[test]
    fn reordered_or_duplicated_frames_are_rejected(
        n in 1usize..8,
        order in proptest::collection::vec(0usize..8, 1..16),
    ) {
        let ((mut cs, _), (_, mut so)) = handshake();
        let frames: Vec<Vec<u8>> = (0..n).map(|i| seal(&mut cs, &[i as u8; 40])).collect();
        let mut expected = 0usize;
        for &i in order.iter().filter(|&&i| i < n) {
            let r = so.decode(&frames[i]).map(|o| o.map(|(f, _)| (f.seq, f.payload.to_vec())));
            if i == expected {
                prop_assert_eq!(r, Ok(Some((i as u64, vec![i as u8; 40]))));
                expected += 1;
                continue;
            }
            let (got, want) = (i as u64, expected as u64);
            let err = if i < expected {
                ChannelError::Replayed { got, expected: want }
            } else {
                ChannelError::OutOfOrder { got, expected: want }
            };
            prop_assert_eq!(&r, &Err(err.clone()));
            // Poisoned, even for the frame it was waiting for.
            let next = seal(&mut cs, b"x");
            prop_assert_eq!(so.decode(frames.get(expected).unwrap_or(&next)), Err(err));
            break;
        }
    }

    /// Frames that arrive intact decrypt to what was sealed, whatever the
    /// payload (no fixed pattern).
    #[test]
    fn random_payloads_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..2048), ty in 16u8..=255) {
        let ((mut cs, _), (_, mut so)) = handshake();
        let mut wire = Vec::new();
        cs.seal(ty, &payload, &mut wire).unwrap();
        let (f, n) = so.decode(&wire).unwrap().unwrap();
        prop_assert_eq!((f.ty, f.payload, n), (ty, &payload[..], wire.len()));
    }
}

// ---------------------------------------------------------------------------
// Confidentiality
// ---------------------------------------------------------------------------

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn plaintext_does_not_appear_on_the_wire() {
    let ((mut cs, _), (mut ss, mut so)) = handshake();
    let pattern: Vec<u8> = b"GUEST-RAM-PAGE-0123456789abcdef"
        .iter()
        .chain(b"VCPU-RIP=ffffffff81000000;RAX=42".iter())
        .copied()
        .collect();
    assert_eq!(pattern.len(), 63);
    let pattern = [&pattern[..], b"!"].concat();
    // The pattern alone, repeated in a page, and in both directions.
    let mut page = Vec::new();
    while page.len() < 4096 {
        page.extend_from_slice(&pattern);
    }
    let mut wire = Vec::new();
    cs.seal(TY, &pattern, &mut wire).unwrap();
    cs.seal(TY, &page, &mut wire).unwrap();
    ss.seal(TY, &page, &mut wire).unwrap();
    assert!(!contains(&wire, &pattern));
    // Not even a 16-byte piece of it.
    for piece in pattern.chunks(16) {
        assert!(!contains(&wire, piece), "{piece:?}");
    }
    // The same payload sealed twice gives unrelated ciphertexts (new nonce).
    let a = seal(&mut cs, &page);
    let b = seal(&mut cs, &page);
    let same = a[HEADER_LEN..]
        .iter()
        .zip(&b[HEADER_LEN..])
        .filter(|(x, y)| x == y)
        .count();
    assert!(same < 64, "{same} equal bytes out of {}", a.len());
    // And it still opens.
    let (f, n) = so.decode(&wire).unwrap().unwrap();
    assert_eq!(f.payload, &pattern[..]);
    assert_eq!(so.decode(&wire[n..]).unwrap().unwrap().0.payload, &page[..]);
}

#[test]
fn frame_type_is_encrypted() {
    // Two frames that differ only in their type have identical clear headers;
    // the type is nowhere in clear.
    let ((mut cs, _), _) = handshake();
    let ((mut cs2, _), _) = handshake();
    let mut a = Vec::new();
    let mut b = Vec::new();
    cs.seal(0x42, b"same", &mut a).unwrap();
    cs2.seal(0x43, b"same", &mut b).unwrap();
    assert_eq!(a.len(), b.len());
    assert_eq!(a[..HEADER_LEN], b[..HEADER_LEN]);
    assert_ne!(a[HEADER_LEN], b[HEADER_LEN]);
    assert_eq!(
        a[HEADER_LEN] ^ b[HEADER_LEN],
        0x42 ^ 0x43,
        "same keystream, same session"
    );
    assert_ne!(a[HEADER_LEN], 0x42);
}

#[test]
fn round_trip_sizes_up_to_max_payload() {
    for max in [0u32, 1, 64, 100_000, DEFAULT_MAX_PAYLOAD] {
        let ((mut cs, _), (_, mut so)) =
            handshake_with(&key(6), &key(6), 1000, max, usize::MAX).unwrap();
        let sizes = [0usize, 1, 15, 16, 17, 63, 64, 65, 4095, 4096, 65_536];
        let sizes = sizes
            .iter()
            .copied()
            .filter(|&n| n <= max as usize)
            .chain([(max as usize).saturating_sub(1), max as usize]);
        for n in sizes {
            let p: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let f = seal(&mut cs, &p);
            assert_eq!(f.len(), n + Sealer::overhead());
            assert_eq!(frame_len(&f), Some(f.len()));
            let (fr, used) = so.decode(&f).unwrap().unwrap();
            assert_eq!((fr.payload, used), (&p[..], f.len()), "size {n}, max {max}");
        }
        let mut out = Vec::new();
        assert_eq!(
            cs.seal(TY, &vec![0; max as usize + 1], &mut out),
            Err(ChannelError::Oversized {
                len: u64::from(max) + 1,
                max
            })
        );
        assert!(out.is_empty());
    }
}

#[test]
fn close_frame_is_encrypted_and_authenticated() {
    let ((mut cs, _), (_, mut so)) = handshake();
    let mut w = Vec::new();
    cs.seal_close(&mut w);
    assert_eq!(w.len(), Sealer::overhead());
    let mut forged = w.clone();
    forged[HEADER_LEN] ^= 0x11; // TYPE_CLOSE → a user type, if it were clear
    assert_eq!(
        so.clone().decode(&forged),
        Err(ChannelError::BadMac { seq: 0 })
    );
    let (f, _) = so.decode(&w).unwrap().unwrap();
    assert_eq!((f.ty, f.payload), (TYPE_CLOSE, &[][..]));
}

// ---------------------------------------------------------------------------
// Throughput (not a test: run it on purpose)
// ---------------------------------------------------------------------------

/// Seal + open 64 MiB through one session and print MiB/s. Run with
/// `cargo test --release -p netstack --test codec -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn seal_open_64_mib() {
    const TOTAL: usize = 64 << 20;
    for frame in [4096usize, 32 * 1024, 1 << 20] {
        let ((mut sealer, _), (_, mut opener)) = handshake();
        let payload: Vec<u8> = (0..frame).map(|i| (i * 31) as u8).collect();
        let mut wire = Vec::with_capacity(frame + 64);
        let mut opened = 0usize;
        let t = std::time::Instant::now();
        for _ in 0..TOTAL / frame {
            wire.clear();
            sealer.seal(TY, &payload, &mut wire).unwrap();
            let (f, n) = opener.decode(&wire).unwrap().unwrap();
            assert_eq!(n, wire.len());
            opened += f.payload.len();
        }
        let s = t.elapsed().as_secs_f64();
        assert_eq!(opened, TOTAL);
        println!(
            "codec v{PROTOCOL_VERSION}: seal+open 64 MiB in {frame:>7} B frames: {:7.1} ms, {:7.1} MiB/s",
            s * 1e3,
            64.0 / s
        );
    }
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

#[test]
fn key_from_hex_errors() {
    assert_eq!(Key::from_hex("").unwrap_err(), KeyError::Empty);
    assert_eq!(Key::from_hex("abc").unwrap_err(), KeyError::OddLength(3));
    assert_eq!(
        Key::from_hex(&format!("{}zz", "0".repeat(30))).unwrap_err(),
        KeyError::NotHex { pos: 30 }
    );
    assert_eq!(
        Key::from_hex(&format!("{}0g", "0".repeat(30))).unwrap_err(),
        KeyError::NotHex { pos: 31 }
    );
    assert_eq!(
        Key::from_hex("0011 2233").unwrap_err(),
        KeyError::OddLength(9)
    );
    assert_eq!(
        Key::from_hex("00:1").unwrap_err(),
        KeyError::NotHex { pos: 2 }
    );
    assert_eq!(
        Key::from_hex(&"ab".repeat(15)).unwrap_err(),
        KeyError::TooShort { bytes: 15 }
    );
    assert_eq!(
        Key::from_hex(&"ab".repeat(65)).unwrap_err(),
        KeyError::TooLong { bytes: 65 }
    );
    assert_eq!(Key::from_hex(&"aB".repeat(16)).unwrap().len(), 16);
    assert_eq!(Key::from_hex(&"Cd".repeat(64)).unwrap().len(), 64);
    assert_eq!(Key::from_bytes(&[]).unwrap_err(), KeyError::Empty);
    assert_eq!(
        Key::from_bytes(&[0; 15]).unwrap_err(),
        KeyError::TooShort { bytes: 15 }
    );
    assert_eq!(
        Key::from_bytes(&[0; 65]).unwrap_err(),
        KeyError::TooLong { bytes: 65 }
    );
    let msg = KeyError::TooShort { bytes: 4 }.to_string();
    assert!(msg.contains("at least 16 bytes (32 hex digits)"), "{msg}");
}

#[test]
fn hex_case_does_not_matter() {
    let a = Key::from_hex(&"0123456789abcdef".repeat(2)).unwrap();
    let b = Key::from_hex(&"0123456789ABCDEF".repeat(2)).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    let raw: Vec<u8> = (0..2)
        .flat_map(|_| [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef])
        .collect();
    assert_eq!(
        Key::from_bytes(&raw).unwrap().fingerprint(),
        a.fingerprint()
    );
}

#[test]
fn debug_is_redacted() {
    let k = Key::from_hex(&"deadbeef".repeat(8)).unwrap();
    let d = format!("{k:?}");
    assert_eq!(d, "Key(<redacted>, 32 bytes)");
    assert!(!d.to_lowercase().contains("dead"));
    let hs = Handshake::client(&k, [0; 32], 10);
    assert!(!format!("{hs:?}").to_lowercase().contains("dead"));
}

#[test]
fn fingerprint_is_stable_and_distinguishes() {
    let a = key(1);
    assert_eq!(a.fingerprint(), a.clone().fingerprint());
    assert_ne!(a.fingerprint(), key(2).fingerprint());
}

#[test]
fn error_messages() {
    assert_eq!(
        ChannelError::Oversized { len: 10, max: 5 }.to_string(),
        "frame of 10 bytes exceeds the 5-byte limit"
    );
    assert_eq!(
        ChannelError::Truncated { have: 3, need: 12 }.to_string(),
        "stream ended inside a frame (3 of 12 bytes)"
    );
    assert_eq!(
        ChannelError::BadMac { seq: 7 }.to_string(),
        "frame 7: authentication failed (corrupted or forged)"
    );
    assert_eq!(
        ChannelError::BadMagic.to_string(),
        "not a channel peer (bad handshake magic)"
    );
    assert!(
        ChannelError::WrongKey
            .to_string()
            .starts_with("authentication failed: the peer does not hold our key")
    );
}
