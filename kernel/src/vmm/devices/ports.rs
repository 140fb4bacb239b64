//! The two test-harness ports: the exit port (0xF4, as QEMU's
//! `isa-debug-exit`) and the request port (0xF5) through which the host
//! asks a guest for something (`vm checksum`).

use alloc::vec::Vec;

use super::bad_state;
use crate::vmm::bus::{Device, DeviceError, Effects};

/// Port 0xF4: a write stops the VM with the value written as exit code.
#[derive(Debug, Default)]
pub struct ExitPort;

impl Device for ExitPort {
    fn name(&self) -> &'static str {
        "exit-port"
    }

    /// Write-only: reads as a port nothing decodes (all-ones).
    fn read(&mut self, _offset: u64, _size: u8) -> u64 {
        u64::MAX
    }

    fn write(&mut self, _offset: u64, _size: u8, value: u64, fx: &mut Effects) {
        // The low 32 bits: `out dx, eax` is the widest write.
        fx.stop = Some(value as u32);
    }

    fn save(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), DeviceError> {
        if !data.is_empty() {
            return Err(bad_state("exit-port", "it has no state"));
        }
        Ok(())
    }
}

/// Port 0xF5: reads return how many requests the host made (`vm checksum`
/// bumps it); the guest answers each new one. Writes are ignored.
#[derive(Debug, Default)]
pub struct RequestPort {
    requests: u8,
}

impl RequestPort {
    /// A new request from the host; returns the counter.
    pub fn bump(&mut self) -> u8 {
        self.requests = self.requests.wrapping_add(1);
        self.requests
    }

    /// Requests so far (mod 256).
    pub fn requests(&self) -> u8 {
        self.requests
    }
}

impl Device for RequestPort {
    fn name(&self) -> &'static str {
        "request-port"
    }

    fn read(&mut self, _offset: u64, _size: u8) -> u64 {
        u64::from(self.requests)
    }

    fn write(&mut self, _offset: u64, _size: u8, _value: u64, _fx: &mut Effects) {}

    fn save(&self) -> Vec<u8> {
        alloc::vec![self.requests]
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), DeviceError> {
        let &[requests] = data else {
            return Err(bad_state("request-port", "not one byte"));
        };
        self.requests = requests;
        Ok(())
    }
}
