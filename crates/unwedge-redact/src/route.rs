//! A request path as a route: the identifiers in it replaced by placeholders, so that panics
//! on `/users/17` and `/users/42` count as one route, and no user's id or e-mail address ends
//! up as a key of the health registry or a label of a metric anyone scraping can read.

use std::borrow::Cow;

/// `path` (no query) with each segment that looks like an identifier replaced by a
/// placeholder; the other segments, the slashes and an empty or trailing segment stay as they
/// are. Used for a panic's route when no framework named the route template (axum's matched
/// route wins where there is one). A segment is replaced by
///
/// | placeholder | when the segment is | e.g. |
/// | --- | --- | --- |
/// | `{int}` | ASCII digits only | `42`, `2026` |
/// | `{uuid}` | a UUID, `8-4-4-4-12` hex digits | `3f2a9c1e-…` |
/// | `{hex}` | 16 or more hex digits, at least one a decimal digit | a SHA-1, a MongoDB ObjectId |
/// | `{param}` | 16 or more bytes with both a digit and a letter, or any segment with an `@` (or `%40`) | a ULID, a base64 id, `usr_2x9Kq…`, an e-mail address |
///
/// Words, slugs without digits, version segments such as `v2` and file names are kept. The
/// rules are a heuristic: a slug of 16 or more bytes with a digit in it (`release-2026-notes`)
/// becomes `{param}` too, which keeps the count of routes bounded rather than exact.
///
/// ```
/// use unwedge_redact::route_template;
///
/// assert_eq!(route_template("/users/42/orders"), "/users/{int}/orders");
/// assert_eq!(
///     route_template("/items/3f2a9c1e-7b4d-4c1a-9e2f-0a1b2c3d4e5f"),
///     "/items/{uuid}"
/// );
/// assert_eq!(route_template("/blobs/5f0c8e2d9a1b3c4d5e6f7a8b"), "/blobs/{hex}");
/// assert_eq!(route_template("/by-mail/ann@example.com/"), "/by-mail/{param}/");
/// // Nothing to replace: the path itself, not a copy.
/// assert!(matches!(route_template("/api/v2/health"), std::borrow::Cow::Borrowed(_)));
/// ```
pub fn route_template(path: &str) -> Cow<'_, str> {
    if !path.split('/').any(|s| placeholder(s).is_some()) {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(placeholder(segment).unwrap_or(segment));
    }
    Cow::Owned(out)
}

/// The placeholder for `segment`, if it looks like an identifier.
fn placeholder(segment: &str) -> Option<&'static str> {
    let b = segment.as_bytes();
    if b.is_empty() {
        return None;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return Some("{int}");
    }
    if is_uuid(b) {
        return Some("{uuid}");
    }
    let has_digit = b.iter().any(u8::is_ascii_digit);
    if b.len() >= 16 && has_digit && b.iter().all(u8::is_ascii_hexdigit) {
        return Some("{hex}");
    }
    let has_letter = segment.chars().any(char::is_alphabetic);
    // An `@` as sent, or percent-encoded (`encodeURIComponent`'s `%40`: paths keep it).
    let at_sign = b.contains(&b'@') || b.windows(3).any(|w| w.eq_ignore_ascii_case(b"%40"));
    if (b.len() >= 16 && has_digit && has_letter) || at_sign {
        return Some("{param}");
    }
    None
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::route_template;

    #[test]
    fn identifiers_become_placeholders_and_the_rest_stays() {
        let cases = [
            ("/", "/"),
            ("", ""),
            ("/users/0", "/users/{int}"),
            ("/users/17/", "/users/{int}/"),
            ("//17", "//{int}"),
            ("/v2/users", "/v2/users"),
            ("/a1b2", "/a1b2"),
            ("/3F2A9C1E-7B4D-4C1A-9E2F-0A1B2C3D4E5F", "/{uuid}"),
            // Dashes elsewhere: not a UUID; long, mixed: a param.
            ("/3f2a9c1e7-b4d-4c1a-9e2f-0a1b2c3d4e5f", "/{param}"),
            ("/da39a3ee5e6b4b0d3255bfef95601890afd80709", "/{hex}"),
            // Hex letters only, 16 of them: a word, not an id.
            ("/deadbeefdeadbeef", "/deadbeefdeadbeef"),
            ("/01ARZ3NDEKTSV4RRFFQ69G5FAV", "/{param}"),
            ("/static/app.js", "/static/app.js"),
            (
                "/posts/a-long-title-without-digits",
                "/posts/a-long-title-without-digits",
            ),
            ("/x/ann@example.com", "/x/{param}"),
            // Percent-encoded, as a browser's `encodeURIComponent` sends it (review).
            ("/users/a%40b.io/orders", "/users/{param}/orders"),
            ("/users/a%40B.io", "/users/{param}"),
            ("/日本語/42", "/日本語/{int}"),
        ];
        for (path, want) in cases {
            assert_eq!(route_template(path), want, "{path:?}");
        }
    }

    #[test]
    fn paths_differing_only_in_ids_share_a_route() {
        let a = route_template("/orgs/1/repos/5f0c8e2d9a1b3c4d5e6f7a8b/issues/9");
        let b = route_template("/orgs/77/repos/0123456789abcdef0123/issues/10000");
        assert_eq!(a, b);
        assert_eq!(a, "/orgs/{int}/repos/{hex}/issues/{int}");
    }
}
