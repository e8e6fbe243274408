//! Making a message's HTML safe to show inside a page, with `ammonia` (an html5ever parse, an
//! allow-list of elements and attributes, and a serializer that cannot be confused):
//!
//! - no scripts, no event handlers, no `style` (attributes or elements: no CSS `expression()` or
//!   `url(javascript:)`), no forms or inputs, no frames, objects, embeds, SVG or MathML, no
//!   `<meta>`, `<base>` or `<link>`;
//! - URLs only with `http`, `https` or `mailto` (no `javascript:`, no `data:`, no relative URLs
//!   that would point into webmail itself); links open in a new tab with no referrer;
//! - images: `cid:` references to the message's own image attachments are rewritten to their
//!   download URL; remote images are removed (and counted) unless the user asked to load them
//!   for this message; any other image source is removed.
//!
//! The page's Content-Security-Policy is a second wall behind this one: even markup that got
//! through could run no script and load no remote image.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ammonia::{Builder, Url, UrlRelative};
use xfs::MsgId;

/// Sanitized HTML and what was held back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleaned {
    pub html: String,
    /// Remote images removed (the "load images" offer is shown when this is not zero).
    pub blocked_images: usize,
}

/// Attributes holding a URL.
fn is_url_attr(attr: &str) -> bool {
    matches!(
        attr,
        "href" | "src" | "cite" | "longdesc" | "action" | "background" | "poster" | "srcset"
    )
}

/// Clean `html`, a body of message `msg`. `inline` maps content ids to attachment indexes (only
/// image attachments); `remote_images` lets remote `<img>` sources through.
pub fn clean(
    html: &str,
    msg: MsgId,
    inline: &HashMap<String, usize>,
    remote_images: bool,
) -> Cleaned {
    let blocked = Arc::new(AtomicUsize::new(0));
    let counter = blocked.clone();
    let inline = inline.clone();
    let mut b = Builder::default();
    b.url_schemes(HashSet::from(["http", "https", "mailto", "cid"]))
        // The filter below drops every relative URL of the message and writes the only ones
        // allowed through (inline images), so what reaches this point passes as it is.
        .url_relative(UrlRelative::PassThrough)
        .link_rel(Some("noopener noreferrer nofollow"))
        .set_tag_attribute_value("a", "target", "_blank")
        .rm_tags(["area", "map"])
        .clean_content_tags(HashSet::from([
            "script", "style", "title", "template", "noscript", "iframe", "object", "embed", "svg",
            "math", "textarea", "select", "xmp", "noembed", "noframes",
        ]))
        .strip_comments(true)
        .attribute_filter(move |element, attr, value| {
            filter(element, attr, value, msg, &inline, remote_images, &counter)
        });
    let html = b.clean(html).to_string();
    Cleaned {
        html,
        blocked_images: blocked.load(Ordering::Relaxed),
    }
}

