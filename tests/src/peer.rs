//! A host program that speaks the hypervisor's channel protocol over a
//! plain `std` TCP socket: used by system tests to reach a hypervisor's
//! services through a QEMU port forward, and by `cargo xtask bench net` to
//! measure the same link from the host side.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use netstack::bench::{CHUNK, Checksum, Pattern, T_DATA, T_END, T_RESULT, T_START};
use netstack::codec::{Handshake, Key, Opener, Sealer};

/// An authenticated channel from the host.
pub struct HostPeer {
    pub stream: TcpStream,
    pub sealer: Sealer,
    pub opener: Opener,
    rx: Vec<u8>,
}

/// The result of [`HostPeer::bench`].
#[derive(Debug, Clone, Copy)]
pub struct HostBench {
    pub bytes: u64,
    /// From the first data byte written to the sink's verdict.
    pub elapsed: Duration,
    /// The sink saw every byte and the checksum matched.
    pub ok: bool,
}

impl HostBench {
    /// Throughput in MiB/s.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs the client side of the handshake on `stream`.
pub fn handshake(stream: &mut TcpStream, key: &Key) -> Result<(Sealer, Opener, Vec<u8>), String> {
    let nonce: [u8; 32] = {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos()
            .to_le_bytes();
        netstack::codec::derive_nonce(&[&t[..], &std::process::id().to_le_bytes()].concat())
    };
    let mut hs = Handshake::client(key, nonce, 1 << 20);
    let mut rx = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !hs.is_done() {
        if Instant::now() > deadline {
            return Err("handshake timed out".into());
        }
        stream
            .write_all(&hs.take_output())
            .map_err(|e| format!("handshake: {e}"))?;
        let mut buf = [0u8; 512];
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("handshake: {e}"))?;
        if n == 0 {
            return Err("the hypervisor closed the connection during the handshake".into());
        }
        rx.extend_from_slice(&buf[..n]);
        let used = hs.feed(&rx).map_err(|e| e.to_string())?;
        rx.drain(..used);
    }
    stream
        .write_all(&hs.take_output())
        .map_err(|e| format!("handshake: {e}"))?;
    let (sealer, opener) = hs.into_session().ok_or("handshake without a session")?;
    Ok((sealer, opener, rx))
}

impl HostPeer {
    /// Connects to 127.0.0.1:`port` and authenticates with `key`.
    pub fn connect(port: u16, key: &Key) -> Result<HostPeer, String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sealer, opener, rx) = handshake(&mut stream, key)?;
        Ok(HostPeer {
            stream,
            sealer,
            opener,
            rx,
        })
    }

    /// Seals and writes one frame.
    pub fn send(&mut self, ty: u8, payload: &[u8]) -> Result<(), String> {
        let mut out = Vec::with_capacity(payload.len() + 64);
        self.sealer
            .seal(ty, payload, &mut out)
            .map_err(|e| e.to_string())?;
        self.stream.write_all(&out).map_err(|e| e.to_string())
    }

    /// Reads the next frame (type, payload).
    pub fn recv(&mut self) -> Result<(u8, Vec<u8>), String> {
        loop {
            if let Some((f, used)) = self.opener.decode(&self.rx).map_err(|e| e.to_string())? {
                let r = (f.ty, f.payload.to_vec());
                self.rx.drain(..used);
                return Ok(r);
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the hypervisor closed the channel".into());
            }
            self.rx.extend_from_slice(&buf[..n]);
        }
    }

    /// Sends `bytes` of bench data to a `net sink` and waits for its verdict.
    pub fn bench(&mut self, bytes: u64) -> Result<HostBench, String> {
        let start = Instant::now();
        self.send(T_START, &bytes.to_le_bytes())?;
        let mut pattern = Pattern::new(bytes ^ 0x5eed);
        let mut sum = Checksum::default();
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(CHUNK as u64) as usize;
            pattern.fill(&mut buf[..n]);
            sum.update(&buf[..n]);
            self.send(T_DATA, &buf[..n])?;
            sent += n as u64;
        }
        let mut end = bytes.to_le_bytes().to_vec();
        end.extend_from_slice(&sum.value().to_le_bytes());
        self.send(T_END, &end)?;
        let (ty, p) = self.recv()?;
        if ty != T_RESULT {
            return Err(format!("expected a result frame, got type {ty}"));
        }
        let elapsed = start.elapsed();
        let got = p
            .get(1..9)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
        Ok(HostBench {
            bytes,
            elapsed,
            ok: p.first() == Some(&1) && got == Some(bytes),
        })
    }
}
