//! Credentials in free text: the value written after a credential's name (`Authorization`,
//! `Cookie`, `X-Api-Key`, `password`, … : [`CREDENTIAL_NAMES`]), and a bare `Bearer` token, are
//! replaced by `[redacted]`. One set of rules for the `unwedge` library (a panic message:
//! `panic!("unexpected request {req:?}")`, whose `HeaderMap` prints
//! `{"authorization": "Bearer …", "cookie": "…"}`, puts no credential in a report, its log
//! event or a client's `detail`) and for the supervisor (`unwedge-admin`: a report's text
//! fields and a worker's stderr lines).
//!
//! Identifiers in a request path (`/users/42`, a UUID, an e-mail address) become placeholders
//! in a panic's route ([`route_template`]): one route per handler, not per user.
//!
//! ```
//! assert_eq!(
//!     unwedge_redact::scrub_credentials("bad Authorization: Bearer s3cret").as_deref(),
//!     Some("bad Authorization: [redacted]")
//! );
//! assert_eq!(unwedge_redact::scrub_credentials("no cookie, sorry"), None);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod route;

pub use route::route_template;

/// Longest panic message a report keeps, in bytes (a longer one is cut on a character
/// boundary, after its credentials are hidden, and [`CUT_MARK`] appended): the `unwedge`
/// library cuts its own messages to this, and the supervisor cuts any worker's report to it.
///
/// ```
/// assert_eq!(unwedge_redact::MAX_MESSAGE, 8 * 1024);
/// ```
pub const MAX_MESSAGE: usize = 8 * 1024;

/// What ends a text cut short: a message cut to [`MAX_MESSAGE`], a report field cut to fit a
/// notify datagram or to what the supervisor keeps of a worker's report.
///
/// ```
/// assert_eq!(unwedge_redact::CUT_MARK, "…<truncated>");
/// ```
pub const CUT_MARK: &str = "…<truncated>";

/// Header names whose values are credentials: never shown in a report, and found in free text
/// by [`scrub_credentials`].
///
/// ```
/// assert!(unwedge_redact::CREDENTIAL_HEADERS.contains(&"cookie"));
/// ```
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// Names whose value, written after them in text (`name: value`, `name=value`,
/// `"name": "value"`, …), is a credential: the [`CREDENTIAL_HEADERS`], the usual API-key and
/// token headers and fields (`X-Api-Key`, `X-Auth-Token`, `access_token`, `client_secret`), and
/// passwords. Found in any case, with `_` read as `-` (`HTTP_X_API_KEY`, `db_password`), as
/// the last part of a longer name (`x-api-key` is `api-key`'s, `client_secret` `secret`'s,
/// `dbPassword` `password`'s, `AWS_SECRET_ACCESS_KEY` `access-key`'s);
/// see [`scrub_credentials`] and [`is_credential_name`]. And any name ending in `token` after
/// a `-` or `_` that follows a letter or digit, or in a camelCase `Token` (`GITHUB_TOKEN`,
/// `x-csrf-token`, `gitlabToken`): not `token` alone, nor after a blank, a parser's word
/// (`unexpected token: }`, `invalid token at line 3`) as often as a credential's.
///
/// ```
/// assert!(unwedge_redact::CREDENTIAL_NAMES.contains(&"api-key"));
/// ```
pub const CREDENTIAL_NAMES: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "api-key",
    "apikey",
    "auth-token",
    "access-token",
    "refresh-token",
    "id-token",
    "session-token",
    "secret",
    "password",
    "passwd",
    "private-key",
    "secret-key",
    "access-key",
    "private-token",
    "api-token",
    // Django's `X-CSRFToken`, Angular's `X-XSRF-TOKEN` is caught by its `-token`.
    "csrftoken",
    "xsrftoken",
    "session-id",
    "sessionid",
    // OAuth's proof of possession (RFC 9449): a signed token.
    "dpop",
    // As camelCase writes them (`accessToken`, `secretKey`): no `-` to read.
    "authtoken",
    "accesstoken",
    "refreshtoken",
    "sessiontoken",
    "secretkey",
    "accesskey",
    "privatekey",
];

/// `text` (a line of a program's output, a status it says of itself) with both redactions
/// free text gets: the value after each credential name hidden ([`scrub_credentials`]) and
/// the user info of every URL cut ([`hide_url_userinfo`]); `None` when neither changed
/// anything.
///
/// ```
/// use unwedge_redact::redact_text;
/// let said = "upstream: Authorization: Bearer S1 via https://bob:S2@db/x";
/// let shown = redact_text(said).unwrap();
/// assert!(!shown.contains("S1") && !shown.contains("S2"), "{shown}");
/// assert_eq!(redact_text("warming caches 40%"), None);
/// ```
pub fn redact_text(text: &str) -> Option<String> {
    let scrubbed = scrub_credentials(text);
    hide_url_userinfo(scrubbed.as_deref().unwrap_or(text)).or(scrubbed)
}

/// Whether a header or field called `name` holds a credential: it is one of the
/// [`CREDENTIAL_NAMES`] or ends with one after a `-` or `_` or as a camelCase part
/// (`X-Api-Key`, `HTTP_COOKIE`, `client_secret`, `dbPassword`), in any case, or it ends in
/// `token` after a `-` or `_` (`GITHUB_TOKEN`, `X-CSRF-Token`) or in a camelCase `Token`
/// (`gitlabToken`): not `token` alone.
///
/// ```
/// use unwedge_redact::is_credential_name;
/// assert!(is_credential_name("X-Api-Key"));
/// assert!(is_credential_name("GITHUB_TOKEN"));
/// assert!(!is_credential_name("token"));
/// assert!(is_credential_name("HTTP_AUTHORIZATION"));
/// assert!(is_credential_name("client_secret"));
/// assert!(!is_credential_name("user-agent"));
/// assert!(!is_credential_name("secretary"));
/// assert!(is_credential_name("X-CSRFToken"));
/// assert!(is_credential_name("X-Session-Id"));
/// assert!(is_credential_name("DPoP"));
/// ```
pub fn is_credential_name(name: &str) -> bool {
    let name = name.as_bytes();
    let token = name.len().checked_sub(TOKEN.len());
    if token.is_some_and(|at| {
        name[at..].eq_ignore_ascii_case(TOKEN.as_bytes()) && ends_a_longer_name(name, at)
    }) {
        return true;
    }
    CREDENTIAL_NAMES.iter().any(|c| {
        let c = c.as_bytes();
        name.len() >= c.len() && {
            let start = name.len() - c.len();
            (start == 0 || matches!(name[start - 1], b'-' | b'_') || starts_camel_part(name, start))
                && name[start..]
                    .iter()
                    .zip(c)
                    .all(|(&n, &c)| normalized(n) == c)
        }
    })
}

