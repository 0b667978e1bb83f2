//! The measures GLUE tasks are judged by: accuracy, F1 of the positive class (binary tasks;
//! macro-F1 over classes otherwise), Matthews correlation (CoLA), and Pearson and Spearman
//! correlation (STS-B regression). Degenerate inputs (one class predicted, constant scores)
//! give 0, as scikit-learn and SciPy's conventions do for MCC and as a defined value for the
//! correlations.

/// Fraction of `predicted[i] == gold[i]`.
pub fn accuracy(predicted: &[usize], gold: &[usize]) -> f64 {
    if gold.is_empty() {
        return 0.0;
    }
    let right = predicted.iter().zip(gold).filter(|(p, g)| p == g).count();
    right as f64 / gold.len() as f64
}

/// F1 of class 1 for two classes; the mean F1 over classes for more.
pub fn f1(predicted: &[usize], gold: &[usize], classes: usize) -> f64 {
    let class_f1 = |c: usize| {
        let tp = predicted
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p == c && **g == c)
            .count() as f64;
        let fp = predicted
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p == c && **g != c)
            .count() as f64;
        let fn_ = predicted
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p != c && **g == c)
            .count() as f64;
        if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fn_)
        }
    };
    if classes <= 2 {
        class_f1(1)
    } else {
        (0..classes).map(class_f1).sum::<f64>() / classes as f64
    }
}

/// Matthews correlation coefficient, multiclass (Gorodkin's R_K); 0 when undefined.
pub fn mcc(predicted: &[usize], gold: &[usize], classes: usize) -> f64 {
    let n = gold.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    let mut confusion = vec![vec![0f64; classes]; classes];
    for (&p, &g) in predicted.iter().zip(gold) {
        if p < classes && g < classes {
            confusion[g][p] += 1.0;
        }
    }
    let correct: f64 = (0..classes).map(|k| confusion[k][k]).sum();
    let t: Vec<f64> = (0..classes).map(|k| confusion[k].iter().sum()).collect();
    let p: Vec<f64> = (0..classes)
        .map(|k| (0..classes).map(|g| confusion[g][k]).sum())
        .collect();
    let tp: f64 = t.iter().zip(&p).map(|(a, b)| a * b).sum();
    let numerator = correct * n - tp;
    let denominator = ((n * n - p.iter().map(|x| x * x).sum::<f64>())
        * (n * n - t.iter().map(|x| x * x).sum::<f64>()))
    .sqrt();
    if denominator == 0.0 {
        0.0
    } else {
        numerator / denominator
    }
}

/// Pearson correlation; 0 when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Ranks from 1, ties sharing their mean rank (as SciPy's `rankdata`).
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[order[k]] = mean;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman rank correlation: Pearson of the ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_measures_match_hand_computed_values() {
        let gold = [1, 1, 1, 0, 0, 0, 1, 0];
        let pred = [1, 1, 0, 0, 0, 1, 1, 0];
        assert_eq!(accuracy(&pred, &gold), 0.75);
        // tp 3, fp 1, fn 1 → F1 = 6 / 8.
        assert!((f1(&pred, &gold, 2) - 0.75).abs() < 1e-12);
        // (tp·tn − fp·fn) / sqrt(...) = (9 − 1) / sqrt(4·4·4·4) = 0.5.
        assert!((mcc(&pred, &gold, 2) - 0.5).abs() < 1e-12);
        assert_eq!(
            mcc(&[1; 8], &gold, 2),
            0.0,
            "one class predicted: undefined → 0"
        );
        assert!((mcc(&gold, &gold, 2) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn correlations_match_hand_computed_values() {
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 1.0, 4.0, 3.0, 5.0];
        // By hand: Pearson 8 / 10, Spearman the same (no ties).
        assert!((pearson(&x, &y) - 0.8).abs() < 1e-12);
        assert!((spearman(&x, &y) - 0.8).abs() < 1e-12);
        // Ties share the mean rank (SciPy rankdata): 4.5 / sqrt(4.5 · 5).
        let s = spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 3.0, 2.0, 4.0]);
        assert!((s - 0.948_683_298_050_513_8).abs() < 1e-12, "{s}");
        assert_eq!(pearson(&[1.0, 1.0], &[1.0, 2.0]), 0.0);
    }
}
