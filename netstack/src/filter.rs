//! A small host firewall: frames to and from listed IPv4 addresses are
//! dropped (`net filter drop <ip>`), in both directions, ARP included, so
//! an operator can cut this host off from another (or a test can make a
//! network partition) while it still reaches the rest.
//!
//! [`blocked`] is the pure decision on one Ethernet frame; [`Filtered`]
//! wraps a [`Nic`] so every frame the stack sends or receives goes
//! through it.

use alloc::vec::Vec;

use crate::nic::Nic;
use crate::stack::Ipv4Address;

/// Most addresses a filter holds.
pub const MAX_ADDRESSES: usize = 16;

const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const ETHERTYPE_ARP: [u8; 2] = [0x08, 0x06];

/// Why an address was not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The list is full.
    #[error("the filter holds {MAX_ADDRESSES} addresses already (net filter clear first)")]
    Full,
}

/// The addresses dropped, and what was dropped so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    list: Vec<Ipv4Address>,
    /// Frames dropped coming in.
    pub rx_dropped: u64,
    /// Frames dropped going out.
    pub tx_dropped: u64,
}

impl Filter {
    /// Drops frames to and from `ip` from now on (already listed: Ok).
    pub fn drop_ip(&mut self, ip: Ipv4Address) -> Result<(), FilterError> {
        if self.list.contains(&ip) {
            return Ok(());
        }
        if self.list.len() >= MAX_ADDRESSES {
            return Err(FilterError::Full);
        }
        self.list.push(ip);
        Ok(())
    }

    /// Lets everything through again; returns how many addresses were
    /// listed. The counters start again from 0.
    pub fn clear(&mut self) -> usize {
        let n = self.list.len();
        *self = Filter::default();
        n
    }

    /// The addresses dropped.
    pub fn addresses(&self) -> &[Ipv4Address] {
        &self.list
    }
}

fn ip_at(frame: &[u8], at: usize) -> Option<Ipv4Address> {
    let b: [u8; 4] = frame.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Address::from(b))
}

/// Whether `frame` (Ethernet II, no VLAN tag) is from or to an address in
/// `list`: an IPv4 packet by its source or destination, an ARP packet by
/// its sender or target protocol address. Anything else, and any frame
/// too short to tell, passes.
pub fn blocked(frame: &[u8], list: &[Ipv4Address]) -> bool {
    if list.is_empty() || frame.len() < 14 {
        return false;
    }
    let (a, b) = match [frame[12], frame[13]] {
        // IPv4: source at 12, destination at 16 of the IP header.
        ETHERTYPE_IPV4 => (ip_at(frame, 14 + 12), ip_at(frame, 14 + 16)),
        // ARP for IPv4 over Ethernet: sender at 14, target at 24.
        ETHERTYPE_ARP => (ip_at(frame, 14 + 14), ip_at(frame, 14 + 24)),
        _ => return false,
    };
    [a, b].into_iter().flatten().any(|ip| list.contains(&ip))
}

/// A [`Nic`] whose frames pass `filter` first.
pub struct Filtered<'a, N: Nic + ?Sized> {
    /// The NIC the frames really go through.
    pub nic: &'a mut N,
    /// What is dropped, and the counts.
    pub filter: &'a mut Filter,
}

