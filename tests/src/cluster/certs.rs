//! The cluster's PKI: one CA, a serving certificate for every loopback
//! endpoint, client certificates per component, and the service-account
//! signing key.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};

/// Common name of the front-proxy client certificate.
pub(crate) const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub(crate) struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Every credential file the control plane and its clients use.
#[derive(Debug, Clone)]
pub(crate) struct Pki {
    pub ca: CertFiles,
    pub ca_der: Vec<u8>,
    /// Serves apiserver, etcd, controller-manager and scheduler on loopback.
    pub serving: CertFiles,
    /// `O=system:masters`: full access, bypassing RBAC.
    pub admin: CertFiles,
    /// The apiserver's client certificate towards etcd.
    pub etcd_client: CertFiles,
    pub controller_manager: CertFiles,
    pub scheduler: CertFiles,
    /// The apiserver's client certificate when it proxies to aggregated
    /// APIs; its CN is the one name allowed to assert request headers.
    pub front_proxy_client: CertFiles,
    /// ECDSA P-256 key (PKCS#8) that signs service-account tokens.
    pub service_account_key: PathBuf,
    /// Its public half, which verifies them.
    pub service_account_pub: PathBuf,
}

fn write_secret(path: &Path, contents: &str) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).with_context(|| format!("chmod {}", path.display()))
}

fn base_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, common_name);
    // Fixed dates keep the certificates valid whatever the machine's clock
    // says, for the life of a test run and well beyond.
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2100, 1, 1);
    params
}

struct Signer {
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Signer {
    fn issue(&self, name: &str, params: CertificateParams) -> Result<CertFiles> {
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params.signed_by(&key, &self.issuer).with_context(|| format!("signing the {name} certificate"))?;
        let files = CertFiles { cert: self.dir.join(format!("{name}.crt")), key: self.dir.join(format!("{name}.key")) };
        fs::write(&files.cert, cert.pem()).with_context(|| format!("writing {}", files.cert.display()))?;
        write_secret(&files.key, &key.serialize_pem())?;
        Ok(files)
    }

    fn client(&self, name: &str, common_name: &str, organization: Option<&str>) -> Result<CertFiles> {
        let mut params = base_params(common_name);
        if let Some(org) = organization {
            params.distinguished_name.push(DnType::OrganizationName, org);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(name, params)
    }
}

/// Generates the PKI into `dir` (created if needed).
pub(crate) fn generate(dir: &Path) -> Result<Pki> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = base_params("remedy-test-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca_params.self_signed(&ca_key).context("self-signing the CA")?;
    let ca = CertFiles { cert: dir.join("ca.crt"), key: dir.join("ca.key") };
    fs::write(&ca.cert, ca_cert.pem()).context("writing ca.crt")?;
    write_secret(&ca.key, &ca_key.serialize_pem())?;

    let signer = Signer { issuer: Issuer::new(ca_params, ca_key), dir: dir.to_path_buf() };

    let mut serving_params = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
        // The first address of --service-cluster-ip-range, which the
        // apiserver gives the `kubernetes` Service.
        "10.96.0.1".to_string(),
    ])
    .context("serving certificate names")?;
    serving_params.distinguished_name = base_params("remedy-test-loopback").distinguished_name;
    serving_params.not_before = date_time_ymd(2020, 1, 1);
    serving_params.not_after = date_time_ymd(2100, 1, 1);
    serving_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    // etcd presents its serving certificate to itself as a client too.
    serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let serving = signer.issue("serving", serving_params)?;

    let admin = signer.client("admin", "remedy-test-admin", Some("system:masters"))?;
    let etcd_client = signer.client("etcd-client", "kube-apiserver-etcd-client", None)?;
    // The bootstrap RBAC policy grants these user names exactly what each
    // component needs.
    let controller_manager = signer.client("controller-manager", "system:kube-controller-manager", None)?;
    let scheduler = signer.client("scheduler", "system:kube-scheduler", None)?;
    let front_proxy_client = signer.client("front-proxy-client", FRONT_PROXY_CLIENT_CN, None)?;

    let sa_key = KeyPair::generate().context("generating the service-account key")?;
    let service_account_key = dir.join("service-account.key");
    write_secret(&service_account_key, &sa_key.serialize_pem())?;
    let service_account_pub = dir.join("service-account.pub");
    fs::write(&service_account_pub, sa_key.public_key_pem()).context("writing service-account.pub")?;

    Ok(Pki {
        ca,
        ca_der: ca_cert.der().to_vec(),
        serving,
        admin,
        etcd_client,
        controller_manager,
        scheduler,
        front_proxy_client,
        service_account_key,
        service_account_pub,
    })
}

/// A kubeconfig that authenticates with a client certificate.
pub(crate) fn kubeconfig(server: &str, ca: &Path, user: &CertFiles) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: user
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: test
  context:
    cluster: test
    user: user
    namespace: default
current-context: test
",
        ca = ca.display(),
        cert = user.cert.display(),
        key = user.key.display(),
    )
}
