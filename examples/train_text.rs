//! Trains a model on its text data and reports the held-out loss as it goes: the run behind
//! docs/transformers.md's training figures.
//!
//! `cargo run --release --example train_text -- models/gpt-char.ron [seconds]`
//! trains until the model's epochs are done or `seconds` (default 600) have passed, and
//! prints the training loss, the held-out loss (nats per character) and the time.

#[path = "../tests/support/rng.rs"]
mod rng;
use rng::Rng;

use std::path::Path;
use std::time::Instant;

use opcount::data::{Batch, Dataset};
use opcount::train::evaluate;
use opcount::{Model, Network};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = Path::new(args.get(1).map_or("models/gpt-char.ron", String::as_str));
    let seconds: f64 = args.get(2).map_or(Ok(600.0), |s| s.parse())?;
    let model = Model::load(path)?;
    let origin = path.display().to_string();
    let plan = model.plan(&origin)?;
    let training = model
        .training
        .as_ref()
        .ok_or("the model has no training block")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let (train, held_out) = Dataset::load_split(&training.data, dir, &origin, &plan)?;
    let held_out = held_out.ok_or("the data holds nothing out")?;
    println!(
        "{}: {} parameters; {} training windows, {} held out; batch {}, lr {}",
        plan.name(),
        plan.params(),
        train.len(),
        held_out.len(),
        training.batch,
        training.lr
    );
    let mut net = Network::<f32>::new(&plan);
    let start = Instant::now();
    let mut rng = Rng::new(training.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut batch = Batch::default();
    let (mut step, mut recent) = (0usize, Vec::new());
    let report = |net: &mut Network<f32>, step: usize, recent: &[f64]| {
        let eval = evaluate(net, &held_out, training.batch);
        let mean = recent.iter().sum::<f64>() / recent.len().max(1) as f64;
        println!(
            "step {step:6}  {:7.1} s  training loss {mean:.4}  held-out loss {:.4}  accuracy {:.1}%",
            start.elapsed().as_secs_f64(),
            eval.loss,
            100.0 * eval.accuracy().unwrap_or(0.0)
        );
    };
    report(&mut net, 0, &[]);
    'training: for _ in 0..training.epochs {
        shuffle(&mut rng, &mut order);
        for indices in order.chunks(training.batch) {
            train.gather(indices, plan.loss(), &mut batch);
            recent.push(f64::from(net.step(&batch, training.lr)));
            step += 1;
            if step % 100 == 0 {
                report(&mut net, step, &recent);
                recent.clear();
            }
            if start.elapsed().as_secs_f64() > seconds {
                break 'training;
            }
        }
    }
    report(&mut net, step, &recent);
    Ok(())
}

/// Fisher-Yates with the tests' SplitMix64, so a seed gives the same order as `train`'s.
fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}
