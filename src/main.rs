//! `pmad` — command line front end. Every verb lives in `src/cli/<verb>.rs`.

mod cli;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "pmad",
    version,
    // A flag given twice keeps the last: `train --config` puts the file's flags first.
    args_override_self = true,
    about = "Cross-class industrial anomaly detection (PMAD)"
)]
struct Cli {
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The main job on an embedded default: synthetic data, train, register an unseen class, evaluate.
    Demo(cli::demo::DemoArgs),
    /// Download and convert the pretrained EfficientNet-Lite0 backbone.
    FetchWeights(cli::fetch_weights::FetchWeightsArgs),
    /// ImageNet top-k classes of images (checks the backbone end to end).
    Classify(cli::classify::ClassifyArgs),
    /// Time the engine's kernels and the backbone; JSON for side-by-side comparisons.
    Bench(cli::bench::BenchArgs),
    /// Create a model: register the seen classes and train the ProtoFlow.
    // Boxed: its many flags make it far larger than the other variants (clippy).
    Train(Box<cli::train::TrainArgs>),
    /// Register a (new) class from its normal images, without retraining.
    Register(cli::register::RegisterArgs),
    /// Evaluate registered classes on their labelled test sets.
    Eval(cli::eval::EvalArgs),
    /// Score images: one JSON line each, optional heatmap overlays.
    Inspect(cli::inspect::InspectArgs),
    /// Serve the model over HTTP: inspect (dynamically batched), register, metrics.
    Serve(cli::serve::ServeArgs),
    /// Convert a PyTorch checkpoint (.pth/.pt) to safetensors.
    ImportTorch(cli::import_torch::ImportTorchArgs),
    /// Generate a synthetic defect dataset (MVTec-AD layout, or --layout folder/visa/btad).
    Synth(cli::synth::SynthArgs),
}

fn main() -> ExitCode {
    // Before any thread or buffer exists: per-batch buffers stay on the heap (src/alloc.rs).
    pmad::alloc::tune_malloc();
    let (argv, config) = match cli::config::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let matches = match Cli::command().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            if let Some(f) = config
                && e.use_stderr()
            {
                eprintln!(
                    "(flags before the command line's were read from {})",
                    f.display()
                );
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let args = match Cli::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if let Some(n) = args.threads
        && let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
    {
        eprintln!("error: cannot set {n} threads: {e}");
        return ExitCode::FAILURE;
    }
    let result = match args.command {
        Command::Demo(a) => cli::demo::run(a),
        Command::FetchWeights(a) => cli::fetch_weights::run(a),
        Command::Classify(a) => cli::classify::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Train(a) => cli::train::run(*a, sub_matches(&matches)),
        Command::Register(a) => cli::register::run(a),
        Command::Eval(a) => cli::eval::run(a),
        Command::Inspect(a) => cli::inspect::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::ImportTorch(a) => cli::import_torch::run(a),
        Command::Synth(a) => cli::synth::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The matches of the subcommand that ran (`train --print-config` reads its flags' values).
fn sub_matches(m: &clap::ArgMatches) -> &clap::ArgMatches {
    m.subcommand().map(|(_, s)| s).unwrap_or(m)
}
