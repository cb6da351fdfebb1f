//! Text normalisation shared by the filters, the rules coach and WER:
//! lower case, accents and punctuation removed, spaces collapsed.

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
