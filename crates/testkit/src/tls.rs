//! Throwaway certificates for a TLS `redis-server`: a private CA and a server certificate it
//! signed, made in process with `rcgen` (no `openssl` binary needed).

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// File names inside the server's temporary directory.
pub(crate) const CA_FILE: &str = "tls-ca.crt";
pub(crate) const CERT_FILE: &str = "tls-server.crt";
pub(crate) const KEY_FILE: &str = "tls-server.key";

/// A CA certificate and a server certificate (with its key) signed by it, all PEM.
#[derive(Clone, Debug)]
pub(crate) struct TlsMaterial {
    pub(crate) ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl TlsMaterial {
    /// Makes a new CA (its key is dropped: nothing else is ever signed with it) and a server
    /// certificate for `127.0.0.1` and `localhost`.
    ///
    /// # Panics
    ///
    /// If `rcgen` fails, which it does not for these fixed parameters.
    pub(crate) fn generate() -> TlsMaterial {
        let ca_key = KeyPair::generate().expect("generate the test CA's key");
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "larder-testkit throwaway CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_pem = ca
            .self_signed(&ca_key)
            .expect("self-sign the test CA")
            .pem();
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().expect("generate the test server's key");
        let mut server = CertificateParams::default();
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.subject_alt_names = vec![
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::DnsName(
                "localhost"
                    .try_into()
                    .expect("`localhost` is a valid DNS name"),
            ),
        ];
        server.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert_pem = server
            .signed_by(&server_key, &issuer)
            .expect("sign the test server's certificate")
            .pem();
        TlsMaterial {
            ca_pem,
            cert_pem,
            key_pem: server_key.serialize_pem(),
        }
    }

    /// Writes the CA certificate, the server certificate and its key into `dir`.
    pub(crate) fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join(CA_FILE), &self.ca_pem)?;
        std::fs::write(dir.join(CERT_FILE), &self.cert_pem)?;
        std::fs::write(dir.join(KEY_FILE), &self.key_pem)
    }
}
