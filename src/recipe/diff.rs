//! Unified diffs of text files (what `recipe apply --dry-run` prints).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    Delete,
    Insert,
}

/// Split keeping line ends, so a missing final newline shows.
fn lines(s: &str) -> Vec<&str> {
    s.split_inclusive('\n').collect()
}

/// The edit script between two line lists: (op, index in old, index in new).
fn script(a: &[&str], b: &[&str]) -> Vec<(Op, usize, usize)> {
    // Common prefix and suffix first: recipe edits are local.
    let mut pre = 0;
    while pre < a.len() && pre < b.len() && a[pre] == b[pre] {
        pre += 1;
    }
    let mut suf = 0;
    while suf < a.len() - pre && suf < b.len() - pre && a[a.len() - 1 - suf] == b[b.len() - 1 - suf]
    {
        suf += 1;
    }
    let (am, bm) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut out: Vec<(Op, usize, usize)> = (0..pre).map(|i| (Op::Equal, i, i)).collect();
    let (n, m) = (am.len(), bm.len());
    if n.saturating_mul(m) <= 4_000_000 {
        // LCS table over the middle part.
        let mut t = vec![0u32; (n + 1) * (m + 1)];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                t[i * (m + 1) + j] = if am[i] == bm[j] {
                    t[(i + 1) * (m + 1) + j + 1] + 1
                } else {
                    t[(i + 1) * (m + 1) + j].max(t[i * (m + 1) + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && am[i] == bm[j] {
                out.push((Op::Equal, pre + i, pre + j));
                i += 1;
                j += 1;
            } else if i < n && (j == m || t[(i + 1) * (m + 1) + j] >= t[i * (m + 1) + j + 1]) {
                out.push((Op::Delete, pre + i, pre + j));
                i += 1;
            } else {
                out.push((Op::Insert, pre + i, pre + j));
                j += 1;
            }
        }
    } else {
        out.extend((0..n).map(|i| (Op::Delete, pre + i, pre)));
        out.extend((0..m).map(|j| (Op::Insert, pre + n, pre + j)));
    }
    out.extend((0..suf).map(|k| (Op::Equal, a.len() - suf + k, b.len() - suf + k)));
    out
}

fn range(start: usize, len: usize) -> String {
    // Unified format: an empty range names the line before it.
    let first = if len == 0 { start } else { start + 1 };
    if len == 1 {
        format!("{first}")
    } else {
        format!("{first},{len}")
    }
}

/// A unified diff of `old` (None: the file does not exist yet) to `new`, with `context` lines
/// around each change; empty when they are equal.
pub fn unified(path: &str, old: Option<&str>, new: &str, context: usize) -> String {
    let old_text = old.unwrap_or("");
    if old.is_some() && old_text == new {
        return String::new();
    }
    let (a, b) = (lines(old_text), lines(new));
    let ops = script(&a, &b);
    let mut out = String::new();
    out.push_str(&match old {
        Some(_) => format!("--- a/{path}\n"),
        None => "--- /dev/null\n".to_string(),
    });
    out.push_str(&format!("+++ b/{path}\n"));
    // Group changes into hunks.
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.0 != Op::Equal)
        .map(|(i, _)| i)
        .collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(context);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 2 * context + 1 {
            end = changed[k];
            k += 1;
        }
        let end = (end + context + 1).min(ops.len());
        let hunk = &ops[start..end];
        let (a_start, b_start) = (hunk[0].1, hunk[0].2);
        let a_len = hunk.iter().filter(|o| o.0 != Op::Insert).count();
        let b_len = hunk.iter().filter(|o| o.0 != Op::Delete).count();
        out.push_str(&format!(
            "@@ -{} +{} @@\n",
            range(a_start, a_len),
            range(b_start, b_len)
        ));
        for (op, i, j) in hunk {
            let (mark, line) = match op {
                Op::Equal => (' ', a[*i]),
                Op::Delete => ('-', a[*i]),
                Op::Insert => ('+', b[*j]),
            };
            out.push(mark);
            out.push_str(line);
            if !line.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn new_file() {
        assert_eq!(
            unified("a.txt", None, "x\ny\n", 3),
            "--- /dev/null\n+++ b/a.txt\n@@ -0,0 +1,2 @@\n+x\n+y\n"
        );
    }

    #[test]
    fn change_with_context() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n";
        assert_eq!(
            unified("n", Some(old), new, 3),
            "--- a/n\n+++ b/n\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
        assert_eq!(unified("n", Some(old), old, 3), "");
    }

    #[test]
    fn append_without_context() {
        assert_eq!(
            unified(".env", Some("A=1\n"), "A=1\n# c\nB=\n", 0),
            "--- a/.env\n+++ b/.env\n@@ -1,0 +2,2 @@\n+# c\n+B=\n"
        );
    }
}
