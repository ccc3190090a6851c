//! Shell completions, manual pages and `--help`: made from the command line's definition, and
//! the help says what an option does, not how it came to be.

use baton_tests::Sandbox;

/// The subcommands `baton --help` lists (without `help`).
fn subcommands(sb: &Sandbox) -> Vec<String> {
    let help = sb.run(&["--help"]).stdout;
    help.split("Commands:\n")
        .nth(1)
        .expect("a Commands section")
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

#[test]
fn completion_scripts_know_every_subcommand() {
    let sb = Sandbox::new();
    let commands = subcommands(&sb);
    assert!(commands.len() >= 10, "{commands:?}");
    for (shell, marker) in [
        ("bash", "_baton()"),
        ("zsh", "#compdef baton"),
        ("fish", "complete -c baton"),
    ] {
        let out = sb.run(&["completions", shell]);
        assert_eq!(out.code, Some(0), "{shell}: {}", out.stderr);
        assert!(out.stdout.contains(marker), "{shell}:\n{}", out.stdout);
        for command in &commands {
            assert!(
                out.stdout.contains(command.as_str()),
                "{shell} does not complete `{command}`"
            );
        }
        assert!(
            out.stdout.contains("workers"),
            "{shell} completes options too"
        );
    }
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = Sandbox::new().run(&["completions", "cmd.exe"]);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("bash"), "{}", out.stderr);
}

#[test]
fn the_man_page_describes_every_subcommand() {
    let sb = Sandbox::new();
    let out = sb.run(&["man"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains(".TH baton 1"), "{}", out.stdout);
    for command in subcommands(&sb) {
        assert!(out.stdout.contains(&command), "no `{command}` in the page");
    }
}

#[test]
fn man_writes_a_page_per_subcommand_into_a_folder() {
    let sb = Sandbox::new();
    let out = sb.run(&["man", "-o", "pages/man1"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let serve = sb.read("pages/man1/baton-serve.1");
    assert!(serve.contains("workers"), "{serve}");
    for command in subcommands(&sb) {
        let page = format!("pages/man1/baton-{command}.1");
        assert!(sb.path().join(&page).is_file(), "{page} is missing");
    }
    assert!(sb.path().join("pages/man1/baton.1").is_file());
}

#[test]
fn serve_help_says_what_workers_sets_and_its_default() {
    let out = Sandbox::new().run(&["serve", "--help"]);
    assert_eq!(out.code, Some(0));
    let workers: String = out
        .stdout
        .split("--workers")
        .nth(1)
        .expect("--workers is described")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(workers.contains("Default: one per CPU core"), "{workers}");
    assert!(
        workers.matches(". ").count() <= 1,
        "two sentences at most: {workers}"
    );
}

#[test]
fn no_help_text_cites_measurements_or_history() {
    let sb = Sandbox::new();
    let mut pages = vec![sb.run(&["--help"]).stdout];
    for command in subcommands(&sb) {
        pages.push(sb.run(&[&command, "--help"]).stdout);
    }
    for sub in ["runs list", "runs approve", "deliveries replay"] {
        let args: Vec<&str> = sub.split(' ').chain(["--help"]).collect();
        pages.push(sb.run(&args).stdout);
    }
    for page in &pages {
        for word in [
            "p99",
            "/s",
            " ms ",
            "benchmark",
            "session",
            "runs of",
            "we ",
        ] {
            assert!(!page.contains(word), "`{word}` in:\n{page}");
        }
    }
}
