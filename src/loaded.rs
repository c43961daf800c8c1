//! A model file (RON or ONNX) read and validated within a memory budget, and the budget, which what is
//! done with the model next (its data, the networks that run it, a report, a saved copy) is
//! charged to before it is allocated. The first thing each of `opcount`'s commands does.

use std::path::{Path, PathBuf};

use crate::budget::{self, Budget};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::{Data, Model, Plan, Training};
use crate::onnx::{self, Import};

/// A model file, validated, with the memory budget what was read from it is charged to.
#[derive(Debug)]
pub struct Loaded {
    plan: Plan,
    origin: String,
    dir: PathBuf,
    budget: Budget,
}

impl Loaded {
    /// The validated graph (its [`Plan::model`] is the file as written).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The file's path as messages show it.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The file's directory: a CSV data path in the file is relative to it.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The budget, with what was charged to it so far.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// The budget, to charge more to it.
    pub fn budget_mut(&mut self) -> &mut Budget {
        &mut self.budget
    }

    /// Reads the model file at `path` and validates it, within `budget`: the text and the
    /// lists parsed from it as they are read, then the plan's per-node bookkeeping
    /// ([`budget::NODE_BYTES`]) for as many nodes as its entries can make, chain or graph,
    /// before planning (an entry with an activation makes two; what the plan does not use is
    /// given back).
    ///
    /// ```
    /// use opcount::Loaded;
    /// use opcount::budget::Budget;
    ///
    /// let mut loaded = Loaded::load("models/iris.ron".as_ref(), Budget::new(64 << 20, "a test's"))?;
    /// let data = loaded.data_or_synthetic(8)?;
    /// assert_eq!((loaded.plan().name(), data.len()), ("iris", 150));
    /// # Ok::<(), opcount::Error>(())
    /// ```
    pub fn load(path: &Path, budget: Budget) -> Result<Loaded> {
        Loaded::load_with(path, budget, &Import::default())
    }

    /// [`Loaded::load`] for a RON or an ONNX file (`.onnx`, read by [`crate::onnx`] with
    /// `import`'s loss and input shape). `import` must be the default for a RON file, which
    /// says its own.
    pub fn load_with(path: &Path, mut budget: Budget, import: &Import) -> Result<Loaded> {
        let origin = path.display().to_string();
        let model = if onnx::is_onnx(path) {
            onnx::load_within(path, &mut budget, import)?
        } else if *import != Import::default() {
            return Err(Error::Model {
                origin,
                message: "--loss, --input-shape and --gelu-as-tanh are for ONNX models; a \
                          RON model file says its own loss, input and operations"
                    .into(),
            });
        } else {
            Model::load_within(path, &mut budget)?
        };
        let per_node = u128::from(budget::NODE_BYTES);
        let most = 2 * (model.layers.len() + model.graph.len()) as u128;
        budget.charge(per_node * most, || {
            format!("{origin}: the counts and bookkeeping of up to {most} nodes")
        })?;
        let plan = model.plan(&origin)?;
        let nodes = plan.nodes().len() as u128;
        if nodes <= most {
            budget.release(per_node * (most - nodes));
        } else {
            budget.charge(per_node * (nodes - most), || {
                format!("{origin}: the counts and bookkeeping of {nodes} nodes")
            })?;
        }
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        Ok(Loaded {
            plan,
            origin,
            dir,
            budget,
        })
    }

    /// The model file's training block, or an error saying it has none.
    pub fn training(&self) -> Result<&Training> {
        training_of(&self.plan, &self.origin)
    }

    /// Trains on `data` (`opcount train --data` or `--synthetic`): in place of the data of
    /// the model file's training block, keeping its settings, or, for a model without one (an
    /// ONNX file has none), with [`Training::new`]'s.
    ///
    /// ```
    /// use opcount::Loaded;
    /// use opcount::budget::Budget;
    /// use opcount::model::Data;
    ///
    /// let mut loaded = Loaded::load("tests/onnx/resnet.onnx".as_ref(), Budget::unlimited())?;
    /// loaded.train_on(Data::Synthetic { examples: 8, seed: 1 })?;
    /// let (data, held_out) = loaded.data_and_held_out()?;
    /// assert_eq!((data.len(), held_out, loaded.training()?.epochs), (8, None, 1));
    /// # Ok::<(), opcount::Error>(())
    /// ```
    pub fn train_on(&mut self, data: Data) -> Result<()> {
        let training = match &self.plan.model().training {
            Some(t) => Training { data, ..t.clone() },
            None => Training::new(data),
        };
        self.plan.set_training(training, &self.origin)
    }

    /// The training data of the model file's training block, charged as it is read.
    pub fn data(&mut self) -> Result<Dataset> {
        let training = training_of(&self.plan, &self.origin)?;
        Dataset::load_within(
            &training.data,
            &self.dir,
            &self.origin,
            &self.plan,
            &mut self.budget,
        )
    }

