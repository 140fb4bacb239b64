//! The `ft` console commands, run on the host network against the FT
//! service registered there.

use netstack::stack::Ipv4Address;

use crate::migration::MigrationService;
use crate::net::{interrupted, with_net};
use crate::println;

use super::FT_PORT;
use super::service::{Copy, ft};

/// `ft listen` / `ft listen stop`.
pub fn listen(on: bool) {
    with_net(|net| {
        if !on {
            match ft(net).listener.take() {
                Some(m) => {
                    m.close(&mut net.stack);
                    println!("ft: no longer listening");
                }
                None => println!("error: ft: not listening"),
            }
            return;
        }
        if let Err(e) = net.can_listen() {
            return println!("error: ft: {e}");
        }
        if ft(net).listener.is_some() {
            return println!("error: ft: already listening on port {FT_PORT}");
        }
        let max_pending = net.max_pending();
        match MigrationService::new_ft(&mut net.stack, FT_PORT, max_pending) {
            Ok(m) => {
                ft(net).listener = Some(m);
                println!(
                    "ft: listening on port {FT_PORT} for guests to protect (free RAM for guests {} MiB)",
                    crate::vmm::free_ram_bytes() >> 20
                );
            }
            Err(e) => println!("error: ft: {e}"),
        }
    })
}

/// `ft enable <vm> <ip>[:port] [witness=<ip>|none]`: a generation at the
/// witness, the initial copy, then the lockstep. Waits until the guest is
/// protected or the copy failed (Ctrl-C cancels it); the guest keeps
/// running throughout.
pub fn enable(vm: &str, target: Ipv4Address, port: u16, witness: Option<Option<Ipv4Address>>) {
    let Some(witness) = witness.or(super::settings().witness) else {
        return println!(
            "error: ft: {vm}: name a witness (witness=<ip>, or witness=none to run without one; ft.witness in hv.cfg); {vm} keeps running unprotected"
        );
    };
    with_net(|net| {
        if let Err(e) = net.channel_key() {
            return println!("error: ft: {vm}: {e}; {vm} keeps running unprotected");
        }
        for ip in core::iter::once(target).chain(witness) {
            if let Err(e) = net.stack.route_check(ip) {
                return println!("error: ft: {vm}: {ip}: {e}; {vm} keeps running unprotected");
            }
        }
        if crate::vmm::ft_protected(vm) || ft(net).copies.iter().any(|c| c.vm == vm) {
            return println!("error: ft: {vm} is already protected (ft status {vm})");
        }
        if witness.is_none() {
            println!(
                "ft: {vm}: warning: no witness: should the twins lose each other (a network partition), both may run {vm}"
            );
        }
        ft(net)
            .copies
            .push(Copy::new(vm, target, port, witness, false));
        let mut cancelled = false;
        loop {
            net.wait_turn();
            let s = ft(net);
            let Some(c) = s.copies.iter_mut().find(|c| c.vm == vm) else {
                break;
            };
            if !cancelled && interrupted() {
                c.cancel("by the operator (Ctrl-C)");
                cancelled = true;
            }
        }
    })
}

/// `ft disable <vm>`: ends protection on both sides; the primary keeps
/// running.
pub fn disable(vm: &str) {
    with_net(|net| {
        let s = ft(net);
        if let Some(c) = s.copies.iter_mut().find(|c| c.vm == vm) {
            c.cancel("by the operator (ft disable)");
            return println!("ft: {vm}: cancelling the initial copy");
        }
        let Some(i) = s.links.iter().position(|l| l.vm == vm && !l.is_closed()) else {
            return println!("error: ft: {vm} is not protected (see ft status)");
        };
        let mut link = s.links.swap_remove(i);
        link.disable(&mut net.stack);
        ft(net).links.push(link);
    })
}

