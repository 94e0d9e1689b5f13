//! Installing a bundle into the inactive slot: [`apply`] checks the signature, the board and
//! the build number before it writes a byte, streams the parts into the slot through one
//! bounded buffer, checks each part's hash as it ends, syncs, and reads the whole written
//! span back against the manifest. Marking the slot "try once" is the caller's next step
//! ([`crate::bootstate::BootState::try_once`]), taken only after this returns `Ok`.

use std::io::Read;

use ring::digest::{Context, SHA256};

use crate::bundle::{Manifest, Reader};
use crate::keys::TrustedKeys;
use crate::slot::Slot;
use crate::{Refusal, BUFFER_BYTES};

/// What a device accepts.
pub struct Policy<'a> {
    /// The keys it trusts.
    pub keys: &'a TrustedKeys,
    /// Its board's name.
    pub board: &'a str,
    /// The running system's build number.
    pub running_build: u64,
    /// The owner's explicit consent to a build not newer than the running one.
    pub allow_downgrade: bool,
}

/// Checks a bundle's manifest against the device, before anything is written.
pub fn check(manifest: &Manifest, policy: &Policy<'_>) -> Result<(), Refusal> {
    if manifest.board != policy.board {
        return Err(Refusal::Board {
            bundle: manifest.board.clone(),
            device: policy.board.into(),
        });
    }
    if manifest.build <= policy.running_build && !policy.allow_downgrade {
        return Err(Refusal::NotNewer {
            bundle: manifest.build,
            running: policy.running_build,
        });
    }
    Ok(())
}

/// Installs the bundle read from `src` into `slot`, with at most [`BUFFER_BYTES`] of data
/// buffered; returns its manifest once the slot reads back as signed.
pub fn apply<S: Slot + ?Sized>(
    src: impl Read,
    policy: &Policy<'_>,
    slot: &mut S,
) -> Result<Manifest, Refusal> {
    let reader = Reader::open(src, policy.keys)?;
    check(reader.manifest(), policy)?;
    let (layout, need) = reader.manifest().layout()?;
    let have = slot
        .capacity()
        .map_err(|e| Refusal::io(slot.describe(), e))?;
    if need > have {
        return Err(Refusal::NoRoom { need, have });
    }
    let mut buf = vec![0u8; BUFFER_BYTES];
    let manifest = reader.stream_parts(&mut buf, |i, at, bytes| {
        slot.write_at(layout[i].0 + at, bytes)
            .map_err(|e| Refusal::io(format!("writing {}", slot.describe()), e))
    })?;
    slot.sync()
        .map_err(|e| Refusal::io(format!("syncing {}", slot.describe()), e))?;
    read_back(&manifest, slot, &mut buf)?;
    Ok(manifest)
}

