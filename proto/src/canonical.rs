//! The canonical encoding that every signature, digest and HPKE binding in the
//! protocol is computed over (PROTOCOL.md, "Canonical encoding").
//!
//! Protobuf bytes are not canonical (field order, unknown fields and default
//! values may differ between encoders), so nothing is ever signed over them.
//! Instead each structure is written field by field in a fixed order:
//! byte strings and text as a 4-byte big-endian length followed by the bytes,
//! integers as fixed-width big-endian. Every encoding starts with a
//! length-prefixed domain-separation label, so a signature made for one
//! purpose can never be replayed as another.

/// Builder for a canonical encoding.
#[derive(Debug, Clone)]
pub struct Canonical {
    buf: Vec<u8>,
}

impl Canonical {
    /// Starts an encoding with the domain-separation `label`.
    pub fn new(label: &str) -> Self {
        let mut c = Self { buf: Vec::with_capacity(256) };
        c.bytes(label.as_bytes());
        c
    }

    /// A byte string: u32 big-endian length, then the bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        let len = u32::try_from(b.len()).expect("canonical field longer than 4 GiB");
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(b);
        self
    }

    /// UTF-8 text, encoded as a byte string.
    pub fn text(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Domain-separation labels, one per purpose. PROTOCOL.md lists them.
pub mod label {
    pub const HEADER: &str = "referral.v1/header";
    pub const ENVELOPE_SIGNATURE: &str = "referral.v1/envelope-signature";
    pub const ENVELOPE_DIGEST: &str = "referral.v1/envelope-digest";
    pub const HPKE_INFO: &str = "referral.v1/hpke-info";
    pub const ACK_SIGNATURE: &str = "referral.v1/ack-signature";
    pub const ACK_NOTE_HPKE_INFO: &str = "referral.v1/ack-note-hpke-info";
    pub const ACK_NOTE_AAD: &str = "referral.v1/ack-note-aad";
    pub const ACK_NOTE_DIGEST: &str = "referral.v1/ack-note-digest";
    pub const DIRECTORY_SIGNATURE: &str = "referral.v1/directory-signature";
    pub const RECEIPT_SIGNATURE: &str = "referral.v1/receipt-signature";
    pub const TREE_HEAD_SIGNATURE: &str = "referral.v1/tree-head-signature";
    pub const BUNDLE_KEY_ID: &str = "referral.v1/bundle-key-id";
    pub const SIGNING_KEY_ID: &str = "referral.v1/signing-key-id";
    pub const PSI_SET: &str = "referral.v1/psi-set";
    pub const PSI_TRANSCRIPT: &str = "referral.v1/psi-transcript";
    pub const OVERLAP_STATEMENT: &str = "referral.v1/overlap-statement";
    pub const OVERLAP_CHUNK_HEADER: &str = "referral.v1/overlap-chunk-header";
    pub const OVERLAP_HPKE_INFO: &str = "referral.v1/overlap-hpke-info";
    pub const OVERLAP_CHUNK_SIGNATURE: &str = "referral.v1/overlap-chunk-signature";
    pub const OVERLAP_CHUNK_DIGEST: &str = "referral.v1/overlap-chunk-digest";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fields_length_prefixed_and_big_endian() {
        let mut c = Canonical::new("x");
        c.bytes(b"ab").text("").u8(7).u32(1).u64(2).i64(-1);
        assert_eq!(
            c.finish(),
            [
                &[0, 0, 0, 1, b'x'][..],
                &[0, 0, 0, 2, b'a', b'b'],
                &[0, 0, 0, 0],
                &[7],
                &[0, 0, 0, 1],
                &[0, 0, 0, 0, 0, 0, 0, 2],
                &[0xff; 8],
            ]
            .concat()
        );
    }
}
