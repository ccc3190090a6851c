//! `[relays.<name>]`: read into the shared shapes with defaults and inheritance filled in,
//! and every mistake reported at once at its key path.

use std::time::Duration;

use baton_core::{Expr, SecretRef};

use super::{env, fixture, load_in, message_at, no_env, pairs, set};
use crate::*;

const SOURCES: &str = r#"
[sources.github]
kind = "github"
secret = { env = "GITHUB_WEBHOOK_SECRET" }

[sources.gitlab]
kind = "gitlab"
token = { env = "GITLAB_WEBHOOK_TOKEN" }
"#;

const RELAYS: &str = r#"
[relays.mirror]
from = "github"
if = '.ref == "refs/heads/main"'
schedule = ["5s", "5m"]

[[relays.mirror.to]]
name = "ci"
url = "https://hooks.example.net/ci"
sign = { secret = { env = "MIRROR_SECRET" }, scheme = "github" }
headers = { "X-Team" = "db", "Authorization" = { env = "CI_TOKEN" } }
transform = '{ref, after, repository: .repository.full_name}'
timeout = "30s"
concurrency = 4
rate = "50/s"
schedule = ["1s", "2s"]
ordered = false
allow_private = false

[[relays.mirror.to]]
url = "http://chat.example.net:8080/hook"
sign = "none"

[[relays.mirror.to]]
url = "https://old-ci.example.net/"
sign = { scheme = "standard-webhooks", secret = { file = "relay.key" } }
ordered = true
rate = "600/min"
schedule = []

[relays.audit]
from = ["gitlab", "github"]

[[relays.audit.to]]
url = "http://127.0.0.1:9000/audit"
sign = { scheme = "none" }
allow_private = true
rate = "10/h"

[[relays.audit.to]]
url = "https://HOOKS.example.net:443/audit"
sign = "none"
"#;

