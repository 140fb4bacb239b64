//! The `ft` console commands, run on the host network against the FT
//! service registered there.

use netstack::stack::Ipv4Address;

use crate::migration::{MigrationService, Outbound, Outgoing};
use crate::net::{interrupted, with_net};
use crate::println;

use super::service::{Copy, ft};
use super::{COPY_PAUSE_MS, FT_PORT};

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

/// `ft enable <vm> <ip>[:port]`: the initial copy, then the lockstep.
/// Waits until the guest is protected or the copy failed (Ctrl-C
/// cancels it); the guest keeps running throughout.
pub fn enable(vm: &str, target: Ipv4Address, port: u16) {
    with_net(|net| {
        let key = match net.channel_key() {
            Ok(k) => k,
            Err(e) => return println!("error: ft: {vm}: {e}; {vm} keeps running unprotected"),
        };
        if let Err(e) = net.stack.route_check(target) {
            return println!("error: ft: {vm}: {e}; {vm} keeps running unprotected");
        }
        if crate::vmm::ft_protected(vm) || ft(net).copies.iter().any(|c| c.out.vm() == vm) {
            return println!("error: ft: {vm} is already protected (ft status {vm})");
        }
        let nonce = crate::arch::entropy::bytes32();
        let o = Outgoing {
            vm,
            target,
            port,
            downtime_ms: COPY_PAUSE_MS,
            bandwidth_mib: None,
            keep_running: true,
        };
        let out = match Outbound::start(&mut net.stack, &key, nonce, &o) {
            Ok(out) => out,
            Err(e) => return println!("error: ft: {vm}: {e}"),
        };
        ft(net).copies.push(Copy { out, peer: target });
        let mut cancelled = false;
        loop {
            net.wait_turn();
            let s = ft(net);
            let Some(c) = s.copies.iter_mut().find(|c| c.out.vm() == vm) else {
                break;
            };
            if !cancelled && interrupted() {
                c.out.cancel("by the operator (Ctrl-C)");
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
        if let Some(c) = s.copies.iter_mut().find(|c| c.out.vm() == vm) {
            c.out.cancel("by the operator (ft disable)");
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
        for c in s
            .copies
            .iter()
            .filter(|c| only.is_none_or(|v| v == c.out.vm()))
        {
            println!("{}: {}", c.out.vm(), c.out.status());
        }
        let all = crate::vmm::ft_status(only);
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
