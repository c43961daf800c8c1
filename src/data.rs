//! Training examples: read from a CSV file or from the model file, or made up from a seed,
//! and checked against the plan (feature count, class range, finite values).

use std::path::Path;

use crate::budget::Budget;
use crate::error::{Error, Result};
use crate::input::{LineTooLong, Lines, out_of_memory};
use crate::model::{Data, InlineTargets, Loss, Plan, Target};
use crate::rng::Rng;
use crate::scalar::Scalar;
use crate::text::echo;

/// What each example should produce.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// A class index per example (per position and example, for next-token prediction).
    Classes(Vec<usize>),
    /// `outputs` values per example, example after example.
    Values(Vec<f32>),
}

/// Examples, checked against a plan: `features` inputs and one target each.
///
/// ```
/// use std::path::Path;
/// use opcount::{Model, data::Dataset};
///
/// let model = Model::load(Path::new("models/iris.ron"))?;
/// let plan = model.plan("iris.ron")?;
/// let training = model.training.as_ref().expect("iris ships its data");
/// let data = Dataset::load(&training.data, Path::new("models"), "iris.ron", &plan)?;
/// assert_eq!((data.len(), data.features, data.outputs), (150, 4, 3));
///
/// // Made-up examples of the right shape, for counting a model that ships no data.
/// let made_up = Dataset::synthetic(&plan, 8, 42);
/// assert_eq!(made_up.len(), 8);
/// # Ok::<(), opcount::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `len x features` values, example after example.
    pub inputs: Vec<f32>,
    /// Values per example in.
    pub features: usize,
    /// Values per example out.
    pub outputs: usize,
    /// Class targets per example: 1, or one per token for a model whose output is
    /// `[tokens, classes]` (next-token prediction). Values per class target: the output's
    /// last axis.
    pub positions: usize,
    /// One target per example (`positions` classes per example).
    pub targets: Targets,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.inputs.len() / self.features
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Loads a model's training data; relative paths are relative to `model_dir`.
    /// `origin` names the model file in messages about inline data. Examples the data holds
    /// out (see [`Dataset::load_split`]) are not part of it.
    pub fn load(data: &Data, model_dir: &Path, origin: &str, plan: &Plan) -> Result<Dataset> {
        Dataset::load_within(data, model_dir, origin, plan, &mut Budget::unlimited())
    }

    /// [`Dataset::load`], charging the examples to `budget` as they are read: data too big
    /// for it is an [`Error::Memory`] naming the file, never an abort. A CSV file is read a
    /// bounded line at a time ([`crate::input::MAX_CSV_LINE_BYTES`]).
    pub fn load_within(
        data: &Data,
        model_dir: &Path,
        origin: &str,
        plan: &Plan,
        budget: &mut Budget,
    ) -> Result<Dataset> {
        Ok(Dataset::load_split_within(data, model_dir, origin, plan, budget)?.0)
    }

    /// Loads a model's data as [`Dataset::load`] does, and the held-out examples apart, if
    /// the data holds some out (a `Text`'s `held_out` windows, from the end of the text; a
    /// `Csv`'s `held_out` rows, spread evenly through the file): `(training, held out)`.
    ///
    /// ```
    /// use std::path::Path;
    /// use opcount::{Model, data::Dataset};
    ///
    /// let model = Model::parse(
    ///     "(name: \"chars\", input: [64], loss: SoftmaxCrossEntropy, graph: [
    ///         (name: \"wte\", op: Embedding(vocab: 80, width: 8)),
    ///         (name: \"logits\", op: Unembed(vocab: 80), share: \"wte\")],
    ///       training: (data: Text(path: \"data/pride-and-prejudice.txt\", held_out: 0.1),
    ///                  epochs: 1, lr: 0.01, batch: 8))",
    ///     "chars.ron",
    /// )?;
    /// let plan = model.plan("chars.ron")?;
    /// let data = &model.training.as_ref().unwrap().data;
    /// let (train, held_out) = Dataset::load_split(data, Path::new("models"), "chars.ron", &plan)?;
    /// let held_out = held_out.expect("a tenth of the windows");
    /// // 684,768 characters: 10,699 windows of 64 tokens and the character after each.
    /// assert_eq!((train.len(), held_out.len()), (9_629, 1_070));
    /// assert_eq!(train.positions, 64);
    /// # Ok::<(), opcount::Error>(())
    /// ```
    pub fn load_split(
        data: &Data,
        model_dir: &Path,
        origin: &str,
        plan: &Plan,
    ) -> Result<(Dataset, Option<Dataset>)> {
        Dataset::load_split_within(data, model_dir, origin, plan, &mut Budget::unlimited())
    }

    /// [`Dataset::load_split`], charging what it reads to `budget`.
    pub fn load_split_within(
        data: &Data,
        model_dir: &Path,
        origin: &str,
        plan: &Plan,
        budget: &mut Budget,
    ) -> Result<(Dataset, Option<Dataset>)> {
        let data_spec = data;
        let (inputs, features, targets, lines) = match data {
            Data::Text { path, held_out } => {
                return read_text_windows(&model_dir.join(path), *held_out, plan, budget);
            }
            Data::Synthetic { examples, seed } => {
                return Dataset::synthetic_within(plan, *examples, *seed, origin, budget)
                    .map(|data| (data, None));
            }
            Data::Csv {
                path,
                features,
                target,
                held_out,
            } => {
                check_fraction(*held_out).map_err(|message| Error::Data {
                    origin: origin.to_string(),
                    message,
                })?;
                read_csv(&model_dir.join(path), features.as_deref(), target, budget)?
            }
            Data::Inline { inputs, targets } => {
                let err = |message: String| Error::Data {
                    origin: origin.to_string(),
                    message,
                };
                let features = inputs.first().map_or(0, Vec::len);
                if let Some(i) = inputs.iter().position(|row| row.len() != features) {
                    return Err(err(format!(
                        "inline inputs: example {i} has {} values, the first has {features}",
                        inputs[i].len()
                    )));
                }
                // Classes are one per example, or one per token for next-token prediction.
                let (n_targets, per) = match targets {
                    InlineTargets::Classes(c) => {
                        (c.len(), plan.output().len() / plan.output().last())
                    }
                    InlineTargets::Values(v) => (v.len(), 1),
                };
                if n_targets != inputs.len() * per {
                    let each = if per > 1 {
                        format!(" ({per} classes per input, one per token)")
                    } else {
                        String::new()
                    };
                    return Err(err(format!(
                        "inline data: {} inputs but {n_targets} targets{each}",
                        inputs.len()
                    )));
                }
                // The model's lists were charged as they were read; this is a copy of them.
                let copy = inputs.iter().map(Vec::len).sum::<usize>() as u128 * 4
                    + match targets {
                        InlineTargets::Classes(c) => c.len() as u128 * 8,
                        InlineTargets::Values(v) => {
                            v.iter().map(Vec::len).sum::<usize>() as u128 * 4
                        }
                    };
                budget.charge(copy, || format!("{origin}: the inline examples"))?;
                let flat: Vec<f32> = inputs.concat();
                let targets = match targets {
                    InlineTargets::Classes(c) => Targets::Classes(c.clone()),
                    InlineTargets::Values(v) => {
                        let width = v.first().map_or(0, Vec::len);
                        if let Some(i) = v.iter().position(|row| row.len() != width) {
                            return Err(err(format!(
                                "inline targets: example {i} has {} values, the first has {width}",
                                v[i].len()
                            )));
                        }
                        Targets::Values(v.concat())
                    }
                };
                (flat, features, targets, Vec::new())
            }
        };
        let file = match data {
            Data::Csv { path, .. } | Data::Text { path, .. } => {
                model_dir.join(path).display().to_string()
            }
            Data::Inline { .. } | Data::Synthetic { .. } => origin.to_string(),
        };
        // Where example `i` was written: its CSV line, or its place in the inline list.
        let locate = |i: usize| match lines.get(i) {
            Some(line) => format!("{file}:{line}"),
            None => format!("{file}: example {i}"),
        };
        let mut data = Dataset::checked(inputs, features, targets, plan, &file, &locate)?;
        let Data::Csv { held_out, .. } = data_spec else {
            return Ok((data, None));
        };
        let rows = data.len();
        let held = held_count(*held_out, rows);
        if held == 0 {
            return Ok((data, None));
        }
        if held >= rows {
            return Err(Error::Data {
                origin: file,
                message: format!(
                    "{rows} rows, {held} of them held out: nothing is left to train on"
                ),
            });
        }
        let held_out = data.hold_out(held, budget, &file)?;
        Ok((data, Some(held_out)))
    }

    /// Moves `held` examples, spread evenly through the data (example i when
    /// `floor((i + 1) held / n) > floor(i held / n)`: for a fifth, every fifth example, from the
    /// fifth), into a data set of their own, keeping the order of both. What is moved is
    /// charged to `budget` first: the copy exists before this one shrinks.
    fn hold_out(&mut self, held: usize, budget: &mut Budget, file: &str) -> Result<Dataset> {
        let n = self.len();
        let per_example = match &self.targets {
            Targets::Classes(_) => self.features as u128 * 4 + self.positions as u128 * 8,
            Targets::Values(_) => (self.features + self.outputs) as u128 * 4,
        };
        budget.charge(held as u128 * per_example, || {
            format!("{file}: the held-out examples")
        })?;
        // Exact in u128: held <= n, and n times n fits.
        let step = |i: usize| (i as u128 * held as u128 / n as u128) as usize;
        let out: Vec<bool> = (0..n).map(|i| step(i + 1) > step(i)).collect();
        let inputs = deal(&mut self.inputs, self.features, &out);
        let targets = match &mut self.targets {
            Targets::Classes(c) => Targets::Classes(deal(c, self.positions, &out)),
            Targets::Values(v) => Targets::Values(deal(v, self.outputs, &out)),
        };
        Ok(Dataset {
            inputs,
            targets,
            ..*self
        })
    }

    /// Checks examples against a plan.
    fn checked(
        inputs: Vec<f32>,
        features: usize,
        targets: Targets,
        plan: &Plan,
        origin: &str,
        locate: &dyn Fn(usize) -> String,
    ) -> Result<Dataset> {
        let err = |message: String| Error::Data {
            origin: origin.to_string(),
            message,
        };
        let err_at = |example: usize, message: String| Error::Data {
            origin: locate(example),
            message,
        };
        if inputs.is_empty() {
            return Err(err("no examples".into()));
        }
        let expected = plan.input().len();
        if features != expected {
            return Err(err(format!(
                "the model's input takes {expected} values ({}), the data has {features} features",
                plan.input()
            )));
        }
        if let Some(i) = inputs.iter().position(|v| !v.is_finite()) {
            return Err(err_at(
                i / features,
                format!(
                    "feature {}: {} is not a finite number",
                    i % features,
                    inputs[i]
                ),
            ));
        }
        if let Some(vocab) = plan.token_ids() {
            let bad = |v: f32| v < 0.0 || v.fract() != 0.0 || v >= vocab as f32;
            if let Some(i) = inputs.iter().position(|&v| bad(v)) {
                return Err(err_at(
                    i / features,
                    format!(
                        "feature {}: {} is not a token id (a whole number from 0 to {})",
                        i % features,
                        inputs[i],
                        vocab - 1
                    ),
                ));
            }
        }
        let outputs = plan.output().len();
        let positions = outputs / plan.output().last();
        match &targets {
            Targets::Classes(classes) => {
                // One output scores a two-class problem: class 1 above 0.5.
                let n_classes = if outputs == 1 {
                    2
                } else {
                    plan.output().last()
                };
                let n = inputs.len() / features;
                if classes.len() != n * positions {
                    return Err(err(format!(
                        "the model predicts a class at each of {positions} positions (its output \
                         is {}), the data has {} classes per example",
                        plan.output(),
                        classes.len() as f64 / n as f64
                    )));
                }
                if let Some(i) = classes.iter().position(|&c| c >= n_classes) {
                    return Err(err_at(
                        i / positions,
                        format!(
                            "class {} is out of range, the model has {n_classes} classes (0..{})",
                            classes[i],
                            n_classes - 1
                        ),
                    ));
                }
                if plan.loss() == Loss::SoftmaxCrossEntropy && outputs < 2 {
                    return Err(err("cross-entropy needs at least 2 outputs".into()));
                }
            }
            Targets::Values(values) => {
                if plan.loss() == Loss::SoftmaxCrossEntropy {
                    return Err(err(
                        "loss SoftmaxCrossEntropy needs class targets, the data has values".into(),
                    ));
                }
                let n = inputs.len() / features;
                if values.len() != n * outputs {
                    return Err(err(format!(
                        "the model has {outputs} outputs, the data has {} target values per example",
                        values.len() as f64 / n as f64
                    )));
                }
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(err_at(
                        i / outputs,
                        format!(
                            "target {}: {} is not a finite number",
                            i % outputs,
                            values[i]
                        ),
                    ));
                }
            }
        }
        Ok(Dataset {
            inputs,
            features,
            outputs,
            positions,
            targets,
        })
    }

    /// `n` made-up examples for a plan: inputs uniform in `[-1, 1)` (token ids uniform below
    /// the vocabulary, if the input holds ids), and a random class (for cross-entropy) or
    /// random values in `[0, 1)` (for MSE).
    pub fn synthetic(plan: &Plan, n: usize, seed: u64) -> Dataset {
        let mut rng = Rng::new(seed);
        let features = plan.input().len();
        let outputs = plan.output().len();
        let inputs = match plan.token_ids() {
            Some(vocab) => (0..n * features).map(|_| rng.below(vocab) as f32).collect(),
            None => (0..n * features).map(|_| rng.symmetric(1.0)).collect(),
        };
        let classes = plan.output().last();
        let positions = outputs / classes;
        let targets = match plan.loss() {
            Loss::SoftmaxCrossEntropy => {
                Targets::Classes((0..n * positions).map(|_| rng.below(classes)).collect())
            }
            // Without a loss the targets are read by nothing; values keep every shape valid.
            Loss::Mse | Loss::None => {
                Targets::Values((0..n * outputs).map(|_| rng.unit()).collect())
            }
        };
        Dataset {
            inputs,
            features,
            outputs,
            positions,
            targets,
        }
    }

    /// [`Dataset::synthetic`], charging the examples to `budget` first: too many for it are an
    /// [`Error::Memory`] naming `origin`, never an abort. None is an [`Error::Data`].
    pub fn synthetic_within(
        plan: &Plan,
        n: usize,
        seed: u64,
        origin: &str,
        budget: &mut Budget,
    ) -> Result<Dataset> {
        if n == 0 {
            return Err(Error::Data {
                origin: origin.to_string(),
                message: "Synthetic: examples: expected at least 1, found 0".into(),
            });
        }
        // Inputs as f32, and the larger of the two kinds of target: a class (usize) per
        // position or an f32 per output.
        let targets = (plan.output().len() as u128 * 4)
            .max((plan.output().len() / plan.output().last()) as u128 * 8);
        let per_example = plan.input().len() as u128 * 4 + targets;
        budget.charge(n as u128 * per_example, || {
            format!("{origin}: {n} synthetic examples")
        })?;
        Ok(Dataset::synthetic(plan, n, seed))
    }

    /// The first `size` examples as a batch, starting over from the first if there are fewer.
    pub fn head<S: Scalar>(&self, size: usize, loss: Loss) -> Batch<S> {
        let indices: Vec<usize> = (0..size).map(|i| i % self.len()).collect();
        let mut batch = Batch::default();
        self.gather(&indices, loss, &mut batch);
        batch
    }

    /// Copies the examples `indices` into `batch`, converting to `S` (free) and turning
    /// classes into one-hot values where the loss needs values.
    pub fn gather<S: Scalar>(&self, indices: &[usize], loss: Loss, batch: &mut Batch<S>) {
        batch.size = indices.len();
        batch.inputs.clear();
        batch.classes.clear();
        batch.values.clear();
        for &i in indices {
            let row = &self.inputs[i * self.features..(i + 1) * self.features];
            batch.inputs.extend(row.iter().map(|&v| scalar::<S>(v)));
        }
        let p = self.positions;
        match (&self.targets, loss) {
            (Targets::Classes(c), Loss::SoftmaxCrossEntropy) => {
                for &i in indices {
                    batch.classes.extend_from_slice(&c[i * p..(i + 1) * p]);
                }
            }
            // Without a loss the classes are kept as they are and read by nothing.
            (Targets::Classes(c), Loss::None) => {
                for &i in indices {
                    batch.classes.extend_from_slice(&c[i * p..(i + 1) * p]);
                }
            }
            (Targets::Classes(c), Loss::Mse) => {
                for &i in indices {
                    batch.classes.extend_from_slice(&c[i * p..(i + 1) * p]);
                }
                for &class in &batch.classes {
                    batch.values.extend(one_hot::<S>(class, self.outputs / p));
                }
            }
            (Targets::Values(v), _) => {
                for &i in indices {
                    let row = &v[i * self.outputs..(i + 1) * self.outputs];
                    batch.values.extend(row.iter().map(|&x| scalar::<S>(x)));
                }
            }
        }
    }
}

