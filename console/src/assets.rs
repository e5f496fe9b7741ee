//! The console's page and the two files it loads, compiled in.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

/// The page loads nothing from elsewhere, runs no inline script, and
/// nothing may frame it.
const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

/// The files under `/console/assets/`: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_str!("../assets/console.css"),
    ),
];

/// `GET /console`.
pub async fn page() -> Response {
    let mut response = Html(include_str!("../assets/index.html")).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /console/assets/{file}`.
pub async fn asset(Path(file): Path<String>) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "no-cache"),
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
    fn the_page_loads_only_the_files_the_console_serves() {
        let page = include_str!("../assets/index.html");
        let mut loaded = Vec::new();
        for attribute in ["src=\"", "href=\""] {
            for part in page.split(attribute).skip(1) {
                let url = part.split('"').next().unwrap_or_default();
                if url.starts_with('#') {
                    continue;
                }
                let file = url
                    .strip_prefix("/console/assets/")
                    .unwrap_or_else(|| panic!("{url} is not one of the console's files"));
                assert!(
                    ASSETS.iter().any(|(name, _, _)| *name == file),
                    "{file} is not served"
                );
                loaded.push(file);
            }
        }
        loaded.sort_unstable();
        loaded.dedup();
        assert_eq!(
            loaded.len(),
            ASSETS.len(),
            "every file is loaded by the page"
        );
        for (name, _, body) in ASSETS.iter().map(|(n, t, b)| (n, t, b)) {
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{name} names another origin"
            );
        }
        assert!(!page.contains("://"), "no absolute URL in the page");
        assert!(!page.contains("<script>"), "no inline script");
        assert!(!page.contains("style=\""), "no inline style");
    }
}
