//! A real browser for the web UI's stories: headless Chromium driven through chromedriver
//! (WebDriver, with fantoccini), so a test clicks, types, waits and looks as a person would,
//! with the UI's own script and CSP in force.
//!
//! Each [`Chromium`] starts a `chromedriver --port=<free>` of its own on 127.0.0.1 and talks
//! to it over plain http; dropping it ends the session and the driver's process group (the
//! Chromium it started included). Only one browser runs at a time in a test process: on a
//! small machine two Chromiums starve each other and bounded waits turn into flakes.
//!
//! [`crate::web::Browser`] is the other way in: plain HTTP, as a browser without JavaScript.
//!
//! Finding the driver: `$BATON_CHROMEDRIVER`, else `chromedriver` on the `PATH`; the browser
//! is `$BATON_CHROMIUM` when set, else the one the driver finds (Debian's `chromium-driver`
//! finds `chromium`). Without them a test fails with a message naming the fix;
//! `scripts/test.sh` installs both.
//!
//! Screenshots: [`Chromium::screenshot`] always takes one (so the path is tested) and writes it
//! to `docs/ui/<name>.png` only when `BATON_UI_SCREENSHOTS=1`, so that an ordinary test run
//! leaves the committed pictures alone. `BATON_UI_SCREENSHOTS=1 cargo test -p baton-cli
//! --test ui` takes them all again.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Keys such as Tab and Enter, for [`Chromium::press`].
pub use fantoccini::key::Key;

/// How long a wait for something on a page may last before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);
/// The longest one WebDriver command may take (a page load included).
const COMMAND_LIMIT: Duration = Duration::from_secs(60);
/// The window of every session: a laptop's.
const WINDOW: (u32, u32) = (1280, 900);
/// A phone's viewport, for [`Chromium::phone`].
const PHONE: (u32, u32) = (375, 812);

/// One browser at a time per test process (see the module's text).
static TURN: Mutex<()> = Mutex::new(());

/// A headless Chromium looking at one baton.
pub struct Chromium {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    driver_log: tempfile::NamedTempFile,
    base: String,
    _turn: MutexGuard<'static, ()>,
}

impl Chromium {
    /// Starts chromedriver and a headless Chromium session for the baton at `base`
    /// (`http://127.0.0.1:PORT`, as [`crate::Server::url`]).
    pub fn open(base: &str) -> Self {
        // A story that failed while holding the turn poisons it; the next one may go on.
        let turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let program = chromedriver();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let driver_log = tempfile::NamedTempFile::new().expect("a log file for chromedriver");
        let (driver, port) = start_driver(&program, &driver_log);
        let mut browser = Self {
            runtime,
            client: None,
            driver,
            driver_log,
            base: base.trim_end_matches('/').to_owned(),
            _turn: turn,
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let capabilities = capabilities();
        let address = format!("http://127.0.0.1:{port}");
        let connected = browser.block_on("opening a Chromium session", async {
            ClientBuilder::new(connector)
                .capabilities(capabilities)
                .connect(&address)
                .await
        });
        match connected {
            Ok(client) => browser.client = Some(client),
            Err(e) => panic!(
                "chromedriver could not start Chromium ({e}); is Debian's `chromium` installed \
                 (`apt-get install -y chromium chromium-driver`, as scripts/test.sh does)?\n\
                 chromedriver said:\n{}",
                browser.driver_log()
            ),
        }
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("an open session")
    }

    /// Runs one WebDriver exchange, bounded by [`COMMAND_LIMIT`].
    fn block_on<T>(&self, what: &str, work: impl Future<Output = T>) -> T {
        self.runtime
            .block_on(async { tokio::time::timeout(COMMAND_LIMIT, work).await })
            .unwrap_or_else(|_| panic!("{what}: no answer from chromedriver in {COMMAND_LIMIT:?}"))
    }

    /// Runs a WebDriver command that must succeed, failing the test with `what` otherwise.
    fn must<T, E: std::fmt::Display>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, E>>,
    ) -> T {
        self.block_on(what, work)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", self.whereabouts()))
    }