/// Moves the rows of `width` values whose `out` is true out of `values`, into the list
/// returned; both keep their order. The rows kept are moved up in place.
fn deal<T: Copy>(values: &mut Vec<T>, width: usize, out: &[bool]) -> Vec<T> {
    let mut moved = Vec::with_capacity(out.iter().filter(|&&o| o).count() * width);
    let mut kept = 0;
    for (i, &o) in out.iter().enumerate() {
        let row = i * width..(i + 1) * width;
        if o {
            moved.extend_from_slice(&values[row]);
        } else {
            values.copy_within(row, kept * width);
            kept += 1;
        }
    }
    values.truncate(kept * width);
    moved
}

/// The target vector of class `c`: one-hot over `outputs` values, or `[c]` for a single
/// output (a two-class problem).
fn one_hot<S: Scalar>(c: usize, outputs: usize) -> impl Iterator<Item = S> {
    (0..outputs).map(move |j| {
        let hit = if outputs == 1 { c == 1 } else { j == c };
        if hit { S::one() } else { S::zero() }
    })
}

/// Converts an `f32` to `S`: free, and exact for every `Scalar` opcount ships.
pub(crate) fn scalar<S: Scalar>(v: f32) -> S {
    S::from_f32(v).expect("every Scalar holds an f32")
}

