//! SGD training over a data set, and evaluation (loss and accuracy). Library code: it reports
//! progress through a callback and never prints.

use std::path::{Path, PathBuf};

use crate::data::{Batch, Dataset, Targets};
use crate::error::{Error, Result};
use crate::model::{Data, Training};
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

    /// These settings for a data set of `examples` examples: a batch larger than the data is
    /// the whole data.
    pub fn clamped(&self, examples: usize) -> Settings {
        Settings {
            batch: self.batch.min(examples),
            ..*self
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
    /// After the last step of an epoch of a run with held-out examples: their loss and
    /// accuracy then.
    pub held_out: Option<Evaluation>,
}

/// The held-out examples' loss and accuracy during a run: after every epoch, in memory that
/// does not grow with the epochs (each a [`LossHistory`]: past its capacity, each value is the
/// mean of a run of epochs), and after the last.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldOut {
    /// The loss after each epoch.
    pub loss: LossHistory,
    /// The accuracy after each epoch (empty without class targets).
    pub accuracy: LossHistory,
    /// Loss and accuracy after the last epoch: the trained network's.
    pub last: Evaluation,
}

/// The mean step loss of every epoch, in memory that does not grow with the number of epochs:
/// up to [`LossHistory::CAPACITY`] values, one per epoch; past that, neighbouring values are
/// merged pair by pair, so that each value is the mean loss of a run of
/// [`epochs_per_value`](LossHistory::epochs_per_value) epochs (a power of two; the last value
/// may cover fewer).
#[derive(Clone, Debug, PartialEq)]
pub struct LossHistory {
    /// Sum of the epoch losses and number of epochs of each value.
    runs: Vec<(f64, u64)>,
    per_value: u64,
}

impl Default for LossHistory {
    fn default() -> Self {
        LossHistory {
            runs: Vec::new(),
            per_value: 1,
        }
    }
}

impl LossHistory {
    /// The most values kept.
    pub const CAPACITY: usize = 1024;

    /// Adds the next epoch's mean loss.
    pub fn push(&mut self, loss: f64) {
        match self.runs.last_mut() {
            Some((sum, n)) if *n < self.per_value => {
                *sum += loss;
                *n += 1;
            }
            _ => {
                if self.runs.len() == Self::CAPACITY {
                    self.runs = self
                        .runs
                        .chunks(2)
                        .map(|pair| {
                            pair.iter()
                                .fold((0.0, 0), |(s, n), &(ps, pn)| (s + ps, n + pn))
                        })
                        .collect();
                    self.per_value *= 2;
                }
                self.runs.push((loss, 1));
            }
        }
    }

    /// The mean losses, first epochs first.
    pub fn values(&self) -> Vec<f64> {
        self.runs.iter().map(|&(sum, n)| sum / n as f64).collect()
    }

    /// How many epochs each value is the mean of (the last value may have fewer).
    pub fn epochs_per_value(&self) -> u64 {
        self.per_value
    }

    /// How many epochs were pushed.
    pub fn epochs(&self) -> u64 {
        self.runs.iter().map(|&(_, n)| n).sum()
    }
}

/// Trains for `settings.epochs` epochs, shuffling before each, and returns the epochs' mean
/// step losses. Stops with [`Error::Diverged`] at the first loss that is not finite. Nothing it
/// keeps grows with the number of epochs. No epochs, no examples or a batch of none is an
/// [`Error::Usage`].
pub fn train<S: Scalar>(
    net: &mut Network<S>,
    data: &Dataset,
    settings: &Settings,
    on_step: impl FnMut(&Progress),
) -> Result<LossHistory> {
    Ok(train_held_out(net, data, None, settings, on_step)?.0)
}

