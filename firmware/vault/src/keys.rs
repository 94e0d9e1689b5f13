//! Keys: one owner secret from which every other key is derived, its paper form (the recovery
//! key), the root capability string, and the key file that keeps the secret on the device
//! encrypted under the admin passphrase.
//!
//! Derivation (HKDF-SHA256, salt "cairn vault v1", one info label per key):
//! - `id`: BLAKE3 key for data chunk ids, so a peer holding a known file cannot compute its ids;
//! - `manifest-id`: the same for manifest chunks, so no data chunk can collide with one;
//! - `seal`: root of the per-chunk AEAD keys (one key per chunk id and kind);
//! - `head`: names the root record of snapshot `seq` (found again from the secret alone);
//! - `chunker`: seeds FastCDC's gear table, so chunk boundaries (and sizes) depend on the key;
//! - `owner`: the seed of the owner key (Ed25519), the owner's identity towards partners: it
//!   signs the statement that lets a plug act for the owner, so a plug restored from the
//!   recovery key is the same owner at once.
//!
//! [`OwnerSecret::services`] derives a second secret (salt "cairn services v1"): the key of the
//! device's own backups (its services' data), which the device keeps unlocked so that backups
//! run while nobody is logged in. It is one-way: holding it opens those backups and nothing of
//! the owner's vault, and the recovery key brings it back with everything else.

use std::fmt;
use std::path::Path;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use crate::error::{corrupt, io_err, Result, VaultError};
use crate::ChunkId;

/// Length of the owner secret in bytes.
pub const SECRET_LEN: usize = 32;

/// The owner's one secret. Every key the vault uses is derived from it; whoever has it (with the
/// shards) can read everything, so it is only ever stored encrypted (see [`write_key_file`]).
#[derive(Clone, PartialEq, Eq)]
pub struct OwnerSecret([u8; SECRET_LEN]);

impl fmt::Debug for OwnerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerSecret(..)")
    }
}

impl OwnerSecret {
    /// Draws a new secret from `ring`'s system RNG.
    pub fn generate() -> Result<Self> {
        let mut b = [0u8; SECRET_LEN];
        SystemRandom::new()
            .fill(&mut b)
            .map_err(|_| VaultError::Usage("the system random number generator failed".into()))?;
        Ok(Self(b))
    }

