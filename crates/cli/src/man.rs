//! `baton man`: manual pages, made from the command line's own definition so they always
//! match `--help`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory};

/// `baton man`.
#[derive(Args, Debug)]
pub(crate) struct ManArgs {
    /// Write `baton.1` and a page per subcommand (`baton-run.1`, …) into this folder
    /// (created if missing), instead of printing `baton.1` on standard output.
    #[arg(short, long, value_name = "DIR")]
    output: Option<PathBuf>,
}

/// Prints the `baton(1)` page, or writes every page into a folder.
pub(crate) fn man(args: ManArgs) -> ExitCode {
    let command = crate::Cli::command();
    let written = match &args.output {
        None => clap_mangen::Man::new(command).render(&mut std::io::stdout()),
        Some(dir) => {
            std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(command, dir))
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let place = args
                .output
                .as_ref()
                .map_or_else(|| "standard output".to_owned(), |d| d.display().to_string());
            eprintln!("baton man: cannot write to {place}: {e}");
            ExitCode::from(2)
        }
    }
}
