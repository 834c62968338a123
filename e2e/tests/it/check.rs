//! What the walk expects to see, as assertions that say which page disappointed them.

use fantoccini::Client;

use crate::find;

/// The browser shows `path` (query ignored).
pub async fn at(client: &Client, path: &str) {
    let shown = find::path(client).await;
    let without_query = shown.split('?').next().unwrap_or_default();
    assert_eq!(
        without_query, path,
        "expected to be on {path}, but the browser shows {shown}"
    );
}

/// The page's notice (`.notice`) says `words`.
pub async fn notice(client: &Client, words: &str) {
    let notice = find::text(client, "p.notice").await;
    assert!(
        notice.contains(words),
        "expected a notice with {words:?} on {}, got {notice:?}",
        find::path(client).await
    );
}

/// The page has no form errors: it would say why a form was refused.
pub async fn no_form_errors(client: &Client) {
    let errors = client
        .execute(
            "return Array.from(document.querySelectorAll('.form-error, .field-error'))\
             .map(e => e.textContent.trim())",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        errors,
        serde_json::json!([]),
        "the form on {} was refused",
        find::path(client).await
    );
}

/// The element matching `css` says `words`.
pub async fn says(client: &Client, css: &str, words: &str) {
    let text = find::text(client, css).await;
    assert!(
        text.contains(words),
        "expected {css:?} on {} to say {words:?}, got {text:?}",
        find::path(client).await
    );
}

/// The stylesheet loaded and applies: `/static/app.css` has rules and sets the body's font.
pub async fn styled(client: &Client) {
    let rules = client
        .execute(
            "const sheet = Array.from(document.styleSheets)\
               .find(s => s.href && s.href.endsWith('/static/app.css'));\
             return sheet ? sheet.cssRules.length : -1;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        rules.as_i64().unwrap_or(-1) > 0,
        "/static/app.css did not load on {} ({rules} rules)",
        find::path(client).await
    );
}

/// An amount shown as `$1.23` is more than nothing.
#[track_caller]
pub fn more_than_zero(what: &str, shown: &str) {
    let digits = shown.trim().trim_start_matches('$');
    assert!(
        !shown.trim().starts_with('-') && digits.chars().any(|c| ('1'..='9').contains(&c)),
        "{what} is {shown:?}, expected more than $0.00"
    );
}

/// The page does not scroll sideways: it fits the window it is shown in.
pub async fn fits_width(client: &Client) {
    let sizes = client
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            vec![],
        )
        .await
        .unwrap();
    let page = sizes[0].as_u64().unwrap();
    let window = sizes[1].as_u64().unwrap();
    assert!(
        page <= window,
        "{} is {page} px wide in a {window} px window",
        find::path(client).await
    );
}
