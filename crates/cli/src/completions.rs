//! `baton completions SHELL`: a completion script for the shell, made from the command line's
//! own definition so it always knows every subcommand and option.

use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

/// `baton completions`.
#[derive(Args, Debug)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for. Bash: `source <(baton completions bash)`; zsh: write it as
    /// `_baton` in a folder of `$fpath`; fish: write it to
    /// `~/.config/fish/completions/baton.fish`.
    shell: Shell,
}

/// Prints the completion script on standard output.
pub(crate) fn completions(args: CompletionsArgs) -> ExitCode {
    let mut command = crate::Cli::command();
    clap_complete::generate(args.shell, &mut command, "baton", &mut std::io::stdout());
    ExitCode::SUCCESS
}