/// The last part of a name that makes it a credential's, whatever comes before it
/// (`GITHUB_TOKEN`, `x-csrf-token`, `gitlabToken`), when something does: `token` alone, or
/// after a blank, is a parser's word (`unexpected token: }`, `invalid token at line 3`).
const TOKEN: &str = "token";

/// Whether the part of `name` starting at `at` ends a longer name (`TOKEN` of `GITHUB_TOKEN`,
/// `Token` of `gitlabToken`): a `-` or `_` after a letter or digit is before it, or it is a
/// camelCase capital after a lower-case letter or a digit.
fn ends_a_longer_name(name: &[u8], at: usize) -> bool {
    match at {
        0 => false,
        1 => starts_camel_part(name, at),
        _ => {
            (matches!(name[at - 1], b'-' | b'_') && name[at - 2].is_ascii_alphanumeric())
                || starts_camel_part(name, at)
        }
    }
}

/// Whether a camelCase part starts at `at` (> 0) of `name`: a capital after a lower-case
/// letter or a digit (`Password` of `dbPassword`).
fn starts_camel_part(name: &[u8], at: usize) -> bool {
    name[at].is_ascii_uppercase()
        && (name[at - 1].is_ascii_lowercase() || name[at - 1].is_ascii_digit())
}

/// `b` as names are compared: ASCII lower case, `_` as `-`.
fn normalized(b: u8) -> u8 {
    match b {
        b'_' => b'-',
        b => b.to_ascii_lowercase(),
    }
}

/// Whether `authority`, what follows a URL's `scheme://` up to the first `/`, `?` or `#` and
/// holding no `@`, reads as the start of a `user:password` whose password goes on past an
/// unencoded `/`, `?` or `#` (`app:Ab3` of `postgres://app:Ab3/x+Yz==@db`, `:pw` of
/// `redis://:pw/x@cache`) rather than a `host` or `host:port`: it has a `:` and what follows
/// it is not a port (1 to 5 decimal digits, at most 65535); an IPv6 literal (`[::1]`,
/// `[::1]:8080`) is a host. Only an `@` later in the URL makes it user info. The `unwedge`
/// library, the reports' scrubbing (`unwedge-admin`) and the supervisor's stderr tail read it
/// the same way.
///
/// ```
/// use unwedge_redact::looks_like_password;
/// assert!(looks_like_password("app:Ab3"));
/// assert!(!looks_like_password("db:5432"));
/// assert!(!looks_like_password("[::1]:8080"));
/// assert!(!looks_like_password("db"));
/// ```
pub fn looks_like_password(authority: &str) -> bool {
    let after_host = match authority.strip_prefix('[') {
        Some(literal) => match literal.find(']') {
            Some(i) => &literal[i + 1..],
            None => return authority.contains(':'),
        },
        None => match authority.find(':') {
            Some(i) => &authority[i..],
            None => return false,
        },
    };
    let is_port = |s: &str| {
        (1..=5).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_digit())
            && s.parse::<u16>().is_ok()
    };
    match after_host.strip_prefix(':') {
        Some(port) => !is_port(port),
        None => !after_host.is_empty(),
    }
}

/// Whether `c` ends a URL in free text: no URL holds whitespace, a control character, `"`,
/// `<` or `>`.
///
/// ```
/// assert!(unwedge_redact::ends_url_in_text('"'));
/// assert!(!unwedge_redact::ends_url_in_text('@'));
/// ```
pub fn ends_url_in_text(c: char) -> bool {
    matches!(c, '"' | '<' | '>') || c.is_whitespace() || c.is_control()
}