impl<N: Nic + ?Sized> Nic for Filtered<'_, N> {
    fn mac(&self) -> [u8; 6] {
        self.nic.mac()
    }

    fn link_up(&mut self) -> bool {
        self.nic.link_up()
    }

    fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
        loop {
            let n = self.nic.receive(buf)?;
            if !blocked(&buf[..n.min(buf.len())], &self.filter.list) {
                return Some(n);
            }
            self.filter.rx_dropped += 1;
        }
    }

    fn can_transmit(&mut self) -> bool {
        self.nic.can_transmit()
    }

    fn transmit(&mut self, frame: &[u8]) -> bool {
        if blocked(frame, &self.filter.list) {
            // Dropped on purpose: to the stack, as if sent and lost.
            self.filter.tx_dropped += 1;
            return true;
        }
        self.nic.transmit(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4);
        f[14] = 0x45;
        f[14 + 12..14 + 16].copy_from_slice(&src);
        f[14 + 16..14 + 20].copy_from_slice(&dst);
        f
    }

    fn arp(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 28];
        f[12..14].copy_from_slice(&ETHERTYPE_ARP);
        f[14 + 14..14 + 18].copy_from_slice(&sender);
        f[14 + 24..14 + 28].copy_from_slice(&target);
        f
    }

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];
    const C: [u8; 4] = [10, 0, 0, 3];

    #[test]
    fn frames_to_and_from_a_listed_address_are_blocked() {
        let list = [Ipv4Address::from(B)];
        assert!(blocked(&ipv4(A, B), &list));
        assert!(blocked(&ipv4(B, A), &list));
        assert!(!blocked(&ipv4(A, C), &list));
        assert!(blocked(&arp(A, B), &list));
        assert!(blocked(&arp(B, A), &list));
        assert!(!blocked(&arp(A, C), &list));
        assert!(!blocked(&ipv4(A, B), &[]));
        // Not IPv4 or ARP (IPv6 here): passes.
        let mut other = ipv4(A, B);
        other[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert!(!blocked(&other, &list));
    }

    #[test]
    fn short_frames_never_panic() {
        let list = [Ipv4Address::from(B)];
        let full = ipv4(A, B);
        for n in 0..full.len() {
            let _ = blocked(&full[..n], &list);
        }
        let full = arp(A, B);
        for n in 0..full.len() {
            let _ = blocked(&full[..n], &list);
        }
        // A truncated header still blocks on the part it has.
        assert!(blocked(&ipv4(B, A)[..14 + 16], &list));
    }

    #[test]
    fn the_list_is_bounded_and_idempotent() {
        let mut f = Filter::default();
        f.drop_ip(Ipv4Address::from(B)).unwrap();
        f.drop_ip(Ipv4Address::from(B)).unwrap();
        assert_eq!(f.addresses().len(), 1);
        for i in 0..MAX_ADDRESSES as u8 - 1 {
            f.drop_ip(Ipv4Address::new(10, 1, 0, i)).unwrap();
        }
        assert_eq!(
            f.drop_ip(Ipv4Address::new(10, 2, 0, 1)),
            Err(FilterError::Full)
        );
        f.rx_dropped = 3;
        assert_eq!(f.clear(), MAX_ADDRESSES);
        assert_eq!(f, Filter::default());
    }

    struct Loop {
        rx: Vec<Vec<u8>>,
        tx: Vec<Vec<u8>>,
    }

    impl Nic for Loop {
        fn mac(&self) -> [u8; 6] {
            [2, 0, 0, 0, 0, 1]
        }
        fn link_up(&mut self) -> bool {
            true
        }
        fn receive(&mut self, buf: &mut [u8]) -> Option<usize> {
            let f = self.rx.pop()?;
            buf[..f.len()].copy_from_slice(&f);
            Some(f.len())
        }
        fn can_transmit(&mut self) -> bool {
            true
        }
        fn transmit(&mut self, frame: &[u8]) -> bool {
            self.tx.push(frame.to_vec());
            true
        }
    }

    #[test]
    fn the_wrapped_nic_drops_and_counts_both_ways() {
        let mut nic = Loop {
            rx: vec![ipv4(C, A), ipv4(B, A)],
            tx: Vec::new(),
        };
        let mut filter = Filter::default();
        filter.drop_ip(Ipv4Address::from(B)).unwrap();
        let mut f = Filtered {
            nic: &mut nic,
            filter: &mut filter,
        };
        let mut buf = [0u8; 1600];
        let n = f.receive(&mut buf).unwrap();
        assert_eq!(&buf[14 + 12..14 + 16], &C, "the frame from B was skipped");
        assert_eq!(n, 34);
        assert!(f.receive(&mut buf).is_none());
        assert!(f.transmit(&ipv4(A, B)));
        assert!(f.transmit(&ipv4(A, C)));
        assert_eq!(nic.tx.len(), 1);
        assert_eq!((filter.rx_dropped, filter.tx_dropped), (1, 1));
    }
}
