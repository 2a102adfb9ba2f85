//! The one error type of the crate.
//!
//! Every message names what was wrong *and* what the operator can do about it,
//! because these errors end up on a terminal (`gantry init --ca-cert ...`,
//! `gantry join <token>`) far more often than in a log that a developer reads.

/// Everything that can go wrong in `gantry-pki`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A fingerprint string was not 64 lowercase hex characters.
    #[error(
        "invalid fingerprint {0:?}: expected the SHA-256 as exactly 64 lowercase hex characters"
    )]
    InvalidFingerprint(String),

    /// A join/admin/site token did not have the expected form; the message says which form.
    #[error("malformed token: {0}")]
    MalformedToken(String),

    /// A private key could not be read or is of a kind gantry does not use.
    #[error("invalid private key: {0}")]
    InvalidKey(String),

    /// A certificate could not be parsed.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),

    /// A certificate offered as the cluster CA is not allowed to issue certificates.
    #[error(
        "the certificate {subject:?} is not a CA (basicConstraints CA:TRUE missing{detail}); \
         create the CA with `-addext basicConstraints=critical,CA:TRUE`"
    )]
    NotACa {
        /// The subject of the refused certificate, for the operator to recognise it.
        subject: String,
        /// Extra detail (for example a keyUsage without keyCertSign).
        detail: String,
    },

    /// The private key given with a CA certificate belongs to another certificate.
    #[error(
        "the private key does not match the public key of the CA certificate {subject:?}; \
         check that the key file and the certificate file belong together"
    )]
    KeyMismatch {
        /// The subject of the certificate the key was meant for.
        subject: String,
    },

    /// A certificate signing request was unreadable or its signature did not verify.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),

    /// A key (in a CSR or a PEM file) uses an algorithm gantry refuses to certify.
    #[error("unsupported key algorithm {0}: gantry certifies only ECDSA P-256 and Ed25519 keys")]
    UnsupportedKeyAlgorithm(String),

    /// A [`crate::LeafProfile`] asked for something that cannot be put in a certificate.
    #[error("invalid certificate profile: {0}")]
    InvalidProfile(String),

    /// PEM text was unreadable or did not hold the expected sections.
    #[error("invalid PEM: {0}")]
    Pem(String),

    /// rcgen refused to build a certificate or CSR.
    #[error("could not create certificate: {0}")]
    CertGeneration(String),

    /// rustls refused a configuration (for example a key that does not match its certificate).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),

    /// A certificate verifier could not be built (for example from an empty root set).
    #[error("certificate verifier: {0}")]
    Verifier(String),

    /// The system random number generator or a primitive of aws-lc failed.
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),

    /// A cluster key file did not hold 64 lowercase hex characters.
    #[error(
        "invalid cluster key: {0}; the file must hold exactly 64 lowercase hex characters \
         (as written by `gantry init`)"
    )]
    InvalidClusterKey(String),

    /// Sealed data did not open: wrong key, wrong place (associated data), or tampered.
    #[error(
        "sealed data cannot be opened: it was sealed with another cluster key, belongs to \
         another field or cluster, or was modified"
    )]
    SealedDataInvalid,
}
