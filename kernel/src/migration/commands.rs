//! The `migrate` console commands: each runs on the host network
//! ([`crate::net::with_net`]) against the migration service registered
//! there, and prints its answer.

use netstack::stack::Ipv4Address;

use crate::net::{interrupted, with_net};
use crate::println;

use super::service::migrations;
use super::{MAX_MIGRATIONS, MIGRATE_PORT, MigrationService, Outbound, Outgoing, check_out};

/// `migrate listen` / `migrate listen stop`.
pub fn listen(on: bool) {
    with_net(|net| {
        if !on {
            match migrations(net).listener.take() {
                Some(m) => {
                    m.close(&mut net.stack);
                    println!("migrate: no longer listening");
                }
                None => println!("error: migrate: not listening"),
            }
            return;
        }
        if let Err(e) = net.can_listen() {
            return println!("error: {e}");
        }
        if migrations(net).listener.is_some() {
            return println!("error: migrate: already listening on port {}", MIGRATE_PORT);
        }
        let max_pending = net.max_pending();
        match MigrationService::new(&mut net.stack, max_pending) {
            Ok(m) => {
                migrations(net).listener = Some(m);
                println!(
                    "migrate: listening on port {} (free RAM for guests {} MiB)",
                    MIGRATE_PORT,
                    crate::vmm::free_ram_bytes() >> 20
                );
            }
            Err(e) => println!("error: migrate: {e}"),
        }
    })
}

/// `migrate status`.
pub fn status() {
    with_net(|net| {
        let migrations = migrations(net);
        match &migrations.listener {
            Some(m) => {
                println!("migrate: listening on port {}", MIGRATE_PORT);
                for line in m.status() {
                    println!("{line}");
                }
            }
            None => println!("migrate: not listening (migrate listen)"),
        }
        for o in &migrations.outgoing {
            println!("{}", o.status());
        }
    })
}

/// `migrate cancel <vm>`.
pub fn cancel(vm: &str) {
    with_net(|net| {
        match migrations(net)
            .outgoing
            .iter_mut()
            .find(|o| o.vm() == vm && o.outcome().is_none())
        {
            Some(o) => {
                o.cancel("by the operator");
                println!("migrate: cancelling the migration of {vm}");
            }
            None => {
                println!("error: migrate: no outgoing migration of '{vm}' (see migrate status)")
            }
        }
    })
}

/// `migrate <vm> <ip>[:port] ...`: starts the migration; unless
/// `background`, waits for its end (Ctrl-C cancels) while the network,
/// the other migrations and the guests keep running.
pub fn out(o: &Outgoing<'_>, background: bool) {
    with_net(|net| {
        let key = match net.channel_key() {
            Ok(k) => k,
            Err(e) => return println!("error: {e}"),
        };
        if let Err(e) = net.stack.route_check(o.target) {
            return println!("error: migrate: {e}");
        }
        let running = migrations(net).running();
        if running >= MAX_MIGRATIONS {
            return println!(
                "error: migrate: this host already runs {running} migrations (the limit is {}); {} keeps running here",
                MAX_MIGRATIONS, o.vm
            );
        }
        let nonce = crate::arch::entropy::bytes32();
        let out = match Outbound::start(&mut net.stack, &key, nonce, o) {
            Ok(out) => out,
            Err(e) => return println!("error: migrate: {e}"),
        };
        migrations(net).outgoing.push(out);
        if background {
            return println!(
                "migrate: {} moves in the background (migrate status, migrate cancel {})",
                o.vm, o.vm
            );
        }
        // Ours is the last one started: wait until it leaves the list.
        let mut cancelled = false;
        loop {
            net.wait_turn();
            let Some(mine) = migrations(net).outgoing.iter_mut().find(|m| m.vm() == o.vm) else {
                break;
            };
            if !cancelled && interrupted() {
                mine.cancel("by the operator (Ctrl-C)");
                cancelled = true;
            }
        }
    })
}

/// `migrate check <vm> <ip>[:port]`.
pub fn check(vm: &str, target: Ipv4Address, port: u16) {
    with_net(|net| {
        let key = match net.channel_key() {
            Ok(k) => k,
            Err(e) => return println!("error: {e}"),
        };
        if let Err(e) = net.stack.route_check(target) {
            return println!("error: migrate check: {e}");
        }
        let nonce = crate::arch::entropy::bytes32();
        check_out(net, &key, nonce, vm, target, port);
    })
}