    /// Wraps known bytes (tests, decoders).
    pub fn from_bytes(b: [u8; SECRET_LEN]) -> Self {
        Self(b)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// Derives the working keys.
    pub fn keys(&self) -> Keys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"cairn vault v1").extract(&self.0);
        let derive = |label: &[u8]| {
            let mut out = [0u8; 32];
            prk.expand(&[label], Len32)
                .and_then(|okm| okm.fill(&mut out))
                .expect("HKDF-SHA256 yields 32 bytes");
            out
        };
        let seed = derive(b"chunker");
        Keys {
            owner: OwnerKey(derive(b"owner")),
            id: derive(b"id"),
            manifest_id: derive(b"manifest-id"),
            seal: derive(b"seal"),
            head: derive(b"head"),
            shard_mac: derive(b"shard-mac"),
            chunker_seed: u64::from_le_bytes(seed[..8].try_into().expect("8 bytes")),
        }
    }

    /// The secret of the device's service backups (see the module's notes): another vault,
    /// another owner key towards partners, found again from this secret alone.
    pub fn services(&self) -> OwnerSecret {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"cairn services v1").extract(&self.0);
        let mut out = [0u8; SECRET_LEN];
        prk.expand(&[b"secret"], Len32)
            .and_then(|okm| okm.fill(&mut out))
            .expect("HKDF-SHA256 yields 32 bytes");
        OwnerSecret(out)
    }

    /// The recovery key: the secret plus a 24-bit checksum in Crockford base32, 14 groups of 4,
    /// short enough to write on paper; a mistyped character fails the checksum.
    pub fn recovery_key(&self) -> String {
        let mut data = self.0.to_vec();
        data.extend_from_slice(&recovery_check(&self.0));
        let text = base32_encode(&data);
        let groups: Vec<&str> = text
            .as_bytes()
            .chunks(4)
            .map(|g| std::str::from_utf8(g).expect("ascii"))
            .collect();
        format!("{RECOVERY_PREFIX} {}", groups.join("-"))
    }

    /// Parses a recovery key as printed by [`OwnerSecret::recovery_key`]. Case, spaces and
    /// dashes do not matter; I/L read as 1 and O as 0. A checksum failure points at the
    /// mistyped character when exactly one single-character change would fix it.
    pub fn from_recovery_key(text: &str) -> Result<Self> {
        let t = text.trim();
        if t.starts_with("cairn:") {
            return Err(VaultError::BadKey(
                "this is a capability string, not a recovery key (use --capability)".into(),
            ));
        }
        let body = match t.get(..RECOVERY_PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(RECOVERY_PREFIX) => &t[RECOVERY_PREFIX.len()..],
            _ => t,
        };
        let chars: Vec<u8> = body
            .bytes()
            .filter(|c| !matches!(c, b'-' | b' ' | b'\t' | b'\n'))
            .collect();
        if chars.len() != RECOVERY_CHARS {
            return Err(VaultError::BadKey(format!(
                "recovery key has {} characters, expected {RECOVERY_CHARS} (14 groups of 4)",
                chars.len()
            )));
        }
        let mut digits = Vec::with_capacity(chars.len());
        for (i, &c) in chars.iter().enumerate() {
            digits.push(base32_digit(c).ok_or_else(|| {
                VaultError::BadKey(format!(
                    "recovery key: character {:?} (group {}, position {}) is not a base32 digit",
                    c as char,
                    i / 4 + 1,
                    i % 4 + 1
                ))
            })?);
        }
        if let Some(secret) = recovery_from_digits(&digits) {
            return Ok(secret);
        }
        // Find the typo for the user: try every single-digit change (56 × 31 checksums).
        let mut fixes = Vec::new();
        for i in 0..digits.len() {
            let orig = digits[i];
            for d in 0..32u8 {
                if d == orig {
                    continue;
                }
                digits[i] = d;
                if recovery_from_digits(&digits).is_some() {
                    fixes.push(i);
                }
            }
            digits[i] = orig;
        }
        let hint = match fixes.as_slice() {
            [i] => format!(
                "; character {} of group {} looks mistyped",
                i % 4 + 1,
                i / 4 + 1
            ),
            _ => String::new(),
        };
        Err(VaultError::BadKey(format!(
            "recovery key checksum does not match: it was mistyped{hint}"
        )))
    }
}

/// Prefix printed before the recovery key's groups (accepted, not required, when parsing).
pub const RECOVERY_PREFIX: &str = "cairn-recovery-1";
const RECOVERY_BYTES: usize = SECRET_LEN + 3;
const RECOVERY_CHARS: usize = RECOVERY_BYTES * 8 / 5;

fn recovery_check(secret: &[u8]) -> [u8; 3] {
    let h = blake3::Hasher::new()
        .update(b"cairn recovery v1")
        .update(secret)
        .finalize();
    let mut c = [0u8; 3];
    c.copy_from_slice(&h.as_bytes()[..3]);
    c
}

fn recovery_from_digits(digits: &[u8]) -> Option<OwnerSecret> {
    let bytes = base32_decode_digits(digits)?;
    let (secret, check) = bytes.split_at(SECRET_LEN);
    (recovery_check(secret) == check).then(|| {
        let mut b = [0u8; SECRET_LEN];
        b.copy_from_slice(secret);
        OwnerSecret(b)
    })
}

/// The owner key: an Ed25519 key pair (RFC 8032) derived from the owner secret. Only its seed
/// is kept; whoever holds it acts for the owner towards partners (puts, gets, renewals,
/// deletes and audits of the owner's shards), so it never leaves the vault's process: the vault
/// signs, for its storage node, a statement binding the node's peer id (see `cairn-node`).
#[derive(Clone, PartialEq, Eq)]
pub struct OwnerKey([u8; 32]);

impl fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OwnerKey({})", hex32(&self.public()))
    }
}

fn hex32(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl OwnerKey {
    /// The Ed25519 seed (the private key of RFC 8032).
    pub fn seed(&self) -> &[u8; 32] {
        &self.0
    }

    /// The Ed25519 public key: the owner's name towards partners.
    pub fn public(&self) -> [u8; 32] {
        use ring::signature::KeyPair;
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&self.0)
            .expect("any 32 bytes are an Ed25519 seed");
        let mut out = [0u8; 32];
        out.copy_from_slice(pair.public_key().as_ref());
        out
    }

    /// Signs `msg` (Ed25519: 64 bytes).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&self.0)
            .expect("any 32 bytes are an Ed25519 seed");
        let mut out = [0u8; 64];
        out.copy_from_slice(pair.sign(msg).as_ref());
        out
    }
}

