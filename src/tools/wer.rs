//! `call-coach wer`: scores transcripts (`FILE<TAB>text` lines, as
//! `call-coach transcribe` and `bench-stt --hypotheses` print them, or any
//! other engine's output in that form) against reference texts: word error
//! rate with numbers compared digit by digit, and with `--digits` the
//! share of a reference's digits the transcript got right, in order.
//! Given several transcript files, each after the first is compared with
//! it file by file: the difference in WER points and a 95% interval from a
//! paired bootstrap over the files, so a gap can be told from noise.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::text::{edit_distance, word_errors};

#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Reference texts: `FILE<TAB>text` per line; FILE may be a name or a
    /// path ending (`dictate/both_help.wav`).
    #[arg(long)]
    pub reference: PathBuf,
    /// The references are digit strings: print digit accuracy too.
    #[arg(long)]
    pub digits: bool,
    /// Print the N worst files of each transcript file.
    #[arg(long, default_value_t = 0)]
    pub worst: usize,
    /// Transcript files to score, each printed on its own line; with
    /// several, each after the first is compared with the first (WER
    /// points apart, and a 95% interval over the files they share).
    #[arg(required = true)]
    pub transcripts: Vec<PathBuf>,
}

/// `FILE<TAB>text` lines; `#` comments and blank lines skipped.
pub fn read_tsv(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap_or((l, ""));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect())
}

/// The reference a transcript's FILE names: the longest key it ends with.
pub fn find<'a>(refs: &'a HashMap<String, String>, file: &str) -> Option<(&'a str, &'a str)> {
    refs.iter()
        .filter(|(k, _)| file == k.as_str() || file.ends_with(&format!("/{k}")))
        .max_by_key(|(k, _)| k.len())
        .map(|(k, v)| (k.as_str(), v.as_str()))
}

/// The digits of a text once its spoken numbers are written as digits.
fn digits_of(text: &str) -> Vec<String> {
    crate::text::numbers::to_digits(text, crate::text::numbers::Mode::Canonical)
        .chars()
        .filter(char::is_ascii_digit)
        .map(String::from)
        .collect()
}

/// Scores of one transcript file.
#[derive(Debug, Default)]
pub struct Score {
    pub files: usize,
    pub missing: usize,
    pub word_errors: usize,
    pub words: usize,
    pub digit_errors: usize,
    pub digits: usize,
    /// (file, WER of the file, text), worst first.
    pub worst: Vec<(String, f64, String)>,
    /// Word errors and reference words of each file, by reference key, in
    /// key order (so the bootstrap draws the same files every run).
    pub per_file: std::collections::BTreeMap<String, (usize, usize)>,
}

pub fn score(refs: &HashMap<String, String>, hyps: &[(String, String)], digits: bool) -> Score {
    let mut s = Score::default();
    let mut seen = std::collections::HashSet::new();
    for (file, hyp) in hyps {
        let Some((key, reference)) = find(refs, file) else {
            continue;
        };
        seen.insert(key);
        s.files += 1;
        if digits {
            let (r, h) = (digits_of(reference), digits_of(hyp));
            s.digit_errors += edit_distance(&r, &h);
            s.digits += r.len();
        }
        let (e, n) = word_errors(reference, hyp);
        s.word_errors += e;
        s.words += n;
        s.per_file.insert(key.to_owned(), (e, n));
        s.worst
            .push((key.to_owned(), e as f64 / n.max(1) as f64, hyp.clone()));
    }
    s.missing = refs.len() - seen.len();
    s.worst.sort_by(|a, b| b.1.total_cmp(&a.1));
    s
}