fn filter<'u>(
    element: &str,
    attr: &str,
    value: &'u str,
    msg: MsgId,
    inline: &HashMap<String, usize>,
    remote_images: bool,
    blocked: &AtomicUsize,
) -> Option<Cow<'u, str>> {
    if !is_url_attr(attr) {
        return Some(value.into());
    }
    let url = Url::parse(value.trim()).ok()?;
    let scheme = url.scheme();
    if (element, attr) == ("img", "src") {
        return match scheme {
            "cid" => {
                let rest = crate::text::strip_prefix_ignore_ascii_case(value.trim(), "cid:")?;
                let id = rest.trim_start_matches('<').trim_end_matches('>');
                let id = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
                inline
                    .get(id.as_ref())
                    .map(|n| format!("/message/{msg}/inline/{n}").into())
            }
            "http" | "https" if remote_images => Some(url.as_str().to_string().into()),
            "http" | "https" => {
                blocked.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => None,
        };
    }
    match scheme {
        "http" | "https" | "mailto" => Some(url.as_str().to_string().into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean_default(html: &str) -> Cleaned {
        clean(html, 7, &HashMap::new(), false)
    }

    /// Markup that must never come out active.
    fn assert_inert(out: &str) {
        let lower = out.to_ascii_lowercase();
        for bad in [
            "<script",
            "javascript:",
            "vbscript:",
            "data:",
            "<iframe",
            "<object",
            "<embed",
            "<form",
            "<input",
            "<button",
            "<meta",
            "<base",
            "<link",
            "<svg",
            "<style",
            "style=",
            "expression(",
            "srcdoc",
            "<frame",
            "<math",
        ] {
            assert!(!lower.contains(bad), "`{bad}` in {out}");
        }
        // No event handler attribute of any kind.
        let bytes = lower.as_bytes();
        for (i, _) in lower.match_indices(" on") {
            let rest = &bytes[i + 3..];
            let name_len = rest.iter().take_while(|b| b.is_ascii_alphabetic()).count();
            assert!(
                !(name_len > 0 && rest.get(name_len) == Some(&b'=')),
                "event handler in {out}"
            );
        }
    }

    #[test]
    fn xss_vectors_come_out_inert() {
        let vectors = [
            "<script>alert(1)</script>",
            "<SCRIPT SRC=//evil.test/x.js></SCRIPT>",
            "<img src=x onerror=alert(1)>",
            "<body onload=alert(1)>",
            "<a href=\"javascript:alert(1)\">x</a>",
            "<a href=\"JaVaScRiPt:alert(1)\">x</a>",
            "<a href=\"java\tscript:alert(1)\">x</a>",
            "<a href=\"&#106;avascript:alert(1)\">x</a>",
            "<a href=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\">x</a>",
            "<img src=\"data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=\">",
            "<svg onload=alert(1)><script>alert(1)</script></svg>",
            "<svg><a xlink:href=\"javascript:alert(1)\"><text>x</text></a></svg>",
            "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
            "<div style=\"background:url(javascript:alert(1))\">x</div>",
            "<div style=\"width: expression(alert(1))\">x</div>",
            "<style>body{background:url(javascript:alert(1))}</style>",
            "<meta http-equiv=\"refresh\" content=\"0;url=javascript:alert(1)\">",
            "<form action=\"https://evil.test\"><input name=p type=password><button>go</button></form>",
            "<iframe src=\"https://evil.test\"></iframe>",
            "<iframe srcdoc=\"<script>alert(1)</script>\"></iframe>",
            "<object data=\"https://evil.test/x.swf\"></object><embed src=x>",
            "<base href=\"https://evil.test/\">",
            "<link rel=stylesheet href=\"https://evil.test/x.css\">",
            "<details open ontoggle=alert(1)>",
            "<p title=\"x\" onmouseover=\"alert(1)\">hover</p>",
            "<!--<img src=x onerror=alert(1)>-->",
            "<noscript><p title=\"</noscript><img src=x onerror=alert(1)>\"></noscript>",
            "<table background=\"javascript:alert(1)\"><tr><td>x</td></tr></table>",
        ];
        for v in vectors {
            let out = clean_default(v).html;
            assert_inert(&out);
        }
    }

    #[test]
    fn remote_images_wait_for_the_user() {
        let html = "<p>hi</p><img src=\"https://tracker.test/p.gif\" alt=t><img src=\"http://x.test/a.png\">";
        let held = clean_default(html);
        assert_eq!(held.blocked_images, 2);
        assert!(!held.html.contains("tracker.test"), "{}", held.html);
        assert!(held.html.contains("<p>hi</p>"));
        let loaded = clean(html, 7, &HashMap::new(), true);
        assert_eq!(loaded.blocked_images, 0);
        assert!(loaded.html.contains("src=\"https://tracker.test/p.gif\""));
    }

    #[test]
    fn inline_images_point_at_their_attachment_and_relative_urls_go() {
        let inline = HashMap::from([("logo@x".to_string(), 2)]);
        let out = clean(
            "<img src=\"cid:logo@x\"><img src=\"cid:other\"><a href=\"/logout\">l</a><img src=\"/message/1/raw\">",
            9,
            &inline,
            false,
        );
        assert!(
            out.html.contains("<img src=\"/message/9/inline/2\">"),
            "{}",
            out.html
        );
        assert!(!out.html.contains("cid:"), "{}", out.html);
        assert!(!out.html.contains("/logout"), "{}", out.html);
        assert!(!out.html.contains("/raw"), "{}", out.html);
        assert_eq!(out.blocked_images, 0);
    }

    #[test]
    fn inline_images_with_unicode_content_ids() {
        let inline = HashMap::from([("логотип@x".to_string(), 1), ("日".to_string(), 3)]);
        let out = clean(
            "<img src=\"cid:логотип@x\"><img src=\"CID:<日>\"><img src=\"cid:%E6%97%A5\"><img src=\"cid:🎉\">",
            5,
            &inline,
            false,
        );
        assert!(
            out.html.contains("<img src=\"/message/5/inline/1\">"),
            "{}",
            out.html
        );
        assert_eq!(
            out.html
                .matches("<img src=\"/message/5/inline/3\">")
                .count(),
            2,
            "{}",
            out.html
        );
        assert!(!out.html.contains("cid:"), "{}", out.html);
    }

    #[test]
    fn links_stay_and_open_safely() {
        let out = clean_default("<a href=\"https://example.test/a?b=1\">x</a>").html;
        assert!(out.contains("href=\"https://example.test/a?b=1\""), "{out}");
        assert!(
            out.contains("rel=\"noopener noreferrer nofollow\""),
            "{out}"
        );
        assert!(out.contains("target=\"_blank\""), "{out}");
    }
}