    /// The absolute address of `path` on baton (an absolute address stays as it is).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            path.to_owned()
        }
    }

    /// Loads `path` (on baton, or an absolute address) and waits for the page to load.
    pub fn goto(&self, path: &str) {
        let url = self.url(path);
        self.must(&format!("loading {url}"), self.client().goto(&url));
    }

    /// Goes back one page in the history, as the browser's Back button does (the page may
    /// come back from the back/forward cache, as it was, scripts and all).
    pub fn back(&self) {
        self.must("going back", self.client().back());
    }

    /// The address shown, as path and query (`/runs?status=failed`).
    pub fn path(&self) -> String {
        let url = self.must("reading the address", self.client().current_url());
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Signs in on `/login` with an API token, as a person types it, and waits to be let in.
    pub fn sign_in(&self, token: &str) {
        self.goto("/login");
        self.fill("input[name=token]", token);
        self.click("form[action='/login'] button[type=submit]");
        self.wait_until("the sign-in to let us in", |b| {
            !b.path().starts_with("/login") && b.exists("form.who")
        });
    }

    /// The form token of the page's session (`<meta name="baton-csrf">`).
    pub fn form_token(&self) -> String {
        self.attr("meta[name=baton-csrf]", "content")
            .unwrap_or_else(|| panic!("the page has no form token\n{}", self.whereabouts()))
    }

    /// True when an element matches `css`.
    pub fn exists(&self, css: &str) -> bool {
        self.count(css) > 0
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> usize {
        self.must(
            &format!("looking for {css}"),
            self.client().find_all(Locator::Css(css)),
        )
        .len()
    }

    /// The text shown in the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        self.read(css, &format!("reading the text of {css}"), |e| async move {
            e.text().await
        })
    }

    /// Attribute `name` of the first element matching `css`.
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.read(css, &format!("reading {name} of {css}"), |e| async move {
            e.attr(name).await
        })
    }

    /// Finds the first element matching `css` and reads it with `read`. A live page replaces
    /// its parts while they are read, which leaves a found element stale: it is found again,
    /// within the usual bounded wait.
    fn read<T, F>(
        &self,
        css: &str,
        what: &str,
        read: impl Fn(fantoccini::elements::Element) -> F,
    ) -> T
    where
        F: Future<Output = Result<T, fantoccini::error::CmdError>>,
    {
        let begun = Instant::now();
        loop {
            let element = self.element(css);
            match self.block_on(what, read(element)) {
                Ok(value) => return value,
                Err(e) if e.to_string().contains("stale element") && begun.elapsed() < WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{what}: {e}\n{}", self.whereabouts()),
            }
        }
    }

    /// The current value of the field matching `css` (what was typed or chosen, where the
    /// `value` attribute holds only what the page came with).
    pub fn value(&self, css: &str) -> String {
        self.read(
            css,
            &format!("reading the value of {css}"),
            |e| async move { e.prop("value").await },
        )
        .unwrap_or_default()
    }

    /// Clicks the first element matching `css`.
    pub fn click(&self, css: &str) {
        self.read(css, &format!("clicking {css}"), |e| async move {
            e.click().await.map(drop)
        });
    }

    /// Replaces the text of the field matching `css` with `text`, typed key by key.
    pub fn fill(&self, css: &str, text: &str) {
        let element = self.element(css);
        self.must(&format!("clearing {css}"), element.clear());
        self.must(&format!("typing into {css}"), element.send_keys(text));
    }

    /// Moves the keyboard focus to the first element matching `css`, as Tab would.
    pub fn focus(&self, css: &str) {
        let found = self.script(
            "const e = document.querySelector(arguments[0]); if (e) e.focus(); \
             return e !== null && document.activeElement === e;",
            vec![json!(css)],
        );
        assert_eq!(found, json!(true), "{css} cannot take the focus");
    }

    /// Presses `key` in whatever has the keyboard focus.
    pub fn press(&self, key: Key) {
        let focused = self.must("finding the focus", self.client().active_element());
        self.must(
            &format!("pressing {key:?}"),
            focused.send_keys(&key.to_string()),
        );
    }

    /// Picks the option with `value` in the `<select>` matching `css`.
    pub fn select(&self, css: &str, value: &str) {
        let element = self.element(css);
        self.must(
            &format!("choosing {value} in {css}"),
            element.select_by_value(value),
        );
    }

    fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.must(
            &format!("finding {css}"),
            self.client().find(Locator::Css(css)),
        )
    }

    /// The page's markup as the browser holds it now (after any script changed it).
    pub fn html(&self) -> String {
        self.must("reading the page", self.client().source())
    }

    /// Runs `script` (a function body; its arguments are `arguments[0]`, …) in the page and
    /// returns what it returns.
    pub fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.must(
            "running a script in the page",
            self.client().execute(script, args),
        )
    }

    /// Runs `script` in the page and waits for it to call its last argument (the callback
    /// WebDriver adds) with a result, for work such as `fetch`.
    pub fn script_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.must(
            "running an asynchronous script in the page",
            self.client().execute_async(script, args),
        )
    }

    /// Waits up to [`WAIT`] until `check` holds, looking again every 100 ms; fails the test
    /// with `what`, the address and the page's text otherwise.
    pub fn wait_until(&self, what: &str, mut check: impl FnMut(&Self) -> bool) {
        let begun = Instant::now();
        while !check(self) {
            assert!(
                begun.elapsed() < WAIT,
                "timed out after {WAIT:?} waiting for {what}\n{}",
                self.whereabouts()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until an element matches `css`.
    pub fn wait_for(&self, css: &str) {
        self.wait_until(&format!("{css} to appear"), |b| b.exists(css));
    }

    /// Waits for a `confirm()` dialog, accepts it as a person clicking OK would, and returns
    /// its question.
    pub fn accept_confirm(&self) -> String {
        let question = self.dialog_text();
        self.must("accepting the dialog", self.client().accept_alert());
        question
    }

    /// Waits for a `confirm()` dialog, dismisses it (Cancel) and returns its question.
    pub fn dismiss_confirm(&self) -> String {
        let question = self.dialog_text();
        self.must("dismissing the dialog", self.client().dismiss_alert());
        question
    }

    fn dialog_text(&self) -> String {
        let begun = Instant::now();
        loop {
            match self.block_on("looking for a dialog", self.client().get_alert_text()) {
                Ok(text) => return text,
                Err(e) if e.is_no_such_alert() && begun.elapsed() < WAIT => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("no dialog opened within {WAIT:?} ({e})"),
            }
        }
    }

    /// Sends a Chrome DevTools Protocol command through chromedriver and returns its answer.
    pub fn devtools(&self, command: &str, params: Value) -> Value {
        let request = DevTools {
            command: command.to_owned(),
            params,
        };
        self.must(
            &format!("DevTools {command}"),
            self.client().issue_cmd(request),
        )
    }

    /// Saves what pages download into `dir`, without asking.
    pub fn download_into(&self, dir: &std::path::Path) {
        self.devtools(
            "Browser.setDownloadBehavior",
            json!({ "behavior": "allow", "downloadPath": dir.display().to_string() }),
        );
    }

    /// Shows pages as a phone does: 375 CSS pixels wide, touch, twice the pixels.
    pub fn phone(&self) {
        self.devtools(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": PHONE.0, "height": PHONE.1, "deviceScaleFactor": 2, "mobile": true }),
        );
    }

    /// Back to the laptop's window after [`Chromium::phone`].
    pub fn laptop(&self) {
        self.devtools("Emulation.clearDeviceMetricsOverride", json!({}));
    }

    /// Asks pages for their dark colours (`prefers-color-scheme: dark`), or light ones.
    pub fn dark_mode(&self, dark: bool) {
        let scheme = if dark { "dark" } else { "light" };
        self.devtools(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        );
    }

    /// Takes a screenshot of what the window shows, checks that it is a PNG, and writes it to
    /// `docs/ui/<name>.png` when `BATON_UI_SCREENSHOTS=1`. Returns where it was written.
    pub fn screenshot(&self, name: &str) -> Option<PathBuf> {
        let png = self.must("taking a screenshot", self.client().screenshot());
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "the screenshot is not a PNG"
        );
        if std::env::var("BATON_UI_SCREENSHOTS").as_deref() != Ok("1") {
            return None;
        }
        let dir = crate::repo_root().join("docs/ui");
        std::fs::create_dir_all(&dir).expect("docs/ui");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Some(path)
    }

    /// The address and the start of the page's text, for a failure's message.
    fn whereabouts(&self) -> String {
        let Some(client) = self.client.as_ref() else {
            return String::new();
        };
        let seen = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), async {
                let url = client.current_url().await.ok()?;
                let body = client.find(Locator::Css("body")).await.ok()?;
                Some((url, body.text().await.unwrap_or_default()))
            })
            .await
        });
        match seen {
            Ok(Some((url, text))) => {
                let text: String = text.chars().take(2000).collect();
                format!("at {url}, the page reads:\n{text}")
            }
            _ => "(the page could not be read: is a dialog open?)".to_owned(),
        }
    }

    fn driver_log(&self) -> String {
        std::fs::read_to_string(self.driver_log.path()).unwrap_or_default()
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Ends the session, so chromedriver closes Chromium and removes its profile.
            let _ = self.runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.close()).await
            });
        }
        // Whatever is left of the driver's process group (a Chromium that did not close).
        if let Ok(group) = i32::try_from(self.driver.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(group),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.driver.wait();
    }
}

