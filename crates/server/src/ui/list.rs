//! What the lists (`/runs`, `/deliveries`) share: a page of 50 rows paged by key, their
//! addresses with filters, the pager, and a table body that follows changes on the first
//! page only, so that a later page keeps its place while someone reads it.

use axum::http::StatusCode;
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::layout;
use super::session::encode_query;

/// Rows on a page.
pub(crate) const PAGE: u32 = 50;

/// How many rows a list asks the store for: one more than a page, to know whether an
/// older page follows without counting.
pub(crate) const FETCH: u32 = PAGE + 1;

/// `?before=&fragment=`: where a page starts, and whether only its rows are wanted. Read
/// beside a list's own filters (axum reads a query once per extractor).
#[derive(Deserialize, Default)]
pub(crate) struct Paging {
    /// The key of the previous page's last row; none on the first page.
    before: Option<String>,
    /// `rows`: only the table's body, for a live refresh.
    fragment: Option<String>,
}

impl Paging {
    /// The page key as sent, if any.
    pub(crate) fn before(&self) -> Option<&str> {
        self.before.as_deref().filter(|b| !b.is_empty())
    }

    /// Whether only the table's rows are asked for.
    pub(crate) fn rows_only(&self) -> bool {
        self.fragment.as_deref() == Some("rows")
    }
}

/// A list's address with its filters, to which a page key or the rows fragment is added.
#[derive(Debug, Clone)]
pub(crate) struct ListAddress {
    /// `/runs`, `/deliveries`.
    path: &'static str,
    /// The filters in effect, already checked, in the order they are written.
    filters: Vec<(&'static str, String)>,
    /// The event stream the first page follows.
    events: &'static str,
}

impl ListAddress {
    /// The list at `path` without filters.
    pub(crate) fn new(path: &'static str) -> Self {
        Self {
            path,
            filters: Vec::new(),
            events: "/ui/events",
        }
    }

    /// Follows `events` instead of every run's changes (`/ui/events?deliveries`).
    pub(crate) fn following(mut self, events: &'static str) -> Self {
        self.events = events;
        self
    }

    /// Adds filter `name` when it has a value.
    pub(crate) fn filter(mut self, name: &'static str, value: Option<&str>) -> Self {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            self.filters.push((name, value.to_owned()));
        }
        self
    }

    /// The address of the page after the row whose key is `before` (`None`: the first page).
    pub(crate) fn page(&self, before: Option<&str>) -> String {
        self.build(before, false)
    }

    /// The address of the first page's rows alone.
    pub(crate) fn rows(&self) -> String {
        self.build(None, true)
    }

    fn build(&self, before: Option<&str>, rows: bool) -> String {
        let mut pairs: Vec<String> = self
            .filters
            .iter()
            .map(|(name, value)| format!("{name}={}", encode_query(value)))
            .collect();
        if let Some(before) = before {
            pairs.push(format!("before={}", encode_query(before)));
        }
        if rows {
            pairs.push("fragment=rows".to_owned());
        }
        if pairs.is_empty() {
            self.path.to_owned()
        } else {
            format!("{}?{}", self.path, pairs.join("&"))
        }
    }
}

/// Cuts rows fetched [`FETCH`] at a time to a page; the key of its last row when an older
/// page follows.
pub(crate) fn cut<T>(rows: &mut Vec<T>, key: impl FnOnce(&T) -> String) -> Option<String> {
    let more = rows.len() > PAGE as usize;
    rows.truncate(PAGE as usize);
    more.then(|| rows.last().map(key)).flatten()
}

/// The page shown when the store could not list `what` (`runs`, `deliveries`).
pub(crate) fn unavailable(what: &str, error: impl std::fmt::Display) -> Response {
    let mut title = what.to_owned();
    if let Some(first) = title.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    layout::error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("{title} unavailable"),
        &format!("The store could not list {what}: {error}"),
    )
}

/// Where the page says whether it follows changes (filled by the script).
pub(crate) fn live_state(first_page: bool) -> Markup {
    html! {
        @if first_page {
            span.live-state data-live-state aria-live="polite" { }
        }
    }
}

/// A list's table: its head's cells and its rows. With `live`, an event stream and an
/// address, the body is fetched again from the address each time the stream says something
/// changed.
pub(crate) fn table(head: Markup, rows: Markup, live: Option<(&str, &str)>) -> Markup {
    html! {
        div.table {
            table {
                thead { tr { (head) } }
                @if let Some((events, src)) = live {
                    tbody data-live-events=(events) data-live-src=(src) { (rows) }
                } @else {
                    tbody { (rows) }
                }
            }
        }
    }
}

/// The links to the newest page (from a later one) and to the next older page.
pub(crate) fn pager(address: &ListAddress, first_page: bool, next: Option<&str>) -> Markup {
    html! {
        nav.pager aria-label="Pages" {
            @if !first_page {
                a href=(address.page(None)) { "← Newest" }
            }
            @if let Some(next) = next {
                a href=(address.page(Some(next))) rel="next" { "Older →" }
            }
        }
    }
}

/// A page of a list: its table, which follows changes on the first page only (a later page
/// keeps its place while someone reads it), and its pager.
pub(crate) fn paged_table(
    address: &ListAddress,
    first_page: bool,
    head: Markup,
    rows: Markup,
    next: Option<&str>,
) -> Markup {
    html! {
        @if first_page {
            (table(head, rows, Some((address.events, &address.rows()))))
        } @else {
            (table(head, rows, None))
        }
        (pager(address, first_page, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_keep_filters_and_encode_them() {
        let address = ListAddress::new("/deliveries")
            .filter("source", Some("git hub&x"))
            .filter("status", None)
            .filter("event", Some(""));
        assert_eq!(address.page(None), "/deliveries?source=git+hub%26x");
        assert_eq!(
            address.page(Some("41")),
            "/deliveries?source=git+hub%26x&before=41"
        );
        assert_eq!(
            address.rows(),
            "/deliveries?source=git+hub%26x&fragment=rows"
        );
        let bare = ListAddress::new("/runs");
        assert_eq!(bare.page(None), "/runs");
        assert_eq!(bare.rows(), "/runs?fragment=rows");
    }

    #[test]
    fn a_page_is_cut_and_keyed_only_when_more_follow() {
        let mut full: Vec<u32> = (0..FETCH).collect();
        assert_eq!(cut(&mut full, u32::to_string), Some("49".to_owned()));
        assert_eq!(full.len(), PAGE as usize);
        let mut exact: Vec<u32> = (0..PAGE).collect();
        assert_eq!(cut(&mut exact, u32::to_string), None);
        assert_eq!(exact.len(), PAGE as usize);
        let mut empty: Vec<u32> = Vec::new();
        assert_eq!(cut(&mut empty, u32::to_string), None);
    }

    #[test]
    fn only_the_first_page_follows_changes() {
        let address = ListAddress::new("/runs");
        let first = paged_table(&address, true, html! {}, html! {}, Some("k")).into_string();
        assert!(first.contains(r#"data-live-src="/runs?fragment=rows""#));
        assert!(first.contains(r#"href="/runs?before=k""#));
        assert!(!first.contains("Newest"));
        let later = paged_table(&address, false, html! {}, html! {}, None).into_string();
        assert!(!later.contains("data-live-src"));
        assert!(later.contains("Newest") && !later.contains("Older"));
    }
}
