//! What is made of a received message: the `Received:` trace line prepended to each copy and the
//! delivery id that makes a sender's retry safe (its index summary is `message::summarize`).

pub use ::message::summarize;

use sha2::{Digest, Sha256};

/// The delivery id of one copy: a hash of the envelope, the recipient and the data as received
/// (before the trace line, which differs between attempts), so the same message sent again to
/// the same recipient is stored once.
pub fn delivery_id(mail_from: &str, rcpt: &str, data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"megamail delivery v1\0");
    h.update(mail_from.as_bytes());
    h.update([0]);
    h.update(rcpt.as_bytes());
    h.update([0]);
    h.update(data);
    h.finalize().into()
}

/// How the message came in, for the `with` clause (RFC 3848, RFC 6531).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via {
    pub esmtp: bool,
    pub tls: bool,
    pub utf8: bool,
}

impl Via {
    fn protocol(self) -> String {
        let mut p = String::new();
        if self.utf8 {
            p.push_str("UTF8SMTP");
        } else if self.esmtp {
            p.push_str("ESMTP");
        } else {
            p.push_str("SMTP");
        }
        if self.tls {
            p.push('S');
        }
        p
    }
}

/// The trace line prepended to a message (RFC 5321 section 4.4), folded over three lines (two
/// without `rcpt`: the `for` clause names the recipient only of a message that has one).
pub fn received_header(
    helo: &str,
    peer_ip: std::net::IpAddr,
    hostname: &str,
    via: Via,
    id: &str,
    rcpt: Option<&str>,
    now_ms: u64,
) -> String {
    let helo: String = helo
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(100)
        .collect();
    let date = mail_parser::DateTime::from_timestamp((now_ms / 1000) as i64).to_rfc822();
    let protocol = via.protocol();
    let head = format!(
        "Received: from {helo} ([{peer_ip}])\r\n\tby {hostname} (megamail smtp-in) with {protocol} id {id}"
    );
    match rcpt {
        Some(rcpt) => format!("{head}\r\n\tfor <{rcpt}>; {date}\r\n"),
        None => format!("{head};\r\n\t{date}\r\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_by_envelope_recipient_and_data() {
        let a = delivery_id("a@x", "b@y", b"data");
        assert_eq!(a, delivery_id("a@x", "b@y", b"data"));
        assert_ne!(a, delivery_id("a@x", "c@y", b"data"));
        assert_ne!(a, delivery_id("", "b@y", b"data"));
        assert_ne!(a, delivery_id("a@x", "b@y", b"datb"));
        // The separator keeps field boundaries apart.
        assert_ne!(delivery_id("ab", "c", b""), delivery_id("a", "bc", b""));
    }

    #[test]
    fn the_trace_line_is_folded_and_names_the_protocol() {
        let via = Via {
            esmtp: true,
            tls: true,
            utf8: false,
        };
        let h = received_header(
            "client.remote.test\r\nX-Injected: 1",
            "127.0.0.1".parse().unwrap(),
            "mx.megamail.test",
            via,
            "abc.1",
            Some("bob@megamail.test"),
            1_795_000_000_000,
        );
        assert!(h.starts_with("Received: from client.remote.testX-Injected:1 ([127.0.0.1])\r\n\tby mx.megamail.test"), "{h}");
        assert!(
            h.contains("with ESMTPS id abc.1\r\n\tfor <bob@megamail.test>; "),
            "{h}"
        );
        assert!(h.ends_with("\r\n") && h.matches("\r\n").count() == 3, "{h}");
        let h = received_header("c", "::1".parse().unwrap(), "mx", via, "i.2", None, 0);
        assert_eq!(
            h,
            "Received: from c ([::1])\r\n\tby mx (megamail smtp-in) with ESMTPS id i.2;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
