//! u-boot's environment for QEMU's second flash bank, so that the virtual board boots without
//! u-boot's 2-second countdown. Real boards keep their environment on their own medium; this
//! only speeds up QEMU, the boot path (distro boot → extlinux.conf on the card) stays the same.
//!
//! A valid environment in flash replaces u-boot's built-in default entirely, so we start from
//! the default compiled into the very u-boot binary and change only what we must.

/// Size of QEMU's pflash bank 1 (`-drive if=pflash,unit=1`), fixed by the virt machine.
pub const FLASH_BYTES: usize = 64 << 20;
/// `CONFIG_ENV_SIZE` of Debian's qemu_arm64 u-boot: CRC32 + key=value pairs.
pub const ENV_BYTES: usize = 256 << 10;

/// The default environment compiled into `uboot` (a u-boot.bin), as ordered key=value pairs.
pub fn default_env(uboot: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
    let anchor = b"\0bootcmd=";
    let start = uboot
        .windows(anchor.len())
        .position(|w| w == anchor)
        .ok_or_else(|| anyhow::anyhow!("no default environment (bootcmd=) in the u-boot binary"))?
        + 1;
    let end = uboot[start..]
        .windows(2)
        .position(|w| w == b"\0\0")
        .ok_or_else(|| anyhow::anyhow!("u-boot default environment is not terminated"))?
        + start;
    let mut pairs = Vec::new();
    for item in uboot[start..end].split(|&b| b == 0) {
        let s = std::str::from_utf8(item)
            .map_err(|_| anyhow::anyhow!("u-boot default environment is not text"))?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("u-boot default environment entry without '=': {s}"))?;
        pairs.push((k.to_string(), v.to_string()));
    }
    anyhow::ensure!(
        pairs.iter().any(|(k, _)| k == "bootdelay"),
        "u-boot default environment has no bootdelay"
    );
    Ok(pairs)
}

/// Sets (or adds) `key` to `value`.
pub fn set(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = value.to_string(),
        None => env.push((key.to_string(), value.to_string())),
    }
}

/// The whole flash bank: CRC32 (little-endian) of the data area, the pairs, zero padding.
pub fn flash_image(env: &[(String, String)]) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::with_capacity(ENV_BYTES - 4);
    for (k, v) in env {
        data.extend_from_slice(k.as_bytes());
        data.push(b'=');
        data.extend_from_slice(v.as_bytes());
        data.push(0);
    }
    data.push(0);
    anyhow::ensure!(data.len() <= ENV_BYTES - 4, "u-boot environment too large");
    data.resize(ENV_BYTES - 4, 0);
    let mut out = Vec::with_capacity(FLASH_BYTES);
    out.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
    out.extend_from_slice(&data);
    out.resize(FLASH_BYTES, 0);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_default_and_writes_a_checksummed_bank() {
        let bin = b"junk%s\0bootcmd=run distro_bootcmd\0bootdelay=2\0arch=arm\0\0more junk";
        let mut env = default_env(bin).unwrap();
        assert_eq!(env.len(), 3);
        set(&mut env, "bootdelay", "-2");
        set(&mut env, "boot_targets", "virtio0");
        let img = flash_image(&env).unwrap();
        assert_eq!(img.len(), FLASH_BYTES);
        let data = &img[4..ENV_BYTES];
        assert_eq!(
            u32::from_le_bytes(img[..4].try_into().unwrap()),
            crc32fast::hash(data)
        );
        assert!(data.starts_with(
            b"bootcmd=run distro_bootcmd\0bootdelay=-2\0arch=arm\0boot_targets=virtio0\0\0"
        ));
    }

    #[test]
    fn a_binary_without_an_environment_is_an_error() {
        assert!(default_env(b"no env here").is_err());
        assert!(default_env(b"\0bootcmd=x\0arch=arm\0\0")
            .unwrap_err()
            .to_string()
            .contains("bootdelay"));
    }
}