/// [`train`], and with `held_out` examples, their loss and accuracy after every epoch
/// ([`evaluate`], at the training batch). Evaluating is forward only and not part of any
/// step's counts.
pub fn train_held_out<S: Scalar>(
    net: &mut Network<S>,
    data: &Dataset,
    held_out: Option<&Dataset>,
    settings: &Settings,
    mut on_step: impl FnMut(&Progress),
) -> Result<(LossHistory, Option<HeldOut>)> {
    if settings.epochs == 0 || settings.batch == 0 || data.is_empty() {
        return Err(Error::Usage(format!(
            "training needs at least one epoch, one example and a batch of at least one, \
             found {} epochs, {} examples and a batch of {}",
            settings.epochs,
            data.len(),
            settings.batch
        )));
    }
    let loss_kind = net.plan().loss();
    if loss_kind.forward_only() {
        return Err(Error::Usage(
            "loss None counts the forward pass alone, there is nothing to train; \
             train with loss Mse or SoftmaxCrossEntropy"
                .into(),
        ));
    }
    let lr = crate::data::scalar::<S>(settings.lr);
    let mut rng = Rng::new(settings.seed);
    let mut order: Vec<usize> = (0..data.len()).collect();
    let steps = data.len().div_ceil(settings.batch);
    let mut batch = Batch::default();
    let mut history = LossHistory::default();
    let mut held = None;
    let (mut held_loss, mut held_accuracy) = (LossHistory::default(), LossHistory::default());
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
            if step + 1 == steps
                && let Some(examples) = held_out
            {
                let evaluation = evaluate(net, examples, settings.batch);
                held_loss.push(evaluation.loss);
                if let Some(accuracy) = evaluation.accuracy() {
                    held_accuracy.push(accuracy);
                }
                held = Some(evaluation);
            }
            on_step(&Progress {
                epoch,
                step: step + 1,
                steps,
                loss,
                held_out: held.filter(|_| step + 1 == steps),
            });
        }
        history.push(sum / steps as f64);
    }
    check_finite(net)?;
    let held_out = held.map(|last| HeldOut {
        loss: held_loss,
        accuracy: held_accuracy,
        last,
    });
    Ok((history, held_out))
}

/// Fails with [`Error::NotFinite`] naming the first parameter that is NaN or infinite, by its
/// position in the model file's order. The loss check above sees every update but the last,
/// whose result no loss has measured.
fn check_finite<S: Scalar>(net: &Network<S>) -> Result<()> {
    let tensors = net.params();
    for node in net.plan().nodes().iter().filter(|n| n.owns_params()) {
        for (j, &id) in node.param_ids().iter().enumerate() {
            let finite = |v: &f32| v.is_finite();
            if tensors[id]
                .iter()
                .all(|v| v.to_f32().is_some_and(|v| finite(&v)))
            {
                continue;
            }
            let stored: Vec<f32> = tensors[id]
                .iter()
                .map(|v| v.to_f32().unwrap_or(f32::NAN))
                .collect();
            let in_file = node.op().file_order(j, &stored);
            let index = in_file.iter().position(|v| !finite(v)).unwrap_or(0);
            return Err(Error::NotFinite {
                layer: node.entry(),
                name: node.name().to_string(),
                what: ["weight", "bias"][j.min(1)],
                index,
                value: in_file[index],
            });
        }
    }
    Ok(())
}

