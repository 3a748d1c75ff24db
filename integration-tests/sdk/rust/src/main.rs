//! End-to-end driver for the official RocketMQ Rust SDK (crate `rocketmq` 5.0.0).
//!
//! Usage: `rmq-sdk-rust <produce|simple-consume> --endpoint HOST:PORT --topic T
//! [--group G] [--count N] [--prefix P] [--tag TAG] [--timeout-secs S]`
//!
//! Prints exactly one line starting with `RESULT ` followed by a JSON object on stdout;
//! the SDK's own logs go to stderr. Exit code 0 means the mode's goal was met.

mod args;
mod consume;
mod produce;
mod tally;

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args::Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("rmq-sdk-rust: {message}\n{}", args::USAGE);
            return ExitCode::from(2);
        }
    };
    let (ok, report) = match args.mode {
        args::Mode::Produce => produce::run(&args).await,
        args::Mode::SimpleConsume => consume::run(&args).await,
    };
    println!("RESULT {report}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