/// The keys derived from an [`OwnerSecret`].
#[derive(Clone)]
pub struct Keys {
    owner: OwnerKey,
    id: [u8; 32],
    manifest_id: [u8; 32],
    seal: [u8; 32],
    head: [u8; 32],
    shard_mac: [u8; 32],
    chunker_seed: u64,
}

/// What a sealed object is; part of the AEAD's associated data, so an object cannot be opened
/// as another kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// File content.
    Data = 1,
    /// A piece of a serialized file tree.
    Manifest = 2,
    /// A snapshot's root record (found at [`Keys::head_id`]).
    Root = 3,
}

impl Keys {
    /// The owner key (see [`OwnerKey`]).
    pub fn owner_key(&self) -> &OwnerKey {
        &self.owner
    }

    /// The keyed BLAKE3 id of a chunk of `kind` (data or manifest).
    pub fn chunk_id(&self, kind: Kind, content: &[u8]) -> ChunkId {
        let key = match kind {
            Kind::Manifest => &self.manifest_id,
            _ => &self.id,
        };
        ChunkId(*blake3::keyed_hash(key, content).as_bytes())
    }

    /// The id under which the root record of snapshot `seq` is stored.
    pub fn head_id(&self, seq: u64) -> ChunkId {
        ChunkId(*blake3::keyed_hash(&self.head, &seq.to_le_bytes()).as_bytes())
    }

    /// The AEAD key for one object: each (kind, id) has its own key.
    pub(crate) fn object_key(&self, kind: Kind, id: &ChunkId) -> [u8; 32] {
        *blake3::Hasher::new_keyed(&self.seal)
            .update(b"key")
            .update(&[kind as u8])
            .update(&id.0)
            .finalize()
            .as_bytes()
    }

    /// A nonce bound to the plaintext (for objects whose id is not a hash of their content).
    pub(crate) fn content_nonce(&self, content: &[u8]) -> [u8; 12] {
        let h = blake3::Hasher::new_keyed(&self.seal)
            .update(b"nonce")
            .update(content)
            .finalize();
        let mut n = [0u8; 12];
        n.copy_from_slice(&h.as_bytes()[..12]);
        n
    }

    /// The key of the tag every shard carries (see [`crate::shard`]): only the owner can make
    /// a shard the vault accepts, so a partner's forgery is refused before decoding.
    pub fn shard_mac_key(&self) -> &[u8; 32] {
        &self.shard_mac
    }

    /// Seed for FastCDC's gear table.
    pub fn chunker_seed(&self) -> u64 {
        self.chunker_seed
    }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

// ---------------------------------------------------------------------------------------------
// Capabilities

/// A root capability: the owner secret plus the snapshot to start from. Its text form is
/// `cairn:root:1:<base32>` — typed and versioned, so a string of another type or a newer version
/// is refused with a message saying which, and a checksum catches typos.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootCapability {
    /// The owner secret.
    pub secret: OwnerSecret,
    /// The snapshot it points at.
    pub seq: u64,
}

const CAP_TYPE: &str = "root";
const CAP_VERSION: u32 = 1;

fn cap_check(kind: &str, version: u32, payload: &[u8]) -> [u8; 4] {
    let h = blake3::Hasher::new()
        .update(b"cairn capability")
        .update(kind.as_bytes())
        .update(&version.to_le_bytes())
        .update(payload)
        .finalize();
    let mut c = [0u8; 4];
    c.copy_from_slice(&h.as_bytes()[..4]);
    c
}

impl fmt::Display for RootCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut payload = self.secret.0.to_vec();
        payload.extend_from_slice(&self.seq.to_le_bytes());
        let check = cap_check(CAP_TYPE, CAP_VERSION, &payload);
        payload.extend_from_slice(&check);
        write!(
            f,
            "cairn:{CAP_TYPE}:{CAP_VERSION}:{}",
            base32_encode(&payload)
        )
    }
}

