//! `loadtests`: the goose load tests of Larder and the benchmark runner, the project's main
//! job. `cargo run --release -p loadtests` with no arguments runs the seeds' "100 concurrent
//! dashboard loads" against the dashboard example without and with the cache, prints the
//! table, writes the reports under `target/loadtests/<timestamp>/`, and exits 1 when a
//! target is missed (2 when the benchmark could not run). See the README beside this file.

mod chart;
mod cli;
mod endpoint;
mod goals;
mod record;
mod report;
mod runner;
mod scenarios;
mod timeline;
mod workload;

use goose::prelude::*;

use crate::{
    cli::ScenarioName,
    scenarios::{
        dashboard::{self, load_dashboard, write},
        login, pace,
        pagination::{self, walk_pages},
    },
};

/// The goose scenario called `name`, with its transactions in order.
fn scenario(name: ScenarioName) -> Scenario {
    let scenario = Scenario::new(name.as_str())
        .register_transaction(transaction!(login).set_name("log in").set_on_start());
    match name {
        ScenarioName::Dashboard | ScenarioName::Outage => scenario
            .register_transaction(
                transaction!(pace)
                    .set_name("wait for the next load")
                    .set_sequence(1),
            )
            .register_transaction(
                transaction!(load_dashboard)
                    .set_name(dashboard::LOAD)
                    .set_sequence(2),
            )
            .register_transaction(transaction!(pace).set_name("wait to write").set_sequence(3))
            .register_transaction(transaction!(write).set_name("writes").set_sequence(4)),
        ScenarioName::Pagination => scenario
            .register_transaction(
                transaction!(pace)
                    .set_name("wait for the next walk")
                    .set_sequence(1),
            )
            .register_transaction(
                transaction!(walk_pages)
                    .set_name(pagination::WALK)
                    .set_sequence(2),
            ),
        // Not goose scenarios: they run on plain tasks (`scenarios/consistency.rs`,
        // `scenarios/fleet.rs`), and the runner never registers these.
        ScenarioName::Consistency | ScenarioName::Fleet => scenario,
    }
}

fn main() -> std::process::ExitCode {
    let args = cli::Args::from_command_line();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadtests: cannot start the runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(runner::run(args, scenario)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("loadtests: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
