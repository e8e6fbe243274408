//! What wraps every front-door request: the shared web layers (`runtime::http::layers`: request
//! id, the `http.request` fault point, security headers, metrics by route pattern, the panic
//! answer, the log line) with the front door's metrics and its content security policy.

use std::sync::Arc;

use anyhow::Context as _;
use axum::http::HeaderValue;
use axum::Router;
use runtime::http::layers::Layers;

use crate::{metrics, Ctx};

/// `router` with every layer around it.
pub fn wrap(router: Router<Arc<Ctx>>, ctx: &Ctx) -> anyhow::Result<Router<Arc<Ctx>>> {
    let policy = HeaderValue::from_str(&csp(&ctx.login_origin, false))
        .context("the login URL's origin does not fit in a CSP header")?;
    Ok(Layers::new(&metrics::HTTP, ctx.faults.clone(), policy).wrap(router))
}

/// The content security policy of every page, unless a handler set its own.
pub fn csp(login_origin: &str, remote_images: bool) -> String {
    let img = if remote_images {
        "'self' https: http:"
    } else {
        "'self'"
    };
    format!(
        "default-src 'none'; img-src {img}; style-src 'self'; form-action 'self' {login_origin}; \
         frame-ancestors 'none'; base-uri 'none'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_blocks_remote_images_unless_asked() {
        let strict = csp("http://login.test", false);
        assert!(strict.contains("default-src 'none'"));
        assert!(strict.contains("img-src 'self';"));
        assert!(strict.contains("frame-ancestors 'none'"));
        assert!(strict.contains("base-uri 'none'"));
        assert!(strict.contains("form-action 'self' http://login.test"));
        assert!(csp("http://login.test", true).contains("img-src 'self' https: http:"));
    }
}
