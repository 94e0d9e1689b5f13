//! A classic MBR partition table: what every board's boot ROM and u-boot read.

/// One primary partition, in 512-byte sectors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Partition {
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub sectors: u64,
    /// MBR type byte: 0x0C FAT32 (LBA), 0x83 Linux.
    pub kind: u8,
    /// Marked active (0x80), for boot ROMs that look for the flag.
    pub bootable: bool,
}

/// The 512-byte sector 0 for `parts` (at most four), with a fixed disk signature.
pub fn encode(parts: &[Partition], disk_id: u32) -> anyhow::Result<[u8; 512]> {
    anyhow::ensure!(
        parts.len() <= 4,
        "an MBR holds at most 4 primary partitions"
    );
    let mut m = [0u8; 512];
    m[440..444].copy_from_slice(&disk_id.to_le_bytes());
    for (i, p) in parts.iter().enumerate() {
        anyhow::ensure!(
            p.start + p.sectors <= u32::MAX as u64,
            "partition {} ends beyond 2 TiB, the MBR limit",
            i + 1
        );
        let e = 446 + 16 * i;
        m[e] = if p.bootable { 0x80 } else { 0 };
        // CHS fields: "use LBA" (0xFE 0xFF 0xFF) as every modern tool writes.
        m[e + 1..e + 4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        m[e + 4] = p.kind;
        m[e + 5..e + 8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        m[e + 8..e + 12].copy_from_slice(&(p.start as u32).to_le_bytes());
        m[e + 12..e + 16].copy_from_slice(&(p.sectors as u32).to_le_bytes());
    }
    m[510] = 0x55;
    m[511] = 0xAA;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_format() {
        let parts = [
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
        ];
        let m = encode(&parts, 0xCA1B_0001).unwrap();
        assert_eq!(&m[510..], &[0x55, 0xAA]);
        assert_eq!(m[446], 0x80);
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
    fn too_many_or_too_big_is_refused() {
        let p = Partition {
            start: 2048,
            sectors: 8,
            kind: 0x83,
            bootable: false,
        };
        assert!(encode(&[p; 5], 0).is_err());
        let big = Partition {
            sectors: u32::MAX as u64,
            ..p
        };
        assert!(encode(&[big], 0).unwrap_err().to_string().contains("2 TiB"));
    }
}
