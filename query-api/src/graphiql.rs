//! GraphiQL, served whole by the platform: its page and every script and
//! stylesheet it loads (`assets/graphiql/`), so that it works without
//! internet.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// The page `GET /graphql` answers a browser.
pub fn page() -> Response {
    let mut response = Html(include_str!("../assets/graphiql/index.html")).into_response();
    // The page loads nothing from elsewhere, and nothing may frame it.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

/// The files under `/graphql/assets/`: name, content type, body.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "graphiql.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/graphiql/graphiql.min.js"),
    ),
    (
        "graphiql.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/graphiql/graphiql.min.css"),
    ),
    (
        "react.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/graphiql/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/graphiql/react-dom.production.min.js"),
    ),
    (
        "start.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/graphiql/start.js"),
    ),
];

/// `GET /graphql/assets/{file}`.
pub async fn asset(Path(file): Path<String>) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_assets_the_platform_serves() {
        let page = include_str!("../assets/graphiql/index.html");
        let mut loaded = 0;
        for attribute in ["src=\"", "href=\""] {
            for part in page.split(attribute).skip(1) {
                let url = part.split('"').next().unwrap_or_default();
                let file = url
                    .strip_prefix("/graphql/assets/")
                    .unwrap_or_else(|| panic!("{url} is not one of the platform's assets"));
                assert!(
                    ASSETS.iter().any(|(name, _, _)| *name == file),
                    "{file} is not served"
                );
                loaded += 1;
            }
        }
        assert_eq!(loaded, ASSETS.len(), "every asset is loaded by the page");
        assert!(!page.contains("://"), "no absolute URL in the page");
    }
}
