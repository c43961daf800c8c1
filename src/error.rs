//! The library's one error type. Every message says where (file and line/column, or layer)
//! and what was expected against what was found, on one line: text from the input (a path, a
//! layer name, a CSV cell) is shown with its control characters escaped ([`crate::text`]).

use std::path::PathBuf;

use crate::text::escape;

/// Everything that can go wrong loading, checking, running or writing a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written. The operating system's reason is the error's
    /// [`source`](std::error::Error::source), not part of its own message: print the chain
    /// (e.g. anyhow's `{:#}`) to show both.
    #[error("{}: {action}", escape(&path.display().to_string()))]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done, e.g. "cannot read".
        action: &'static str,
        /// The operating system's reason.
        source: std::io::Error,
    },

    /// The model file is not valid RON, or does not fit the schema.
    #[error("{}:{line}:{column}: {}", escape(origin), escape(message))]
    Syntax {
        /// The model file (or a description of where the text came from).
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser expected and found.
        message: String,
    },

    /// A layer that cannot be built as written.
    #[error(
        "{}: layer {index} ({}): {}",
        escape(origin),
        escape(name),
        escape(message)
    )]
    Layer {
        /// The model file.
        origin: String,
        /// The layer's position in the `layers` list, from 0.
        index: usize,
        /// The layer's name.
        name: String,
        /// Expected against found.
        message: String,
    },

    /// A problem with the model as a whole (input shape, loss, training settings).
    #[error("{}: {}", escape(origin), escape(message))]
    Model {
        /// The model file.
        origin: String,
        /// Expected against found.
        message: String,
    },

    /// Training data that cannot be used.
    #[error("{}: {}", escape(origin), escape(message))]
    Data {
        /// The data file with its line, e.g. `iris.csv:12`, or the model file for inline data.
        origin: String,
        /// Expected against found.
        message: String,
    },

    /// Training produced a loss that is not a finite number.
    #[error(
        "training diverged at epoch {epoch}, step {step}: the loss is {loss}; \
         a smaller learning rate (--lr) may help"
    )]
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// The loss (NaN or infinite).
        loss: f64,
    },

    /// Training left a parameter that is not a finite number: the last update overflowed
    /// after a finite loss (every earlier update shows in a later loss).
    #[error(
        "training diverged in its last update: {what} {index} of layer {layer} ({}) is {value}; \
         a smaller learning rate (--lr) may help",
        escape(name)
    )]
    NotFinite {
        /// The layer's position in the `layers` list, from 0.
        layer: usize,
        /// The layer's name.
        name: String,
        /// `weight` or `bias`.
        what: &'static str,
        /// The parameter's position in the layer's inline `weights` or `biases`.
        index: usize,
        /// The value (NaN or infinite).
        value: f32,
    },

    /// Something that grows with the input does not fit in the memory budget
    /// ([`crate::budget::Budget`]).
    #[error("{}", memory_message(what, *need, *left, *limit, note))]
    Memory {
        /// What needed the memory, e.g. "models/x.ron: running this model at batch 8".
        what: String,
        /// Bytes it needs.
        need: u128,
        /// Bytes left in the budget.
        left: u128,
        /// The budget.
        limit: u64,
        /// Where the budget came from, e.g. "set by --max-memory".
        note: &'static str,
    },

    /// A count too large for opcount's 128-bit counts (past 3.4e38).
    #[error("model {}: {} does not fit in 128 bits", escape(model), escape(what))]
    Overflow {
        /// The model's name.
        model: String,
        /// What was being counted, e.g. `dense1 forward (mul) at batch 8`.
        what: String,
    },

    /// A command-line setting out of range.
    #[error("{}", escape(.0))]
    Usage(String),
}

/// `Result` with opcount's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn memory_message(what: &str, need: u128, left: u128, limit: u64, note: &str) -> String {
    use crate::budget::human_bytes;
    if limit == 0 {
        // Not the budget's refusal but the system's (see `input::out_of_memory`).
        return format!(
            "{} needs about {} of memory, which the system refused ({note})",
            escape(what),
            human_bytes(need)
        );
    }
    let budget = format!("the budget of {} ({note})", human_bytes(u128::from(limit)));
    // What is left, if that differs visibly from the whole budget.
    let room = if human_bytes(left) == human_bytes(u128::from(limit)) {
        budget
    } else {
        format!("the {} left of {budget}", human_bytes(left))
    };
    format!(
        "{} needs about {} of memory, more than {room}",
        escape(what),
        human_bytes(need)
    )
}