/// One batch of examples in the network's number type.
#[derive(Clone, Debug, Default)]
pub struct Batch<S> {
    /// Examples in the batch.
    pub size: usize,
    /// `size x features` values.
    pub inputs: Vec<S>,
    /// A class per example, or per token and example (empty for value targets).
    pub classes: Vec<usize>,
    /// `size x outputs` target values (empty for cross-entropy).
    pub values: Vec<S>,
}

/// Next-token examples from a text file, every character a token: the ids are the places
/// of the text's distinct characters in sorted order; window k is the T characters from
/// k·T, and each one's target the character after it. The last `held_out` of the windows
/// (rounded up), the end of the text, are returned apart.
fn read_text_windows(
    path: &Path,
    held_out: f32,
    plan: &Plan,
    budget: &mut Budget,
) -> Result<(Dataset, Option<Dataset>)> {
    let shown = path.display().to_string();
    let err = |message: String| Error::Data {
        origin: shown.clone(),
        message,
    };
    let (Some(vocab), Some(t)) = (plan.token_ids(), plan.input().as_flat()) else {
        return Err(err(
            "text data needs a model that reads token ids (an Embedding of 'input')".into(),
        ));
    };
    check_fraction(held_out).map_err(err)?;
    let text = crate::input::read_model_text(path, budget)?;
    let chars: Vec<char> = text.chars().collect();
    let distinct: Vec<char> = chars
        .iter()
        .copied()
        .collect::<std::collections::BTreeSet<char>>()
        .into_iter()
        .collect();
    if distinct.len() > vocab {
        return Err(err(format!(
            "the text has {} distinct characters, the model's embedding takes {vocab} (vocab)",
            distinct.len()
        )));
    }
    let ids: Vec<usize> = chars
        .iter()
        .map(|c| {
            distinct
                .binary_search(c)
                .expect("every character is in the list")
        })
        .collect();
    let windows = ids.len().saturating_sub(1) / t;
    let held = held_count(held_out, windows);
    if windows <= held {
        return Err(err(format!(
            "{} characters make {windows} windows of {t} tokens (and the next), {held} of them \
             held out: nothing is left to train on",
            ids.len()
        )));
    }
    let part = |from: usize, to: usize| {
        let inputs = ids[from * t..to * t].iter().map(|&i| i as f32).collect();
        let classes = ids[from * t + 1..to * t + 1].to_vec();
        let locate = |k: usize| format!("{shown}: window {}", from + k);
        Dataset::checked(inputs, t, Targets::Classes(classes), plan, &shown, &locate)
    };
    let train = part(0, windows - held)?;
    let held_out = if held > 0 {
        Some(part(windows - held, windows)?)
    } else {
        None
    };
    Ok((train, held_out))
}

