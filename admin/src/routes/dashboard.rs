//! `/dashboard`: this month's money, keys, budget alerts, recent activity and a spend chart.
//! Members see their own; owners also see the whole org.

use axum::extract::State;
use axum::response::Response;
use domain::{Money, MonthWindow, Role};

use crate::chart;
use crate::error::AppError;
use crate::routes::NoticeQuery;
use crate::routes::Query;
use crate::session::Viewer;
use crate::state::AppState;
use crate::views::{self, AlertRow, DashboardPage, EntryRow, KeyRow, Layout};

/// `GET /dashboard`.
pub async fn get(
    State(state): State<AppState>,
    viewer: Viewer,
    Query(notice): Query<NoticeQuery>,
) -> Result<Response, AppError> {
    let member = viewer.member()?;
    let now = state.clock.now();
    let window = MonthWindow::containing(now);
    let client = state.pool.get().await?;
    let is_owner = member.role == Role::Owner;
    // Every member's month for an owner, the viewer's own for a member.
    let months = db::members::months(
        &client,
        member.org.id,
        window,
        (!is_owner).then_some(member.membership_id),
    )
    .await?;
    let (month, spent) = months
        .iter()
        .find(|m| m.membership.id == member.membership_id)
        .map(|m| (m.month, m.spent))
        .ok_or_else(|| AppError::NotFound("you are no longer a member of this org".into()))?;
    let email = domain::Email::parse(&viewer.user.email).ok();
    let keys = db::keys::list(
        &client,
        &member.org,
        if is_owner { None } else { email.as_ref() },
    )
    .await?;
    let filter = db::transactions::Filter {
        membership_id: (!is_owner).then_some(member.membership_id),
        ..Default::default()
    };
    let activity = db::transactions::list_filtered(&client, member.org.id, &filter, 10).await?;
    let spend = db::usage::daily_spend(
        &client,
        member.org.id,
        (!is_owner).then_some(member.membership_id),
        window.start,
        window.end,
    )
    .await?;
    let mut org_figures = Vec::new();
    if is_owner {
        let sum = |of: fn(&db::members::MemberMonth) -> Money| {
            months
                .iter()
                .fold(Money::ZERO, |sum, m| sum.saturating_add(of(m)))
        };
        // The org's spend is the chart's: removed members' keys' spend this month included.
        let org_spent = spend
            .iter()
            .fold(Money::ZERO, |sum, (_, day)| sum.saturating_add(*day));
        org_figures = vec![
            ("Members", months.len().to_string()),
            ("Budgets", sum(|m| m.month.budget).to_string()),
            (
                "Given to keys",
                sum(|m| m.month.carved.saturating_sub(m.month.refunded)).to_string(),
            ),
            ("Spent this month", org_spent.to_string()),
        ];
    }
    let alerts = db::alerts::recent(
        &client,
        member.org.id,
        (!is_owner).then_some(member.membership_id),
        20,
    )
    .await?;
    let n_days = (window.end - window.start).whole_days() as u8;
    let page = DashboardPage {
        layout: Layout::new(&viewer, "dashboard", notice.text()),
        month: format!("{} {}", window.start.month(), window.start.year()),
        budget: month.budget.to_string(),
        carved: month.carved.saturating_sub(month.refunded).to_string(),
        available: month.available().to_string(),
        spent: spent.to_string(),
        org_figures,
        keys: keys.iter().take(20).map(|k| KeyRow::new(k, now)).collect(),
        entries: activity.iter().map(EntryRow::new).collect(),
        chart_svg: chart::daily_spend_svg(window.first_day(), n_days, &spend),
        alerts: alerts.iter().map(AlertRow::new).collect(),
    };
    Ok(views::page(&page))
}
