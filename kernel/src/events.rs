//! What services say on their own: a guest's console line, a VM stopping,
//! a migration's progress, a peer dropped. The services (`vmm`, `net`,
//! `migration`) emit here and never call the console; the console installs
//! the one sink at boot ([`set_sink`]) and decides how a line reaches the
//! operator (on a fresh line, the prompt drawn again after it).
//!
//! Until a sink is installed (early boot, host unit tests) lines go to the
//! log (the target's serial logger).

use core::fmt::Arguments;

/// Receives every line a service reports.
pub type Sink = fn(Arguments<'_>);

static SINK: spin::Once<Sink> = spin::Once::new();

/// Installs the sink (the console does, once, before anything runs).
pub fn set_sink(sink: Sink) {
    SINK.call_once(|| sink);
}

/// Reports a line to the operator.
pub fn emit(args: Arguments<'_>) {
    match SINK.get() {
        Some(sink) => sink(args),
        None => log::info!("{args}"),
    }
}

/// `emit` with `format!` syntax.
#[macro_export]
macro_rules! event {
    ($($arg:tt)*) => {
        $crate::events::emit(format_args!($($arg)*))
    };
}
