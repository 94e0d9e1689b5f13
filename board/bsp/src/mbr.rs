//! The classic MBR partition table in sector 0 of a card or disk image: what every board's boot
//! ROM and u-boot read. The one encoder and decoder of its entries, for the image builder (which
//! writes the table), `cairn init` (which grows the data partition's entry) and the QEMU tests
//! (which find the partitions in an image). Bytes only, no I/O, so it builds and tests anywhere.

use std::ops::Range;

use thiserror::Error;

/// Bytes in a sector, the unit of the table's fields.
pub const SECTOR: u64 = 512;

/// Primary partition entries in the table.
pub const ENTRIES: u32 = 4;
/// The boot partition's entry (FAT, bootable): the boot script that picks a system slot.
pub const BOOT_PARTITION: u32 = 1;
/// The system slots' entries, A then B (FAT: kernel, initramfs, extlinux.conf and the system
/// layer as a file). They lie between boot and data on the disk, so that the data partition
/// (entry 2) stays last and can grow.
pub const SLOT_PARTITIONS: [u32; 2] = [3, 4];

/// Offset of entry 1 in sector 0; each entry is 16 bytes.
const TABLE: usize = 446;

/// CHS fields meaning "use LBA", as every modern tool writes them.
const CHS_LBA: [u8; 3] = [0xFE, 0xFF, 0xFF];

/// One primary partition, in 512-byte sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub sectors: u64,
    /// MBR type byte: 0x0C FAT32 (LBA), 0x83 Linux.
    pub kind: u8,
    /// The boot flag (0x80), which some boot ROMs look for.
    pub bootable: bool,
}

impl Partition {
    /// Byte offset of the partition on the disk.
    pub fn offset(&self) -> u64 {
        self.start * SECTOR
    }

    /// Length of the partition in bytes.
    pub fn bytes(&self) -> u64 {
        self.sectors * SECTOR
    }
}

/// Why a table cannot be written or an entry read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MbrError {
    /// More than four partitions to write.
    #[error("an MBR holds at most 4 primary partitions")]
    TooMany,
    /// The partition's end does not fit the table's 32-bit sector fields.
    #[error("partition {0} ends beyond 2 TiB, the MBR limit")]
    TooBig(u32),
    /// Sector 0 does not end in 0x55 0xAA.
    #[error("no MBR signature")]
    NoSignature,
    /// Not an entry number from 1 to 4.
    #[error("partition {0} is not an MBR primary partition")]
    NotPrimary(u32),
    /// The entry is unused (zero sectors).
    #[error("partition {0} is empty in the MBR")]
    Empty(u32),
}

/// The 512-byte sector 0 for `parts` (at most four, entries 1.. in order) with disk signature
/// `disk_id`.
pub fn encode(parts: &[Partition], disk_id: u32) -> Result<[u8; 512], MbrError> {
    if parts.len() > ENTRIES as usize {
        return Err(MbrError::TooMany);
    }
    let mut m = [0u8; 512];
    m[440..444].copy_from_slice(&disk_id.to_le_bytes());
    for (n, p) in (1..).zip(parts) {
        fits(n, p.start, p.sectors)?;
        let e = &mut m[entry(n)?];
        e[0] = if p.bootable { 0x80 } else { 0 };
        e[1..4].copy_from_slice(&CHS_LBA);
        e[4] = p.kind;
        e[5..8].copy_from_slice(&CHS_LBA);
        e[8..12].copy_from_slice(&(p.start as u32).to_le_bytes());
        e[12..16].copy_from_slice(&(p.sectors as u32).to_le_bytes());
    }
    m[510] = 0x55;
    m[511] = 0xAA;
    Ok(m)
}

/// Entry `n` (1 to 4) of the table in `mbr`; an unused entry is an error.
pub fn partition(mbr: &[u8; 512], n: u32) -> Result<Partition, MbrError> {
    if mbr[510..] != [0x55, 0xAA] {
        return Err(MbrError::NoSignature);
    }
    let e = &mbr[entry(n)?];
    let field = |at: usize| u64::from(u32::from_le_bytes([e[at], e[at + 1], e[at + 2], e[at + 3]]));
    let sectors = field(12);
    if sectors == 0 {
        return Err(MbrError::Empty(n));
    }
    Ok(Partition {
        start: field(8),
        sectors,
        kind: e[4],
        bootable: e[0] == 0x80,
    })
}

