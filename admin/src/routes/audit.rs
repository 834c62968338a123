//! `/audit` (owners): the ledger, newest first, filtered, paginated and exportable as CSV,
//! with the hash chain checked on every view.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use domain::LedgerKind;

use crate::actions::AuditQuery;
use crate::error::{AppError, urlencode};
use crate::routes::Query;
use crate::session::Viewer;
use crate::state::AppState;
use crate::views::{self, AuditPage, EntryRow, FieldErrors, Layout};

/// Rows per page.
pub const PAGE_SIZE: i64 = 50;
/// The most rows one CSV export holds.
pub const CSV_MAX_ROWS: i64 = 100_000;

fn filter_query(query: &AuditQuery) -> String {
    [
        ("member", &query.member),
        ("kind", &query.kind),
        ("from", &query.from),
        ("to", &query.to),
    ]
    .iter()
    .map(|(key, value)| format!("{key}={}", urlencode(value.trim())))
    .collect::<Vec<_>>()
    .join("&")
}

/// `GET /audit`.
pub async fn get(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<AuditQuery>,
) -> Result<Response, AppError> {
    let owner = viewer.owner()?;
    let client = state.pool.get().await?;
    let (entries, errors) = match query.filter() {
        Ok(filter) => (
            db::transactions::list_filtered(&client, owner.org.id, &filter, PAGE_SIZE + 1).await?,
            FieldErrors::default(),
        ),
        Err(errors) => (Vec::new(), errors),
    };
    let (chain, from) = db::transactions::verify_since_checkpoint(&client, owner.org.id).await?;
    let (chain_ok, chain_text) = match chain {
        db::transactions::ChainStatus::Intact { n_rows } if from <= 1 => (
            true,
            format!("Hash chain verified: all {n_rows} entries are intact."),
        ),
        db::transactions::ChainStatus::Intact { n_rows } => (
            true,
            format!(
                "Hash chain verified: all {n_rows} entries are intact (entries from {from} on \
                 checked now, the earlier ones within the last day)."
            ),
        ),
        db::transactions::ChainStatus::Broken { seq } => (
            false,
            format!("Hash chain broken at entry {seq}: the ledger was altered outside keycap."),
        ),
    };
    let members = db::members::list(&client, &owner.org).await?;
    let has_more = entries.len() as i64 > PAGE_SIZE;
    let shown: Vec<_> = entries.iter().take(PAGE_SIZE as usize).collect();
    let status = if errors.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let page = AuditPage {
        layout: Layout::new(&viewer, "audit", None),
        next_before: if has_more {
            shown.last().map(|e| e.seq)
        } else {
            None
        },
        entries: shown.iter().map(|e| EntryRow::new(e)).collect(),
        chain_ok,
        chain_text,
        members: members.iter().map(|m| m.email.clone()).collect(),
        kinds: LedgerKind::ALL.iter().map(|k| k.as_str()).collect(),
        filter_query: filter_query(&query),
        member: query.member,
        kind: query.kind,
        from: query.from,
        to: query.to,
        errors,
    };
    Ok(views::render(status, &page))
}

/// One CSV field, quoted when it needs to be, and defused when a spreadsheet would read it as
/// a formula.
fn csv_field(text: &str) -> String {
    // A plain number (a negative amount) is no formula; anything else starting like one is
    // quoted so a spreadsheet shows it as text.
    let is_number = text.parse::<f64>().is_ok_and(f64::is_finite);
    let text = if !is_number && text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The CSV of the ledger rows that match the filters.
pub async fn csv_of(
    state: &AppState,
    viewer: &Viewer,
    query: &AuditQuery,
) -> Result<String, AppError> {
    let owner = viewer.owner()?;
    let filter = query.filter().map_err(|errors| {
        let text: Vec<String> = errors.0.iter().map(|(f, m)| format!("{f}: {m}")).collect();
        AppError::BadRequest(text.join("; "))
    })?;
    let client = state.pool.get().await?;
    let entries =
        db::transactions::list_filtered(&client, owner.org.id, &filter, CSV_MAX_ROWS).await?;
    let mut out = String::from(
        "seq,created_at,kind,actor,member,amount_nanousd,amount_usd,api_key_id,master_key_id,detail,hash\n",
    );
    for e in &entries {
        let created = e
            .created_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let fields = [
            e.seq.to_string(),
            created,
            e.kind.clone(),
            e.actor_email.clone().unwrap_or_default(),
            e.member_email.clone().unwrap_or_default(),
            e.amount_nanousd.to_string(),
            views::usd_input(domain::Money::from_nanos(e.amount_nanousd)),
            e.api_key_id.map(|id| id.to_string()).unwrap_or_default(),
            e.master_key_id.map(|id| id.to_string()).unwrap_or_default(),
            e.detail.to_string(),
            e.hash.clone(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// `GET /audit.csv`.
pub async fn get_csv(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(query): Query<AuditQuery>,
) -> Result<Response, AppError> {
    let csv = csv_of(&state, &viewer, &query).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"keycap-audit.csv\"",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        csv,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::csv_field;

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        let check = |input: &str, expected: &str| assert_eq!(csv_field(input), expected, "{input}");
        check("plain", "plain");
        check("a,b", "\"a,b\"");
        check("say \"hi\"", "\"say \"\"hi\"\"\"");
        check("=cmd()", "'=cmd()");
        check("-5", "-5");
        check("-5+1", "'-5+1");
        check("-0.0001", "-0.0001");
        check("-inf", "'-inf");
        check("{\"a\":1,\"b\":2}", "\"{\"\"a\"\":1,\"\"b\"\":2}\"");
    }
}