impl std::str::FromStr for RootCapability {
    type Err = VaultError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |m: String| VaultError::BadKey(format!("capability: {m}"));
        let parts: Vec<&str> = s.trim().split(':').collect();
        if parts.len() != 4 || parts[0] != "cairn" {
            return Err(bad(
                "not a Cairn capability (expected cairn:TYPE:VERSION:DATA)".into(),
            ));
        }
        if parts[1] != CAP_TYPE {
            return Err(bad(format!(
                "of type `{}`, but a `{CAP_TYPE}` capability is needed",
                parts[1]
            )));
        }
        let version: u32 = parts[2]
            .parse()
            .map_err(|_| bad(format!("version `{}` is not a number", parts[2])))?;
        if version != CAP_VERSION {
            return Err(bad(format!(
                "version {version} is not supported (this vault reads version {CAP_VERSION})"
            )));
        }
        let digits: Option<Vec<u8>> = parts[3].bytes().map(base32_digit).collect();
        let bytes = digits
            .and_then(|d| base32_decode_digits(&d))
            .filter(|b| b.len() == SECRET_LEN + 8 + 4)
            .ok_or_else(|| bad("data is not 44 bytes of base32".into()))?;
        let (payload, check) = bytes.split_at(SECRET_LEN + 8);
        if cap_check(parts[1], version, payload) != check {
            return Err(bad("checksum does not match (mistyped?)".into()));
        }
        let mut secret = [0u8; SECRET_LEN];
        secret.copy_from_slice(&payload[..SECRET_LEN]);
        let seq = u64::from_le_bytes(payload[SECRET_LEN..].try_into().expect("8 bytes"));
        Ok(Self {
            secret: OwnerSecret(secret),
            seq,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Crockford base32 (no padding): digits and upper-case letters without I, L, O, U.

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn base32_digit(c: u8) -> Option<u8> {
    let c = c.to_ascii_uppercase();
    let c = match c {
        b'O' => b'0',
        b'I' | b'L' => b'1',
        c => c,
    };
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

fn base32_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in data {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Decodes base32 digit values; `None` if the leftover bits are not zero padding.
fn base32_decode_digits(digits: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(digits.len() * 5 / 8);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &d in digits {
        acc = (acc << 5) | u32::from(d & 31);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    (acc & ((1 << bits) - 1) == 0).then_some(out)
}

// ---------------------------------------------------------------------------------------------
// Key file

/// Argon2id cost of the key-file key. Memory is the device's budget: the defaults (19 MiB,
/// 2 passes, 1 lane — the OWASP minimum) keep opening the vault well inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            m_kib: argon2::Params::DEFAULT_M_COST,
            t: argon2::Params::DEFAULT_T_COST,
            p: argon2::Params::DEFAULT_P_COST,
        }
    }
}

const KEYFILE_MAGIC: &[u8; 4] = b"CVK1";
const KEYFILE_HEADER: usize = 4 + 12 + 16 + 12;
const KEYFILE_LEN: usize = KEYFILE_HEADER + SECRET_LEN + 16;
/// Largest Argon2 memory a key file may ask for (1 GiB): a damaged file must not exhaust RAM.
const KDF_MAX_M_KIB: u32 = 1 << 20;

/// Whether a key file with these parameters would be opened ([`open_key_file`] refuses costs
/// a damaged file could use to exhaust the device).
fn kdf_in_range(p: KdfParams) -> bool {
    p.m_kib <= KDF_MAX_M_KIB && p.t <= 100 && p.p <= 64
}

fn kdf(passphrase: &[u8], salt: &[u8], p: KdfParams, file: &Path) -> Result<[u8; 32]> {
    let params = argon2::Params::new(p.m_kib, p.t, p.p, Some(32))
        .map_err(|e| corrupt(format!("key file {}", file.display()), e.to_string()))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = [0u8; 32];
    a.hash_password_into(passphrase, salt, &mut out)
        .map_err(|e| corrupt(format!("key file {}", file.display()), e.to_string()))?;
    Ok(out)
}

/// Encrypts the secret under a key derived from `passphrase` (Argon2id) and writes it to `path`
/// (mode 0600, written to a temporary file, synced and renamed so a crash leaves the old file
/// or the new one, never half of one).
pub fn write_key_file(
    path: &Path,
    secret: &OwnerSecret,
    passphrase: &[u8],
    params: KdfParams,
) -> Result<()> {
    // A file written with parameters the reader refuses would lock the owner out.
    if !kdf_in_range(params) {
        return Err(VaultError::Usage(format!(
            "key derivation parameters out of range ({} KiB, {} passes, {} lanes; at most \
             {KDF_MAX_M_KIB} KiB, 100 passes, 64 lanes)",
            params.m_kib, params.t, params.p
        )));
    }
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rng.fill(&mut salt)
        .and_then(|_| rng.fill(&mut nonce))
        .map_err(|_| VaultError::Usage("the system random number generator failed".into()))?;
    let mut out = Vec::with_capacity(KEYFILE_LEN);
    out.extend_from_slice(KEYFILE_MAGIC);
    for v in [params.m_kib, params.t, params.p] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let key = kdf(passphrase, &salt, params, path)?;
    let key = LessSafeKey::new(UnboundKey::new(&aead::CHACHA20_POLY1305, &key).expect("32 bytes"));
    let mut body = secret.0.to_vec();
    let aad = out.clone();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(&aad),
        &mut body,
    )
    .map_err(|_| VaultError::Usage("sealing the key file failed".into()))?;
    out.extend_from_slice(&body);
    cairn_durable::write_mode(path, &out, 0o600).map_err(io_err(path))
}

/// Reads and decrypts the key file at `path`.
pub fn read_key_file(path: &Path, passphrase: &[u8]) -> Result<OwnerSecret> {
    let mut data = std::fs::read(path).map_err(io_err(path))?;
    open_key_file(path, &mut data, passphrase)
}

/// Decrypts key-file bytes (`path` only names them in errors).
pub fn open_key_file(path: &Path, data: &mut [u8], passphrase: &[u8]) -> Result<OwnerSecret> {
    let what = || format!("key file {}", path.display());
    if data.len() != KEYFILE_LEN || &data[..4] != KEYFILE_MAGIC {
        return Err(corrupt(
            what(),
            "not a Cairn key file (wrong size or magic)",
        ));
    }
    let u = |o: usize| u32::from_le_bytes(data[o..o + 4].try_into().expect("4 bytes"));
    let params = KdfParams {
        m_kib: u(4),
        t: u(8),
        p: u(12),
    };
    if !kdf_in_range(params) {
        return Err(corrupt(what(), "key derivation parameters out of range"));
    }
    let salt = data[16..32].to_vec();
    let nonce: [u8; 12] = data[32..44].try_into().expect("12 bytes");
    let key = kdf(passphrase, &salt, params, path)?;
    let key = LessSafeKey::new(UnboundKey::new(&aead::CHACHA20_POLY1305, &key).expect("32 bytes"));
    let (header, body) = data.split_at_mut(KEYFILE_HEADER);
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&*header),
            body,
        )
        .map_err(|_| VaultError::WrongPassphrase(path.to_path_buf()))?;
    let mut b = [0u8; SECRET_LEN];
    b.copy_from_slice(plain);
    Ok(OwnerSecret(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_secret_is_stable_and_opens_nothing_of_the_owners_vault() {
        let a = OwnerSecret::from_bytes([7; SECRET_LEN]);
        assert_eq!(a.services(), a.services());
        assert_ne!(a.services(), a);
        assert_ne!(
            a.services().keys().owner_key().public(),
            a.keys().owner_key().public()
        );
        assert_ne!(
            a.services().keys().chunk_id(Kind::Data, b"x"),
            a.keys().chunk_id(Kind::Data, b"x")
        );
        assert_ne!(
            OwnerSecret::from_bytes([8; SECRET_LEN]).services(),
            a.services()
        );
    }

    #[test]
    fn base32_round_trips() {
        for len in 0..50 {
            let data: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
            let text = base32_encode(&data);
            let digits: Vec<u8> = text.bytes().map(|c| base32_digit(c).unwrap()).collect();
            assert_eq!(base32_decode_digits(&digits).unwrap(), data);
        }
    }

    #[test]
    fn recovery_key_round_trips_and_tolerates_case_and_lookalikes() {
        let s = OwnerSecret::from_bytes([7u8; 32]);
        let text = s.recovery_key();
        assert!(text.starts_with(RECOVERY_PREFIX));
        assert_eq!(OwnerSecret::from_recovery_key(&text).unwrap(), s);
        let body = text.trim_start_matches(RECOVERY_PREFIX);
        let lower = body.to_lowercase().replace('0', "o").replace('1', "l");
        assert_eq!(OwnerSecret::from_recovery_key(&lower).unwrap(), s);
        let upper = format!("{}{body}", RECOVERY_PREFIX.to_uppercase());
        assert_eq!(OwnerSecret::from_recovery_key(&upper).unwrap(), s);
        let bare = text.trim_start_matches(RECOVERY_PREFIX).replace('-', " ");
        assert_eq!(OwnerSecret::from_recovery_key(&bare).unwrap(), s);
    }

    #[test]
    fn recovery_key_typo_is_caught_and_located() {
        let s = OwnerSecret::from_bytes([42u8; 32]);
        let text = s.recovery_key();
        let body = text.trim_start_matches(RECOVERY_PREFIX).trim().to_string();
        // Change the 6th base32 character (group 2, character 1).
        let mut chars: Vec<char> = body.chars().collect();
        let pos = chars
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != '-')
            .nth(4)
            .unwrap()
            .0;
        chars[pos] = if chars[pos] == 'Z' { 'Y' } else { 'Z' };
        let typo: String = chars.into_iter().collect();
        let err = OwnerSecret::from_recovery_key(&typo)
            .unwrap_err()
            .to_string();
        assert!(err.contains("checksum"), "{err}");
        assert!(err.contains("character 1 of group 2"), "{err}");
        let short = &body[..body.len() - 2];
        let err = OwnerSecret::from_recovery_key(short)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 56"), "{err}");
    }

    #[test]
    fn capability_round_trips_and_rejects_wrong_type_version_and_typos() {
        let cap = RootCapability {
            secret: OwnerSecret::from_bytes([9u8; 32]),
            seq: 12345,
        };
        let text = cap.to_string();
        assert!(text.starts_with("cairn:root:1:"));
        assert_eq!(text.parse::<RootCapability>().unwrap(), cap);
        let e = text
            .replacen(":root:", ":read:", 1)
            .parse::<RootCapability>();
        assert!(e.unwrap_err().to_string().contains("of type `read`"));
        let e = text.replacen(":1:", ":2:", 1).parse::<RootCapability>();
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("version 2 is not supported"));
        let mut typo = text.clone().into_bytes();
        let last = typo.len() - 3;
        typo[last] = if typo[last] == b'A' { b'B' } else { b'A' };
        let e = String::from_utf8(typo).unwrap().parse::<RootCapability>();
        assert!(e.unwrap_err().to_string().contains("checksum"));
        let e = cap.secret.recovery_key().parse::<RootCapability>();
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("not a Cairn capability"));
        let e = OwnerSecret::from_recovery_key(&text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("capability string, not a recovery key"));
    }

    #[test]
    fn key_file_opens_with_the_passphrase_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let s = OwnerSecret::generate().unwrap();
        let p = KdfParams {
            m_kib: 64,
            t: 1,
            p: 1,
        };
        write_key_file(&path, &s, b"correct horse", p).unwrap();
        let raw = std::fs::read(&path).unwrap();
        assert!(
            !raw.windows(32).any(|w| w == s.as_bytes()),
            "secret stored in clear"
        );
        assert_eq!(read_key_file(&path, b"correct horse").unwrap(), s);
        let e = read_key_file(&path, b"wrong").unwrap_err().to_string();
        assert!(e.contains("wrong passphrase") && e.contains("key"), "{e}");
        let mut bad = raw.clone();
        bad.truncate(10);
        std::fs::write(&path, &bad).unwrap();
        let e = read_key_file(&path, b"correct horse")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a Cairn key file"), "{e}");
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_secret() {
        let a = OwnerSecret::from_bytes([1u8; 32]).keys();
        let b = OwnerSecret::from_bytes([2u8; 32]).keys();
        assert_ne!(a.chunk_id(Kind::Data, b"x"), b.chunk_id(Kind::Data, b"x"));
        assert_ne!(
            a.chunk_id(Kind::Data, b"x"),
            a.chunk_id(Kind::Manifest, b"x")
        );
        assert_ne!(a.head_id(1), a.head_id(2));
        assert_ne!(a.chunker_seed(), b.chunker_seed());
        // The owner key is the secret's: the same from a restored secret, another's otherwise.
        let a2 = OwnerSecret::from_bytes([1u8; 32]).keys();
        assert_eq!(a.owner_key().public(), a2.owner_key().public());
        assert_ne!(a.owner_key().public(), b.owner_key().public());
        assert_ne!(a.owner_key().seed(), &a.head_id(0).0);
        let sig = a.owner_key().sign(b"statement");
        let public = a.owner_key().public();
        let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public);
        assert!(pk.verify(b"statement", &sig).is_ok());
        assert!(pk.verify(b"statemenT", &sig).is_err());
    }
}
