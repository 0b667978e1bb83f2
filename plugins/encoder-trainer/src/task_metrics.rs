//! The measures GLUE tasks are judged by: accuracy, F1 of the positive class (binary tasks;
//! macro-F1 over classes otherwise), Matthews correlation (CoLA), Pearson and Spearman
//! correlation (STS-B regression), and entity-level F1 for token classification (CoNLL). Degenerate inputs (one class predicted, constant scores)
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

/// The entities of one tag sequence as `(type, first, last)` word positions, the CoNLL way
/// (seqeval's default): `B-X` starts an entity of type X, `I-X` continues one of type X (or
/// starts one after `O` or another type), `O` ends it; any other tag (no `B-`/`I-` prefix) is a
/// one-word entity of its own type.
fn entities(tags: &[usize], labels: &[String]) -> Vec<(String, usize, usize)> {
    let mut found: Vec<(String, usize, usize)> = Vec::new();
    let mut open: Option<(String, usize)> = None;
    let close = |open: &mut Option<(String, usize)>, end: usize, found: &mut Vec<_>| {
        if let Some((kind, start)) = open.take() {
            found.push((kind, start, end));
        }
    };
    for (i, &t) in tags.iter().enumerate() {
        let tag = labels.get(t).map_or("O", String::as_str);
        if let Some(kind) = tag.strip_prefix("I-") {
            if open.as_ref().is_some_and(|(k, _)| k == kind) {
                continue;
            }
            close(&mut open, i - usize::from(i > 0), &mut found);
            open = Some((kind.to_string(), i));
        } else if let Some(kind) = tag.strip_prefix("B-") {
            close(&mut open, i.saturating_sub(1), &mut found);
            open = Some((kind.to_string(), i));
        } else {
            close(&mut open, i.saturating_sub(1), &mut found);
            if tag != "O" {
                found.push((tag.to_string(), i, i));
            }
        }
    }
    close(&mut open, tags.len().saturating_sub(1), &mut found);
    found
}

/// Entity-level F1 over sentences (micro-averaged, CoNLL/seqeval): a predicted entity counts
/// when one of the same type spans exactly the same words in the gold tags. 0 when neither
/// side has an entity.
pub fn entity_f1(predicted: &[Vec<usize>], gold: &[Vec<usize>], labels: &[String]) -> f64 {
    let (mut tp, mut n_predicted, mut n_gold) = (0usize, 0usize, 0usize);
    for (p, g) in predicted.iter().zip(gold) {
        let p = entities(p, labels);
        let g = entities(g, labels);
        tp += p.iter().filter(|e| g.contains(e)).count();
        n_predicted += p.len();
        n_gold += g.len();
    }
    if tp == 0 {
        return 0.0;
    }
    2.0 * tp as f64 / (n_predicted + n_gold) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_f1_counts_exact_spans_of_the_right_type() {
        let labels: Vec<String> = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Gold: PER(0..1), LOC(3..4). Predicted: PER(0..0) (too short), LOC(3..4).
        let gold = vec![vec![1, 2, 0, 3, 4]];
        let pred = vec![vec![1, 0, 0, 3, 4]];
        assert_eq!(
            entities(&gold[0], &labels),
            vec![("PER".into(), 0, 1), ("LOC".into(), 3, 4)]
        );
        // tp 1, 2 predicted, 2 gold → 2 / 4.
        assert!((entity_f1(&pred, &gold, &labels) - 0.5).abs() < 1e-12);
        assert_eq!(entity_f1(&gold, &gold, &labels), 1.0);
        // An I- after O starts an entity (seqeval's default), a type change splits one.
        assert_eq!(
            entities(&[0, 2, 2, 4], &labels),
            vec![("PER".into(), 1, 2), ("LOC".into(), 3, 3)]
        );
        // Tags without a prefix are one-word entities: per-token F1 over non-O tags.
        let plain: Vec<String> = ["O", "WHO"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            entities(&[1, 1, 0], &plain),
            vec![("WHO".into(), 0, 0), ("WHO".into(), 1, 1)]
        );
        assert_eq!(entity_f1(&[vec![0, 0]], &[vec![0, 0]], &labels), 0.0);
    }

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