/// Rewrites a CSV or text data path, relative to the model file's directory `model_dir`, so
/// that it leads to the same file from the directory of `out`, where the model is being saved
/// (the current directory if `out` names none). Inline data, and a path that leads to no
/// file, are left as they are.
pub fn relocate_data(data: &mut Data, model_dir: &Path, out: &Path) {
    let (Data::Csv { path, .. } | Data::Text { path, .. }) = data else {
        return;
    };
    let Ok(target) = std::fs::canonicalize(model_dir.join(&*path)) else {
        return;
    };
    let out_dir = out.parent().filter(|d| !d.as_os_str().is_empty());
    let Ok(out_dir) = std::fs::canonicalize(out_dir.unwrap_or(Path::new("."))) else {
        return;
    };
    let common = target
        .components()
        .zip(out_dir.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut relative = PathBuf::new();
    for _ in out_dir.components().skip(common) {
        relative.push("..");
    }
    relative.extend(target.components().skip(common));
    *path = relative.to_string_lossy().into_owned();
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

/// Runs every example forward as the trained network is used ([`Network::infer`]: batch
/// normalisation with its running statistics; no update, nothing attributed to a step) and
/// measures the loss (the mean over the examples
/// of the loss of each, which for next-token prediction is the mean over its tokens) and, for
/// class targets, the accuracy: the class is the largest output of a row (of the example, or
/// of each token), or for a single output, 1 above 0.5.
/// Examples run `batch` at a time (a network's memory grows with its batch: pass the one it
/// trained with).
pub fn evaluate<S: Scalar>(net: &mut Network<S>, data: &Dataset, batch: usize) -> Evaluation {
    let loss_kind = net.plan().loss();
    let order: Vec<usize> = (0..data.len()).collect();
    let chunk = batch.max(1);
    let mut batch = Batch::default();
    let mut loss_sum = 0.0;
    let mut correct = 0;
    for indices in order.chunks(chunk) {
        data.gather(indices, loss_kind, &mut batch);
        let loss = net.infer_loss(&batch);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, Target};

    #[test]
    fn a_saved_model_reads_the_same_csv_file_from_its_new_place() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("models/data")).unwrap();
        std::fs::create_dir_all(root.join("runs/today")).unwrap();
        std::fs::write(root.join("models/data/x.csv"), "a,y\n1,2\n").unwrap();
        let csv = |path: &str| Data::Csv {
            path: path.into(),
            features: None,
            held_out: 0.0,
            target: Target::Values {
                columns: vec!["y".into()],
            },
        };
        let mut data = csv("data/x.csv");
        let models = root.join("models");
        relocate_data(&mut data, &models, &root.join("runs/today/trained.ron"));
        assert_eq!(data, csv("../../models/data/x.csv"));
        let mut beside = csv("data/x.csv");
        relocate_data(&mut beside, &models, &root.join("models/trained.ron"));
        assert_eq!(beside, csv("data/x.csv"));
        // A text's path too.
        std::fs::write(root.join("models/data/x.txt"), "abc").unwrap();
        let mut text = Data::Text {
            path: "data/x.txt".into(),
            held_out: 0.1,
        };
        relocate_data(&mut text, &models, &root.join("runs/today/trained.ron"));
        assert_eq!(
            text,
            Data::Text {
                path: "../../models/data/x.txt".into(),
                held_out: 0.1
            }
        );
        // A path that leads nowhere stays as written.
        let mut missing = csv("data/none.csv");
        relocate_data(&mut missing, &models, &root.join("runs/trained.ron"));
        assert_eq!(missing, csv("data/none.csv"));
    }

    #[test]
    fn nothing_to_train_on_is_an_error_not_a_panic() {
        let model = Model::parse(
            "(name: \"t\", input: [2], loss: Mse, layers: [Dense(units: 1)])",
            "t",
        )
        .unwrap();
        let plan = model.plan("t").unwrap();
        let data = Dataset::synthetic(&plan, 4, 0);
        let mut net = Network::<f32>::new(&plan);
        let settings = Settings {
            epochs: 1,
            lr: 0.1,
            batch: 0,
            seed: 0,
        };
        let err = train(&mut net, &data, &settings, |_| {}).unwrap_err();
        assert_eq!(
            err.to_string(),
            "training needs at least one epoch, one example and a batch of at least one, \
             found 1 epochs, 4 examples and a batch of 0"
        );
        let clamped = Settings {
            batch: 9,
            ..settings
        }
        .clamped(data.len());
        assert_eq!(clamped.batch, 4);
        train(&mut net, &data, &clamped, |_| {}).unwrap();
    }

    #[test]
    fn the_loss_history_stays_bounded_and_keeps_the_means() {
        let mut h = LossHistory::default();
        for epoch in 0..3 * LossHistory::CAPACITY as u64 {
            h.push(epoch as f64);
        }
        // 3072 epochs: 1024 values of 2 epochs would be 2048, so 768 values of 4.
        assert_eq!(h.epochs(), 3 * LossHistory::CAPACITY as u64);
        assert_eq!(h.epochs_per_value(), 4);
        let values = h.values();
        assert_eq!(values.len(), 768);
        assert_eq!(values[0], (0.0 + 1.0 + 2.0 + 3.0) / 4.0);
        assert_eq!(values[767], (3068.0 + 3069.0 + 3070.0 + 3071.0) / 4.0);
        let mut short = LossHistory::default();
        short.push(2.0);
        short.push(1.0);
        assert_eq!(
            (short.values(), short.epochs_per_value()),
            (vec![2.0, 1.0], 1)
        );
    }
}
