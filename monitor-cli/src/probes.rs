//! `monitorctl probes`: the probes an embedded scan keeps pinned in bpffs between runs.

use std::process::ExitCode;

use clap::Subcommand;
use monitor_engine::probes::pins;

/// What `monitorctl probes` does.
#[derive(Subcommand)]
pub enum ProbesCommand {
    /// The pinned sets: their key (a hash of the binary's programs and their settings), slot,
    /// number of pins, whether a scan holds them now, and how many hooks attach them now.
    List {
        /// As JSON, for programs.
        #[arg(long)]
        json: bool,
    },
    /// Remove every pinned set (a scan holding one keeps its programs until it ends); the next
    /// embedded scan loads and verifies the programs again, and pins them again.
    Unpin,
}

pub fn main(command: ProbesCommand) -> ExitCode {
    let Some(root) = pins::root_from_env() else {
        eprintln!(
            "monitorctl probes: {}=off: nothing is pinned",
            pins::ROOT_ENV
        );
        return ExitCode::SUCCESS;
    };
    let done = match command {
        ProbesCommand::List { json } => pins::list(&root).map(|slots| {
            if json {
                println!("{}", serde_json::json!({ "root": root, "slots": slots }));
            } else if slots.is_empty() {
                println!("no probes pinned under {}", root.display());
            } else {
                let mut table = crate::common::table(["KEY", "SLOT", "PINS", "IN USE", "ATTACHED"]);
                for s in &slots {
                    table.add_row([
                        s.key.clone(),
                        s.slot.clone(),
                        s.pins.to_string(),
                        if s.in_use { "yes" } else { "no" }.to_string(),
                        s.attached.to_string(),
                    ]);
                }
                println!("{table}");
            }
        }),
        ProbesCommand::Unpin => pins::unpin(&root).map(|u| {
            println!(
                "removed {} pinned set(s) under {}{}",
                u.slots,
                root.display(),
                match u.in_use {
                    0 => String::new(),
                    n => format!(" ({n} in use: their scans keep them until they end)"),
                }
            );
        }),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("monitorctl probes: {}: {e}", root.display());
            ExitCode::from(2)
        }
    }
}
