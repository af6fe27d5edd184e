//! The command line's help text.

use clap::CommandFactory as _;

use super::Cli;

/// Every command's long help (`--help`), with its path (`fedgw node add`).
fn every_long_help() -> Vec<(String, String)> {
    fn walk(cmd: &mut clap::Command, path: &str, out: &mut Vec<(String, String)>) {
        let path = format!("{path} {}", cmd.get_name()).trim().to_owned();
        out.push((path.clone(), cmd.render_long_help().to_string()));
        for sub in cmd.get_subcommands_mut() {
            walk(sub, &path, out);
        }
    }
    let mut cli = Cli::command();
    cli.build();
    let mut out = vec![];
    walk(&mut cli, "", &mut out);
    out
}

/// Words in SCREAMING_CASE with an underscore that are not an environment variable of fedgw
/// (`FEDGW_DATA_DIR`) or a Linux capability (`CAP_NET_ADMIN`): names of Rust constants, which
/// mean nothing to an operator.
fn constant_names(help: &str) -> Vec<&str> {
    help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.contains('_') && w.chars().any(|c| c.is_ascii_uppercase()))
        .filter(|w| !w.chars().any(|c| c.is_ascii_lowercase()))
        .filter(|w| !w.starts_with("FEDGW_") && !w.starts_with("CAP_"))
        .collect()
}

#[test]
fn help_shows_durations_as_values_not_constant_names() {
    let helps = every_long_help();
    assert!(
        helps.len() > 20,
        "every subcommand is walked: {}",
        helps.len()
    );
    let found: Vec<String> = helps
        .iter()
        .flat_map(|(path, help)| {
            constant_names(help)
                .into_iter()
                .map(move |c| format!("{path}: {c}"))
        })
        .collect();
    assert_eq!(found, Vec::<String>::new());
    for (path, help) in &helps {
        assert!(
            !help.contains("[`"),
            "{path}: a rustdoc link in help:\n{help}"
        );
    }
    let auto = humantime::format_duration(crate::tunnel::AUTO_QUIC_TIMEOUT).to_string();
    assert_eq!(auto, "2s");
    for path in ["fedgw init", "fedgw join"] {
        let (_, help) = helps.iter().find(|(p, _)| p == path).expect(path);
        assert!(
            help.contains(&format!("handshake does not complete within {auto}")),
            "{path}:\n{help}"
        );
    }
}

#[test]
fn constant_names_are_found_and_environment_variables_are_not() {
    assert_eq!(
        constant_names("within [`AUTO_QUIC_TIMEOUT`] (env: FEDGW_DATA_DIR, CAP_NET_ADMIN) QUIC"),
        ["AUTO_QUIC_TIMEOUT"]
    );
}
