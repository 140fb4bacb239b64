//! Host tests of the device bus.
use super::*;
use alloc::vec;

/// Records its accesses; its state is the last value written.
#[derive(Default)]
struct Probe {
    name: &'static str,
    last: Option<(u64, u8, u64)>,
    raise_on_write: Option<u8>,
}

impl Device for Probe {
    fn name(&self) -> &'static str {
        self.name
    }
    fn read(&mut self, offset: u64, size: u8) -> u64 {
        offset << 8 | u64::from(size)
    }
    fn write(&mut self, offset: u64, size: u8, value: u64, fx: &mut Effects) {
        self.last = Some((offset, size, value));
        if let Some(l) = self.raise_on_write {
            fx.irq_raise |= 1 << l;
        }
    }
    fn save(&self) -> Vec<u8> {
        self.last
            .map(|(_, _, v)| v.to_le_bytes().to_vec())
            .unwrap_or_default()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), DeviceError> {
        let bad = DeviceError {
            device: "probe",
            why: "not 0 or 8 bytes",
        };
        self.last = match data.len() {
            0 => None,
            8 => Some((
                0,
                8,
                u64::from_le_bytes(data.try_into().map_err(|_| bad.clone())?),
            )),
            _ => return Err(bad),
        };
        Ok(())
    }
}

fn probe(name: &'static str) -> Box<Probe> {
    Box::new(Probe {
        name,
        ..Probe::default()
    })
}

#[test]
fn overlaps_are_refused() {
    let mut b = Bus::new();
    let a = b.add(probe("a")).unwrap();
    let c = b.add(probe("c")).unwrap();
    b.register_pio(0x40..0x44, a).unwrap();
    b.register_pio(0x44..0x48, c).unwrap();
    b.register_pio(0x20..0x22, c).unwrap();
    for r in [0x40..0x44, 0x43..0x45, 0x30..0x41, 0x41..0x42, 0x00..0x100] {
        let e = b.register_pio(r.clone(), c).unwrap_err();
        assert!(
            matches!(
                e,
                BusError::Overlap {
                    space: Space::Pio,
                    ..
                }
            ),
            "{r:?}: {e}"
        );
    }
    assert!(matches!(
        b.register_pio(0x50..0x50, a),
        Err(BusError::EmptyRange { .. })
    ));
    b.register_mmio(0x1000..0x2000, a).unwrap();
    for r in [
        0x1000..0x2000,
        0xfff..0x1001,
        0x1fff..0x3000,
        0x1100..0x1200,
    ] {
        let e = b.register_mmio(r.clone(), c).unwrap_err();
        assert_eq!(
            e,
            BusError::Overlap {
                space: Space::Mmio,
                device: "c",
                other: "a",
                start: r.start,
                end: r.end
            }
        );
    }
    // Ports and MMIO are separate spaces.
    b.register_mmio(0x40..0x44, c).unwrap();
    b.register_mmio(0x2000..0x3000, c).unwrap();
    assert_eq!(b.add(probe("a")).unwrap_err(), BusError::DuplicateName("a"));
    assert_eq!(
        b.register_pio(0x90..0x91, DeviceId(9)),
        Err(BusError::NoSuchDevice(9))
    );
}

#[test]
fn dispatch_reaches_the_device_at_its_offset() {
    let mut b = Bus::new();
    let a = b.add(probe("a")).unwrap();
    let c = b.add(probe("c")).unwrap();
    b.register_pio(0x3f8..0x400, a).unwrap();
    b.register_pio(0x40..0x44, c).unwrap();
    b.register_mmio(0xfe00_0000..0xfe00_1000, a).unwrap();
    assert_eq!(b.pio_read(0x3fd, 1), 5 << 8 | 1);
    assert_eq!(b.pio_read(0x43, 2), 3 << 8 | 2);
    assert_eq!(b.pio_read(0x3fd, 4), 5 << 8 | 4, "cached slot");
    assert_eq!(b.mmio_read(0xfe00_0005, 1), Some(5 << 8 | 1));
    assert_eq!(b.mmio_read(0xfe00_1000, 1), None);
    assert!(b.on_mmio(0xfe00_0fff) && !b.on_mmio(0xfdff_ffff));
    assert_eq!(b.pio_write(0x41, 1, 0x9b), Effects::default());
    assert_eq!(b.find::<Probe>().map(|p| p.name), Some("a"));
    assert_eq!(
        b.with(|p: &mut Probe| p.last),
        Some(None),
        "first Probe is a"
    );
    assert!(b.mmio_write(0xfe00_0003, 4, 7).is_some());
    assert_eq!(b.with(|p: &mut Probe| p.last), Some(Some((3, 4, 7))));
    assert_eq!(
        b.save()[1],
        (String::from("c"), 0x9bu64.to_le_bytes().to_vec())
    );
}