/// A target with every key at its default but those given.
fn target(name: &str, url: &str, sign: RelaySign, schedule: &[Duration]) -> RelayTarget {
    RelayTarget {
        name: name.to_owned(),
        url: url.to_owned(),
        sign,
        headers: Vec::new(),
        transform: None,
        timeout: Duration::from_secs(15),
        concurrency: 8,
        rate: None,
        schedule: schedule.to_vec(),
        ordered: false,
        allow_private: false,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn a_relay_is_read_with_its_defaults_and_the_schedule_it_inherits() {
    let dir = fixture(&[("baton.toml", &format!("{SOURCES}{RELAYS}"))]);
    let loaded = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap();
    let relays = &loaded.gateway.relays;
    assert_eq!(relays.keys().collect::<Vec<_>>(), ["mirror", "audit"]);

    let relay_schedule = [secs(5), secs(300)];
    let ci = RelayTarget {
        headers: vec![
            (
                "X-Team".to_owned(),
                RelayHeaderValue::Plain("db".to_owned()),
            ),
            (
                "Authorization".to_owned(),
                RelayHeaderValue::Secret(SecretRef::Env("CI_TOKEN".into())),
            ),
        ],
        transform: Some(Expr::compile("{ref, after, repository: .repository.full_name}").unwrap()),
        timeout: secs(30),
        concurrency: 4,
        rate: Some(RelayRate {
            count: 50,
            per: secs(1),
        }),
        ..target(
            "ci",
            "https://hooks.example.net/ci",
            RelaySign::Github(SecretRef::Env("MIRROR_SECRET".into())),
            &[secs(1), secs(2)],
        )
    };
    let chat = target(
        "chat.example.net-8080",
        "http://chat.example.net:8080/hook",
        RelaySign::None,
        &relay_schedule,
    );
    // Ordered sends one at a time, so its concurrency is 1; an empty schedule is one try.
    let old_ci = RelayTarget {
        concurrency: 1,
        ordered: true,
        rate: Some(RelayRate {
            count: 600,
            per: secs(60),
        }),
        ..target(
            "old-ci.example.net",
            "https://old-ci.example.net/",
            RelaySign::StandardWebhooks(SecretRef::File("relay.key".into())),
            &[],
        )
    };
    assert_eq!(
        relays["mirror"],
        RelayConfig {
            from: vec!["github".to_owned()],
            condition: Some(Expr::compile(".ref == \"refs/heads/main\"").unwrap()),
            to: vec![ci, chat, old_ci],
        }
    );

    // Without a schedule anywhere, the default one; a URL's default port is no port.
    let audit = RelayTarget {
        allow_private: true,
        rate: Some(RelayRate {
            count: 10,
            per: secs(3600),
        }),
        ..target(
            "127.0.0.1-9000",
            "http://127.0.0.1:9000/audit",
            RelaySign::None,
            &DEFAULT_RELAY_SCHEDULE,
        )
    };
    let hooks = target(
        "hooks.example.net",
        "https://HOOKS.example.net:443/audit",
        RelaySign::None,
        &DEFAULT_RELAY_SCHEDULE,
    );
    assert_eq!(
        relays["audit"],
        RelayConfig {
            from: vec!["gitlab".to_owned(), "github".to_owned()],
            condition: None,
            to: vec![audit, hooks],
        }
    );
}

#[test]
fn the_sign_shorthand_is_the_table_without_a_secret() {
    let config = |sign: &str| {
        format!(
            "{SOURCES}\n[relays.r]\nfrom = \"github\"\n[[relays.r.to]]\nurl = \"https://x.example.net/\"\nsign = {sign}\n"
        )
    };
    let sign_of = |sign: &str| {
        let dir = fixture(&[("baton.toml", &config(sign))]);
        let loaded = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap();
        loaded.gateway.relays["r"].to[0].sign.clone()
    };
    assert_eq!(sign_of("\"none\""), RelaySign::None);
    assert_eq!(sign_of("{ scheme = \"none\" }"), RelaySign::None);
    assert_eq!(
        sign_of("{ scheme = \"standard-webhooks\", secret = { env = \"K\" } }"),
        RelaySign::StandardWebhooks(SecretRef::Env("K".into()))
    );
}

#[test]
fn relays_are_set_from_the_environment_like_any_key() {
    let dir = fixture(&[("baton.toml", &format!("{SOURCES}{RELAYS}"))]);
    let vars = env(&[
        ("BATON_RELAYS__AUDIT__FROM", "github"),
        ("BATON_RELAYS__AUDIT__IF", ".object_kind == \"push\""),
    ]);
    let loaded = load_in(dir.path(), Some("baton.toml"), &[], vars).unwrap();
    let audit = &loaded.gateway.relays["audit"];
    assert_eq!(audit.from, ["github"]);
    assert_eq!(
        audit.condition.as_ref().map(Expr::source),
        Some(".object_kind == \"push\"")
    );

    let vars = env(&[("BATON_RELAYS__AUDIT__FROM", "jira")]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], vars).unwrap_err();
    let m = message_at(&err, "relays.audit.from");
    assert!(m.contains("unknown source `jira`"), "{m}");
    assert!(m.contains("(set by BATON_RELAYS__AUDIT__FROM)"), "{m}");
}

#[test]
fn relay_secrets_are_among_the_configs_secrets() {
    let dir = fixture(&[("baton.toml", &format!("{SOURCES}{RELAYS}"))]);
    let file = dir.path().join("baton.toml");
    let loaded = load(Some(&file), &[], &super::kinds(), no_env()).unwrap();
    assert_eq!(
        loaded.secret_env_names(),
        [
            "CI_TOKEN",
            "GITHUB_WEBHOOK_SECRET",
            "GITLAB_WEBHOOK_TOKEN",
            "MIRROR_SECRET"
        ]
        .map(String::from)
        .into_iter()
        .collect()
    );

    let vars = env(&[
        ("GITHUB_WEBHOOK_SECRET", "a"),
        ("GITLAB_WEBHOOK_TOKEN", "b"),
    ]);
    let checked = load_reading_secrets(Some(&file), &[], &super::kinds(), vars, SecretsFrom::Here);
    let err = checked.loaded.unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "relays.mirror.to[0].sign.secret"),
            ("baton.toml", "relays.mirror.to[0].headers.Authorization"),
            ("baton.toml", "relays.mirror.to[2].sign.secret"),
        ])
    );
    assert!(message_at(&err, "relays.mirror.to[0].headers.Authorization").contains("CI_TOKEN"));
    assert!(message_at(&err, "relays.mirror.to[2].sign.secret").contains("does not exist"));
}

const MISTAKES: &str = r#"
[relays.mirror]
from = ["github", "jira", "github", "manual"]
if = '.ref =='
schedule = ["5s", "0s", "8d", "soon"]

