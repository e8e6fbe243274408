//! The frame of every HTML page the web roles serve (the front doors' webmail, login's sign-in
//! page): doctype, language, charset, viewport, no referrer, the title and one style sheet.
//! Pages are `maud` templates, which escape whatever is spliced in.

use maud::{html, Markup, DOCTYPE};

/// A whole page titled `title · megamail`, styled by `stylesheet` (a path), around `body`.
pub fn document(title: &str, stylesheet: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · megamail" }
                link rel="stylesheet" href=(stylesheet);
            }
            body { (body) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_escapes_its_title_and_holds_the_body() {
        let page = document("<Inbox>", "/static/app.css", html! { p { "hi" } }).into_string();
        assert!(
            page.starts_with("<!DOCTYPE html><html lang=\"en\">"),
            "{page}"
        );
        assert!(
            page.contains("<title>&lt;Inbox&gt; · megamail</title>"),
            "{page}"
        );
        assert!(page.contains("<link rel=\"stylesheet\" href=\"/static/app.css\">"));
        assert!(page.ends_with("<body><p>hi</p></body></html>"), "{page}");
    }
}
