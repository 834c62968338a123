//! `/dashboard`: this month's money, keys, budget alerts, recent activity and a spend chart.
//! Members see their own; owners also see the whole org.

use axum::extract::State;
use axum::response::Response;
use domain::{Money, MonthWindow, Role};

use crate::actions;
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
    let (month, spent) = actions::month_of(&client, member, now).await?;
    let is_owner = member.role == Role::Owner;
    let email = domain::Email::parse(&viewer.user.email).ok();
    let keys = db::keys::list(
        &client,
        &member.org,
        if is_owner { None } else { email.as_ref() },
        now,
    )
    .await?;
    let mut org_figures = Vec::new();
    if is_owner {
        let members = db::members::list(&client, &member.org).await?;
        let spent_by_member = db::members::spent_in(&client, &member.org, window, None).await?;
        let mut budgets = Money::ZERO;
        let mut carved = Money::ZERO;
        for m in &members {
            budgets = budgets.saturating_add(m.monthly_budget);
            let month = db::members::monthly_budget(&client, m, window).await?;
            carved = carved.saturating_add(month.carved.saturating_sub(month.refunded));
        }
        let org_spent = spent_by_member
            .values()
            .fold(Money::ZERO, |sum, m| sum.saturating_add(*m));
        org_figures = vec![
            ("Members", members.len().to_string()),
            ("Budgets", budgets.to_string()),
            ("Given to keys", carved.to_string()),
            ("Spent this month", org_spent.to_string()),
        ];
    }
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