[[relays.mirror.to]]
url = "ftp://hooks.example.net/ci"
sign = { scheme = "none", secret = { env = "S" } }
headers = { "Content-Type" = "text/plain", "X-Baton-Relay" = "x", "X-Team" = "a", "x-team" = "b", "Bad Header" = "v", "X-Multi" = "a\nb", "X-Num" = 5, "X-Lit" = { value = "x" } }
transform = '{ref'
timeout = "0s"
rate = "50/sec"
ordered = true
concurrency = 4
tiemout = "5s"

[[relays.mirror.to]]
url = "http://127.0.0.1:9000/hook"

[[relays.mirror.to]]
url = "https://user:hunter2@hooks.example.net/x"
sign = { scheme = "gitlab" }

[[relays.mirror.to]]
url = "https://ci.example.net/a"
sign = "none"

[[relays.mirror.to]]
url = "https://ci.example.net/b"
sign = { scheme = "github" }

[[relays.mirror.to]]
name = "Local"
url = "http://localhost/x"
sign = "github"

[[relays.mirror.to]]
url = "http://[::1]:8080/"
sign = "none"

[[relays.mirror.to]]
url = "http://10.0.0.7/"
sign = "none"
allow_private = "yes"

[[relays.mirror.to]]
url = "https://169.254.169.254/latest/meta-data"
sign = { scheme = "standard-webhooks", secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }
concurrency = 0

[[relays.mirror.to]]
url = "https://many.example.net/"
sign = "none"
schedule = ["1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s", "1s"]

[[relays.mirror.to]]
url = "http://10.1.2.3/hook"
sign = "none"
timeout = "11m"

[relays."Bad Name"]
from = "gitlab"
to = []

[relays.lonely]
form = "github"
"#;

