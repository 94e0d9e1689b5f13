//! The initramfs as a cpio "newc" archive, written directly so that device nodes (the kernel
//! needs /dev/console before devtmpfs is mounted) need no root, and every byte is reproducible
//! (fixed owner, fixed times, entries in the order given).

use std::io::{self, Write};

/// One archive member.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A directory.
    Dir {
        /// Where in the archive.
        path: String,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Where in the archive.
        path: String,
        /// Permission bits.
        mode: u32,
        /// Its contents.
        data: Vec<u8>,
    },
    /// A symbolic link.
    Symlink {
        /// Where in the archive.
        path: String,
        /// What it points to.
        target: String,
    },
    /// A character device node.
    CharDev {
        /// Where in the archive.
        path: String,
        /// Permission bits.
        mode: u32,
        /// The device's major number.
        major: u32,
        /// The device's minor number.
        minor: u32,
    },
}

impl Entry {
    /// Where the member goes in the archive.
    pub fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. }
            | Entry::File { path, .. }
            | Entry::Symlink { path, .. }
            | Entry::CharDev { path, .. } => path,
        }
    }
}

fn header(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<()> {
    let namesize = name.len() + 1;
    write!(
        out,
        "070701{ino:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}{dmaj:08X}{dmin:08X}{rmaj:08X}{rmin:08X}{namesize:08X}{check:08X}",
        uid = 0,
        gid = 0,
        nlink = 1,
        mtime = 0,
        dmaj = 0,
        dmin = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        check = 0
    )?;
    out.write_all(name.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, 110 + namesize)
}

fn pad(out: &mut impl Write, len: usize) -> io::Result<()> {
    let n = (4 - len % 4) % 4;
    out.write_all(&[0u8; 3][..n])
}

/// Writes `entries` and the trailer.
pub fn write(out: &mut impl Write, entries: &[Entry]) -> io::Result<()> {
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        let name = e.path().trim_start_matches('/');
        match e {
            Entry::Dir { mode, .. } => header(out, ino, 0o040000 | mode, 0, (0, 0), name)?,
            Entry::File { mode, data, .. } => {
                header(out, ino, 0o100000 | mode, data.len(), (0, 0), name)?;
                out.write_all(data)?;
                pad(out, data.len())?;
            }
            Entry::Symlink { target, .. } => {
                header(out, ino, 0o120777, target.len(), (0, 0), name)?;
                out.write_all(target.as_bytes())?;
                pad(out, target.len())?;
            }
            Entry::CharDev {
                mode, major, minor, ..
            } => header(out, ino, 0o020000 | mode, 0, (*major, *minor), name)?,
        }
    }
    header(out, 0, 0, 0, (0, 0), "TRAILER!!!")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back (name, mode, data) triples: the format's framing, checked independently.
    fn parse(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            assert_eq!(&b[..6], b"070701");
            let field = |i: usize| {
                u32::from_str_radix(std::str::from_utf8(&b[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                    .unwrap() as usize
            };
            let (mode, size, namesize) = (field(1), field(6), field(11));
            let name = std::str::from_utf8(&b[110..110 + namesize - 1])
                .unwrap()
                .to_string();
            let data_at = (110 + namesize).div_ceil(4) * 4;
            let data = b[data_at..data_at + size].to_vec();
            b = &b[(data_at + size).div_ceil(4) * 4..];
            if name == "TRAILER!!!" {
                assert!(b.is_empty());
                return out;
            }
            out.push((name, mode as u32, data));
        }
    }

    #[test]
    fn round_trips_every_kind_and_aligns() {
        let entries = vec![
            Entry::Dir {
                path: "/dev".into(),
                mode: 0o755,
            },
            Entry::CharDev {
                path: "/dev/console".into(),
                mode: 0o600,
                major: 5,
                minor: 1,
            },
            Entry::File {
                path: "/init".into(),
                mode: 0o755,
                data: b"abcde".to_vec(),
            },
            Entry::Symlink {
                path: "/bin/cairn".into(),
                target: "/init".into(),
            },
        ];
        let mut buf = Vec::new();
        write(&mut buf, &entries).unwrap();
        assert_eq!(buf.len() % 4, 0);
        let got = parse(&buf);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].0, "dev");
        assert_eq!(got[1], ("dev/console".into(), 0o020600, vec![]));
        assert_eq!(got[2], ("init".into(), 0o100755, b"abcde".to_vec()));
        assert_eq!(got[3], ("bin/cairn".into(), 0o120777, b"/init".to_vec()));
        let mut again = Vec::new();
        write(&mut again, &entries).unwrap();
        assert_eq!(buf, again, "same entries, same bytes");
    }
}
