//! Standard base64 with padding, encode only: what Node's
//! `Buffer.toString("base64")` and Engine.IO's `b` packets use. Binary
//! arguments from the Socket.IO adapter need nothing more, so no crate.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Length of the encoding of `n` bytes.
pub fn encoded_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Appends the encoding of `bytes` to `out`.
pub fn encode_into(out: &mut String, bytes: &[u8]) {
    out.reserve(encoded_len(bytes.len()));
    let sym = |v: u32, shift: u32| ALPHABET[((v >> shift) & 63) as usize] as char;
    let mut chunks = bytes.chunks_exact(3);
    for c in &mut chunks {
        let v = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
        for shift in [18, 12, 6, 0] {
            out.push(sym(v, shift));
        }
    }
    match *chunks.remainder() {
        [a] => {
            let v = u32::from(a) << 16;
            out.push(sym(v, 18));
            out.push(sym(v, 12));
            out.push_str("==");
        }
        [a, b] => {
            let v = u32::from(a) << 16 | u32::from(b) << 8;
            out.push(sym(v, 18));
            out.push(sym(v, 12));
            out.push(sym(v, 6));
            out.push('=');
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = String::new();
            encode_into(&mut out, input.as_bytes());
            assert_eq!(out, want);
            assert_eq!(encoded_len(input.len()), want.len());
        }
        let mut out = String::new();
        encode_into(&mut out, &[0xff, 0xfe, 0x00]);
        assert_eq!(out, "//4A");
    }
}
