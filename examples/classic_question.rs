//! The classic question, counted with a hand-written generic layer: a network of 30 inputs and
//! two layers of 30 sigmoid neurons does 30x30 + 30x30 = 1,800 multiplications forward.
//!
//! Run with `cargo run --release --example classic_question`.

use opcount::{Counted, Scalar, tally};

/// One dense layer, `a_j = f(b_j + sum_i w[i][j] x_i)`, accumulated from the bias.
fn layer<S: Scalar>(w: &[S], b: &[S], x: &[S]) -> Vec<S> {
    let mut z = b.to_vec();
    for (row, &xi) in w.chunks_exact(b.len()).zip(x) {
        for (zj, &wij) in z.iter_mut().zip(row) {
            *zj += wij * xi;
        }
    }
    z.iter()
        .map(|&v| {
            S::record_act(); // one call of f per neuron
            S::one() / (S::one() + (-v).exp())
        })
        .collect()
}

fn main() {
    let weights = Counted::vec(&[0.01f32; 30 * 30]);
    let biases = Counted::vec(&[0.1f32; 30]);
    let x = Counted::vec(&[0.5f32; 30]);
    let (_, counts) = tally::measure(|| {
        let hidden = layer(&weights, &biases, &x);
        layer(&weights, &biases, &hidden)
    });
    println!("forward pass of 30 -> 30 -> 30 sigmoid: {counts}");
    println!(
        "multiplications: {} (the question says 30x30 + 30x30)",
        counts.mul
    );
}
