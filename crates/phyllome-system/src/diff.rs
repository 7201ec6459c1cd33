//! A small line diff, to show a file change before it is made.

/// `-`/`+` lines for what changes from `before` to `after`, each hunk
/// preceded by `@@ line N` and one line of context (`  `) on either side.
pub fn line_diff(before: &str, after: &str) -> Vec<String> {
    let a: Vec<&str> = before.lines().collect();
    let b: Vec<&str> = after.lines().collect();
    // Longest common subsequence table, from the ends.
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    // (kind, text, line number in `after` or `before`)
    let mut ops: Vec<(char, &str, usize)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', a[i], j + 1));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', a[i], j + 1));
            i += 1;
        } else {
            ops.push(('+', b[j], j + 1));
            j += 1;
        }
    }
    let changed: Vec<usize> = ops.iter().enumerate().filter(|(_, o)| o.0 != ' ').map(|(k, _)| k).collect();
    let mut out = Vec::new();
    let mut last_shown: Option<usize> = None;
    for &k in &changed {
        // One line of context before, unless it is blank.
        let start = if k > 0 && !ops[k - 1].1.trim().is_empty() { k - 1 } else { k };
        let from = match last_shown {
            Some(l) if l + 1 >= start => l + 1,
            _ => {
                out.push(format!("@@ line {}", ops[start].2));
                start
            }
        };
        for (idx, op) in ops.iter().enumerate().take(k + 1).skip(from) {
            out.push(format!("{} {}", op.0, op.1));
            last_shown = Some(idx);
        }
        // One line of context after, unless another change follows at once.
        if let Some(next) = ops.get(k + 1) {
            if next.0 == ' ' && !changed.contains(&(k + 2)) && !next.1.trim().is_empty() {
                out.push(format!("  {}", next.1));
                last_shown = Some(k + 1);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_changed_lines_with_context() {
        let d = line_diff("a\nb\nc\nd\ne\nf\n", "a\nb\nC\nd\ne\nf\ng\n");
        assert_eq!(d, ["@@ line 2", "  b", "- c", "+ C", "  d", "@@ line 6", "  f", "+ g"]);
        assert_eq!(line_diff("", "x\ny\n"), ["@@ line 1", "+ x", "+ y"]);
        assert!(line_diff("same\n", "same\n").is_empty());
    }

    #[test]
    fn neighbouring_changes_share_context() {
        let d = line_diff("a\nb\nc\n", "A\nb\nC\n");
        assert_eq!(d, ["@@ line 1", "- a", "+ A", "  b", "- c", "+ C"]);
    }
}
