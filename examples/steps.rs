//! Runs N plain-f32 training steps of a model at batch 1 on seeded inputs, for measuring
//! the CPU instructions per counted operation with a tool such as
//! `valgrind --tool=callgrind` (see docs/question.md): run it with two step counts and
//! divide the difference in instructions by the difference in operations.
//!
//! Usage: `cargo run --release --example steps -- MODEL STEPS`

use opcount::data::Dataset;
use opcount::{Model, Network, estimate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(steps)) = (args.next(), args.next()) else {
        return Err("usage: steps MODEL STEPS".into());
    };
    let steps: u128 = steps.parse()?;
    let model = Model::load(path.as_ref())?;
    let plan = model.plan(&path)?;
    let batch = Dataset::synthetic(&plan, 1, 0).head::<f32>(1, plan.loss());
    let mut net = Network::<f32>::new(&plan);
    for _ in 0..steps {
        net.step(&batch, 0.01);
    }
    let per_step = estimate::step(&plan, 1)?.totals().all.total();
    println!(
        "{steps} steps of {per_step} operations: {}",
        steps * per_step
    );
    Ok(())
}
