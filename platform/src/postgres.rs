//! PostgreSQL connection strings and settings.

/// The settings every connection of the platform opens with. `jit = off`:
/// the platform's statements are short, and one whose cost the planner
/// overestimates (a hot aggregate's events after its snapshot, where the
/// snapshot's sequence is known only as the statement runs) would spend
/// tens to hundreds of milliseconds compiling code for rows it never reads.
pub fn tuned(options: sqlx::postgres::PgConnectOptions) -> sqlx::postgres::PgConnectOptions {
    options.options([("jit", "off")])
}

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let base = match head[scheme_end..].find('/') {
        Some(slash) => &head[..scheme_end + slash],
        None => head,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_in_urls() {
        assert_eq!(
            with_database("postgres://127.0.0.1:5432/orders", "t1"),
            "postgres://127.0.0.1:5432/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h/orders?sslmode=disable", "t1"),
            "postgres://u:p@h/t1?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "t1"),
            "postgres://h:5432/t1"
        );
    }
}
