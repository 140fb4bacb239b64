//! What the log holds: the records a primary writes as its guest runs.
//!
//! Positions are counts of **deterministic exits**: exits the guest's own
//! instructions cause (CPUID, I/O, MMIO, MSR, RDTSC, HLT...), which happen at
//! the same point of its execution on both twins. Exit `n` is the `n`-th one
//! since protection began (counting from 1).

/// A synchronous input: what the guest read at a deterministic exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// IN from a port of the device bus.
    Pio {
        /// The port.
        port: u16,
        /// 1, 2 or 4 bytes.
        size: u8,
    },
    /// A load from an MMIO device.
    Mmio {
        /// The guest-physical address.
        gpa: u64,
        /// 1, 2, 4 or 8 bytes.
        size: u8,
    },
    /// RDTSC (value `[tsc, 0]`).
    Rdtsc,
    /// RDTSCP (value `[tsc, aux]`).
    Rdtscp,
    /// RDMSR of an MSR whose value is not a pure function of guest state
    /// (IA32_TSC).
    Msr {
        /// The MSR.
        msr: u32,
    },
    /// RDRAND or RDSEED (value `[v, ok]`, ok 0 or 1).
    Rand {
        /// RDSEED.
        seed: bool,
    },
    /// CPUID (value `[eax | ebx << 32, ecx | edx << 32]`).
    Cpuid {
        /// EAX in.
        leaf: u32,
        /// ECX in.
        sub: u32,
    },
}

/// Where in the guest's execution an asynchronous event happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Landmark {
    /// Right after deterministic exit `exits` was handled, before the guest
    /// ran again (`exits` 0: where protection began).
    Exit {
        /// Deterministic exits so far.
        exits: u64,
    },
    /// The guest was stopped by a forced exit (preemption timer, host
    /// interrupt, interrupt window) after `exits` deterministic exits.
    Forced {
        /// Deterministic exits so far.
        exits: u64,
        /// The guest's RIP (the next instruction it would execute).
        rip: u64,
        /// [`crate::gpr_digest`] of its registers there.
        digest: u64,
        /// Retired guest branches since protection began, where a PMU
        /// counts them.
        branches: Option<u64>,
    },
}

impl Landmark {
    /// The deterministic exits before the landmark.
    pub fn exits(&self) -> u64 {
        match *self {
            Landmark::Exit { exits } | Landmark::Forced { exits, .. } => exits,
        }
    }
}

/// An asynchronous event: something the host did to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An IRQ line raised by the host (the timer's tick).
    Irq {
        /// The line.
        line: u8,
    },
    /// An external interrupt injected at VM entry.
    Inject {
        /// The vector.
        vector: u8,
    },
    /// The host bumped the request port's counter (`vm checksum`).
    Request,
}

/// One entry of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// The synchronous input deterministic exit number `exits` consumed.
    Input {
        /// The exit (counting from 1).
        exits: u64,
        /// What was read.
        input: Input,
        /// Its value (see [`Input`]).
        value: [u64; 2],
    },
    /// An asynchronous event at a landmark.
    Event {
        /// Where.
        at: Landmark,
        /// What.
        event: Event,
    },
    /// The primary has handled `exits` deterministic exits: every input up
    /// to that exit and every event at a landmark with fewer exits is in
    /// the log before this record.
    Horizon {
        /// Deterministic exits handled.
        exits: u64,
    },
    /// A digest of guest state (vCPU, devices, RAM) right after exit
    /// `exits`, before the guest ran again.
    Check {
        /// The exit.
        exits: u64,
        /// The digest.
        digest: u64,
    },
    /// The primary has released `seq` items of guest output since
    /// protection began (a secondary that goes live re-emits only the
    /// items after them).
    Released {
        /// Output items released so far.
        seq: u64,
    },
}

impl Record {
    /// The exit count the record is positioned at, if any.
    pub fn exits(&self) -> Option<u64> {
        match *self {
            Record::Input { exits, .. }
            | Record::Horizon { exits }
            | Record::Check { exits, .. } => Some(exits),
            Record::Event { at, .. } => Some(at.exits()),
            Record::Released { .. } => None,
        }
    }
}
