//! Doing things as a person at the browser would: open a page, type into a field, press a
//! button and wait for the page it leads to, sign in and out, and keep a picture of the page.

use std::time::{Duration, Instant};

use fantoccini::Client;

use crate::browser::{Browser, DESKTOP, PHONE};
use crate::find;

/// How long a form submission gets to bring up the next page.
const NAVIGATION: Duration = Duration::from_secs(15);

/// Opens `url` and waits for it to load.
pub async fn open(client: &Client, url: &str) {
    client
        .goto(url)
        .await
        .unwrap_or_else(|err| panic!("cannot open {url}: {err}"));
}

/// Replaces what the field matching `css` holds with `value`.
pub async fn fill(client: &Client, css: &str, value: &str) {
    let field = find::element(client, css).await;
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

/// Clicks the element matching `css` and waits until the page it leads to has loaded.
pub async fn click_to_next_page(client: &Client, css: &str) {
    let old_page = find::element(client, "html").await;
    find::element(client, css).await.click().await.unwrap();
    let started = Instant::now();
    // The old page is gone once its root element is stale. Between two documents the driver
    // may answer with other errors: those only mean "not yet".
    let mut last_error = None;
    loop {
        match old_page.tag_name().await {
            Err(err) if err.is_stale_element_reference() || err.is_no_such_element() => break,
            Err(err) => last_error = Some(err.to_string()),
            Ok(_) => {}
        }
        assert!(
            started.elapsed() < NAVIGATION,
            "clicking {css:?} on {} led nowhere (last error: {last_error:?})",
            find::path(client).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    loop {
        match client.execute("return document.readyState", vec![]).await {
            Ok(state) if state == "complete" => break,
            Ok(_) => {}
            Err(err) => last_error = Some(err.to_string()),
        }
        assert!(
            started.elapsed() < NAVIGATION,
            "the page after clicking {css:?} never loaded (last error: {last_error:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Presses the submit button of the form matching `form`.
pub async fn submit(client: &Client, form: &str) {
    click_to_next_page(client, &format!("{form} button[type=submit]")).await;
}

/// Signs in on `/login`, from wherever the browser is.
pub async fn sign_in(client: &Client, admin_url: &str, email: &str, password: &str) {
    open(client, &format!("{admin_url}/login")).await;
    fill(client, "#email", email).await;
    fill(client, "#password", password).await;
    submit(client, "form[action='/login']").await;
}

/// Presses "Sign out" in the page header.
pub async fn sign_out(client: &Client) {
    submit(client, "form[action='/logout']").await;
}

/// Saves the whole page, not only the window, as `<name>.png`: the window is made as tall as
/// the page for the picture.
pub async fn screenshot(browser: &Browser, name: &str) {
    let client = &browser.client;
    let (width, height) = client.get_window_size().await.unwrap();
    let sizes = client
        .execute(
            "return [Math.ceil(document.documentElement.scrollHeight),\
                     window.outerHeight - window.innerHeight]",
            vec![],
        )
        .await
        .unwrap();
    let (page, frame) = (sizes[0].as_u64().unwrap(), sizes[1].as_u64().unwrap());
    // A window's height counts its frame as well as the page.
    let tall = (page + frame).clamp(height, 6000);
    if tall > height {
        resize(client, (width as u32, tall as u32)).await;
    }
    let png = client.screenshot().await.unwrap();
    if tall > height {
        resize(client, (width as u32, height as u32)).await;
    }
    let path = browser.shots.join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    println!("screenshot {}", path.display());
}

/// Saves the page as a phone shows it, as `<name>.png`, and goes back to the desktop window.
pub async fn phone_screenshot(browser: &Browser, name: &str) {
    resize(&browser.client, PHONE).await;
    screenshot(browser, name).await;
    resize(&browser.client, DESKTOP).await;
}

/// Sets the window to `(width, height)`.
pub async fn resize(client: &Client, (width, height): (u32, u32)) {
    client.set_window_size(width, height).await.unwrap();
}