/// `ft witness` / `ft witness stop`.
pub fn witness(on: bool) {
    with_net(|net| {
        if !on {
            match ft(net).witness.take() {
                Some(w) => {
                    w.close(&mut net.stack);
                    println!("ft: witness stopped (its table is kept for this run)");
                }
                None => println!("error: ft: not a witness"),
            }
            return;
        }
        if let Err(e) = net.can_listen() {
            return println!("error: ft: {e}");
        }
        if ft(net).witness.is_some() {
            println!("ft: witness on port {}", ft_lockstep::WITNESS_PORT);
            return witness_table();
        }
        let max_pending = net.max_pending();
        match super::witness::Server::new(&mut net.stack, max_pending) {
            Ok(w) => {
                ft(net).witness = Some(w);
                println!("ft: witness on port {}", ft_lockstep::WITNESS_PORT);
                witness_table();
            }
            Err(e) => println!("error: ft: {e}"),
        }
    })
}

fn witness_table() {
    for (vm, e) in super::witness::entries() {
        match e.holder {
            Some((ip, role)) => println!(
                "  {vm}: generation {}, held by {} ({})",
                e.generation,
                Ipv4Address::from(ip),
                role.name()
            ),
            None => println!("  {vm}: generation {}, not claimed", e.generation),
        }
    }
}

/// `ft flip <vm> <gpa>`: diagnostic; the next state check must find it.
pub fn flip(vm: &str, gpa: u64) {
    match crate::vmm::ft_flip(vm, gpa) {
        Ok(old) => println!(
            "ft: {vm}: flipped the byte at {gpa:#x} on the secondary ({old:#04x} -> {:#04x}); the next state check will find it",
            !old
        ),
        Err(e) => println!("error: ft: {e}"),
    }
}

/// `ft status [vm]`.
pub fn status(only: Option<&str>) {
    with_net(|net| {
        let s = ft(net);
        if only.is_none() {
            match &s.listener {
                Some(_) => println!("ft: listening on port {FT_PORT}"),
                None => println!("ft: not listening (ft listen)"),
            }
        }
        if s.witness.is_some() && only.is_none() {
            println!("ft: witness on port {}", ft_lockstep::WITNESS_PORT);
        }
        for c in s.copies.iter().filter(|c| only.is_none_or(|v| v == c.vm)) {
            println!("{}: {}", c.vm, c.status());
        }
        let all = crate::vmm::ft_status(only);
        let now = crate::arch::time::now_us();
        let history: alloc::vec::Vec<alloc::string::String> = s
            .history
            .iter()
            .filter(|(vm, _)| only.is_none_or(|v| v == vm.as_str()))
            .flat_map(|(vm, h)| {
                let mut lines = alloc::vec![alloc::format!(
                    "{vm}: history: protected {} times, {} failovers, {} divergences, {} re-syncs, {} ms without a twin{}",
                    h.protections,
                    h.failovers,
                    h.divergences,
                    h.resyncs,
                    h.unprotected_total(now) / 1000,
                    if h.unprotected_since.is_some() { " (without one now)" } else { "" }
                )];
                lines.extend(h.events.iter().map(|(t, e)| {
                    alloc::format!("  at {}.{:03} s: {e}", t / 1_000_000, t / 1000 % 1000)
                }));
                lines
            })
            .collect();
        if all.is_empty() && s.copies.is_empty() {
            match only {
                Some(vm) => println!("ft: {vm} is not protected"),
                None => println!("ft: no protected guests"),
            }
        }
        for st in all {
            for line in st.lines {
                println!("{line}");
            }
        }
        for line in history {
            println!("{line}");
        }
    })
}

/// `ft watch <vm> on|off`: a secondary echoes the guest lines it replays.
pub fn watch(vm: &str, on: bool) {
    match crate::vmm::ft_watch(vm, on) {
        Ok(()) if on => println!("ft: {vm}: showing the guest lines the replay produces"),
        Ok(()) => println!("ft: {vm}: replayed lines hidden"),
        Err(e) => println!("error: ft: {e}"),
    }
}
