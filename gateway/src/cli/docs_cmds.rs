//! `fedgw completions SHELL` and `fedgw man`: the shell completion scripts (clap_complete) and
//! the manual pages (roff, clap_mangen), both generated from the command-line definition itself,
//! so they list exactly the subcommands and options this binary has.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{CommandFactory as _, Subcommand};

use super::{Cli, CliError};

/// The commands that describe `fedgw` itself.
#[derive(Debug, Subcommand)]
pub(crate) enum DocsCommand {
    /// Print a shell completion script on standard output.
    ///
    /// bash: `fedgw completions bash > /etc/bash_completion.d/fedgw`;
    /// zsh: `fedgw completions zsh > "${fpath[1]}/_fedgw"`;
    /// fish: `fedgw completions fish > ~/.config/fish/completions/fedgw.fish`.
    Completions {
        /// The shell the script is for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page fedgw(1) in roff on standard output (`fedgw man | man -l -`), or
    /// with --dir write one page per command there (fedgw.1, fedgw-run.1, fedgw-node-add.1, ...).
    Man {
        /// Write every page into this directory (created if missing) instead of printing one.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Runs a [`DocsCommand`]. Errors: writing to standard output or the `--dir` pages failed.
pub(crate) fn docs(command: DocsCommand) -> Result<(), CliError> {
    match command {
        DocsCommand::Completions { shell } => {
            let script = completions(shell);
            super::write_out(format_args!("{script}"))
        }
        DocsCommand::Man { dir: None } => {
            let page = man_page().context("rendering the manual page")?;
            super::write_out(format_args!("{page}"))
        }
        DocsCommand::Man { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .with_context(|| format!("writing the manual pages into {}", dir.display()))?;
            super::write_out(format_args!(
                "wrote the manual pages into {}\n",
                dir.display()
            ))
        }
    }
}

/// The completion script for `shell`, as text.
pub(crate) fn completions(shell: clap_complete::Shell) -> String {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "fedgw", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// The top-level manual page fedgw(1), as roff text.
pub(crate) fn man_page() -> std::io::Result<String> {
    let mut out = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
