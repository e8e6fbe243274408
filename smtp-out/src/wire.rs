//! A message's bytes as they go on the wire after `DATA` (RFC 5321 §4.1.1.4, §4.5.2).
//!
//! Every line ending leaves as CRLF, whatever it was stored as: a bare LF or a bare CR becomes
//! CRLF. A bare LF must never leave, because a receiver that takes `<LF>.<LF>` (or
//! `<CR><LF>.<LF>`) for the end of the data would see the rest of the message as new commands
//! and deliver a forged second message (SMTP smuggling). Lines starting with `.` get one more
//! `.` in front (dot-stuffing), the last line gets a CRLF if it has none, and `.<CRLF>` ends
//! the data.

/// The DATA payload for `body`: normalized line endings, dot-stuffed, with a final CRLF and the
/// terminating `.<CRLF>`. An empty body gives just `.<CRLF>`, an empty message.
pub fn data_bytes(body: &[u8]) -> Vec<u8> {
    let mut out = lines(body, true);
    out.extend_from_slice(b".\r\n");
    out
}

/// The message as it will arrive: line endings normalized to CRLF and a final CRLF, not
/// dot-stuffed. What a DKIM signature covers, so that the receiver checks the bytes signed.
pub fn crlf_lines(body: &[u8]) -> Vec<u8> {
    lines(body, false)
}

fn lines(body: &[u8], stuff: bool) -> Vec<u8> {
    // Each line ending can grow by one byte and each line start by one dot; a few percent more
    // than the body is enough for ordinary text.
    let mut out = Vec::with_capacity(body.len() + body.len() / 32 + 8);
    let mut line_start = true;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        match b {
            b'\r' => {
                // CRLF stays as it is; a CR not followed by LF is a line ending of its own.
                if body.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            _ => {
                if stuff && line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                line_start = false;
            }
        }
        i += 1;
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The size of the message the server is told in `MAIL FROM ... SIZE=n` (RFC 1870): the payload
/// without the terminating `.<CRLF>`. It counts the dots added by stuffing, so it is at most a
/// little above the exact size, which is what RFC 1870 asks of an estimate.
pub fn declared_size(payload: &[u8]) -> u64 {
    payload.len().saturating_sub(3) as u64
}

/// Whether `body` has any byte outside 7-bit ASCII, so that it can only be sent as
/// `BODY=8BITMIME` (RFC 6152).
pub fn has_8bit(body: &[u8]) -> bool {
    body.iter().any(|&b| b >= 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `payload` ends the data only at its very end (the data starts at the beginning of
    /// a line, so a leading `.<CRLF>` would end it too) and has no CR or LF outside a CRLF pair.
    fn well_formed(payload: &[u8]) -> bool {
        let end = b"\r\n.\r\n";
        let early_end = payload
            .windows(end.len())
            .position(|w| w == end)
            .is_some_and(|p| p + end.len() != payload.len())
            || (payload.starts_with(b".\r\n") && payload.len() != 3);
        let mut bare = false;
        for (i, &b) in payload.iter().enumerate() {
            if b == b'\r' && payload.get(i + 1) != Some(&b'\n') {
                bare = true;
            }
            if b == b'\n' && (i == 0 || payload[i - 1] != b'\r') {
                bare = true;
            }
        }
        !early_end && !bare && payload.ends_with(b".\r\n")
    }

    #[test]
    fn crlf_text_passes_unchanged() {
        assert_eq!(
            data_bytes(b"Subject: hi\r\n\r\nhello\r\n"),
            b"Subject: hi\r\n\r\nhello\r\n.\r\n"
        );
    }

    #[test]
    fn bare_line_endings_become_crlf() {
        assert_eq!(data_bytes(b"a\nb\rc\r\nd\n"), b"a\r\nb\r\nc\r\nd\r\n.\r\n");
        // A CR before a CRLF is a line ending of its own.
        assert_eq!(data_bytes(b"a\r\r\nb\n"), b"a\r\n\r\nb\r\n.\r\n");
    }

    #[test]
    fn leading_dots_are_stuffed() {
        assert_eq!(
            data_bytes(b".\r\n..x\r\n.y\r\nz.\r\n"),
            b"..\r\n...x\r\n..y\r\nz.\r\n.\r\n"
        );
        assert_eq!(data_bytes(b".start"), b"..start\r\n.\r\n");
    }

    #[test]
    fn what_is_signed_is_what_arrives() {
        let body = b"Subject: a\n\n.dot\rbare cr\r\nlast";
        let lines = crlf_lines(body);
        assert_eq!(
            lines,
            b"Subject: a\r\n\r\n.dot\r\nbare cr\r\nlast\r\n".to_vec()
        );
        // Normalizing twice changes nothing, so a signed copy goes out as it was signed.
        assert_eq!(data_bytes(&lines), data_bytes(body));
        assert_eq!(crlf_lines(&lines), lines);
    }

    #[test]
    fn smuggling_with_bare_lf_cannot_end_the_data() {
        let body = b"Subject: a\r\n\r\nfirst\n.\nMAIL FROM:<evil@example.com>\r\n";
        let out = data_bytes(body);
        assert_eq!(
            out,
            b"Subject: a\r\n\r\nfirst\r\n..\r\nMAIL FROM:<evil@example.com>\r\n.\r\n".to_vec()
        );
        assert!(well_formed(&out));

        let body = b"first\r\n.\nRCPT TO:<victim@example.com>\r\n";
        let out = data_bytes(body);
        assert_eq!(
            out,
            b"first\r\n..\r\nRCPT TO:<victim@example.com>\r\n.\r\n".to_vec()
        );
        assert!(well_formed(&out));

        for body in [
            &b"x\r.\r\n"[..],
            b"x\n.\r\n",
            b"x\r\n.\r\ny",
            b"\n.\n",
            b"\r.\r",
        ] {
            assert!(well_formed(&data_bytes(body)), "{body:?}");
        }
    }

    #[test]
    fn empty_body_is_an_empty_message() {
        assert_eq!(data_bytes(b""), b".\r\n");
    }

    #[test]
    fn body_without_final_newline_gets_one() {
        assert_eq!(data_bytes(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(data_bytes(b"a\r\nb"), b"a\r\nb\r\n.\r\n");
        // A body ending in a bare CR ends its last line with it.
        assert_eq!(data_bytes(b"a\r"), b"a\r\n.\r\n");
    }

    #[test]
    fn every_byte_pattern_is_well_formed() {
        // All bodies of up to five bytes over the alphabet that matters.
        let alphabet = [b'\r', b'\n', b'.', b'x'];
        let mut body = Vec::new();
        for len in 0..=5u32 {
            for n in 0..alphabet.len().pow(len) {
                body.clear();
                let mut k = n;
                for _ in 0..len {
                    body.push(alphabet[k % alphabet.len()]);
                    k /= alphabet.len();
                }
                assert!(well_formed(&data_bytes(&body)), "{body:?}");
            }
        }
    }

    #[test]
    fn declared_size_excludes_the_terminator() {
        assert_eq!(declared_size(&data_bytes(b"abc")), 5);
        assert_eq!(declared_size(&data_bytes(b"")), 0);
    }

    #[test]
    fn eight_bit_detection() {
        assert!(!has_8bit(b"plain ascii\r\n\x7f"));
        assert!(has_8bit("Grüße".as_bytes()));
        assert!(has_8bit(b"\x80"));
        assert!(!has_8bit(b""));
    }
}