#[test]
fn unmodelled_ports_read_all_ones_and_are_logged_once() {
    let mut b = Bus::new();
    let a = b.add(probe("a")).unwrap();
    b.register_pio(0x20..0x22, a).unwrap();
    assert_eq!(b.pio_read(0x80, 1), u64::MAX);
    assert_eq!(b.pio_read(0x21, 1), 1 << 8 | 1);
    assert_eq!(b.pio_read(0x80, 1), u64::MAX);
    assert_eq!(b.pio_write(0x80, 1, 5), Effects::default());
    assert_eq!(b.pio_read(0x81, 1), u64::MAX);
    assert_eq!(b.unmodelled_ports(), &[0x80, 0x81]);
    // Bounded: a guest probing every port does not grow it.
    for p in 0x100..0x200 {
        b.pio_write(p, 1, 0);
    }
    assert_eq!(b.unmodelled_ports().len(), LOGGED_PORTS);
    assert!(!b.note_unmodelled(0x80));
}

#[test]
fn save_restore_round_trip_by_name() {
    let mut b = Bus::new();
    let a = b.add(probe("a")).unwrap();
    let c = b.add(probe("c")).unwrap();
    b.register_pio(0x10..0x12, a).unwrap();
    b.register_pio(0x12..0x14, c).unwrap();
    b.pio_write(0x10, 1, 42);
    b.pio_write(0x13, 1, 7);
    let saved = b.save();
    assert_eq!(
        saved.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["a", "c"]
    );

    let fresh = || {
        let mut b = Bus::new();
        b.add(probe("a")).unwrap();
        b.add(probe("c")).unwrap();
        b
    };
    let mut r = fresh();
    let reversed: Vec<_> = saved.iter().rev().cloned().collect();
    r.restore(&reversed).unwrap();
    assert_eq!(r.save(), saved);

    let unknown = vec![(String::from("zz"), vec![])];
    assert_eq!(
        fresh().restore(&unknown),
        Err(BusError::UnknownDevice("zz".into()))
    );
    assert_eq!(
        fresh().restore(&saved[..1]),
        Err(BusError::MissingDevice("c"))
    );
    let twice = vec![saved[0].clone(), saved[0].clone()];
    assert_eq!(fresh().restore(&twice), Err(BusError::DuplicateState("a")));
    let bad = vec![saved[0].clone(), (String::from("c"), vec![1, 2])];
    assert!(matches!(fresh().restore(&bad), Err(BusError::Device(_))));
}

#[test]
fn device_irq_lines_reach_the_controller() {
    use crate::vmm::devices::Pic;
    let mut b = Bus::new();
    let pic = b.add(Box::new(Pic::default())).unwrap();
    b.register_pio(0x20..0x22, pic).unwrap();
    let dev = b
        .add(Box::new(Probe {
            name: "irq3",
            raise_on_write: Some(3),
            ..Probe::default()
        }))
        .unwrap();
    b.register_pio(0x2f8..0x300, dev).unwrap();
    for (port, v) in [
        (0x20, 0x11),
        (0x21, 0x20),
        (0x21, 0x04),
        (0x21, 0x01),
        (0x21, 0xf7),
    ] {
        b.pio_write(port, 1, v);
    }
    assert_eq!(b.pending_vector(), None);
    let fx = b.pio_write(0x2f8, 1, 0);
    assert_eq!(fx.irq_raise, 1 << 3);
    assert_eq!(b.pending_vector(), Some(0x23));
    b.acknowledge(0x23);
    assert_eq!(b.pending_vector(), None);
    assert_eq!(b.pio_read(0x21, 1), 0xf7);
}
