//! `boot.scr`: the slot chooser u-boot's distro boot runs from the boot partition. It is
//! [`cairn_update::bootstate::BootState::boot`] in u-boot's hush: read both copies of the boot
//! state, keep the newer valid one, count a try down (written before the slot boots) or fall
//! back, then `sysboot` the chosen slot's extlinux.conf with `cairn_slot` set; if that returns,
//! the other slot. Wrapped in a legacy uImage script header (made here: no mkimage needed).
//!
//! One script for every board: distro boot sets `devtype`/`devnum` (`virtio 0` on qemu-virt,
//! `mmc 0` on the Pis) and each u-boot build's own environment the load addresses sysboot uses
//! (`kernel_addr_r`, `fdt_addr_r`, `ramdisk_addr_r`, `pxefile_addr_r`; Debian's `rpi_3` has
//! `itest`, `setexpr`, `env import/export` and `sysboot` too: hil-tests/tests/rpi.rs boots it).

use cairn_bsp::mbr::SLOT_PARTITIONS;
use cairn_update::bootstate::{COPY_SECTORS, RECORD_SECTORS};

/// The variables of the state, in the order u-boot's `env export` sorts them.
const VARS: &str = "cairn_active cairn_last cairn_seq cairn_tries cairn_try";

/// The script's text.
pub fn script() -> String {
    let [c0, c1] = COPY_SECTORS.map(|s| format!("{s:#x}"));
    let [pa, pb] = SLOT_PARTITIONS;
    // The records lie below the state: the script never touches them.
    debug_assert!(RECORD_SECTORS.iter().all(|r| !COPY_SECTORS.contains(r)));
    format!(
        r#"# Cairn's slot chooser (firmware/update/DESIGN.md): BootState::boot in hush.
if test "${{devtype}}" = mmc; then mmc dev ${{devnum}}; fi
setenv cairn_s0 none
setenv cairn_s1 none
setenv cairn_seq
if ${{devtype}} read ${{kernel_addr_r}} {c0} 1 && env import -c ${{kernel_addr_r}} 0x200 cairn_seq; then setenv cairn_s0 ${{cairn_seq}}; fi
setenv cairn_seq
if ${{devtype}} read ${{kernel_addr_r}} {c1} 1 && env import -c ${{kernel_addr_r}} 0x200 cairn_seq; then setenv cairn_s1 ${{cairn_seq}}; fi
setenv cairn_at none
if test "${{cairn_s0}}" != none; then setenv cairn_at {c0}; fi
if test "${{cairn_s1}}" != none; then
  if test "${{cairn_s0}}" = none; then setenv cairn_at {c1}; elif itest 0x${{cairn_s1}} -gt 0x${{cairn_s0}}; then setenv cairn_at {c1}; fi
fi
setenv cairn_active a
setenv cairn_try none
setenv cairn_tries 0
setenv cairn_last none
setenv cairn_seq 0
if test "${{cairn_at}}" != none; then
  ${{devtype}} read ${{kernel_addr_r}} ${{cairn_at}} 1
  env import -c ${{kernel_addr_r}} 0x200 {VARS}
fi
setenv cairn_slot ${{cairn_active}}
if test "${{cairn_try}}" != none; then
  if itest ${{cairn_tries}} -gt 0; then
    setexpr cairn_tries ${{cairn_tries}} - 1
    setenv cairn_slot ${{cairn_try}}
  else
    setenv cairn_try none
    setenv cairn_last fallback
  fi
  setexpr cairn_seq 0x${{cairn_seq}} + 1
  setexpr cairn_copy 0x${{cairn_seq}} % 2
  env export -c -s 0x200 ${{kernel_addr_r}} {VARS}
  if itest ${{cairn_copy}} -eq 0; then ${{devtype}} write ${{kernel_addr_r}} {c0} 1; else ${{devtype}} write ${{kernel_addr_r}} {c1} 1; fi
fi
if test "${{cairn_slot}}" = b; then
  setenv cairn_part {pb}; setenv cairn_other a; setenv cairn_opart {pa}
else
  setenv cairn_slot a; setenv cairn_part {pa}; setenv cairn_other b; setenv cairn_opart {pb}
fi
echo "cairn: boot: slot ${{cairn_slot}} (good ${{cairn_active}}, on trial ${{cairn_try}}, ${{cairn_tries}} tries left)"
sysboot ${{devtype}} ${{devnum}}:${{cairn_part}} any ${{pxefile_addr_r}} /extlinux/extlinux.conf
echo "cairn: boot: slot ${{cairn_slot}} did not boot; slot ${{cairn_other}}"
setenv cairn_slot ${{cairn_other}}
sysboot ${{devtype}} ${{devnum}}:${{cairn_opart}} any ${{pxefile_addr_r}} /extlinux/extlinux.conf
"#
    )
}

/// `IH_MAGIC` of a legacy uImage.
const MAGIC: u32 = 0x2705_1956;
/// `IH_OS_LINUX`, `IH_ARCH_ARM` (u-boot does not check a script's arch), `IH_TYPE_SCRIPT`,
/// `IH_COMP_NONE`: what `mkimage -A arm -O linux -T script -C none` writes.
const OS_ARCH_TYPE_COMP: [u8; 4] = [5, 2, 6, 0];

/// `script` as a legacy uImage script (what `mkimage -T script` makes): the 64-byte header,
/// then the one-entry size table (length, 0) and the text. `time` is the header's timestamp
/// (fixed, for reproducible bytes).
pub fn uimage(script: &str, name: &str, time: u32) -> Vec<u8> {
    let mut data = Vec::with_capacity(8 + script.len());
    data.extend_from_slice(&(script.len() as u32).to_be_bytes());
    data.extend_from_slice(&0u32.to_be_bytes());
    data.extend_from_slice(script.as_bytes());
    let mut h = [0u8; 64];
    h[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    h[8..12].copy_from_slice(&time.to_be_bytes());
    h[12..16].copy_from_slice(&(data.len() as u32).to_be_bytes());
    // load and entry addresses (16..24) stay 0
    h[24..28].copy_from_slice(&crc32fast::hash(&data).to_be_bytes());
    h[28..32].copy_from_slice(&OS_ARCH_TYPE_COMP);
    let n = name.len().min(32);
    h[32..32 + n].copy_from_slice(&name.as_bytes()[..n]);
    // The header's CRC is over the header with that field zero.
    let hcrc = crc32fast::hash(&h);
    h[4..8].copy_from_slice(&hcrc.to_be_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(&data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `mkimage -A arm -O linux -T script -C none -n cairn -d s.txt boot.scr` with
    /// SOURCE_DATE_EPOCH=1700000000 (u-boot-tools 2023.01) for `s.txt` = "echo hi\n".
    #[test]
    fn the_header_is_byte_for_byte_what_mkimage_writes() {
        let img = uimage("echo hi\n", "cairn", 1_700_000_000);
        let want = include_bytes!("../tests/fixtures/mkimage-echo-hi.scr");
        assert_eq!(img, want.to_vec());
    }

    #[test]
    fn the_script_names_the_state_sectors_and_both_slots() {
        let s = script();
        assert!(s.contains("read ${kernel_addr_r} 0x7f0 1"));
        assert!(s.contains("write ${kernel_addr_r} 0x7f8 1"));
        assert!(s.contains("${devnum}:${cairn_part}"));
        assert!(s.contains("setenv cairn_part 4"));
        assert!(!s.contains("{{") && !s.contains("}}"));
        // u-boot's script buffer and our sector reads stay far apart in any case.
        assert!(s.len() < 8192);
    }
}
