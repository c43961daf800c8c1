//! The summary of `opcount train`: a model trained with plain numbers, how well it fits its
//! training data, and one training step counted with `Counted<f32>`.

use serde_json::{Value, json};

use crate::counted::Counted;
use crate::data::Dataset;
use crate::error::Result;
use crate::nn::Network;
use crate::phases::Totals;
use crate::report::{json_number, phase_table, thousands, totals_json};
use crate::scalar::Scalar;
use crate::text::escape;
use crate::train::{Evaluation, HeldOut, Progress, Settings, evaluate, train_held_out};

/// A training run and the operations of one of its steps.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    /// The model's name.
    pub model: String,
    /// Trainable parameters.
    pub params: u128,
    /// Training examples.
    pub examples: usize,
    /// The settings trained with, the batch no larger than the examples.
    pub settings: Settings,
    /// The batch asked for, which may have been larger than `settings.batch`.
    pub batch_asked: usize,
    /// The trained network's loss and accuracy over the training data.
    pub evaluation: Evaluation,
    /// With held-out examples, their loss and accuracy after every epoch and at the end.
    pub held_out: Option<HeldOut>,
    /// One training step at `settings.batch`, counted with `Counted<f32>`, per phase.
    pub step: Totals,
}

impl TrainSummary {
    /// Trains `net` on `data` with `settings` (a batch larger than the data is the whole
    /// data, [`Settings::clamped`]), evaluates it on the same data and, after every epoch, on
    /// the `held_out` examples if there are any, and counts one training step at that batch:
    /// what `opcount train` reports. `on_step` is called after every step. Fails as
    /// [`train`](crate::train::train) does.
    ///
    /// Evaluation runs the network forward as it is used ([`Network::infer`]) with `net`'s
    /// number type (plain `f32` on the command line: nothing counted); it is never part of
    /// the counted step.
    ///
    /// ```
    /// use opcount::budget::Budget;
    /// use opcount::summary::TrainSummary;
    /// use opcount::train::Settings;
    /// use opcount::{Loaded, Network};
    ///
    /// let mut loaded = Loaded::load("models/xor.ron".as_ref(), Budget::unlimited())?;
    /// let data = loaded.data()?;
    /// let settings = Settings::of(loaded.training()?);
    /// let mut net = Network::<f32>::new(loaded.plan());
    /// let summary = TrainSummary::train(&mut net, &data, None, &settings, |_| {})?;
    /// assert_eq!(summary.evaluation.accuracy(), Some(1.0));
    /// // A step of the 2-2-1 network at batch 4: 2 x 2 + 2 x 1 weights per example.
    /// assert_eq!(summary.step.forward.mul, 4 * 6);
    /// assert!(summary.table().starts_with("xor: 9 parameters, 4 examples, 3000 epochs"));
    /// # Ok::<(), opcount::Error>(())
    /// ```
    pub fn train<S: Scalar>(
        net: &mut Network<S>,
        data: &Dataset,
        held_out: Option<&Dataset>,
        settings: &Settings,
        on_step: impl FnMut(&Progress),
    ) -> Result<TrainSummary> {
        let run = settings.clamped(data.len());
        let (_, held_out) = train_held_out(net, data, held_out, &run, on_step)?;
        let evaluation = evaluate(net, data, run.batch);
        // Counts depend on shapes only: a fresh network counts what a trained one would.
        let plan = net.plan();
        let mut counted = Network::<Counted<f32>>::new(plan);
        counted.step(
            &data.head::<Counted<f32>>(run.batch, plan.loss()),
            Counted::new(run.lr),
        );
        let step = counted
            .counts()
            .expect("a counted network with attribution on has counts")
            .totals();
        Ok(TrainSummary {
            model: plan.name().to_string(),
            params: plan.params(),
            examples: data.len(),
            settings: run,
            batch_asked: settings.batch,
            evaluation,
            held_out,
            step,
        })
    }