/// How far apart two transcripts of the same files are: `b`'s WER minus
/// `a`'s, in points, and a 95% interval for it from a paired bootstrap
/// (files drawn with replacement, 10,000 times, a fixed seed).
/// `files`: (errors in a, errors in b, reference words) per file.
pub fn paired_difference(files: &[(usize, usize, usize)]) -> Option<(f64, f64, f64)> {
    let points = |draw: &mut dyn Iterator<Item = &(usize, usize, usize)>| {
        let (mut ea, mut eb, mut n) = (0i64, 0i64, 0i64);
        for &(a, b, words) in draw {
            (ea, eb, n) = (ea + a as i64, eb + b as i64, n + words as i64);
        }
        100.0 * (eb - ea) as f64 / n.max(1) as f64
    };
    if files.is_empty() {
        return None;
    }
    let diff = points(&mut files.iter());
    // splitmix64: dependable, and the same figures on every run.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    const DRAWS: usize = 10_000;
    let mut draws: Vec<f64> = (0..DRAWS)
        .map(|_| {
            let picks: Vec<usize> = (0..files.len())
                .map(|_| (next() % files.len() as u64) as usize)
                .collect();
            points(&mut picks.iter().map(|&i| &files[i]))
        })
        .collect();
    draws.sort_by(f64::total_cmp);
    Some((diff, draws[DRAWS * 25 / 1000], draws[DRAWS * 975 / 1000]))
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let refs: HashMap<String, String> = read_tsv(&opts.reference)?.into_iter().collect();
    if refs.is_empty() {
        bail!("{}: no references", opts.reference.display());
    }
    let mut first: Option<(&Path, Score)> = None;
    for path in &opts.transcripts {
        let s = score(&refs, &read_tsv(path)?, opts.digits);
        if s.files == 0 {
            bail!(
                "{}: no line names a file of {}",
                path.display(),
                opts.reference.display()
            );
        }
        let mut line = format!(
            "{}: WER {:.1}% ({} files, {} words",
            path.display(),
            100.0 * s.word_errors as f64 / s.words.max(1) as f64,
            s.files,
            s.words
        );
        if s.missing > 0 {
            line.push_str(&format!(", {} references without a transcript", s.missing));
        }
        line.push(')');
        if opts.digits {
            line.push_str(&format!(
                "; digits right {:.1}% ({} digits)",
                100.0 * (1.0 - s.digit_errors as f64 / s.digits.max(1) as f64).max(0.0),
                s.digits
            ));
        }
        println!("{line}");
        for (file, wer, text) in s.worst.iter().take(opts.worst) {
            println!("  {:>4.0}% {file}: {text}", wer * 100.0);
        }
        match &first {
            None => first = Some((path, s)),
            Some((first_path, f)) => {
                let shared: Vec<(usize, usize, usize)> = f
                    .per_file
                    .iter()
                    .filter_map(|(k, &(ea, n))| s.per_file.get(k).map(|&(eb, _)| (ea, eb, n)))
                    .collect();
                if let Some((diff, lo, hi)) = paired_difference(&shared) {
                    println!(
                        "  against {}: {diff:+.1} WER points (95% interval {lo:+.1} to {hi:+.1}, over the {} files both scored){}",
                        first_path.display(),
                        shared.len(),
                        if lo > 0.0 {
                            ": worse"
                        } else if hi < 0.0 {
                            ": better"
                        } else {
                            ": not told apart from noise"
                        }
                    );
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_words_and_digits_by_path_ending() {
        let refs: HashMap<String, String> = [
            ("a.wav".to_owned(), "marque 1 para salir".to_owned()),
            ("dictate/b.wav".to_owned(), "45678".to_owned()),
        ]
        .into_iter()
        .collect();
        let hyps = vec![
            ("/x/a.wav".to_owned(), "Marque uno para salir.".to_owned()),
            (
                "/y/dictate/b.wav".to_owned(),
                "cuatro, cinco, 6, 7".to_owned(),
            ),
            ("/z/other.wav".to_owned(), "ignored".to_owned()),
        ];
        let s = score(&refs, &hyps, true);
        assert_eq!((s.files, s.missing), (2, 0));
        // a: exact; b: one digit missing of five.
        assert_eq!((s.word_errors, s.words), (1, 9));
        assert_eq!((s.digit_errors, s.digits), (1, 6));
        assert_eq!(s.per_file["a.wav"], (0, 4));
        assert_eq!(s.per_file["dictate/b.wav"], (1, 5));
    }

    #[test]
    fn paired_differences_tell_a_gap_from_noise() {
        assert_eq!(paired_difference(&[]), None);
        // The same errors: no difference, no spread.
        let same: Vec<_> = (0..50).map(|i| (i % 3, i % 3, 10)).collect();
        assert_eq!(paired_difference(&same), Some((0.0, 0.0, 0.0)));
        // One more error in every file: 10 points worse, surely.
        let worse: Vec<_> = (0..50).map(|i| (i % 3, i % 3 + 1, 10)).collect();
        let (d, lo, hi) = paired_difference(&worse).unwrap();
        assert!(
            (d - 10.0).abs() < 1e-9 && lo > 9.9 && hi < 10.1,
            "{d} {lo} {hi}"
        );
        // Better on one file of 50, worse on another: not told apart.
        let mut mixed = same.clone();
        mixed[0] = (0, 3, 10);
        mixed[1] = (2, 0, 10);
        let (d, lo, hi) = paired_difference(&mixed).unwrap();
        assert!(
            lo < 0.0 && hi > 0.0 && (d - 0.2).abs() < 1e-9,
            "{d} {lo} {hi}"
        );
        // Deterministic: the same figures every time.
        assert_eq!(paired_difference(&mixed), paired_difference(&mixed));
    }
}
