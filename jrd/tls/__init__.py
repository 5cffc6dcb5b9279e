"""TLS for nginx: jrd's own CA and leaf, or an external pair, kept current.

- `certs`: the CA and the leaf as certificates and files: make, load,
  describe, `write_pair`; `renewal_due` (pure, clock injected); `leaf_state`,
  the one "is jrd's leaf due" decision; `issue_leaf`, the one issuing path.
- `bootstrap`: what a build needs: `ensure_tls` (own CA: issue if due;
  external: validate the pair) returning `TlsFiles`; `PairSnapshot`, to put
  the leaf pair back when a reload or renewal is refused.
- `renewal`: `CertManager`, held by the daemon: when to check next, renewal
  as a transaction with backoff, counts and `status()` for metrics and jrdctl.
- `profiles`: the iOS/iPadOS `.mobileconfig` and the CA export.

State on disk: `Layout.tls_dir` (ca.pem, ca-key.pem, server.pem, server-key.pem).
An external pair (certbot's) is only read, never written.
"""