#[test]
fn every_relay_mistake_is_reported_at_once_with_its_path() {
    let dir = fixture(&[("baton.toml", &format!("{SOURCES}{MISTAKES}"))]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    let to = |i: usize, key: &str| format!("relays.mirror.to[{i}].{key}");
    let expected: Vec<String> = [
        "relays.mirror.from[1]",
        "relays.mirror.from[2]",
        "relays.mirror.from[3]",
        "relays.mirror.if",
        "relays.mirror.schedule[1]",
        "relays.mirror.schedule[2]",
        "relays.mirror.schedule[3]",
        "relays.Bad Name",
        "relays.Bad Name.to",
        "relays.lonely.form",
        "relays.lonely.from",
        "relays.lonely.to",
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(
        [
            (0, "url"),
            (0, "sign.secret"),
            (0, "headers.Content-Type"),
            (0, "headers.X-Baton-Relay"),
            (0, "headers.x-team"),
            (0, "headers.Bad Header"),
            (0, "headers.X-Multi"),
            (0, "headers.X-Num"),
            (0, "headers.X-Lit"),
            (0, "transform"),
            (0, "timeout"),
            (0, "rate"),
            (0, "concurrency"),
            (0, "tiemout"),
            (1, "url"),
            (1, "sign"),
            (2, "url"),
            (2, "sign.scheme"),
            (4, "name"),
            (4, "sign.secret"),
            (5, "name"),
            (5, "url"),
            (5, "sign"),
            (6, "url"),
            (7, "allow_private"),
            (8, "url"),
            (8, "sign.secret"),
            (8, "concurrency"),
            (9, "schedule"),
            (10, "url"),
            (10, "timeout"),
        ]
        .into_iter()
        .map(|(i, key)| to(i, key)),
    )
    .collect();
    let expected: Vec<(&str, &str)> = expected
        .iter()
        .map(|p| ("baton.toml", p.as_str()))
        .collect();
    assert_eq!(pairs(dir.path(), &err), set(&expected), "{err}");

    let has = |path: &str, texts: &[&str]| {
        let m = message_at(&err, path);
        for text in texts {
            assert!(m.contains(text), "{path}: {m:?} lacks {text:?}");
        }
    };
    has(
        "relays.mirror.from[1]",
        &["unknown source `jira`", "github, gitlab"],
    );
    has(
        "relays.mirror.from[2]",
        &["already listed at relays.mirror.from[0]"],
    );
    has("relays.mirror.from[3]", &["`manual`", "github, gitlab"]);
    has("relays.mirror.if", &["invalid jq expression `.ref ==`"]);
    has("relays.mirror.schedule[1]", &["longer than 0s"]);
    has("relays.mirror.schedule[2]", &["at most 7d"]);
    has("relays.mirror.schedule[3]", &["`soon` is not a duration"]);
    has(&to(0, "url"), &["`ftp:`", "`https://…` or `http://…`"]);
    has(
        &to(0, "sign.secret"),
        &["`scheme = \"none\"` sends unsigned"],
    );
    has(
        &to(0, "headers.Content-Type"),
        &["baton sets `Content-Type` itself", "body"],
    );
    has(&to(0, "headers.X-Baton-Relay"), &["baton's own"]);
    has(
        &to(0, "headers.x-team"),
        &["already set as `X-Team`", "whatever their case"],
    );
    has(&to(0, "headers.Bad Header"), &["not an HTTP header name"]);
    has(&to(0, "headers.X-Multi"), &["control character"]);
    has(
        &to(0, "headers.X-Num"),
        &["text or a secret reference", "a number"],
    );
    has(&to(0, "headers.X-Lit"), &["expected a secret reference"]);
    has(&to(0, "transform"), &["invalid jq expression `{ref`"]);
    has(&to(0, "timeout"), &["longer than 0s"]);
    has(
        &to(0, "rate"),
        &["`50/sec` is not a rate", "`N/s`, `N/min` or `N/h`"],
    );
    has(&to(0, "concurrency"), &["`ordered = true`", "set it to 1"]);
    has(&to(0, "tiemout"), &["did you mean `timeout`?"]);
    has(
        &to(1, "url"),
        &[
            "`127.0.0.1` is in the loopback address range",
            "`allow_private = true`",
        ],
    );
    has(
        &to(1, "sign"),
        &[
            "missing required key `sign`",
            "`sign = { scheme = \"none\" }`",
        ],
    );
    has(
        &to(2, "url"),
        &["credentials", "`headers` with a secret reference"],
    );
    assert!(!err.to_string().contains("hunter2"), "{err}");
    has(
        &to(2, "sign.scheme"),
        &[
            "unknown signing scheme `gitlab`",
            "github, standard-webhooks, none",
        ],
    );
    has(
        &to(4, "name"),
        &[
            "relays.mirror.to[3] is also named `ci.example.net`",
            "give each target a `name`",
        ],
    );
    has(&to(4, "sign.secret"), &["missing required key `secret`"]);
    has(&to(5, "name"), &["`Local` cannot be a target name"]);
    has(
        &to(5, "url"),
        &["`localhost` is in the loopback address range"],
    );
    has(&to(5, "sign"), &["`github` signs with a secret"]);
    has(&to(6, "url"), &["`[::1]` is in the loopback address range"]);
    has(
        &to(8, "url"),
        &["`169.254.169.254` is in the link-local address range"],
    );
    has(&to(8, "sign.secret"), &["a literal secret is not allowed"]);
    has(
        &to(8, "concurrency"),
        &["0 is out of range: expected 1 to 1024"],
    );
    has(
        &to(9, "schedule"),
        &["31 delays are too many: expected at most 30"],
    );
    has(
        &to(10, "url"),
        &["`10.1.2.3` is in the private address range"],
    );
    has(&to(10, "timeout"), &["at most 10m"]);
    has("relays.Bad Name", &["cannot be a relay name"]);
    has("relays.Bad Name.to", &["at least one target"]);
    has("relays.lonely.form", &["did you mean `from`?"]);
    has("relays.lonely.from", &["missing required key `from`"]);
    has(
        "relays.lonely.to",
        &["missing required key `to`", "[[relays.lonely.to]]"],
    );
}

#[test]
fn private_addresses_need_allow_private_however_they_are_written() {
    for (url, host, range) in [
        ("http://127.0.0.1:9000/", "127.0.0.1", "loopback"),
        ("http://localhost/x", "localhost", "loopback"),
        ("http://LOCALHOST./x", "localhost.", "loopback"),
        ("http://[::1]:8080/", "[::1]", "loopback"),
        ("http://10.1.2.3/", "10.1.2.3", "private"),
        ("http://192.168.1.10/", "192.168.1.10", "private"),
        (
            "http://169.254.169.254/latest",
            "169.254.169.254",
            "link-local",
        ),
        // The HTTP client reads these as IPv4 addresses, and so does the check.
        ("http://2130706433/", "127.0.0.1", "loopback"),
        ("http://0x7f.1/", "127.0.0.1", "loopback"),
        ("http://[::ffff:10.0.0.1]/", "[::ffff:a00:1]", "private"),
    ] {
        let relay = |extra: &str| {
            format!(
                "{SOURCES}\n[relays.r]\nfrom = \"github\"\n[[relays.r.to]]\nurl = \"{url}\"\nsign = \"none\"\n{extra}"
            )
        };
        let dir = fixture(&[("baton.toml", &relay(""))]);
        let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
        assert_eq!(
            pairs(dir.path(), &err),
            set(&[("baton.toml", "relays.r.to[0].url")]),
            "{url}: {err}"
        );
        let m = message_at(&err, "relays.r.to[0].url");
        assert!(
            m.contains(&format!("`{host}` is in the {range} address range"))
                && m.contains("`allow_private = true`"),
            "{url}: {m}"
        );

        let dir = fixture(&[(
            "baton.toml",
            &relay("allow_private = true\nname = \"inside\"\n"),
        )]);
        let loaded = load_in(dir.path(), Some("baton.toml"), &[], no_env())
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let target = &loaded.gateway.relays["r"].to[0];
        assert!(target.allow_private && target.url == url, "{target:?}");
    }
}

#[test]
fn a_host_that_cannot_be_a_name_asks_for_one() {
    let config = format!(
        "{SOURCES}\n[relays.r]\nfrom = \"github\"\n[[relays.r.to]]\nurl = \"http://[fd00::5]/\"\nsign = \"none\"\nallow_private = true\n"
    );
    let dir = fixture(&[("baton.toml", &config)]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    let m = message_at(&err, "relays.r.to[0].name");
    assert!(
        m.contains("the URL's host `[fd00::5]` cannot be the target's name")
            && m.contains("give the target a `name`"),
        "{m}"
    );
}

#[test]
fn relays_of_the_wrong_shape_and_relays_of_broken_sources_are_reported_once() {
    let config = r#"
[sources.broken]
kind = "github"

[relays.flat]
from = 5
to = "https://x.example.net/"

[relays.scalars]
from = ["broken", 7]
to = ["https://x.example.net/"]
schedule = "5s"

[relays.none]
from = []
to = [{ url = "https://x.example.net/", sign = 5, headers = "X-Team: db", schedule = [5] }]
"#;
    let dir = fixture(&[("baton.toml", config)]);
    let err = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap_err();
    assert_eq!(
        pairs(dir.path(), &err),
        set(&[
            ("baton.toml", "sources.broken.secret"),
            ("baton.toml", "relays.flat.from"),
            ("baton.toml", "relays.flat.to"),
            ("baton.toml", "relays.scalars.from[1]"),
            ("baton.toml", "relays.scalars.to[0]"),
            ("baton.toml", "relays.scalars.schedule"),
            ("baton.toml", "relays.none.from"),
            ("baton.toml", "relays.none.to[0].sign"),
            ("baton.toml", "relays.none.to[0].headers"),
            ("baton.toml", "relays.none.to[0].schedule[0]"),
        ]),
        "{err}"
    );
    assert!(message_at(&err, "relays.flat.from").contains("a source name or a list of them"));
    assert!(message_at(&err, "relays.flat.to").contains("expected a list of targets"));
    assert!(message_at(&err, "relays.scalars.to[0]").contains("expected a table"));
    assert!(message_at(&err, "relays.scalars.schedule").contains("a list of delays"));
    assert!(message_at(&err, "relays.none.from").contains("an empty list"));
    assert!(message_at(&err, "relays.none.to[0].headers").contains("a table of header names"));
}

#[test]
fn the_documented_relay_loads_as_its_comments_say() {
    let docs = include_str!("../../../../docs/config.md");
    let section = &docs[docs
        .find("### Relays")
        .expect("docs/config.md has a Relays section")..];
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the Relays section has a TOML example");
    let dir = fixture(&[("baton.toml", &format!("{SOURCES}{example}"))]);
    let loaded = load_in(dir.path(), Some("baton.toml"), &[], no_env()).unwrap();
    let mirror = &loaded.gateway.relays["mirror"];
    let names: Vec<&str> = mirror.to.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["ci", "10.0.3.7-8080"]);
    assert_eq!(mirror.to[0].schedule, [secs(5), secs(300)]);
    assert_eq!((mirror.to[1].ordered, mirror.to[1].concurrency), (true, 1));
}