/// Sets the length of entry `n` to `sectors`, leaving the rest of the entry (and of the
/// sector) as it is: growing a partition in place.
pub fn set_sectors(mbr: &mut [u8; 512], n: u32, sectors: u64) -> Result<(), MbrError> {
    let p = partition(mbr, n)?;
    fits(n, p.start, sectors)?;
    mbr[entry(n)?][12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    Ok(())
}

/// The bytes of entry `n` in sector 0.
fn entry(n: u32) -> Result<Range<usize>, MbrError> {
    if !(1..=ENTRIES).contains(&n) {
        return Err(MbrError::NotPrimary(n));
    }
    let at = TABLE + 16 * (n as usize - 1);
    Ok(at..at + 16)
}

/// Whether a partition of `sectors` from `start` fits the 32-bit fields.
fn fits(n: u32, start: u64, sectors: u64) -> Result<(), MbrError> {
    match start.checked_add(sectors) {
        Some(end) if end <= u64::from(u32::MAX) => Ok(()),
        _ => Err(MbrError::TooBig(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> [Partition; 2] {
        [
            Partition {
                start: 2048,
                sectors: 65536,
                kind: 0x0C,
                bootable: true,
            },
            Partition {
                start: 67584,
                sectors: 131072,
                kind: 0x83,
                bootable: false,
            },
        ]
    }

    #[test]
    fn layout_matches_the_format() {
        let m = encode(&two(), 0xCA1B_0001).unwrap();
        assert_eq!(&m[510..], &[0x55, 0xAA]);
        assert_eq!(&m[440..444], &0xCA1B_0001u32.to_le_bytes());
        assert_eq!(m[446], 0x80);
        assert_eq!(&m[446 + 1..446 + 4], &[0xFE, 0xFF, 0xFF]);
        assert_eq!(m[446 + 4], 0x0C);
        assert_eq!(
            u32::from_le_bytes(m[446 + 8..446 + 12].try_into().unwrap()),
            2048
        );
        assert_eq!(m[462 + 4], 0x83);
        assert_eq!(
            u32::from_le_bytes(m[462 + 12..462 + 16].try_into().unwrap()),
            131072
        );
        assert_eq!(m[478 + 4], 0, "unused entries stay empty");
    }

    #[test]
    fn what_is_encoded_decodes_the_same() {
        let parts = two();
        let m = encode(&parts, 7).unwrap();
        for (n, p) in (1..).zip(&parts) {
            assert_eq!(partition(&m, n).unwrap(), *p);
        }
        assert_eq!(partition(&m, 2).unwrap().offset(), 67584 * 512);
        assert_eq!(partition(&m, 2).unwrap().bytes(), 131072 * 512);
        let four = [parts[1]; 4];
        let m = encode(&four, 7).unwrap();
        assert_eq!(partition(&m, 4).unwrap(), parts[1]);
    }

    #[test]
    fn too_many_or_too_big_is_refused() {
        let p = Partition {
            start: 2048,
            sectors: 8,
            kind: 0x83,
            bootable: false,
        };
        assert_eq!(encode(&[p; 5], 0).unwrap_err(), MbrError::TooMany);
        let big = Partition {
            sectors: u32::MAX as u64,
            ..p
        };
        assert!(encode(&[big], 0).unwrap_err().to_string().contains("2 TiB"));
        assert_eq!(
            encode(&[p, big], 0).unwrap_err().to_string(),
            "partition 2 ends beyond 2 TiB, the MBR limit"
        );
    }

    #[test]
    fn a_malformed_table_is_a_clear_error() {
        let mut m = encode(&two()[..1], 0).unwrap();
        assert_eq!(
            partition(&m, 2).unwrap_err().to_string(),
            "partition 2 is empty in the MBR"
        );
        for n in [0, 5] {
            assert_eq!(
                partition(&m, n).unwrap_err().to_string(),
                format!("partition {n} is not an MBR primary partition")
            );
        }
        m[511] = 0;
        assert_eq!(
            partition(&m, 1).unwrap_err().to_string(),
            "no MBR signature"
        );
        assert_eq!(partition(&[0; 512], 1).unwrap_err(), MbrError::NoSignature);
    }

    #[test]
    fn growing_an_entry_changes_its_length_only() {
        let mut m = encode(&two(), 1).unwrap();
        // CHS fields another tool wrote stay as they are.
        m[462 + 1..462 + 4].copy_from_slice(&[1, 2, 3]);
        let before = m;
        set_sectors(&mut m, 2, 1_000_000).unwrap();
        assert_eq!(partition(&m, 2).unwrap().sectors, 1_000_000);
        assert_eq!(partition(&m, 2).unwrap().start, 67584);
        let changed: Vec<usize> = (0..512).filter(|&i| m[i] != before[i]).collect();
        assert!(
            changed.iter().all(|i| (474..478).contains(i)),
            "{changed:?}"
        );
        assert_eq!(
            set_sectors(&mut m, 2, u64::from(u32::MAX)).unwrap_err(),
            MbrError::TooBig(2)
        );
        assert_eq!(set_sectors(&mut m, 3, 8).unwrap_err(), MbrError::Empty(3));
    }
}
