//! Text normalisation shared by the filters, the rules coach and WER:
//! lower case, accents and punctuation removed, spaces collapsed; and
//! spoken numbers written as digits ([`numbers`]).

pub mod numbers;

/// Lower case, accents and punctuation removed, spaces collapsed.
pub fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'á' | 'à' | 'â' | 'ä' => 'a',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'ó' | 'ò' | 'ô' | 'ö' => 'o',
            'ú' | 'ù' | 'û' | 'ü' => 'u',
            other => other,
        };
        if c.is_alphanumeric() || c == 'ñ' {
            out.push(c);
        } else if !out.ends_with(' ') && !out.is_empty() {
            out.push(' ');
        }
    }
    out.trim_end().to_owned()
}

/// Word errors of `hyp` against `reference` after [`normalise`], numbers
/// compared as digits one by one ([`numbers::canonical`]): the edit
/// distance over words, and the reference's word count (WER is their ratio).
pub fn word_errors(reference: &str, hyp: &str) -> (usize, usize) {
    let words = |s: &str| -> Vec<String> {
        normalise(&numbers::canonical(s))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let (r, h) = (words(reference), words(hyp));
    (edit_distance(&r, &h), r.len())
}

/// Levenshtein distance over words.
pub fn edit_distance(a: &[String], b: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_strips_case_accents_punctuation() {
        assert_eq!(
            normalise("¡Hola, Señor Pérez!  ¿Qué tal?"),
            "hola señor perez que tal"
        );
    }
}
