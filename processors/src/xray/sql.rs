//! `sql` block for database spans (`db.system` / `db.system.name` present).

use super::attrs::Attrs;
use super::http::url_host;
use super::segment::Sql;

pub(crate) const SYSTEM: &[&str] = &["db.system.name", "db.system"];
pub(crate) const NAMESPACE: &[&str] = &["db.namespace", "db.name"];
const QUERY: &[&str] = &["db.query.text", "db.statement"];
pub(crate) const HOST: &[&str] = &["server.address", "net.peer.name"];
const PORT: &[&str] = &["server.port", "net.peer.port"];
const CONNECTION_STRING: &str = "db.connection_string";

pub(crate) fn is_db(a: &Attrs<'_>) -> bool {
    a.first_str(SYSTEM).is_some()
}

/// `db@host` (or `db`) for naming database subsegments.
pub(crate) fn db_segment_name(a: &Attrs<'_>) -> Option<String> {
    if !is_db(a) {
        return None;
    }
    let db = a.first_str(NAMESPACE)?;
    let host = a.first_str(HOST).or_else(|| {
        a.str(CONNECTION_STRING)
            .and_then(|c| url_host(c.strip_prefix("jdbc:").unwrap_or(c)))
    });
    Some(match host {
        Some(h) => format!("{db}@{h}"),
        None => db.to_string(),
    })
}

/// `url` is `db.connection_string` or `<system>://<host>[:<port>]`, followed by
/// `/<database>` when the database name is known.
pub(crate) fn make_sql(a: &mut Attrs<'_>) -> Option<Sql> {
    let system = a.take_string(SYSTEM)?;
    let db = a.take_string(NAMESPACE);
    let conn = a.take_string(&[CONNECTION_STRING]);
    let host = a.take_string(HOST);
    let port = a.take_string(PORT);
    let base = conn.or_else(|| {
        host.map(|h| match port {
            Some(p) => format!("{system}://{h}:{p}"),
            None => format!("{system}://{h}"),
        })
    });
    let url = match (base, db) {
        (Some(b), Some(d)) => Some(format!("{}/{d}", b.trim_end_matches('/'))),
        (Some(b), None) => Some(b),
        (None, Some(d)) => Some(d),
        (None, None) => None,
    };
    Some(Sql {
        url,
        database_type: Some(system),
        user: a.take_string(&["db.user"]),
        sanitized_query: a.take_string(QUERY),
        ..Sql::default()
    })
}