/// The chromedriver to run, or a failure that says how to get one.
fn chromedriver() -> PathBuf {
    if let Some(path) = std::env::var_os("BATON_CHROMEDRIVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "BATON_CHROMEDRIVER names {}, which does not exist",
            path.display()
        );
        return path;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromedriver"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromedriver is not installed: the web UI's tests drive a real Chromium. \
                 Run scripts/test.sh (it installs them), or `apt-get install -y chromium \
                 chromium-driver`, or set BATON_CHROMEDRIVER to a chromedriver"
            )
        })
}

/// Starts `program` on a free port and waits until it is ready for sessions.
fn start_driver(program: &std::path::Path, log: &tempfile::NamedTempFile) -> (Child, u16) {
    use std::os::unix::process::CommandExt as _;
    // Another process may take the port between our look and the driver's bind: try again.
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let output = log.reopen().expect("chromedriver's log");
        let errors = output.try_clone().expect("chromedriver's log");
        let mut child = Command::new(program)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            // A group of its own, so that the Chromium it starts can be ended with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let begun = Instant::now();
        while begun.elapsed() < Duration::from_secs(10) {
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            let ready = agent
                .get(&format!("http://127.0.0.1:{port}/status"))
                .call()
                .ok()
                .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
                .is_some_and(|status| status["value"]["ready"] == true);
            if ready {
                return (child, port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!(
        "{} did not become ready:\n{}",
        program.display(),
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
}

/// A headless Chromium with a laptop's window, that leaves dialogs for the test to answer.
fn capabilities() -> Capabilities {
    let mut options = json!({
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
        ],
    });
    if let Some(binary) = std::env::var_os("BATON_CHROMIUM") {
        options["binary"] = json!(binary.to_string_lossy());
    }
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": options,
        "timeouts": { "pageLoad": 30_000, "script": 30_000, "implicit": 0 },
        // A confirm() stays open until the test accepts or dismisses it.
        "unhandledPromptBehavior": "ignore",
    });
    match capabilities {
        Value::Object(map) => map,
        _ => unreachable!("an object literal"),
    }
}

/// chromedriver's `POST /session/{id}/goog/cdp/execute`: one DevTools command.
#[derive(Debug)]
struct DevTools {
    command: String,
    params: Value,
}

impl WebDriverCompatibleCommand for DevTools {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    // `http` as ureq re-exports it: the same crate fantoccini takes.
    fn method_and_body(&self, _request_url: &url::Url) -> (ureq::http::Method, Option<String>) {
        let body = json!({ "cmd": self.command, "params": self.params });
        (ureq::http::Method::POST, Some(body.to_string()))
    }
}

/// Another site: one fixed HTML page served on a port of its own on 127.0.0.1, until
/// dropped. A form on it that posts to baton is a cross-site request in the browser's eyes
/// (`Sec-Fetch-Site: same-site`, since only the port differs).
pub struct OtherSite {
    /// `http://127.0.0.1:PORT/`.
    pub url: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtherSite {
    /// Serves `html` at every address of a new port.
    pub fn serve(html: &str) -> Self {
        use std::io::{Read as _, Write as _};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.set_nonblocking(true).expect("non-blocking");
        let url = format!("http://{}/", listener.local_addr().expect("address"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
            html.len()
        );
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                        // The request itself does not matter: every address is the page.
                        let mut request = [0u8; 4096];
                        let _ = stream.read(&mut request);
                        let _ = stream.write_all(answer.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self {
            url,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for OtherSite {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