/// A data set's `held_out`: a fraction from 0 up to (not including) 1.
fn check_fraction(held_out: f32) -> std::result::Result<(), String> {
    if (0.0..1.0).contains(&held_out) {
        Ok(())
    } else {
        Err(format!(
            "held_out: expected a fraction from 0 up to (not including) 1, found {held_out}"
        ))
    }
}

/// How many of `n` examples a `held_out` fraction holds out: `fraction x n` rounded up, for
/// the fraction as written (its shortest decimal: `0.2` is 2/10, not the binary
/// 0.2000000030 that would make a fifth of 150 rows 31), in exact integer arithmetic. Digits
/// past the 18th decimal place are dropped.
fn held_count(fraction: f32, n: usize) -> usize {
    let text = fraction.to_string();
    let decimals = text.split_once('.').map_or("", |(_, d)| d);
    let decimals = &decimals[..decimals.len().min(18)];
    let numerator: u128 = decimals.parse().unwrap_or(0);
    let denominator = 10u128.pow(decimals.len() as u32);
    // numerator < 10^18 and n < 2^64: the product fits.
    (numerator * n as u128).div_ceil(denominator) as usize
}

/// Reads a CSV file with a header row, charging what it keeps to `budget`.
fn read_csv(
    path: &Path,
    features: Option<&[String]>,
    target: &Target,
    budget: &mut Budget,
) -> Result<(Vec<f32>, usize, Targets, Vec<u64>)> {
    let shown = path.display().to_string();
    let err_at = |line: u64, message: String| Error::Data {
        origin: format!("{shown}:{line}"),
        message,
    };
    if path.is_dir() {
        return Err(Error::Data {
            origin: shown.clone(),
            message: "is a directory, expected a CSV file".into(),
        });
    }
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        action: "cannot read the data file",
        source,
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(Lines::new(file));
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| csv_error(&shown, e))?
        .iter()
        .map(str::to_string)
        .collect();
    let column = |name: &str| -> Result<usize> {
        header.iter().position(|h| h == name).ok_or_else(|| {
            err_at(
                1,
                format!(
                    "no column named '{}'; the header has: {}",
                    echo(name),
                    echo(&header.join(", "))
                ),
            )
        })
    };
    let target_columns: Vec<usize> = match target {
        Target::Class { column: c, .. } => vec![column(c)?],
        Target::Values { columns } => columns.iter().map(|c| column(c)).collect::<Result<_>>()?,
    };
    let feature_columns: Vec<usize> = match features {
        Some(names) => names.iter().map(|c| column(c)).collect::<Result<_>>()?,
        None => (0..header.len())
            .filter(|i| !target_columns.contains(i))
            .collect(),
    };

    let mut inputs = Vec::new();
    let mut classes = Vec::new();
    let mut values = Vec::new();
    let mut lines = Vec::new();
    let mut kept = Kept {
        budget,
        what: format!("{shown}: the examples"),
    };
    for record in reader.records() {
        let record = record.map_err(|e| csv_error(&shown, e))?;
        let line = record.position().map_or(0, |p| p.line());
        kept.push(&mut lines, line)?;
        let number = |col: usize| -> Result<f32> {
            let text = &record[col];
            let v: f32 = text.parse().map_err(|_| {
                err_at(
                    line,
                    format!(
                        "column {} ({}): expected a number, found '{}'",
                        col + 1,
                        echo(&header[col]),
                        echo(text)
                    ),
                )
            })?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(err_at(
                    line,
                    format!(
                        "column {} ({}): {} is not a finite number",
                        col + 1,
                        echo(&header[col]),
                        echo(text)
                    ),
                ))
            }
        };
        for &c in &feature_columns {
            kept.push(&mut inputs, number(c)?)?;
        }
        match target {
            Target::Class {
                classes: labels, ..
            } => {
                let col = target_columns[0];
                let text = &record[col];
                let class = match labels {
                    Some(labels) => labels.iter().position(|l| l == text).ok_or_else(|| {
                        err_at(
                            line,
                            format!(
                                "column {} ({}): unknown class '{}', expected one of: {}",
                                col + 1,
                                echo(&header[col]),
                                echo(text),
                                echo(&labels.join(", "))
                            ),
                        )
                    })?,
                    None => text.parse().map_err(|_| {
                        err_at(
                            line,
                            format!(
                                "column {} ({}): expected a class number 0, 1, 2, ..., found '{}'",
                                col + 1,
                                echo(&header[col]),
                                echo(text)
                            ),
                        )
                    })?,
                };
                kept.push(&mut classes, class)?;
            }
            Target::Values { .. } => {
                for &c in &target_columns {
                    kept.push(&mut values, number(c)?)?;
                }
            }
        }
    }
    let targets = match target {
        Target::Class { .. } => Targets::Classes(classes),
        Target::Values { .. } => Targets::Values(values),
    };
    Ok((inputs, feature_columns.len(), targets, lines))
}

