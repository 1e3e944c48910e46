//! `linpack`: solve a dense random linear system, as FunctionBench's `linpack` does.
//!
//! FunctionBench's linpack generates a random n×n matrix `A` and vector `b` with numpy,
//! solves `A x = b` (LU factorisation with partial pivoting, LAPACK `dgesv`), and reports
//! the time. Here the system is generated fresh on every invocation from an input-dependent
//! seed (input 0 solves a 512×512 system, input 1 a 640×640 one), factorised in place, solved
//! by forward and back substitution, and checked with the LINPACK normalised residual.
//!
//! Memory behaviour: the state is only the runtime heap (24 MiB, about 57 % of it walked per
//! invocation); the matrix, its copy for the residual and the vectors are fresh allocations
//! (about 4 MiB for input 0 and 6.3 MiB for input 1), touched over and over. About 18 MiB
//! (input 0) to 21 MiB (input 1) touched per invocation (estimate).

use alloc::vec::Vec;

use crate::runtime::Runtime;
use crate::synth::Rng;
use crate::{Checksum, Function, FunctionInfo};

pub(crate) const INFO: FunctionInfo = FunctionInfo {
    name: "linpack",
    description: "LU factorisation with partial pivoting and solve of a random dense system",
    mem_mib: 64,
    inputs: 2,
    workload: true,
    arg: None,
};

/// Matrix order per input.
const ORDERS: [usize; 2] = [512, 640];
/// Payload bytes of the simulated runtime heap (numpy and the interpreter).
const RUNTIME_BYTES: usize = 24 << 20;

pub(crate) struct Linpack {
    runtime: Runtime,
}

impl Linpack {
    pub(crate) fn init() -> Self {
        Self {
            runtime: Runtime::build(RUNTIME_BYTES, 0x006c_696e_7061_636b),
        }
    }
}

impl Function for Linpack {
    fn invoke(&mut self, input: u32) -> u64 {
        let mut sum = Checksum::new();
        sum.update_u64(self.runtime.walk(input));
        let order = ORDERS[input as usize % ORDERS.len()];
        let solution = solve_random_system(order, 0x6470_0000 + u64::from(input));
        for &x in &solution.x {
            sum.update_f64(x);
        }
        sum.update_f64(solution.normalised_residual);
        sum.value()
    }
}

/// The result of one LINPACK run.
#[derive(Debug)]
pub(crate) struct Solution {
    /// The solution vector `x` of `A x = b`.
    pub(crate) x: Vec<f64>,
    /// `‖A x − b‖∞ / (n ‖A‖∞ ‖x‖∞ ε)`: a few units for a correct, stable solve.
    pub(crate) normalised_residual: f64,
}

/// Generates a random `order`×`order` system from `seed`, solves it, and checks it.
pub(crate) fn solve_random_system(order: usize, seed: u64) -> Solution {
    let mut rng = Rng::new(seed);
    let matrix: Vec<f64> = (0..order * order).map(|_| rng.signed_unit_f64()).collect();
    let rhs: Vec<f64> = (0..order).map(|_| rng.signed_unit_f64()).collect();
    let mut lu = matrix.clone();
    let pivots = lu_factorise(&mut lu, order);
    let x = lu_solve(&lu, &pivots, order, &rhs);
    let normalised_residual = normalised_residual(&matrix, order, &x, &rhs);
    Solution {
        x,
        normalised_residual,
    }
}

/// Factorises the row-major `matrix` in place into `L U` with partial pivoting (`L` unit
/// lower triangular below the diagonal, `U` on and above it). Returns the pivot row chosen at
/// each step. A singular matrix yields infinities, not a panic.
fn lu_factorise(matrix: &mut [f64], order: usize) -> Vec<usize> {
    let mut pivots = Vec::with_capacity(order);
    for k in 0..order {
        let mut pivot = k;
        let mut largest = libm::fabs(matrix[k * order + k]);
        for row in k + 1..order {
            let candidate = libm::fabs(matrix[row * order + k]);
            if candidate > largest {
                largest = candidate;
                pivot = row;
            }
        }
        pivots.push(pivot);
        if pivot != k {
            for column in 0..order {
                matrix.swap(k * order + column, pivot * order + column);
            }
        }
        let (upper, lower) = matrix.split_at_mut((k + 1) * order);
        let pivot_row = &upper[k * order..];
        let inverse_pivot = 1.0 / pivot_row[k];
        for row in lower.chunks_exact_mut(order) {
            let multiplier = row[k] * inverse_pivot;
            row[k] = multiplier;
            for (entry, &above) in row[k + 1..].iter_mut().zip(&pivot_row[k + 1..]) {
                *entry -= multiplier * above;
            }
        }
    }
    pivots
}

/// Solves `A x = rhs` given the factorisation of `A` from [`lu_factorise`].
fn lu_solve(lu: &[f64], pivots: &[usize], order: usize, rhs: &[f64]) -> Vec<f64> {
    let mut x = rhs.to_vec();
    for (k, &pivot) in pivots.iter().enumerate() {
        x.swap(k, pivot);
    }
    for row in 0..order {
        let l = &lu[row * order..row * order + row];
        let partial: f64 = l.iter().zip(&x[..row]).map(|(a, b)| a * b).sum();
        x[row] -= partial;
    }
    for row in (0..order).rev() {
        let u = &lu[row * order + row + 1..(row + 1) * order];
        let partial: f64 = u.iter().zip(&x[row + 1..]).map(|(a, b)| a * b).sum();
        x[row] = (x[row] - partial) / lu[row * order + row];
    }
    x
}

/// The LINPACK normalised residual `‖A x − b‖∞ / (n ‖A‖∞ ‖x‖∞ ε)`.
fn normalised_residual(matrix: &[f64], order: usize, x: &[f64], rhs: &[f64]) -> f64 {
    let mut residual_norm = 0.0f64;
    let mut matrix_norm = 0.0f64;
    for (row, &b) in matrix.chunks_exact(order).zip(rhs) {
        let ax: f64 = row.iter().zip(x).map(|(a, b)| a * b).sum();
        residual_norm = residual_norm.max(libm::fabs(ax - b));
        matrix_norm = matrix_norm.max(row.iter().map(|&a| libm::fabs(a)).sum());
    }
    let x_norm = x.iter().fold(0.0f64, |m, &v| m.max(libm::fabs(v)));
    residual_norm / (order as f64 * matrix_norm * x_norm * f64::EPSILON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_small_known_system() {
        // 2x + y = 3, x + 3y = 5  =>  x = 0.8, y = 1.4
        let mut lu = alloc::vec![2.0, 1.0, 1.0, 3.0];
        let pivots = lu_factorise(&mut lu, 2);
        let x = lu_solve(&lu, &pivots, 2, &[3.0, 5.0]);
        assert!(libm::fabs(x[0] - 0.8) < 1e-12 && libm::fabs(x[1] - 1.4) < 1e-12);
    }

    #[test]
    fn residual_is_small_for_every_input() {
        for order in ORDERS {
            let solution = solve_random_system(order, 1);
            assert!(
                solution.normalised_residual < 10.0,
                "order {order}: residual {}",
                solution.normalised_residual
            );
        }
    }
}
