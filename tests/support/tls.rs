//! A certificate authority and a broker certificate made fresh for each TLS test, so no key
//! is ever committed and every run proves the whole chain.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// The files and PEM texts of one test's TLS setup.
pub struct TestTls {
    _dir: tempfile::TempDir,
    /// The CA that signed the broker's certificate: the one clients must trust.
    pub ca_file: PathBuf,
    /// A second CA that signed nothing the broker shows: trusting it alone must fail.
    pub other_ca_file: PathBuf,
    /// The broker's certificate (valid for `127.0.0.1` only) and its PKCS#8 key.
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

impl TestTls {
    /// A CA, a broker certificate it signs for the address `127.0.0.1` (no host names, so
    /// reaching the same broker as `localhost` fails host-name verification), and an
    /// unrelated CA.
    pub fn generate() -> TestTls {
        let (ca_pem, issuer) = authority("meterflow test CA");
        let (other_ca_pem, _) = authority("meterflow unrelated CA");

        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("an IP address SAN");
        params
            .distinguished_name
            .push(DnType::CommonName, "meterflow test broker");
        let key = KeyPair::generate().expect("a broker key");
        let cert = params
            .signed_by(&key, &issuer)
            .expect("a signed broker cert");

        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        let other_ca_file = dir.path().join("other-ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        std::fs::write(&other_ca_file, other_ca_pem).unwrap();
        TestTls {
            _dir: dir,
            ca_file,
            other_ca_file,
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
        }
    }
}

/// A self-signed CA: its certificate's PEM and the issuer that signs with its key.
fn authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SAN");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("a CA key");
    let cert = params.self_signed(&key).expect("a self-signed CA");
    (cert.pem(), Issuer::new(params, key))
}