/// Reads each part back from `slot` and compares its SHA-256 with the manifest's.
pub fn read_back<S: Slot + ?Sized>(
    manifest: &Manifest,
    slot: &mut S,
    buf: &mut [u8],
) -> Result<(), Refusal> {
    let (layout, _) = manifest.layout()?;
    for (part, (offset, size)) in manifest.parts.iter().zip(layout) {
        let mut ctx = Context::new(&SHA256);
        let mut done = 0u64;
        while done < size {
            let n = (size - done).min(buf.len() as u64) as usize;
            slot.read_at(offset + done, &mut buf[..n])
                .map_err(|e| Refusal::io(format!("reading back {}", slot.describe()), e))?;
            ctx.update(&buf[..n]);
            done += n as u64;
        }
        if hex::encode(ctx.finish()) != part.sha256 {
            return Err(Refusal::ReadBack(part.name.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{self, PartSource};
    use crate::keys::SigningKey;
    use crate::slot::FileSlot;
    use proptest::prelude::*;
    use std::io;

    fn key() -> SigningKey {
        SigningKey::from_pkcs8(&SigningKey::generate_pkcs8().unwrap()).unwrap()
    }

    fn trusting(k: &SigningKey) -> TrustedKeys {
        let mut t = TrustedKeys::default();
        t.add(k.public(), "test").unwrap();
        t
    }

    fn policy(keys: &TrustedKeys) -> Policy<'_> {
        Policy {
            keys,
            board: "qemu-virt",
            running_build: 10,
            allow_downgrade: false,
        }
    }

    fn bundle_of(k: &SigningKey, board: &str, build: u64, parts: &[(&str, &[u8])]) -> Vec<u8> {
        let parts: Vec<(&str, &dyn PartSource)> = parts
            .iter()
            .map(|(n, b)| (*n, b as &dyn PartSource))
            .collect();
        let mut out = Vec::new();
        bundle::write(&mut out, k, board, "1.2.3", build, &parts).unwrap();
        out
    }

    fn slot_file(bytes: u64) -> (tempfile::NamedTempFile, FileSlot) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(bytes).unwrap();
        let s = FileSlot::open(f.path()).unwrap();
        (f, s)
    }

    const BOOT: &[u8] = b"the kernel, the initramfs and extlinux.conf";
    const SYSTEM: &[u8] = b"a squashfs";

    #[test]
    fn a_good_bundle_installs_and_reads_back() {
        let k = key();
        let keys = trusting(&k);
        let b = bundle_of(&k, "qemu-virt", 11, &[("boot", BOOT), ("system", SYSTEM)]);
        let (f, mut slot) = slot_file(1 << 20);
        let m = apply(&b[..], &policy(&keys), &mut slot).unwrap();
        assert_eq!((m.build, m.version.as_str()), (11, "1.2.3"));
        let written = std::fs::read(f.path()).unwrap();
        assert_eq!(&written[..BOOT.len()], BOOT);
        let at = bundle::PART_ALIGN_BYTES as usize;
        assert_eq!(&written[at..at + SYSTEM.len()], SYSTEM);
        assert_eq!(
            m.bundle_bytes(b.len() - 44 - 64 - BOOT.len() - SYSTEM.len()),
            b.len() as u64
        );
    }

    #[test]
    fn the_same_inputs_give_the_same_bundle() {
        let k = key();
        assert_eq!(
            bundle_of(&k, "qemu-virt", 11, &[("boot", BOOT)]),
            bundle_of(&k, "qemu-virt", 11, &[("boot", BOOT)])
        );
    }

    fn refusal(b: &[u8], keys: &TrustedKeys, p: Option<Policy<'_>>, room: u64) -> Refusal {
        let (f, mut slot) = slot_file(room);
        let e = apply(b, &p.unwrap_or_else(|| policy(keys)), &mut slot).unwrap_err();
        let msg = e.to_string();
        assert!(!msg.contains('\n') && !msg.is_empty(), "one line: {msg}");
        drop(f);
        e
    }

    #[test]
    fn an_unknown_key_another_board_and_an_older_build_are_refused() {
        let (k, stranger) = (key(), key());
        let keys = trusting(&k);
        let b = bundle_of(&stranger, "qemu-virt", 11, &[("boot", BOOT)]);
        let e = refusal(&b, &keys, None, 1 << 20);
        assert!(matches!(e, Refusal::UnknownKey(_)), "{e}");
        assert!(e.to_string().starts_with("signed by an unknown key "));

        let b = bundle_of(&k, "rpi4", 11, &[("boot", BOOT)]);
        let e = refusal(&b, &keys, None, 1 << 20);
        assert_eq!(
            e.to_string(),
            "bundle is for board rpi4, this device is qemu-virt"
        );

        for build in [9, 10] {
            let b = bundle_of(&k, "qemu-virt", build, &[("boot", BOOT)]);
            let e = refusal(&b, &keys, None, 1 << 20);
            assert!(matches!(e, Refusal::NotNewer { running: 10, .. }), "{e}");
            // The owner's explicit downgrade goes through.
            let (_f, mut slot) = slot_file(1 << 20);
            let p = Policy {
                allow_downgrade: true,
                ..policy(&keys)
            };
            assert_eq!(apply(&b[..], &p, &mut slot).unwrap().build, build);
        }
    }

    #[test]
    fn a_bundle_larger_than_the_slot_is_refused_before_writing() {
        let k = key();
        let keys = trusting(&k);
        let b = bundle_of(&k, "qemu-virt", 11, &[("boot", BOOT), ("system", SYSTEM)]);
        let need = bundle::PART_ALIGN_BYTES + SYSTEM.len() as u64;
        let (f, mut slot) = slot_file(need - 1);
        let e = apply(&b[..], &policy(&keys), &mut slot).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "not enough room: the bundle needs {need} bytes, the slot holds {}",
                need - 1
            )
        );
        assert!(std::fs::read(f.path()).unwrap().iter().all(|&b| b == 0));
    }

    #[test]
    fn every_truncation_is_refused() {
        let k = key();
        let keys = trusting(&k);
        let b = bundle_of(&k, "qemu-virt", 11, &[("boot", BOOT), ("system", SYSTEM)]);
        for len in 0..b.len() {
            let e = refusal(&b[..len], &keys, None, 1 << 20);
            assert!(matches!(e, Refusal::Truncated(_)), "cut at {len}: {e}");
        }
        let e = refusal(&b[..b.len() - 3], &keys, None, 1 << 20);
        assert_eq!(
            e.to_string(),
            format!(
                "truncated bundle: it ends inside part system at byte {} of {}",
                SYSTEM.len() - 3,
                SYSTEM.len()
            )
        );
        let mut longer = b.clone();
        longer.push(0);
        let e = refusal(&longer, &keys, None, 1 << 20);
        assert_eq!(e.to_string(), "corrupt bundle: bytes follow the last part");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        /// One flipped byte anywhere: refused, whichever check catches it.
        #[test]
        fn a_flipped_byte_anywhere_is_refused(at in any::<prop::sample::Index>(), mask in 1u8..) {
            let k = key();
            let keys = trusting(&k);
            let mut b = bundle_of(&k, "qemu-virt", 11, &[("boot", BOOT), ("system", SYSTEM)]);
            let i = at.index(b.len());
            b[i] ^= mask;
            let (_f, mut slot) = slot_file(1 << 20);
            prop_assert!(apply(&b[..], &policy(&keys), &mut slot).is_err(), "byte {} ^ {:#x} passed", i, mask);
        }
    }

    #[test]
    fn tampering_is_named_by_where_it_is() {
        let k = key();
        let keys = trusting(&k);
        let b = bundle_of(&k, "qemu-virt", 11, &[("boot", BOOT)]);
        let flip = |i: usize| {
            let mut c = b.clone();
            c[i] ^= 0x20;
            refusal(&c, &keys, None, 1 << 20).to_string()
        };
        assert_eq!(flip(0), "not a Cairn update bundle (no CUPD header)");
        assert!(flip(8).starts_with("signed by an unknown key"));
        assert!(flip(50).starts_with("wrong signature: "));
        assert!(flip(b.len() - 70 - BOOT.len()).starts_with("wrong signature: "));
        assert_eq!(
            flip(b.len() - 1),
            "corrupt bundle: part boot: its SHA-256 does not match the signed manifest"
        );
    }

    /// A pseudo-random part of any length, made as it is read (nothing held).
    struct Noise(u64);
    impl PartSource for Noise {
        fn open(&self) -> io::Result<Box<dyn Read + '_>> {
            Ok(Box::new(NoiseReader {
                x: 0x9e37_79b9_7f4a_7c15,
                left: self.0,
            }))
        }
        fn describe(&self) -> String {
            "noise".into()
        }
    }
    struct NoiseReader {
        x: u64,
        left: u64,
    }
    impl Read for NoiseReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = (buf.len() as u64).min(self.left) as usize;
            for b in &mut buf[..n] {
                // xorshift64: cheap bytes that do not repeat.
                self.x ^= self.x << 13;
                self.x ^= self.x >> 7;
                self.x ^= self.x << 17;
                *b = self.x as u8;
            }
            self.left -= n as u64;
            Ok(n)
        }
    }

    /// Records the largest read the installer asks of the bundle.
    struct Watched<R> {
        inner: R,
        read_bytes_max: usize,
    }
    impl<R: Read> Read for Watched<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.read_bytes_max = self.read_bytes_max.max(buf.len());
            self.inner.read(buf)
        }
    }

    /// A file slot that records the largest write and read-back piece.
    struct WatchedSlot {
        inner: FileSlot,
        piece_bytes_max: usize,
    }
    impl Slot for WatchedSlot {
        fn capacity(&mut self) -> io::Result<u64> {
            self.inner.capacity()
        }
        fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.piece_bytes_max = self.piece_bytes_max.max(data.len());
            self.inner.write_at(offset, data)
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.piece_bytes_max = self.piece_bytes_max.max(buf.len());
            self.inner.read_at(offset, buf)
        }
        fn sync(&mut self) -> io::Result<()> {
            self.inner.sync()
        }
        fn describe(&self) -> String {
            self.inner.describe()
        }
    }

    #[test]
    fn a_bundle_larger_than_the_memory_bound_streams_through_bounded_buffers() {
        const BUNDLE_BYTES_MIN: u64 = 20 << 20;
        let k = key();
        let keys = trusting(&k);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.cupd");
        let parts: [(&str, &dyn PartSource); 2] = [
            ("boot", &Noise(3 << 20)),
            ("system", &Noise(BUNDLE_BYTES_MIN)),
        ];
        bundle::write(
            &mut std::fs::File::create(&path).unwrap(),
            &k,
            "qemu-virt",
            "2",
            11,
            &parts,
        )
        .unwrap();
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(
            size > 16 << 20,
            "the bundle ({size} bytes) is larger than the 16 MiB bound"
        );

        let mut src = Watched {
            inner: std::fs::File::open(&path).unwrap(),
            read_bytes_max: 0,
        };
        let (_f, inner) = slot_file(32 << 20);
        let mut slot = WatchedSlot {
            inner,
            piece_bytes_max: 0,
        };
        apply(&mut src, &policy(&keys), &mut slot).unwrap();
        // The manifest is read whole (bounded by MANIFEST_BYTES_MAX); every other read and
        // every piece written or read back goes through the one buffer.
        assert!(
            src.read_bytes_max <= BUFFER_BYTES,
            "read {}",
            src.read_bytes_max
        );
        assert!(
            slot.piece_bytes_max <= BUFFER_BYTES,
            "piece {}",
            slot.piece_bytes_max
        );
    }

    /// A slot whose medium returns one wrong bit.
    struct Rotten(FileSlot);
    impl Slot for Rotten {
        fn capacity(&mut self) -> io::Result<u64> {
            self.0.capacity()
        }
        fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
            self.0.write_at(offset, data)
        }
        fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
            self.0.read_at(offset, buf)?;
            buf[0] ^= 1;
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            self.0.sync()
        }
        fn describe(&self) -> String {
            self.0.describe()
        }
    }

    #[test]
    fn a_slot_that_reads_back_wrong_is_not_accepted() {
        let k = key();
        let keys = trusting(&k);
        let b = bundle_of(&k, "qemu-virt", 11, &[("boot", BOOT)]);
        let (_f, inner) = slot_file(1 << 20);
        let e = apply(&b[..], &policy(&keys), &mut Rotten(inner)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "slot read back: part boot differs from what was written (failing medium?)"
        );
    }
}