    /// The summary as text for people: the run, the fit, and the step's operations per phase
    /// and kind.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let clamped = if self.batch_asked > s.batch {
            format!(" (asked for {}, more than the examples)", self.batch_asked)
        } else {
            String::new()
        };
        let mut out = format!(
            "{}: {} parameters, {} examples, {} epochs, batch {}{clamped}, lr {}\n",
            escape(&self.model),
            thousands(self.params),
            self.examples,
            s.epochs,
            s.batch,
            s.lr
        );
        out.push_str(&format!("final loss {:.6}", self.evaluation.loss));
        if let (Some(accuracy), Some(correct)) =
            (self.evaluation.accuracy(), self.evaluation.correct)
        {
            out.push_str(&format!(
                ", training accuracy {:.1}% ({correct}/{})",
                accuracy * 100.0,
                self.evaluation.predictions
            ));
        }
        if let Some(held) = &self.held_out {
            let last = &held.last;
            out.push_str(&format!(
                "\nheld-out loss {:.6} ({} examples)",
                last.loss, last.examples
            ));
            if let (Some(accuracy), Some(correct)) = (last.accuracy(), last.correct) {
                out.push_str(&format!(
                    ", held-out accuracy {:.1}% ({correct}/{})",
                    accuracy * 100.0,
                    last.predictions
                ));
            }
        }
        out.push_str(&format!(
            "\n\noperations of one training step (batch {}), counted with Counted<f32>:\n{}\n",
            s.batch,
            phase_table(&self.step)
        ));
        out
    }

    /// The summary as one JSON object (`train_accuracy` is null for targets that are not
    /// classes, the `held_out_` keys without held-out examples, and `zmul` null:
    /// `Counted<f32>` does not count multiplications by zero). docs/report-format.md.
    pub fn json(&self) -> Value {
        json!({
            "model": self.model,
            "params": json_number(self.params),
            "examples": self.examples,
            "epochs": self.settings.epochs,
            "batch": self.settings.batch,
            "batch_asked": self.batch_asked,
            "lr": self.settings.lr,
            "final_loss": self.evaluation.loss,
            "train_accuracy": self.evaluation.accuracy(),
            "held_out_examples": self.held_out.as_ref().map(|h| h.last.examples),
            "held_out_loss": self.held_out.as_ref().map(|h| h.last.loss),
            "held_out_accuracy": self.held_out.as_ref().and_then(|h| h.last.accuracy()),
            "held_out_by_epoch": self.held_out.as_ref().map(|h| json!({
                "epochs_per_value": h.loss.epochs_per_value(),
                "loss": h.loss.values(),
                "accuracy": (h.accuracy.epochs() > 0).then(|| h.accuracy.values()),
            })),
            "step_batch": self.settings.batch,
            "step": totals_json(&self.step, false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counts::Counts;

    /// A made-up run: every number different, so that each lands where it should.
    fn summary() -> TrainSummary {
        let forward = Counts {
            add: 1200,
            mul: 1536,
            ..Counts::ZERO
        };
        let loss = Counts {
            add: 3,
            sub: 4,
            ..Counts::ZERO
        };
        TrainSummary {
            model: "made\nup".into(),
            params: 1234,
            examples: 150,
            settings: Settings {
                epochs: 7,
                lr: 0.05,
                batch: 150,
                seed: 1,
            },
            batch_asked: 500,
            evaluation: Evaluation {
                loss: 0.123_456_7,
                correct: Some(147),
                examples: 150,
                predictions: 150,
            },
            held_out: None,
            step: Totals {
                forward,
                loss,
                backward: Counts::ZERO,
                update: Counts::ZERO,
                all: forward + loss,
            },
        }
    }

    #[test]
    fn the_table_says_what_ran_how_well_and_what_a_step_costs() {
        // The name's control character is escaped; the batch asked for is said.
        assert_eq!(
            summary().table(),
            "\
made\\nup: 1,234 parameters, 150 examples, 7 epochs, batch 150 (asked for 500, more than the examples), lr 0.05
final loss 0.123457, training accuracy 98.0% (147/150)

operations of one training step (batch 150), counted with Counted<f32>:
╭──────────┬───────┬─────┬───────┬───────╮
│ phase    │ add   │ sub │ mul   │ total │
├──────────┼───────┼─────┼───────┼───────┤
│ forward  │ 1,200 │   0 │ 1,536 │ 2,736 │
│ loss     │     3 │   4 │     0 │     7 │
│ backward │     0 │   0 │     0 │     0 │
│ update   │     0 │   0 │     0 │     0 │
│ step     │ 1,203 │   4 │ 1,536 │ 2,743 │
╰──────────┴───────┴─────┴───────┴───────╯
"
        );
    }

    #[test]
    fn without_classes_there_is_no_accuracy() {
        let mut s = summary();
        s.evaluation.correct = None;
        s.batch_asked = 150;
        let table = s.table();
        assert!(
            table.starts_with(
                "made\\nup: 1,234 parameters, 150 examples, 7 epochs, batch 150, lr 0.05\n\
                 final loss 0.123457\n\n"
            ),
            "{table}"
        );
        assert_eq!(s.json()["train_accuracy"], Value::Null);
    }

    #[test]
    fn the_json_has_every_number_under_its_name() {
        let json = summary().json();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "model",
                "params",
                "examples",
                "epochs",
                "batch",
                "batch_asked",
                "lr",
                "final_loss",
                "train_accuracy",
                "held_out_examples",
                "held_out_loss",
                "held_out_accuracy",
                "held_out_by_epoch",
                "step_batch",
                "step"
            ]
        );
        assert_eq!(json["model"], "made\nup");
        assert_eq!(json["params"], 1234);
        assert_eq!(json["batch_asked"], 500);
        assert_eq!(json["lr"], json!(0.05f32));
        assert_eq!(json["train_accuracy"], json!(0.98));
        assert_eq!(json["step"]["loss"]["sub"], 4);
        assert_eq!(json["step"]["all"]["mul"], 1536);
        assert_eq!(json["step"]["all"]["zmul"], Value::Null);
        assert_eq!(json["held_out_accuracy"], Value::Null);
        assert_eq!(json["held_out_by_epoch"], Value::Null);
    }

    #[test]
    fn held_out_examples_are_reported_after_the_training_data() {
        let mut s = summary();
        let mut loss = crate::train::LossHistory::default();
        let mut accuracy = crate::train::LossHistory::default();
        for (l, a) in [(0.9, 0.5), (0.25, 0.75)] {
            loss.push(l);
            accuracy.push(a);
        }
        let last = Evaluation {
            loss: 0.25,
            correct: Some(30),
            examples: 40,
            predictions: 40,
        };
        s.held_out = Some(HeldOut {
            loss,
            accuracy,
            last,
        });
        let table = s.table();
        assert!(
            table.contains(
                "final loss 0.123457, training accuracy 98.0% (147/150)\n\
                 held-out loss 0.250000 (40 examples), held-out accuracy 75.0% (30/40)\n\n"
            ),
            "{table}"
        );
        let json = s.json();
        assert_eq!(json["held_out_examples"], 40);
        assert_eq!(json["held_out_loss"], json!(0.25));
        assert_eq!(json["held_out_accuracy"], json!(0.75));
        assert_eq!(
            json["held_out_by_epoch"],
            json!({"epochs_per_value": 1, "loss": [0.9, 0.25], "accuracy": [0.5, 0.75]})
        );
    }
}
