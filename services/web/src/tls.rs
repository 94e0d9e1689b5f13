//! The web's TLS identity: an ECDSA P-256 key and a self-signed certificate for `cairn.local`,
//! `NAME.local` once the device is named, and the addresses the caller gives. Made on the first
//! start, kept in `DATA/tls/identity.pem` (mode 0600, key and certificate in one file so a power
//! cut never pairs a key with another key's certificate), reused on later starts. When the name
//! changes (setup) the same key is certified anew for the new names and served at once
//! ([`Live`]): other servers check that a plug's certificate names it, and a pin on the key
//! (the test harness's browser, a friend's plug) still holds. Browsers warn about a self-signed
//! certificate; the console shows its SHA-256 fingerprint so the person can compare it with the
//! one the browser shows.
//!
//! TLS 1.2 and 1.3 only, on ring.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, Context, Result};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// The identity file, under the data directory.
pub const IDENTITY_FILE: &str = "tls/identity.pem";

/// A loaded identity.
pub struct Identity {
    /// The certificate's SHA-256, as browsers show it (`AB:CD:…`).
    pub fingerprint: String,
    /// The DNS names the certificate is for.
    pub names: Vec<String>,
    /// The certificate (DER).
    pub certificate: CertificateDer<'static>,
    /// The key and certificate as rustls serves them.
    pub certified: Arc<CertifiedKey>,
}

/// The certificate a running server hands out, replaced when the device is renamed (the
/// connections open keep the one they began with).
#[derive(Debug)]
pub struct Live(RwLock<Arc<CertifiedKey>>);

impl Live {
    /// Serving `identity`'s certificate.
    pub fn new(identity: &Identity) -> Arc<Live> {
        Arc::new(Live(RwLock::new(identity.certified.clone())))
    }

    /// The certificate being served (DER).
    pub fn certificate(&self) -> CertificateDer<'static> {
        let k = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        k.cert[0].clone()
    }

    /// Serves `identity`'s certificate from the next handshake on.
    pub fn replace(&self, identity: &Identity) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = identity.certified.clone();
    }
}

impl ResolvesServerCert for Live {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// The DNS names of a device named `name` (none: not yet named).
pub fn dns_names(name: Option<&str>) -> Vec<String> {
    let mut names = vec![DEFAULT_HOST.to_string()];
    if let Some(n) = name.filter(|n| format!("{n}.local") != DEFAULT_HOST) {
        names.push(format!("{n}.local"));
    }
    names
}

/// The identity in `data_dir`, made first (or certified anew with the same key, when it is for
/// other names than `name`'s). `addresses` go into a new certificate; a kept one keeps the
/// addresses it has.
pub fn load_or_make(data_dir: &Path, name: Option<&str>, addresses: &[IpAddr]) -> Result<Identity> {
    let path = data_dir.join(IDENTITY_FILE);
    let names = dns_names(name);
    let mut key = None;
    match std::fs::read(&path) {
        Ok(pem) if names_line(&pem) == Some(header(&names)) => match parse(&pem, names.clone()) {
            Ok(identity) => return Ok(identity),
            // Damaged (a bad card sector): a new identity beats a web that never starts; the
            // console announces the new fingerprint.
            Err(e) => tracing::warn!("{}: {e:#}; making a new one", path.display()),
        },
        // Renamed: the same key (a damaged one is replaced).
        Ok(pem) => {
            key = std::str::from_utf8(&pem)
                .ok()
                .and_then(|t| KeyPair::from_pem(t).ok())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}: reading", path.display())),
    }
    let key = match key {
        Some(k) => k,
        None => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| anyhow!("making the TLS key: {e}"))?,
    };
    let pem = make(&key, &names, addresses)?;
    let dir = path.parent().context("identity path")?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: creating", dir.display()))?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("{}: mode", dir.display()))?;
    cairn_durable::write_mode(&path, pem.as_bytes(), 0o600)
        .with_context(|| format!("{}: writing", path.display()))?;
    parse(pem.as_bytes(), names)
}

/// The first line of the file: the names the certificate is for (explanatory text before the
/// PEM sections, which PEM readers skip).
fn header(names: &[String]) -> String {
    format!("cairn web identity for: {}", names.join(" "))
}

