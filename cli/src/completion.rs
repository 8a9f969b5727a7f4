//! `skiff completion bash|zsh|fish`: the shell completion script of every verb and flag,
//! generated from the command line's definition (clap_complete), so it never falls behind.

use std::process::ExitCode;

use clap::ValueEnum;

/// The shells a script is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// `skiff completion bash > /etc/bash_completion.d/skiff`
    /// (or `source <(skiff completion bash)` in ~/.bashrc).
    Bash,
    /// `skiff completion zsh > "${fpath[1]}/_skiff"`.
    Zsh,
    /// `skiff completion fish > ~/.config/fish/completions/skiff.fish`.
    Fish,
}

/// Prints the completion script for `shell` on stdout.
pub fn print(shell: Shell, mut command: clap::Command) -> ExitCode {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "skiff", &mut script);
    // A reader that stops early (`| head`) is not an error of ours.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), &script);
    ExitCode::SUCCESS
}
