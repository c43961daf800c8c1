//! Random models around an operation that holds a fixed tensor broadcast to its input's
//! shape (`ConstOp`'s constant, `MaskFill`'s mask): the tensor's shape, and a model with
//! the operation on its input (no gradient wanted there) and after a layer with parameters
//! (its gradient wanted).

use crate::rng::Rng;

/// A shape that broadcasts to `dims`: the last 1 to all of its axes, each 1 or `dims`'s.
pub fn spread_shape(rng: &mut Rng, dims: &[usize]) -> Vec<usize> {
    let rank = 1 + rng.below(dims.len());
    dims[dims.len() - rank..]
        .iter()
        .map(|&d| if rng.below(2) == 0 { 1 } else { d })
        .collect()
}

/// A random model with `fixed(rng, dims)`'s layer on the input and after a layer with
/// parameters: a flat input, `[tokens, width]` (`token_act` after it there) or an image;
/// and a batch.
pub fn random_model(
    rng: &mut Rng,
    fixed: impl Fn(&mut Rng, &[usize]) -> String,
    token_act: &str,
) -> (String, usize) {
    let d = |rng: &mut Rng| 1 + rng.below(4);
    let (input, layers) = match rng.below(3) {
        0 => {
            let (n, m) = (d(rng), d(rng));
            let layers = [
                fixed(rng, &[n]),
                format!("Dense(units: {m})"),
                fixed(rng, &[m]),
                "Tanh".into(),
                "Dense(units: 2)".into(),
            ];
            (vec![n], layers)
        }
        1 => {
            let (t, w, m) = (d(rng), d(rng), d(rng));
            let layers = [
                fixed(rng, &[t, w]),
                format!("Dense(units: {m})"),
                fixed(rng, &[t, m]),
                token_act.into(),
                "Dense(units: 2)".into(),
            ];
            (vec![t, w], layers)
        }
        _ => {
            let (c, h, w, k) = (d(rng), 1 + d(rng), 1 + d(rng), d(rng));
            let layers = [
                fixed(rng, &[c, h, w]),
                format!("Conv2d(out_channels: {k}, kernel: 2)"),
                fixed(rng, &[k, h - 1, w - 1]),
                "Flatten".into(),
                "Dense(units: 2)".into(),
            ];
            (vec![c, h, w], layers)
        }
    };
    let loss = ["Mse", "SoftmaxCrossEntropy"][rng.below(2)];
    let text = format!(
        "(name: \"m\", input: {input:?}, loss: {loss}, init: Xavier(seed: {}), layers: [{}])",
        rng.below(1000),
        layers.join(", ")
    );
    (text, 1 + rng.below(4))
}