    /// The training data of the model file's training block and, apart, the examples it
    /// holds out, if any ([`Dataset::load_split`]), charged as they are read.
    pub fn data_and_held_out(&mut self) -> Result<(Dataset, Option<Dataset>)> {
        let training = training_of(&self.plan, &self.origin)?;
        Dataset::load_split_within(
            &training.data,
            &self.dir,
            &self.origin,
            &self.plan,
            &mut self.budget,
        )
    }

    /// The model's training data, or `n` seeded made-up examples if it has no training
    /// block.
    pub fn data_or_synthetic(&mut self, n: usize) -> Result<Dataset> {
        match self.plan.model().training {
            Some(_) => self.data(),
            None => Ok(Dataset::synthetic(&self.plan, n, 0)),
        }
    }

    /// Charges, before any is built, the memory of `networks` networks of 4-byte numbers
    /// running a step at `batch` ([`Plan::memory_bytes`]).
    pub fn charge_run(&mut self, batch: usize, networks: u128) -> Result<()> {
        let need = self.plan.memory_bytes(batch, 4).saturating_mul(networks);
        let origin = &self.origin;
        self.budget.charge(need, || {
            format!("{origin}: running this model at batch {batch}")
        })
    }

    /// Charges rendering the report of a step at `bytes_per_node` per node (e.g.
    /// [`budget::JSON_BYTES_PER_NODE`]).
    pub fn charge_report(&mut self, bytes_per_node: u64) -> Result<()> {
        let nodes = self.plan.nodes().len();
        let origin = &self.origin;
        self.budget
            .charge(u128::from(bytes_per_node) * nodes as u128, || {
                format!("{origin}: the report of {nodes} nodes")
            })
    }

    /// Charges saving the trained model ([`budget::SAVE_BYTES_PER_PARAM`] per parameter, and
    /// per value of the operations' state).
    pub fn charge_save(&mut self) -> Result<()> {
        let (params, state) = (self.plan.params(), self.plan.state_values());
        let origin = &self.origin;
        let values = params + state;
        self.budget
            .charge(u128::from(budget::SAVE_BYTES_PER_PARAM) * values, || {
                let state = match state {
                    0 => String::new(),
                    n => format!(" and {n} values of state"),
                };
                format!("{origin}: saving the trained model ({params} parameters{state})")
            })
    }
}

fn training_of<'a>(plan: &'a Plan, origin: &str) -> Result<&'a Training> {
    let message = if onnx::is_onnx(Path::new(origin)) {
        "an ONNX model has no training block, so there is nothing to train on: give \
         `--data FILE.csv --target COLUMN` or `--synthetic EXAMPLES` (see docs/onnx.md)"
    } else {
        "the model has no training block, so there is nothing to train on: add one (see \
         docs/model-format.md), or give `--data FILE.csv --target COLUMN` or \
         `--synthetic EXAMPLES`"
    };
    plan.model().training.as_ref().ok_or_else(|| Error::Model {
        origin: origin.to_string(),
        message: message.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_does_not_fit_is_refused_naming_the_file() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/models/iris.ron"));
        let mut loaded = Loaded::load(path, Budget::new(1 << 20, "set by a test")).unwrap();
        // iris: 4 -> 16 (tanh) -> 3, three nodes; of the four charged for, one given back.
        assert_eq!(loaded.plan().nodes().len(), 3);
        let after_load = loaded.budget().used();
        assert!(after_load >= 3 * u128::from(budget::NODE_BYTES));
        let err = loaded.charge_run(1 << 20, 2).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "{}: running this model at batch 1048576 needs about",
                path.display()
            )),
            "{err}"
        );
        assert_eq!(loaded.budget().used(), after_load);
        loaded.charge_report(budget::TABLE_BYTES_PER_NODE).unwrap();
        assert_eq!(
            loaded.budget().used(),
            after_load + 3 * u128::from(budget::TABLE_BYTES_PER_NODE)
        );
    }

    #[test]
    fn a_graph_is_charged_for_its_nodes() {
        // Written as a graph, not a chain of layers: five entries, two with an activation.
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/iris-residual.ron"
        ));
        let loaded = Loaded::load(path, Budget::new(1 << 20, "set by a test")).unwrap();
        assert_eq!(loaded.plan().nodes().len(), 7);
        assert!(loaded.budget().used() >= 7 * u128::from(budget::NODE_BYTES));
        // Too small a budget for the nodes is an error naming them, not a panic.
        let text = std::fs::read_to_string(path).unwrap();
        let small = Budget::new(text.len() as u64 * 3, "set by a test");
        let err = Loaded::load(path, small).unwrap_err().to_string();
        assert!(
            err.contains("the counts and bookkeeping of up to 10 nodes"),
            "{err}"
        );
    }
}
