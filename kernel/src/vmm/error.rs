//! What the VM manager refuses, and why: every error a `vm` command or a
//! migration can get from it, each with the message the console prints.

use alloc::string::String;

/// An operation on a VM that did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VmError {
    /// No VM by that name.
    #[error("no VM named '{0}' (see 'vm list')")]
    NoSuchVm(String),
    /// `vm create` with a name in use.
    #[error("a VM named '{0}' already exists")]
    Exists(String),
    /// An incoming migration with a name in use here.
    #[error("a VM named '{0}' already exists here")]
    ExistsHere(String),
    /// `vm start` of a running VM.
    #[error("VM '{0}' is already running")]
    AlreadyRunning(String),
    /// The VM must run for this.
    #[error("VM '{name}' is not running ({state})")]
    NotRunning {
        /// The VM.
        name: String,
        /// Its state's name.
        state: &'static str,
    },
    /// Stop or delete during a migration.
    #[error("VM '{0}' is being migrated (migrate cancel {0} first)")]
    Migrating(String),
    /// A fault-tolerance operation on a VM that is not protected.
    #[error("VM '{0}' is not protected (see 'ft status')")]
    NotProtected(String),
    /// `ft watch` on a VM that is not a secondary here.
    #[error("VM '{0}' is not a secondary on this host")]
    NotSecondary(String),
    /// Lifecycle commands on a secondary's copy (it follows its primary).
    #[error("VM '{0}' is the secondary copy of a protected guest: 'ft disable {0}' first")]
    Secondary(String),
    /// Migrating, protecting or stopping a protected primary.
    #[error("VM '{0}' is protected by fault tolerance: 'ft disable {0}' first")]
    Protected(String),
    /// A guest address outside the VM's RAM.
    #[error("{gpa:#x} is outside the RAM of VM '{vm}'")]
    OutOfRange {
        /// The VM.
        vm: String,
        /// The address.
        gpa: u64,
    },
    /// A second migration of one VM.
    #[error("VM '{0}' is already being migrated")]
    AlreadyMigrating(String),
    /// Starting an incoming guest that is not one.
    #[error("VM '{0}' is not an incoming guest")]
    NotIncoming(String),
    /// No migration tracks the VM's writes.
    #[error("no migration is tracking this VM")]
    NotTracked,
    /// VT-x could not be turned on (the reason as the CPU gave it).
    #[error("{0}")]
    Vmx(String),
    /// Nothing enabled VT-x yet.
    #[error("VMX is not enabled")]
    NoVmx,
    /// A VMX instruction failed.
    #[error("{what} failed: {why}")]
    VmxInsn {
        /// VMCLEAR, VMXON...
        what: &'static str,
        /// The VMfail.
        why: String,
    },
    /// No such guest image, and the ESP has none at all.
    #[error("no image '{0}': the ESP has no modules")]
    NoModules(String),
    /// No such guest image.
    #[error("no image '{image}' (available: {available})")]
    NoImage {
        /// What was asked for.
        image: String,
        /// What there is, comma-separated.
        available: String,
    },
    /// The image does not fit or is not a guest ELF.
    #[error("image '{image}' cannot run in {mib} MiB: {why}")]
    BadImage {
        /// The image.
        image: String,
        /// The VM's RAM.
        mib: u64,
        /// What the ELF loader said.
        why: String,
    },
    /// The image was there at create and is not now.
    #[error("image '{0}' disappeared")]
    ImageGone(String),
    /// The image could not be loaded at start.
    #[error("{0}")]
    Load(String),
    /// The CPU profile cannot be had here.
    #[error(transparent)]
    Profile(#[from] vcpu::profile::ProfileError),
    /// An incoming guest's profile lacks features here.
    #[error("CPU profile {profile}: this host lacks {missing}")]
    ProfileMissing {
        /// The guest's profile.
        profile: String,
        /// Comma-separated missing features.
        missing: String,
    },
    /// Not enough free frames for `vm create`.
    #[error("not enough memory for {mib} MiB of guest RAM ({free} MiB free)")]
    NoMemory {
        /// Asked for.
        mib: u64,
        /// Free.
        free: u64,
    },
    /// Not enough free frames for an incoming guest.
    #[error("not enough memory: the guest needs {mib} MiB, {free} MiB free")]
    NoMemoryIncoming {
        /// Needed.
        mib: u64,
        /// Free.
        free: u64,
    },
    /// A page for the hypervisor's own use (VMCS, VMXON region, PML).
    #[error("out of memory for the {0}")]
    NoPage(&'static str),
    /// Building or changing the EPT.
    #[error("EPT: {0}")]
    Ept(ept::EptError),
    /// Dirty tracking.
    #[error("dirty tracking: {0}")]
    Dirty(ept::DirtyError),
    /// Dirty tracking is off.
    #[error("dirty tracking is off")]
    DirtyOff,
    /// An incoming RAM size the protocol should never carry.
    #[error("bad guest RAM size {0}")]
    BadRamSize(u64),
    /// An incoming VM name the console would refuse.
    #[error("{0}")]
    BadName(String),
    /// A write of the hypervisor's outside the guest's RAM.
    #[error("guest-physical {0:#x} is outside RAM")]
    OutsideRam(u64),
    /// The vCPU state from a migration stream.
    #[error("vcpu state: {0}")]
    State(String),
    /// The device state from a migration stream.
    #[error("{0}")]
    Devices(crate::vmm::bus::BusError),
    /// The platform's device set could not be built.
    #[error("devices: {0}")]
    Platform(crate::vmm::bus::BusError),
    /// The VM has no request port (`vm checksum`).
    #[error("VM '{0}' has no request port")]
    NoRequestPort(String),
}