/// RFC 3986's `scheme`: a letter, then letters, digits, `+`, `-` or `.`.
fn is_scheme(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// `text` (a panic message, a line of stderr, a header value) with the user and password of
/// every URL in it shown `…`: `scheme://user:password@host` becomes `scheme://…@host`, the
/// rest, query included, left as written; `None` when it holds no such URL. One rule for the
/// `unwedge` library's reports, the supervisor's and its stderr tail.
///
/// A URL is found by its `scheme://` (RFC 3986's scheme, in any case; or `scheme:\/\/`, its
/// slashes escaped as Go's and PHP's JSON encoders write them, where a `\` ends the authority
/// as a `/` does: `"postgres:\/\/u:pw@db\/x"` becomes `"postgres:\/\/…@db\/x"`) and ends
/// before what no URL holds and so ends one in text ([`ends_url_in_text`]): whitespace, a
/// control character, `"`, `<`, `>`. Its user info ends at the last `@` before the first `/`, `?` or `#`; when
/// there is none there but what comes before that first `/ ? #` reads as `user:password`
/// ([`looks_like_password`]: a `:` not followed by a port), at the last `@` of the URL, so
/// that a password with an unencoded `/`, `?` or `#` (base64's `/`) is hidden too. (`'` and
/// `)` may be in a password: they do not end it.) A user info shown `…` already is left as it
/// is. Linear in the length of `text`, however many `://` it holds.
///
/// ```
/// use unwedge_redact::hide_url_userinfo;
/// assert_eq!(
///     hide_url_userinfo("no DB at postgres://app:s3cret@db/app?x=1").as_deref(),
///     Some("no DB at postgres://…@db/app?x=1")
/// );
/// assert_eq!(
///     hide_url_userinfo("connect postgres://app:Ab3/x+Yz==@db:5432/app").as_deref(),
///     Some("connect postgres://…@db:5432/app")
/// );
/// assert_eq!(hide_url_userinfo("GET https://example.com/@alice failed"), None);
/// ```
pub fn hide_url_userinfo(text: &str) -> Option<String> {
    let mut out = String::new();
    let (mut copied, mut from) = (0, 0);
    // The end of the run of text without a character ending a URL last scanned for its last
    // `@` (and that `@`): the `://` after it in the same run reuse it, so each run is scanned
    // once.
    let mut run: Option<(usize, Option<usize>)> = None;
    while let Some((found, escaped)) = next_scheme_separator(text, from) {
        let before = &text[..found];
        let authority = found + separator_len(escaped);
        from = authority;
        let scheme_chars = before
            .trim_end_matches(|c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            .len();
        // A scheme starts with a letter (`1http://`: `http`).
        let scheme = before[scheme_chars..].trim_start_matches(|c: char| !c.is_ascii_alphabetic());
        if !is_scheme(scheme) {
            continue;
        }
        let rest = &text[authority..];
        let end = rest
            .find(|c: char| ends_authority(c, escaped) || ends_url_in_text(c))
            .unwrap_or(rest.len());
        let user_end = match rest[..end].rfind('@') {
            // Hidden already: left as it is.
            Some(at) if &rest[..at] == "…" => None,
            Some(at) => Some(authority + at),
            None if looks_like_password(&rest[..end]) => {
                let (run_end, last_at) = match run {
                    // Same run: no character ending a URL between its start and here.
                    Some((run_end, last_at)) if authority <= run_end => (run_end, last_at),
                    _ => {
                        let run_end = rest
                            .find(ends_url_in_text)
                            .map_or(text.len(), |i| authority + i);
                        (
                            run_end,
                            text[authority..run_end].rfind('@').map(|i| authority + i),
                        )
                    }
                };
                run = Some((run_end, last_at));
                last_at.filter(|&at| at >= authority)
            }
            None => None,
        };
        if let Some(at) = user_end {
            out.push_str(&text[copied..authority]);
            out.push('…');
            copied = at;
            // A `://` in what was hidden is part of the password.
            from = at;
        }
    }
    (copied > 0).then(|| out + &text[copied..])
}

/// Where the next `://` at or after `from` of `text` starts (its `:`), and whether it is
/// written `:\/\/`, its slashes escaped as a JSON string may have them (Go's and PHP's JSON
/// encoders write `"postgres:\/\/u:pw@db\/x"`).
fn next_scheme_separator(text: &str, mut from: usize) -> Option<(usize, bool)> {
    while let Some(i) = text[from..].find(':') {
        let colon = from + i;
        let after = &text.as_bytes()[colon + 1..];
        if after.starts_with(b"//") {
            return Some((colon, false));
        }
        if after.starts_with(br"\/\/") {
            return Some((colon, true));
        }
        from = colon + 1;
    }
    None
}

/// The length of a `://`, `:\/\/` when `escaped`.
fn separator_len(escaped: bool) -> usize {
    if escaped {
        r":\/\/".len()
    } else {
        "://".len()
    }
}

/// Whether `c` ends a URL's authority: `/`, `?` or `#`, or the `\` of an escaped `\/` in a URL
/// whose `://` was written `:\/\/`.
fn ends_authority(c: char, escaped: bool) -> bool {
    matches!(c, '/' | '?' | '#') || (escaped && c == '\\')
}

/// Where to cut `text`, the start of a longer text (a value or line cut to a length), so that
/// it ends `scheme://` (for a `…` to follow): when its end falls inside a URL's authority, or
/// past the first `/`, `?` or `#` of a URL whose authority reads as `user:password`
/// ([`looks_like_password`]) with no `@` yet, the `@` that ends the password may be past the
/// cut, or be one inside it, so nothing after `scheme://` may be shown. `None` when the end is
/// not inside such a URL (it ended before, or its authority is a host). A `scheme:\/\/` counts
/// as in [`hide_url_userinfo`]. The cut is after the
/// first `://` of the last run of text (no character ending a URL in it) whose user info the
/// end may be in: a `://` after it is part of its password (`redis://u:pa://ss` is cut after
/// `redis://`, not after `pa://`).
///
/// ```
/// use unwedge_redact::cut_inside_url;
/// let cut = "failed: postgres://app:s3c";
/// assert_eq!(cut_inside_url(cut), Some("failed: postgres://".len()));
/// assert_eq!(cut_inside_url("see https://example.com/doc"), None);
/// assert_eq!(cut_inside_url("postgres://app:pw@db/x"), None);
/// ```
pub fn cut_inside_url(text: &str) -> Option<usize> {
    // A URL the end falls in starts in the last run of text without a character ending one.
    let mut from = text
        .char_indices()
        .rev()
        .find(|&(_, c)| ends_url_in_text(c))
        .map_or(0, |(i, c)| i + c.len_utf8());
    // The first `://` the end is inside the user info or authority of: a `://` after it is in
    // what may be its password (`redis://u:pa://ss`), hidden with it.
    while let Some((found, escaped)) = next_scheme_separator(text, from) {
        let i = found + separator_len(escaped);
        from = i;
        let url = &text[i..];
        let inside = match url.find(|c| ends_authority(c, escaped)) {
            Some(end) => !url[..end].contains('@') && looks_like_password(&url[..end]),
            None => !url.is_empty(),
        };
        if inside {
            return Some(i);
        }
    }
    None
}

/// What replaces a credential found in text.
const REDACTED_IN_TEXT: &str = "[redacted]";

/// `line` with the value after each credential name, and each bare `Bearer` token, replaced
/// by `[redacted]`; `None` when it holds none.
///
/// A name ([`CREDENTIAL_NAMES`]) counts in any case, `_` read as `-`, not inside a longer
/// word (`xcookie`, `passwords`), optionally quoted, when `:` or `=` follows it (spaces and a
/// closing quote allowed before and spaces after). Its value is the quoted string that
/// follows (`"…"`, `'…'`, or `\"…\"` inside a JSON string; in a list, `["a=1", "id=x"]`,
/// every one of them; the one inside a Rust `Some("…")` or newtype `Secret("…")`), or else
/// everything up to the next `"` or the end of the text: `,` and `;` do not end it, since
/// cookies and some schemes hold them, nor does a quoted parameter in it (a `"` right after
/// `=`: Digest's `response="…"`). A value that is `None`, `null`, `nil`, `true` or `false` is
/// no credential and stays. A camelCase name counts from its capital (`dbPassword`). A name
/// ending in `token` after a `-` or `_` that follows a letter or digit, or in a camelCase
/// `Token`, counts too (`GITHUB_TOKEN=…`, `"x-csrf-token": "…"`, `gitlabToken: …`), but not
/// `token` alone or after a blank (`unexpected token: }`). A `Bearer` (any case) with no name
/// before it hides the token after it when that reads as one: 8 or more characters of a
/// token (RFC 6750's `b64token`) with a digit or a `-._~+/` in it, or 20 or more letters
/// (`bearer credentials` is prose). A query parameter's value, after a `?` or `&`, when its
/// name is a credential's or one of a URL's own (`?token=…`, `&code=…`, `&sig=…`: see
/// `QUERY_CREDENTIALS` in the source), and a JSON Web Token anywhere (`eyJ…` `.` `…` `.`
/// `…`), are hidden too. Linear in the length of `line`.
///
/// ```
/// let line = r#"headers: {"authorization": "Bearer S1", "host": "h"}"#;
/// assert_eq!(
///     unwedge_redact::scrub_credentials(line).as_deref(),
///     Some(r#"headers: {"authorization": "[redacted]", "host": "h"}"#)
/// );
/// assert_eq!(
///     unwedge_redact::scrub_credentials("rejected Bearer eyJhbGci.eyJzdWIi.c2ln for /x").as_deref(),
///     Some("rejected Bearer [redacted] for /x")
/// );
/// ```
pub fn scrub_credentials(line: &str) -> Option<String> {
    let lower: Vec<u8> = line.bytes().map(normalized).collect();
    let (bytes, lower) = (line.as_bytes(), &lower[..]);
    let mut out = String::new();
    let (mut copied, mut at) = (0, 0);
    while at < bytes.len() {
        // A camelCase name's part starts a word of its own (`dbPassword`).
        let camel = at > 0 && starts_camel_part(bytes, at);
        let inside_a_word = at > 0 && bytes[at - 1].is_ascii_alphanumeric() && !camel;
        let value = match inside_a_word {
            true => None,
            false => CREDENTIAL_NAMES
                .iter()
                .filter(|n| lower[at..].starts_with(n.as_bytes()))
                .find_map(|n| {
                    let after = at + n.len();
                    value_after(&bytes[after..]).map(|(start, end)| (after + start, after + end))
                })
                .or_else(|| token_value(bytes, lower, at))
                .or_else(|| bearer_token(bytes, lower, at))
                .or_else(|| query_credential(bytes, lower, at))
                .or_else(|| jwt(bytes, at)),
        };
        let Some((start, end)) = value else {
            at += 1;
            continue;
        };
        // Names, quotes and separators are ASCII: these are character boundaries.
        out.push_str(&line[copied..start]);
        out.push_str(REDACTED_IN_TEXT);
        (copied, at) = (end, end);
    }
    (copied > 0).then(|| out + &line[copied..])
}

/// Query parameters whose value is a credential in a URL, beyond [`CREDENTIAL_NAMES`]
/// (lower case, `_` read as `-`): OAuth's `code`, a signed URL's `sig` or `signature`, a
/// bare `token`, `key`, `jwt`, `session`, `sid`, `auth`, `ticket`, `otp`. Common words
/// elsewhere in a message, so only found after a `?` or a `&`.
const QUERY_CREDENTIALS: &[&str] = &[
    "token",
    "code",
    "key",
    "sig",
    "signature",
    "jwt",
    "session",
    "sessionid",
    "session-id",
    "sid",
    "auth",
    "ticket",
    "otp",
    "credential",
];

/// Where the value of a query parameter at `at` of `bytes` (`lower`: the same, lower case,
/// `_` as `-`) is, when `at` follows a `?` or a `&` and the parameter's name is one of
/// [`QUERY_CREDENTIALS`] (alone or after a `-` or `_`) or a credential's
/// ([`is_credential_name`]): `?token=…`,
/// `&code=…`, `&X-Amz-Signature=…`. The value ends at the next `&`, `#`, blank, quote or
/// closing bracket; an empty one is none.
fn query_credential(bytes: &[u8], lower: &[u8], at: usize) -> Option<(usize, usize)> {
    if at == 0 || !matches!(bytes[at - 1], b'?' | b'&') {
        return None;
    }
    let name_len = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        .count();
    if name_len == 0 || bytes.get(at + name_len) != Some(&b'=') {
        return None;
    }
    let name = &lower[at..at + name_len];
    // Alone or ending a longer name: `X-Amz-Signature`, `x_session_id`.
    let listed = QUERY_CREDENTIALS.iter().any(|q| {
        let q = q.as_bytes();
        name == q || (name.ends_with(q) && name[..name.len() - q.len()].ends_with(b"-"))
    });
    // ASCII: checked above.
    let named = std::str::from_utf8(&bytes[at..at + name_len]).is_ok_and(is_credential_name);
    if !(listed || named) {
        return None;
    }
    let start = at + name_len + 1;
    // Already hidden (a report scrubbed again).
    if bytes[start..].starts_with(REDACTED_IN_TEXT.as_bytes()) {
        return None;
    }
    let len = bytes[start..]
        .iter()
        .take_while(|b| {
            !(b.is_ascii_whitespace()
                || matches!(
                    b,
                    b'&' | b'#' | b'"' | b'\'' | b'\\' | b'>' | b')' | b']' | b'}'
                ))
        })
        .count();
    (len > 0).then_some((start, start + len))
}

/// Where a JSON Web Token starting at `at` of `bytes` ends, when one does: `eyJ` (a JSON
/// object's `{"` in base64url) then 10 or more base64url characters in all, a `.`, 10 or
/// more of the payload's, and a `.` with the signature's (none for an unsigned one).
/// Found anywhere but inside a run of base64url characters: a JWT is a bearer credential
/// wherever it is quoted (`{"jwt": "eyJ…"}`, a URL, a `Debug` of a struct). Only at the start
/// of such a run, so that `eyJ-eyJ-eyJ…` is scanned once, not once per `eyJ`.
fn jwt(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let b64url_char = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_');
    if !bytes[at..].starts_with(b"eyJ") || at.checked_sub(1).is_some_and(|i| b64url_char(&bytes[i]))
    {
        return None;
    }
    let b64url = |from: usize| bytes[from..].iter().take_while(|b| b64url_char(b)).count();
    let header = b64url(at);
    let dot = at + header;
    if header < 10 || bytes.get(dot) != Some(&b'.') {
        return None;
    }
    let payload = b64url(dot + 1);
    let end = dot + 1 + payload;
    if payload < 10 || bytes.get(end) != Some(&b'.') {
        return None;
    }
    Some((at, end + 1 + b64url(end + 1)))
}

/// Where the value after a `token` at `at` of `bytes` (`lower`: the same, lower case) is,
/// when that `token` ends a longer name ([`ends_a_longer_name`]: `GITHUB_TOKEN=…`,
/// `"x-csrf-token": "…"`, `gitlabToken: …`) and a value follows it ([`value_after`]).
///
/// Not a name in a path of code (`lexer::expect_token: unexpected }`, a tracing target), and
/// an unquoted value only when it looks like a token ([`looks_like_a_token`]:
/// `prompt_token=12` or `cancel_token: CancellationToken {..}` are not secrets): `token` is
/// a common word of code, unlike the listed names.
fn token_value(bytes: &[u8], lower: &[u8], at: usize) -> Option<(usize, usize)> {
    if !lower[at..].starts_with(TOKEN.as_bytes()) || !ends_a_longer_name(bytes, at) {
        return None;
    }
    let name_start = bytes[..at]
        .iter()
        .rposition(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')))
        .map_or(0, |i| i + 1);
    if bytes[..name_start].ends_with(b"::") {
        return None;
    }
    let after = at + TOKEN.len();
    let (start, end) = value_after(&bytes[after..])?;
    // A quoted value (JSON, a string field) is one; unquoted, it must look the part.
    let quoted = matches!(bytes[after + start - 1], b'"' | b'\'');
    (quoted || looks_like_a_token(&bytes[after + start..after + end]))
        .then_some((after + start, after + end))
}

/// Whether `value` starts with what reads as a secret token: 8 or more characters of RFC
/// 6750's `b64token` (`A-Z a-z 0-9 - . _ ~ + /`) among which a digit or a `-._~+/`, or 20 or
/// more letters (too long for a word), as a `Bearer`'s ([`bearer_token`]).
fn looks_like_a_token(value: &[u8]) -> bool {
    reads_as_token(&value[..token_chars(value)])
}

/// How many characters of RFC 6750's `b64token` (`A-Z a-z 0-9 - . _ ~ + /`) `bytes` starts
/// with.
fn token_chars(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
        .count()
}

/// Whether `token` (`b64token` characters) reads as a secret rather than a word: 8 or more
/// characters among which a digit or a `-._~+/`, or 20 or more letters (too long for a word).
fn reads_as_token(token: &[u8]) -> bool {
    token.len() >= 8 && (token.len() >= 20 || token.iter().any(|b| !b.is_ascii_alphabetic()))
}

/// Where the token of a `Bearer` at `at` of `bytes` (`lower`: the same, lower case) is, when
/// one follows it: blanks (spaces, tabs), then 8 or more characters of RFC 6750's `b64token`
/// (`A-Z a-z 0-9 - . _ ~ + /`, then `=`s) among which a digit or a `-._~+/` (or 20 or more
/// letters: too long for a word), ended by the end of the text or by a character no token
/// holds.
fn bearer_token(bytes: &[u8], lower: &[u8], at: usize) -> Option<(usize, usize)> {
    let rest = lower[at..].strip_prefix(b"bearer")?;
    let blanks = rest
        .iter()
        .take_while(|&&b| matches!(b, b' ' | b'\t'))
        .count();
    if blanks == 0 {
        return None;
    }
    let start = at + "bearer".len() + blanks;
    let mut end = start + token_chars(&bytes[start..]);
    let token = &bytes[start..end];
    end += bytes[end..].iter().take_while(|&&b| b == b'=').count();
    let ended = bytes.get(end).is_none_or(|&b| !b.is_ascii_alphanumeric());
    (reads_as_token(token) && ended).then_some((start, end))
}

/// Where the value after a credential name is in `rest`, what follows the name: an optional
/// closing quote (or `]`: PHP's `[HTTP_COOKIE] => …`), `:`, `=` or `=>` (Ruby's and PHP's;
/// a CGI or Rack name, `HTTP_AUTHORIZATION`, `HTTP_COOKIE`, is the name after its `_`) (or
/// `,` after a quoted name: a Python pair, `('authorization', 'Bearer x')`, or a header
/// object, `{"name":"Cookie","value":"…"}`, where the value is after the key that follows;
/// or blanks holding a tab, or before an authorization scheme: `authorization<TAB>…`,
/// `Authorization Bearer …`), then a quoted string (a bytes literal `b'…'` too; in a
/// list, `["a=1", "id=x"]` as Go's `http.Header` marshals, every value of it) or the text up to
/// the next `"` (see [`unquoted_end`]). `None` when no separator follows, or the value is
/// empty.
fn value_after(rest: &[u8]) -> Option<(usize, usize)> {
    let skip_blanks = |mut i: usize| {
        while rest.get(i).is_some_and(|b| matches!(b, b' ' | b'\t')) {
            i += 1;
        }
        i
    };
    let mut i = 0;
    if rest.starts_with(b"\\\"") {
        i += 2;
    } else if matches!(rest.first(), Some(b'"' | b'\'')) {
        i += 1;
    }
    let quoted_name = i > 0;
    // PHP's `print_r`: `[HTTP_COOKIE] => …`.
    if i == 0 && rest.first() == Some(&b']') {
        i += 1;
    }
    let blanks = i;
    i = skip_blanks(i);
    // Blanks alone separate the value when they hold a tab (a tab-separated dump,
    // `authorization<TAB>Bearer …`) or an authorization scheme follows them
    // (`Authorization Bearer …`).
    let blank_separated =
        i > blanks && (rest[blanks..i].contains(&b'\t') || starts_with_auth_scheme(&rest[i..]));
    match rest.get(i) {
        // Ruby's `=>` (a Rack env's `"HTTP_AUTHORIZATION"=>"…"`) and PHP's ` => `.
        Some(b'=') if rest.get(i + 1) == Some(&b'>') => i = skip_blanks(i + 2),
        Some(b':' | b'=') => i = skip_blanks(i + 1),
        // A pair: `("authorization", "…")`, or a header as an object with the name and the
        // value each under a key of its own (`{"name":"Cookie","value":"…"}`, Rust's
        // `Header { name: "cookie", value: "…" }`): then the value is after that key.
        Some(b',') if quoted_name => i = after_key(rest, skip_blanks(i + 1)),
        Some(_) if blank_separated => {}
        _ => return None,
    }
    // Already hidden (a report read back and scrubbed again): as it is, not `[[redacted]`.
    let at_value = rest[i.min(rest.len())..]
        .strip_prefix(b"\"".as_slice())
        .unwrap_or(&rest[i.min(rest.len())..]);
    if at_value.starts_with(REDACTED_IN_TEXT.as_bytes()) || at_value.starts_with(b"<redacted>") {
        return None;
    }
    let mut list = false;
    while let Some(&open @ (b'[' | b'(')) = rest.get(i) {
        list |= open == b'[';
        i = skip_blanks(i + 1);
    }
    // A Rust `Some("…")` or newtype `Secret("…")` (a `Debug` of a config): the quoted string
    // inside is the value.
    let mut wrapped = i;
    while rest.get(wrapped).is_some_and(u8::is_ascii_alphabetic) {
        let name = rest[wrapped..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':'))
            .count();
        match rest.get(wrapped + name) {
            Some(b'(') => wrapped = skip_blanks(wrapped + name + 1),
            _ => break,
        }
    }
    if wrapped > i {
        if let Some((start, end, _)) = quoted_at(rest, wrapped) {
            return (end > start).then_some((start, end));
        }
    }
    let Some((start, mut end, mut next)) = quoted_at(rest, i) else {
        // No credential: `password: None` (a `Debug` of an `Option`), `null`, `false`.
        let word = rest[i..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if matches!(
            &rest[i..i + word],
            b"None" | b"null" | b"nil" | b"true" | b"false"
        ) {
            return None;
        }
        let end = i + unquoted_end(&rest[i..]);
        return (end > i).then_some((i, end));
    };
    // A list's other values: a `Set-Cookie` or `Cookie` may have several.
    while list && rest.get(skip_blanks(next)) == Some(&b',') {
        let Some((_, e, n)) = quoted_at(rest, skip_blanks(skip_blanks(next) + 1)) else {
            break;
        };
        (end, next) = (e, n);
    }
    (end > start).then_some((start, end))
}

/// Whether `s` starts with an HTTP authorization scheme (any case) and a blank, then more.
fn starts_with_auth_scheme(s: &[u8]) -> bool {
    ["bearer", "basic", "digest", "negotiate", "ntlm", "token"]
        .iter()
        .any(|scheme| {
            s.len() > scheme.len() + 1
                && s[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
                && matches!(s[scheme.len()], b' ' | b'\t')
                && !matches!(s[scheme.len() + 1], b' ' | b'\t')
        })
}

/// `i`, or past the key at `i` of `rest` and its `:`, `=` or `=>` (and blanks) when a key is
/// there: a quoted string or a word followed by one of those.
fn after_key(rest: &[u8], i: usize) -> usize {
    let end = match quoted_at(rest, i) {
        Some((_, _, next)) => next,
        None => {
            i + rest[i..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count()
        }
    };
    if end == i {
        return i;
    }
    let k = end
        + rest[end.min(rest.len())..]
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
    let past = match rest.get(k) {
        Some(b'=') if rest.get(k + 1) == Some(&b'>') => k + 2,
        Some(b':' | b'=') => k + 1,
        _ => return i,
    };
    past + rest[past.min(rest.len())..]
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count()
}

/// Where a value that is not quoted ends in `s`: at the first `"` (which closes the string the
/// line quotes it in: `msg="got Authorization: Bearer x"`), or at the end; a `"` right after
/// `=` opens a quoted parameter of the value instead (Digest's `response="…"`, a cookie's
/// `a="…"`, or `=\"…\"` inside a JSON string), and so does a `"` (or `\"`) right after a blank
/// (a scheme's quoted credentials: `Basic "…" …`), which is read to its closing quote, the
/// value going on after it. (A string that ends in a blank and then its closing quote,
/// `msg="… Authorization: x "`, so has the rest of the line redacted: more than the value,
/// never less.)
fn unquoted_end(s: &[u8]) -> usize {
    let mut i = 0;
    while i < s.len() {
        // (Or an opening bracket: `Some(SecretString("…"))` that the rule for `Ident("…")`
        // did not take.)
        let after_blank = i > 0 && matches!(s[i - 1], b' ' | b'\t' | b'(' | b'[');
        let next = if s[i..].starts_with(b"=\\\"") {
            closing_escaped_quote(&s[i + 3..]).map(|e| i + 3 + e + 2)
        } else if s[i..].starts_with(b"=\"") {
            closing_quote(&s[i + 2..], b'"').map(|e| i + 2 + e + 1)
        } else if after_blank && s[i..].starts_with(b"\\\"") {
            closing_escaped_quote(&s[i + 2..]).map(|e| i + 2 + e + 2)
        } else if after_blank && s[i] == b'"' {
            closing_quote(&s[i + 1..], b'"').map(|e| i + 1 + e + 1)
        } else if s[i] == b'"' {
            return i;
        } else {
            Some(i + 1)
        };
        match next {
            Some(n) => i = n,
            None => return s.len(),
        }
    }
    s.len()
}

/// The quoted string at `i` of `rest` (`"…"`, `'…'`, `b'…'`, or `\"…\"` inside a JSON string):
/// where its text starts and ends, and the index past its closing quote; `None` if none
/// starts there. One not closed runs to the end.
fn quoted_at(rest: &[u8], mut i: usize) -> Option<(usize, usize, usize)> {
    if rest.get(i) == Some(&b'b') && matches!(rest.get(i + 1), Some(b'"' | b'\'')) {
        i += 1;
    }
    if rest.get(i..)?.starts_with(b"\\\"") {
        let start = i + 2;
        let end = closing_escaped_quote(&rest[start..]).map_or(rest.len(), |e| start + e);
        return Some((start, end, end + 2));
    }
    let &quote @ (b'"' | b'\'') = rest.get(i)? else {
        return None;
    };
    let start = i + 1;
    let end = closing_quote(&rest[start..], quote).map_or(rest.len(), |e| start + e);
    Some((start, end, end + 1))
}

/// The index of the `\"` that closes a string quoted inside a JSON string (`\"…\"`): there,
/// `\\` is a backslash of the quoted text, which escapes the `\"` after it (`\\\"`: a quote
/// inside the quoted string).
fn closing_escaped_quote(s: &[u8]) -> Option<usize> {
    let (mut i, mut escaped) = (0, false);
    while i + 1 < s.len() {
        match (s[i], s[i + 1]) {
            (b'\\', b'"') if !escaped => return Some(i),
            (b'\\', b'\\') => escaped = !escaped,
            (b'\\', _) => escaped = false,
            _ => {
                escaped = false;
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    None
}

/// The index of the first `quote` not escaped by a backslash.
fn closing_quote(s: &[u8], quote: u8) -> Option<usize> {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b if b == quote => return Some(i),
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{cut_inside_url, hide_url_userinfo, is_credential_name, scrub_credentials};

    #[test]
    fn credential_names_are_known_in_any_case_and_spelling() {
        for name in [
            "Authorization",
            "proxy-authorization",
            "HTTP_COOKIE",
            "Set-Cookie",
            "X-API-KEY",
            "x-auth-token",
            "X_Access_Token",
            "client_secret",
            "password",
            "DB_PASSWD",
            "apikey",
            // Any name ending in a `token` part, and camelCase parts.
            "GITHUB_TOKEN",
            "slack_token",
            "X-CSRF-Token",
            "x-amz-security-token",
            "gitlabToken",
            "v2Token",
            "dbPassword",
            "clientSecret",
        ] {
            assert!(is_credential_name(name), "{name}");
        }
        for name in [
            "host",
            "user-agent",
            "secretary",
            "xcookie",
            "cookies",
            "x-request-id",
            "token",
            "Token",
            "TOKEN",
            "_token",
            "-token",
            "tokens",
            "x-tokens",
            "sometoken",
            "GITHUBTOKEN",
            "dbpasswordx",
            "userSecretary",
            "",
        ] {
            assert!(!is_credential_name(name), "{name}");
        }
    }

    fn scrubbed(text: &str) -> String {
        scrub_credentials(text).unwrap_or_else(|| text.to_owned())
    }

    /// Scrubbing what was scrubbed changes nothing (reports read back from disk are scrubbed
    /// again): `Authorization: [redacted]` did become `Authorization: [[redacted]`.
    #[test]
    fn scrubbing_is_idempotent() {
        for text in [
            "Authorization: Bearer s3cret-t0ken and more",
            r#"{"authorization": "Bearer s3cret", "cookie": "sid=c00kie"}"#,
            "password=hunter2 user=bob",
            "db_password: Some(\"hunter2\")",
            "GITHUB_TOKEN=ghp_abc123def456",
            "headers: [(\"x-api-key\", \"k3y\")]",
        ] {
            let once = scrubbed(text);
            assert_ne!(once, text, "nothing hidden in {text:?}");
            assert_eq!(scrubbed(&once), once, "scrubbed again: {once:?}");
        }
        assert_eq!(
            scrubbed("Authorization: <redacted>"),
            "Authorization: <redacted>"
        );
    }

    #[test]
    fn credentials_in_a_message_are_scrubbed() {
        for (text, want) in [
            (
                r#"unexpected request Request { method: GET, headers: {"authorization": "Bearer S1", "cookie": "sid=S2", "host": "h"} }"#,
                r#"unexpected request Request { method: GET, headers: {"authorization": "[redacted]", "cookie": "[redacted]", "host": "h"} }"#,
            ),
            (
                "bad Authorization: Bearer S1 cookie=S2",
                "bad Authorization: [redacted]",
            ),
            (
                r#"{"Set-Cookie":["a=S1", "b=S2"],"Accept":["*/*"]}"#,
                r#"{"Set-Cookie":["[redacted]"],"Accept":["*/*"]}"#,
            ),
            (
                "[('proxy-authorization', 'Basic S1'), ('host', 'h')]",
                "[('proxy-authorization', '[redacted]'), ('host', 'h')]",
            ),
            (
                r#"authorization: Digest username="bob", response="S1""#,
                "authorization: [redacted]",
            ),
            // Ruby, PHP and CGI names, and a scheme's quoted credentials.
            (
                r#"{"HTTP_AUTHORIZATION"=>"Bearer S1", "PATH_INFO"=>"/"}"#,
                r#"{"HTTP_AUTHORIZATION"=>"[redacted]", "PATH_INFO"=>"/"}"#,
            ),
            (
                r#"{authorization => "S1", host => "h"}"#,
                r#"{authorization => "[redacted]", host => "h"}"#,
            ),
            (
                r#"Authorization: Basic "S1" S2"#,
                "Authorization: [redacted]",
            ),
            ("    [HTTP_COOKIE] => S1", "    [HTTP_COOKIE] => [redacted]"),
            // API keys, tokens and passwords, `_` read as `-`, as the last part of a name.
            (
                r#"{"x-api-key": "S1", "X-Auth-Token": "S2", "host": "h"}"#,
                r#"{"x-api-key": "[redacted]", "X-Auth-Token": "[redacted]", "host": "h"}"#,
            ),
            ("HTTP_X_API_KEY=S1 PATH_INFO=/", "HTTP_X_API_KEY=[redacted]"),
            (
                r#"Config { db_password: "S1", client_secret: "S2", port: 80 }"#,
                r#"Config { db_password: "[redacted]", client_secret: "[redacted]", port: 80 }"#,
            ),
            (
                "grant_type=refresh_token&refresh_token=S1",
                "grant_type=refresh_token&refresh_token=[redacted]",
            ),
            // Go's `[][2]string` and a list of `[name, value]` pairs.
            (
                r#"[["authorization","Bearer S1"],["host","h"]]"#,
                r#"[["authorization","[redacted]"],["host","h"]]"#,
            ),
            // A bare `Bearer` token: a JWT, an opaque one with a digit, base64 with `=`.
            (
                "rejected Bearer eyJhbGciOi.eyJzdWIi.S1sig for /x",
                "rejected Bearer [redacted] for /x",
            ),
            (
                "token (bearer 0123456789abcdef)",
                "token (bearer [redacted])",
            ),
            ("BEARER  dGVzdDoxMjM0NTY3OA== at", "BEARER  [redacted] at"),
            ("Bearer\teyJhbGciOi.x1 at", "Bearer\t[redacted] at"),
            (
                "Bearer abcdefghijklmnopqrstuvwxyzABCDEFGHIJ",
                "Bearer [redacted]",
            ),
            // A Rust `Debug`: `Some("…")`, a newtype, nested, and what is no credential.
            (
                r#"Config { db_password: Some("S1"), port: 5432 }"#,
                r#"Config { db_password: Some("[redacted]"), port: 5432 }"#,
            ),
            (
                r#"Keys { api_key: Secret("S1"), token: Some(Secret("x")), id_token: Some(Secret("S2")) }"#,
                r#"Keys { api_key: Secret("[redacted]"), token: Some(Secret("x")), id_token: Some(Secret("[redacted]")) }"#,
            ),
            (
                r#"Config { password: None, host: "db", secret: null }"#,
                r#"Config { password: None, host: "db", secret: null }"#,
            ),
            (
                r#"Opts { password: Some(SecretString { inner: "S1" }) }"#,
                "Opts { password: [redacted]",
            ),
            // camelCase, and names whose last part is a credential's.
            (
                r#"{"dbPassword":"S1","clientSecret":"S2","accessToken":"S3","userName":"u"}"#,
                r#"{"dbPassword":"[redacted]","clientSecret":"[redacted]","accessToken":"[redacted]","userName":"u"}"#,
            ),
            (
                "SECRET_KEY=S1 AWS_SECRET_ACCESS_KEY=S2",
                "SECRET_KEY=[redacted]",
            ),
            ("PRIVATE-TOKEN: S1", "PRIVATE-TOKEN: [redacted]"),
            // Any name ending in a `token` part: `_`, `-` or camelCase.
            (
                "GITHUB_TOKEN=ghp_abc123S1 NPM_TOKEN=S2",
                "GITHUB_TOKEN=[redacted]",
            ),
            (
                "export SLACK_TOKEN='xoxb-S1' ok",
                "export SLACK_TOKEN='[redacted]' ok",
            ),
            (
                r#"{"x-csrf-token": "S1", "x-amz-security-token": "S2", "host": "h"}"#,
                r#"{"x-csrf-token": "[redacted]", "x-amz-security-token": "[redacted]", "host": "h"}"#,
            ),
            (
                r#"Cfg { gitlabToken: "S1", v2Token: Some("S2") }"#,
                r#"Cfg { gitlabToken: "[redacted]", v2Token: Some("[redacted]") }"#,
            ),
        ] {
            assert_eq!(scrubbed(text), want, "{text}");
        }
        for text in [
            "boom",
            "no cookie, sorry",
            "xcookie=1",
            "Authorization:",
            "",
            // Not a pair, or a longer word.
            "passwords: 3 attempts left",
            "passwordless=true secretary=bob api_keys: 2",
            "unexpected token: `}` at 3:4",
            // Code, not credentials: a path, a count, a type.
            "ERROR lexer::expect_token: unexpected } at line 3",
            "usage prompt_token=12 completion_token=30",
            "Ctx { cancel_token: CancellationToken {..}, user: \"bob\" }",
            // Prose, a short word, or inside a word: not a token.
            "only the bearer credentials holder",
            "Bearer abc12",
            "unbearer 0123456789abcdef",
            "Bearer: ",
            "passwordsLeft: 3 userSecretary: bob",
            // `token` alone, or after a blank, is prose.
            "unexpected token: foo",
            "invalid token at line 3",
            "parse error: expected token = `;`",
            "Token: `}` unexpected",
            "TOKEN=x _token=y tokens: 3 x_tokens=4 sometoken=5",
        ] {
            assert_eq!(scrub_credentials(text), None, "{text}");
        }
    }

    /// Found by review: a URL's query token (`uri: /dbg?token=…`, OAuth's `?code=…`) and a
    /// JWT quoted outside an `Authorization` (`{"jwt": "eyJ…"}`) reached reports and logs.
    #[test]
    fn query_credentials_and_jwts_are_hidden_wherever_they_are() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJlX2hlcmU";
        for (text, want) in [
            (
                "uri: /dbg?token=S3cr3t&page=2",
                "uri: /dbg?token=[redacted]&page=2",
            ),
            (
                "GET /cb?state=x&code=4/0AX4XfWh#frag",
                "GET /cb?state=x&code=[redacted]#frag",
            ),
            (
                "fetch https://b.s3/o?X-Amz-Signature=abc123&X-Amz-Date=1",
                "fetch https://b.s3/o?X-Amz-Signature=[redacted]&X-Amz-Date=1",
            ),
            (
                r#""referer": "https://x/y?sid=SeSS10n""#,
                r#""referer": "https://x/y?sid=[redacted]""#,
            ),
            (
                &format!(r#"{{"jwt": "{jwt}"}}"#),
                r#"{"jwt": "[redacted]"}"#,
            ),
            (
                &format!("claims of {jwt} invalid"),
                "claims of [redacted] invalid",
            ),
            (
                &format!("/login?next=/&t={jwt}"),
                "/login?next=/&t=[redacted]",
            ),
        ] {
            assert_eq!(scrubbed(text), want, "{text}");
            assert_eq!(scrubbed(want), want, "scrubbed again: {want}");
        }
        // Words elsewhere, and what is not a JWT: as they are.
        for text in [
            "unexpected code: 3 at key=value",
            "GET /items?page=2&sort=name",
            "GET /search?q=token&code=",
            "eyJ short.eyJ.x",
            "xeyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.sig",
        ] {
            assert_eq!(scrub_credentials(text), None, "{text}");
        }
    }

    /// Each `eyJ` of a run starts no scan of its own: linear, not quadratic, in the run.
    #[test]
    fn a_long_run_of_jwt_starts_is_scanned_once() {
        let text = "eyJ-".repeat(250_000);
        let started = std::time::Instant::now();
        assert_eq!(scrub_credentials(&text), None);
        // Quadratic would be ~10^10 steps (minutes); linear is milliseconds. Slack for CI.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    /// Found by review: `cut_inside_url` took the last `://`, so a text cut inside a password
    /// holding a `://` kept what came before it (`redis://u:pa://…`).
    #[test]
    fn a_cut_inside_a_password_holding_a_scheme_separator_keeps_none_of_it() {
        for (text, want) in [
            ("redis://u:pa://ss", Some("redis://".len())),
            ("redis://u:pa://ss@ho", Some("redis://".len())),
            ("at redis://:pw://x", Some("at redis://".len())),
            ("ftp://u:a/b://c:d/e", Some("ftp://".len())),
            ("ftp://u:a/b://c:d/e@h", Some("ftp://".len())),
            // The first `://` whose user info the end may be in: one past a host is not.
            (
                "see https://a.example/x?next=https://u:p",
                Some("see https://a.example/x?next=https://".len()),
            ),
            (
                "a://h:8080/x b://u:pa://ss",
                Some("a://h:8080/x b://".len()),
            ),
            ("see https://example.com/doc", None),
            ("postgres://app:pw@db/x", None),
            ("https://h:8080/x://", None),
            ("https://", None),
            ("redis://u:pa://ss@host/x done", None),
        ] {
            assert_eq!(cut_inside_url(text), want, "{text}");
        }
        for (text, want) in [
            ("redis://u:pa://ss@host", Some("redis://…@host")),
            ("x redis://u:pa://ss@host/0 y", Some("x redis://…@host/0 y")),
            ("postgres://u:a://b/c@db/x", Some("postgres://…@db/x")),
        ] {
            assert_eq!(hide_url_userinfo(text).as_deref(), want, "{text}");
        }
    }

    /// Found by review: a URL whose slashes a JSON encoder escaped (`:\/\/`, as Go's and PHP's
    /// write them) kept its password.
    #[test]
    fn a_json_escaped_urls_user_info_is_hidden() {
        for (text, want) in [
            (
                r#"{"dsn":"postgres:\/\/user:hunter2@db\/x"}"#,
                Some(r#"{"dsn":"postgres:\/\/…@db\/x"}"#),
            ),
            (
                r#"{"msg":"dial redis:\/\/:S1@cache:6379: refused"}"#,
                Some(r#"{"msg":"dial redis:\/\/…@cache:6379: refused"}"#),
            ),
            (
                r#""postgres:\/\/app:Ab3\/x+Yz==@db:5432\/app""#,
                Some(r#""postgres:\/\/…@db:5432\/app""#),
            ),
            (
                r#"a https:\/\/u:S1@one\/x and https://u:S2@two/x"#,
                Some(r#"a https:\/\/…@one\/x and https://…@two/x"#),
            ),
            // No user info: left as written.
            (r#""https:\/\/example.com\/users\/me@x.org""#, None),
            (r#""https:\/\/h:8080\/a@b""#, None),
            (
                r#""see https:\/\/host\/x", "mail": "bob@example.com""#,
                None,
            ),
        ] {
            assert_eq!(hide_url_userinfo(text).as_deref(), want, "{text}");
        }
        for (text, want) in [
            (
                r#"failed: postgres:\/\/app:s3c"#,
                Some(r#"failed: postgres:\/\/"#.len()),
            ),
            (
                r#"postgres:\/\/app:Ab3\/x+Y"#,
                Some(r#"postgres:\/\/"#.len()),
            ),
            (r#"postgres:\/\/app:pw\"#, Some(r#"postgres:\/\/"#.len())),
            (r#"postgres:\/\/db:5432\/x"#, None),
            (r#"postgres:\/\/app:pw@db\/x"#, None),
        ] {
            assert_eq!(cut_inside_url(text), want, "{text}");
        }
    }
}
