//! The library's one error type. Every message says where (file and line/column, or layer)
//! and what was expected against what was found.

use std::path::PathBuf;

/// Everything that can go wrong loading, checking, running or writing a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written. The operating system's reason is the error's
    /// [`source`](std::error::Error::source), not part of its own message: print the chain
    /// (e.g. anyhow's `{:#}`) to show both.
    #[error("{}: {action}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done, e.g. "cannot read".
        action: &'static str,
        /// The operating system's reason.
        source: std::io::Error,
    },

    /// The model file is not valid RON, or does not fit the schema.
    #[error("{origin}:{line}:{column}: {message}")]
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
    #[error("{origin}: layer {index} ({name}): {message}")]
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
    #[error("{origin}: {message}")]
    Model {
        /// The model file.
        origin: String,
        /// Expected against found.
        message: String,
    },

    /// Training data that cannot be used.
    #[error("{origin}: {message}")]
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

    /// A count too large for opcount's 128-bit counts (past 3.4e38).
    #[error("model {model}: {what} does not fit in 128 bits")]
    Overflow {
        /// The model's name.
        model: String,
        /// What was being counted, e.g. `dense1 forward (mul) at batch 8`.
        what: String,
    },

    /// A command-line setting out of range.
    #[error("{0}")]
    Usage(String),
}

/// `Result` with opcount's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
