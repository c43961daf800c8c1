//! SGD training over a data set, and evaluation (loss and accuracy). Library code: it reports
//! progress through a callback and never prints.

use crate::data::{Batch, Dataset, Targets};
use crate::error::{Error, Result};
use crate::model::Training;
use crate::nn::Network;
use crate::rng::Rng;
use crate::scalar::Scalar;

/// How to train.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Settings {
    /// Passes over the data.
    pub epochs: usize,
    /// SGD learning rate.
    pub lr: f32,
    /// Examples per step (the last step of an epoch may have fewer).
    pub batch: usize,
    /// Seed of the shuffles.
    pub seed: u64,
}

impl Settings {
    /// The settings of a model file's training block.
    pub fn of(training: &Training) -> Settings {
        Settings {
            epochs: training.epochs,
            lr: training.lr,
            batch: training.batch,
            seed: training.seed,
        }
    }
}

/// Where training is, after a step.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Progress {
    /// 1-based epoch.
    pub epoch: usize,
    /// 1-based step within the epoch.
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
    /// The step's loss.
    pub loss: f64,
}

/// Trains for `settings.epochs` epochs, shuffling before each, and returns each epoch's mean
/// step loss. Stops with [`Error::Diverged`] at the first loss that is not finite.
pub fn train<S: Scalar>(
    net: &mut Network<S>,
    data: &Dataset,
    settings: &Settings,
    mut on_step: impl FnMut(&Progress),
) -> Result<Vec<f64>> {
    let loss_kind = net.plan().loss();
    let lr = crate::data::scalar::<S>(settings.lr);
    let mut rng = Rng::new(settings.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let steps = data.len().div_ceil(settings.batch);
    let mut batch = Batch::default();
    let mut epoch_losses = Vec::with_capacity(settings.epochs);
    for epoch in 1..=settings.epochs {
        rng.shuffle(&mut order);
        let mut sum = 0.0;
        for (step, indices) in order.chunks(settings.batch).enumerate() {
            data.gather(indices, loss_kind, &mut batch);
            let loss = net.step(&batch, lr).to_f64().unwrap_or(f64::NAN);
            if !loss.is_finite() {
                return Err(Error::Diverged {
                    epoch,
                    step: step + 1,
                    loss,
                });
            }
            sum += loss;
            on_step(&Progress {
                epoch,
                step: step + 1,
                steps,
                loss,
            });
        }
        epoch_losses.push(sum / steps as f64);
    }
    Ok(epoch_losses)
}

/// Loss and accuracy over a whole data set.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Mean loss per example.
    pub loss: f64,
    /// Class predictions that were right (class targets only): one per example, or one
    /// per token of a model that predicts every next token.
    pub correct: Option<usize>,
    /// Examples evaluated.
    pub examples: usize,
    /// Class predictions made: `examples`, times the tokens of each for next-token
    /// prediction.
    pub predictions: usize,
}

impl Evaluation {
    /// Fraction of class predictions that were right, for class targets.
    pub fn accuracy(&self) -> Option<f64> {
        self.correct.map(|c| c as f64 / self.predictions as f64)
    }
}

/// Runs every example forward (no update) and measures the loss (the mean over the examples
/// of the loss of each, which for next-token prediction is the mean over its tokens) and, for
/// class targets, the accuracy: the class is the largest output of a row (of the example, or
/// of each token), or for a single output, 1 above 0.5.
pub fn evaluate<S: Scalar>(net: &mut Network<S>, data: &Dataset) -> Evaluation {
    const CHUNK: usize = 256;
    let loss_kind = net.plan().loss();
    let order: Vec<usize> = (0..data.len()).collect();
    let mut batch = Batch::default();
    let mut loss_sum = 0.0;
    let mut correct = 0;
    for indices in order.chunks(CHUNK) {
        data.gather(indices, loss_kind, &mut batch);
        let loss = net.forward_loss(&batch);
        loss_sum += loss.to_f64().unwrap_or(f64::NAN) * indices.len() as f64;
        if let Targets::Classes(_) = &data.targets {
            let width = data.outputs / data.positions;
            for (row, &class) in net.output().chunks_exact(width).zip(&batch.classes) {
                if predicted_class(row) == class {
                    correct += 1;
                }
            }
        }
    }
    Evaluation {
        loss: loss_sum / data.len() as f64,
        correct: matches!(data.targets, Targets::Classes(_)).then_some(correct),
        examples: data.len(),
        predictions: data.len() * data.positions,
    }
}

/// The class an output row predicts: the index of the largest value, or for one output,
/// 1 if it is above 0.5. Plain `f64` comparisons: evaluation is not part of a counted step.
fn predicted_class<S: Scalar>(row: &[S]) -> usize {
    let values: Vec<f64> = row.iter().map(|v| v.to_f64().unwrap_or(f64::NAN)).collect();
    if let [single] = values[..] {
        return usize::from(single > 0.5);
    }
    let mut best = 0;
    for (j, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = j;
        }
    }
    best
}