fn names_line(pem: &[u8]) -> Option<String> {
    let line = pem.split(|&b| b == b'\n').next()?;
    Some(String::from_utf8_lossy(line).into_owned())
}

/// A new certificate for `key`, with the key, as the file's text.
fn make(key: &KeyPair, names: &[String], addresses: &[IpAddr]) -> Result<String> {
    let mut params =
        CertificateParams::new(names.to_vec()).map_err(|e| anyhow!("certificate names: {e}"))?;
    params
        .subject_alt_names
        .extend(addresses.iter().map(|a| SanType::IpAddress(*a)));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, names[names.len() - 1].as_str());
    dn.push(DnType::OrganizationName, "Cairn");
    params.distinguished_name = dn;
    // A random serial: a browser that saw an earlier certificate of this device refuses a new
    // one with the same issuer and serial.
    let mut serial = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| anyhow!("no randomness for the serial"))?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .self_signed(key)
        .map_err(|e| anyhow!("signing the certificate: {e}"))?;
    Ok(format!(
        "{}\n{}{}",
        header(names),
        key.serialize_pem(),
        cert.pem()
    ))
}

fn parse(pem: &[u8], names: Vec<String>) -> Result<Identity> {
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| anyhow!("the key: {e}"))?;
    let cert = CertificateDer::from_pem_slice(pem).map_err(|e| anyhow!("the certificate: {e}"))?;
    let fingerprint = fingerprint(&cert);
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .context("TLS key")?;
    let certified = Arc::new(CertifiedKey::new(vec![cert.clone()], signer));
    Ok(Identity {
        fingerprint,
        names,
        certificate: cert,
        certified,
    })
}

/// The TLS server configuration serving what `live` holds: TLS 1.3 and 1.2 on ring, HTTP/1.1.
pub fn server_config(live: Arc<Live>) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .context("TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(live);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate alone, as PEM (what other programs trust it by).
pub fn certificate_pem(der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new("CERTIFICATE", der), config)
}

/// SHA-256 of a certificate, uppercase hex pairs joined by colons.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The name every unnamed device answers to.
pub const DEFAULT_HOST: &str = "cairn.local";
/// TLS 1.3 and 1.2; nothing older.
pub const PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_kept_then_made_anew_for_a_new_name() {
        let dir = tempfile::tempdir().unwrap();
        let addrs = ["192.168.1.23".parse().unwrap(), "fd00::23".parse().unwrap()];
        let a = load_or_make(dir.path(), None, &addrs).unwrap();
        assert_eq!(a.names, ["cairn.local"]);
        let path = dir.path().join(IDENTITY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_make(dir.path(), None, &[]).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint, "kept");
        let c = load_or_make(dir.path(), Some("plug"), &addrs).unwrap();
        assert_ne!(a.fingerprint, c.fingerprint, "new name, new certificate");
        assert_eq!(spki(&a.certificate), spki(&c.certificate), "the same key");
        assert_eq!(c.names, ["cairn.local", "plug.local"]);
        let d = load_or_make(dir.path(), Some("plug"), &addrs).unwrap();
        assert_eq!(c.fingerprint, d.fingerprint);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("cairn web identity for: cairn.local plug.local\n"));
        assert!(text.contains("BEGIN PRIVATE KEY") && text.contains("BEGIN CERTIFICATE"));
    }

    fn spki(der: &[u8]) -> Vec<u8> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        cert.public_key().raw.to_vec()
    }

    #[test]
    fn fingerprints_read_as_browsers_show_them() {
        let f = fingerprint(b"abc");
        assert_eq!(f.len(), 32 * 3 - 1);
        assert!(f.starts_with("BA:78:16:BF:8F:01:CF:EA"), "{f}");
    }

    #[test]
    fn a_damaged_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tls")).unwrap();
        let path = dir.path().join(IDENTITY_FILE);
        std::fs::write(
            &path,
            "cairn web identity for: cairn.local\n-----BEGIN PRIVATE KEY-----\nAAAA\n",
        )
        .unwrap();
        let a = load_or_make(dir.path(), None, &[]).unwrap();
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("BEGIN CERTIFICATE"));
        assert_eq!(
            a.fingerprint,
            load_or_make(dir.path(), None, &[]).unwrap().fingerprint
        );
    }
}
