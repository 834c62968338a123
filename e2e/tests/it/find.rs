//! Finding things on the page: elements by CSS selector, waiting for them a little, and the
//! few figures the walk reads.

use std::time::Duration;

use fantoccini::elements::Element;
use fantoccini::{Client, Locator};

/// How long a page gets to show an element.
const WAIT: Duration = Duration::from_secs(10);

/// The element matching `css`, once the page shows it.
pub async fn element(client: &Client, css: &str) -> Element {
    match client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
    {
        Ok(element) => element,
        Err(err) => panic!("no element {css:?} on {}: {err}", path(client).await),
    }
}

/// The visible text of the element matching `css`.
pub async fn text(client: &Client, css: &str) -> String {
    element(client, css).await.text().await.unwrap()
}

/// The path of the page shown, with its query.
pub async fn path(client: &Client) -> String {
    let url = client.current_url().await.unwrap();
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_string(),
    }
}

/// The value of the figure labelled `label` under "Whole org" on an owner's dashboard.
pub async fn org_figure(client: &Client, label: &str) -> String {
    let xpath = format!(
        "//h2[normalize-space()='Whole org']/following-sibling::section[1]\
         //div[contains(@class,'figure')][span[@class='label' and normalize-space()='{label}']]\
         /span[@class='value']"
    );
    let figure = client
        .wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(&xpath))
        .await
        .unwrap_or_else(|err| panic!("no org figure {label:?} on the dashboard: {err}"));
    figure.text().await.unwrap()
}

/// The cells of the first row of the keys table, by column heading.
pub async fn first_key(client: &Client) -> Vec<(String, String)> {
    let table = element(client, "table.keys").await;
    let mut headings = Vec::new();
    for th in table.find_all(Locator::Css("thead th")).await.unwrap() {
        headings.push(th.text().await.unwrap());
    }
    let row = table
        .find(Locator::Css("tbody tr"))
        .await
        .expect("the keys table has a row");
    let mut cells = Vec::new();
    for (heading, td) in headings
        .into_iter()
        .zip(row.find_all(Locator::Css("td")).await.unwrap())
    {
        cells.push((heading, td.text().await.unwrap()));
    }
    cells
}

/// The "What" column of the ledger table, top to bottom.
pub async fn ledger_kinds(client: &Client) -> Vec<String> {
    let table = element(client, "table.ledger").await;
    let mut kinds = Vec::new();
    for cell in table
        .find_all(Locator::Css("tbody tr td:nth-child(3)"))
        .await
        .unwrap()
    {
        kinds.push(cell.text().await.unwrap());
    }
    kinds
}