/// What a CSV file keeps, charged to the budget as it grows.
struct Kept<'a> {
    budget: &'a mut Budget,
    what: String,
}

impl Kept<'_> {
    /// Pushes `value`, charging (and reserving, without aborting) the room first.
    fn push<T>(&mut self, list: &mut Vec<T>, value: T) -> Result<()> {
        if list.len() == list.capacity() {
            let more = list.capacity().max(64);
            let bytes = more * size_of::<T>();
            self.budget.charge(bytes as u128, || self.what.clone())?;
            list.try_reserve_exact(more)
                .map_err(|_| out_of_memory(self.what.clone(), bytes))?;
        }
        list.push(value);
        Ok(())
    }
}

fn csv_error(shown: &str, e: csv::Error) -> Error {
    if let csv::ErrorKind::Io(io) = e.kind()
        && let Some(LineTooLong(line)) = io.get_ref().and_then(|e| e.downcast_ref())
    {
        return Error::Data {
            origin: format!("{shown}:{line}"),
            message: LineTooLong(*line).to_string(),
        };
    }
    let line = e.position().map_or(0, |p| p.line());
    let message = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields like the header, found {len}"),
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8 text".to_string(),
        _ => e.to_string(),
    };
    Error::Data {
        origin: format!("{shown}:{line}"),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fraction_holds_out_what_it_says_as_written() {
        assert_eq!(held_count(0.2, 150), 30);
        assert_eq!(held_count(0.2, 1797), 360);
        assert_eq!(held_count(0.1, 10_699), 1070);
        assert_eq!(held_count(0.1, 10), 1);
        assert_eq!(held_count(0.3, 10), 3);
        assert_eq!(held_count(0.0, 10), 0);
        assert_eq!(held_count(0.5, usize::MAX), usize::MAX.div_ceil(2));
        // 0.2 as an f32 is a little more than a fifth: plain floating point would say 31.
        assert_eq!((f64::from(0.2f32) * 150.0).ceil(), 31.0);
    }

    #[test]
    fn held_out_rows_are_spread_evenly_and_keep_their_order() {
        // Ten examples whose one feature is their row number, and a fraction of 0.3: three
        // held out, rows 3, 6 and 9 (from 0: floor((i + 1) 3 / 10) > floor(i 3 / 10)).
        let mut data = Dataset {
            inputs: (0..10).map(|i| i as f32).collect(),
            features: 1,
            outputs: 2,
            positions: 1,
            targets: Targets::Values((0..20).map(|i| i as f32).collect()),
        };
        assert_eq!(data.len(), 10);
        let mut budget = Budget::new(1 << 20, "a test's");
        let held = data.hold_out(3, &mut budget, "t.csv").unwrap();
        assert_eq!(held.inputs, [3.0, 6.0, 9.0]);
        assert_eq!(
            held.targets,
            Targets::Values(vec![6.0, 7.0, 12.0, 13.0, 18.0, 19.0])
        );
        assert_eq!(data.inputs, [0.0, 1.0, 2.0, 4.0, 5.0, 7.0, 8.0]);
        assert_eq!(data.len() + held.len(), 10);
        assert_eq!(budget.used(), 3 * (4 + 2 * 4));
    }
}
