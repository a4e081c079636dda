//! Man pages and shell completions, generated from the clap definition of a binary's
//! command line so they never drift from `--help`. `scripts/package.sh` runs the hidden
//! `generate-assets` subcommand of each binary before building the .deb packages.

use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Shells that get a completion script, and where Debian looks for it.
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "usr/share/bash-completion/completions/"),
    (Shell::Zsh, "usr/share/zsh/vendor-completions/"),
    (Shell::Fish, "usr/share/fish/vendor_completions.d/"),
];

/// Write `OUT/man/NAME.1` (plus `NAME-SUBCOMMAND.1` for every visible subcommand) and
/// `OUT/completions/` (bash `NAME.bash`, zsh `_NAME`, fish `NAME.fish`); returns the files.
pub fn write(cmd: clap::Command, out: &Path) -> std::io::Result<Vec<PathBuf>> {
    let name = cmd.get_name().to_string();
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    clap_mangen::generate_to(cmd.clone(), &man)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&man)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&name) && f.ends_with(".1"))
        })
        .collect();
    for (shell, _) in SHELLS {
        let mut c = cmd.clone();
        files.push(clap_complete::generate_to(
            shell,
            &mut c,
            &name,
            &completions,
        )?);
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn man_pages_and_completions_cover_the_visible_commands() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write(crate::cli::Cli::command(), dir.path()).expect("write");
        let names: Vec<String> = files
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(String::from))
            .collect();
        for want in [
            "pathpulse-agent.1",
            "pathpulse-agent-run.1",
            "pathpulse-agent-check-config.1",
            "pathpulse-agent.bash",
            "_pathpulse-agent",
            "pathpulse-agent.fish",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        assert!(
            !names.iter().any(|n| n.contains("generate-assets")),
            "hidden: {names:?}"
        );
        let run = std::fs::read_to_string(dir.path().join("man/pathpulse-agent-run.1"))
            .expect("run page");
        assert!(run.contains("metrics\\-listen"), "{run}");
        let bash = std::fs::read_to_string(dir.path().join("completions/pathpulse-agent.bash"))
            .expect("bash");
        assert!(bash.contains("--metrics-listen") && bash.contains("check-config"));
    }
}
