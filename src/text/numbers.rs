//! Spoken Spanish numbers written as digits: "cuatro, cinco, seis, siete,
//! ocho" -> "45678", "ciento veinte euros" -> "120 euros", "veinte por
//! ciento" -> "20%", so that a reader (and a redaction rule) can use them.
//!
//! Whisper writes numbers as words about as often as digits. Two modes:
//! [`Mode::Display`] (stt's transcripts) leaves a lone small number alone
//! ("le llamo en cinco minutos", "uno de ellos", "un año"), and turns
//! into digits what is plainly a figure: a compound ("treinta y dos",
//! "dos mil"), a string of three or more digits, anything before "por
//! ciento" or a currency. [`Mode::Canonical`] (word error rates) turns
//! every number into digits, one token per digit, so "marque 1" and
//! "marque uno", "45678" and "cuatro cinco seis siete ocho" compare equal.

/// How eagerly numbers become digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Display,
    Canonical,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// 0-9.
    Unit,
    /// 10-29: one word each in Spanish.
    Teen,
    /// 30, 40, ... 90.
    Tens,
    /// 100-900.
    Hundred,
    Thousand,
    Million,
}

/// A word's number value, accents folded and lower case.
fn value(word: &str) -> Option<(u64, Class)> {
    use Class::*;
    const SMALL: [&str; 30] = [
        "cero",
        "uno",
        "dos",
        "tres",
        "cuatro",
        "cinco",
        "seis",
        "siete",
        "ocho",
        "nueve",
        "diez",
        "once",
        "doce",
        "trece",
        "catorce",
        "quince",
        "dieciseis",
        "diecisiete",
        "dieciocho",
        "diecinueve",
        "veinte",
        "veintiuno",
        "veintidos",
        "veintitres",
        "veinticuatro",
        "veinticinco",
        "veintiseis",
        "veintisiete",
        "veintiocho",
        "veintinueve",
    ];
    if let Some(n) = SMALL.iter().position(|w| *w == word) {
        let n = n as u64;
        return Some((n, if n < 10 { Unit } else { Teen }));
    }
    Some(match word {
        "un" | "una" => (1, Unit),
        // English digits, as a customer may read out a card in English.
        "zero" => (0, Unit),
        "one" => (1, Unit),
        "two" => (2, Unit),
        "three" => (3, Unit),
        "four" => (4, Unit),
        "five" => (5, Unit),
        "six" => (6, Unit),
        "seven" => (7, Unit),
        "eight" => (8, Unit),
        "nine" => (9, Unit),
        "veintiun" | "veintiuna" => (21, Teen),
        "treinta" => (30, Tens),
        "cuarenta" => (40, Tens),
        "cincuenta" => (50, Tens),
        "sesenta" => (60, Tens),
        "setenta" => (70, Tens),
        "ochenta" => (80, Tens),
        "noventa" => (90, Tens),
        "cien" | "ciento" => (100, Hundred),
        "doscientos" | "doscientas" => (200, Hundred),
        "trescientos" | "trescientas" => (300, Hundred),
        "cuatrocientos" | "cuatrocientas" => (400, Hundred),
        "quinientos" | "quinientas" => (500, Hundred),
        "seiscientos" | "seiscientas" => (600, Hundred),
        "setecientos" | "setecientas" => (700, Hundred),
        "ochocientos" | "ochocientas" => (800, Hundred),
        "novecientos" | "novecientas" => (900, Hundred),
        "mil" => (1000, Thousand),
        "millon" | "millones" => (1_000_000, Million),
        _ => return None,
    })
}

const CURRENCY: &[&str] = &[
    "euro", "euros", "dolar", "dolares", "peso", "pesos", "centimo", "centimos", "centavo",
    "centavos", "libras",
];

/// Words after which a lone number is a figure: a number, a key, an
/// option, an extension ("marque dos" -> "marque 2", "la opción tres").
const NAMES_A_FIGURE: &[&str] = &[
    "numero",
    "marque",
    "pulse",
    "presione",
    "oprima",
    "teclee",
    "digite",
    "opcion",
    "extension",
    "tecla",
];

/// A word of the text: where it is and its folded form.
pub struct Word {
    pub start: usize,
    pub end: usize,
    /// Lower case, accents removed ([`super::normalise`]).
    pub folded: String,
}

/// The text's words (runs of letters and digits), in order.
pub fn words(text: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text
        .char_indices()
        .chain(std::iter::once((text.len(), ' ')))
    {
        if c.is_alphanumeric() {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            // A word is letters and digits only: lower case (std's, fast
            // on long texts), then accents folded where there are any.
            let lower = text[s..i].to_lowercase();
            let folded = if lower.is_ascii() {
                lower
            } else {
                super::normalise(&lower)
            };
            out.push(Word {
                start: s,
                end: i,
                folded,
            });
        }
    }
    out
}

/// What may stand between two numbers of one run: spaces, commas, dashes.
fn joins(between: &str) -> bool {
    between
        .chars()
        .all(|c| c.is_whitespace() || c == ',' || c == '-')
}

fn is_digits(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit())
}

/// One number starting at word `i`: its digits, the words it took, and
/// whether it was one small word (0-9).
fn group(ws: &[Word], text: &str, i: usize) -> Option<Group> {
    if is_digits(&ws[i].folded) {
        let d = ws[i].folded.clone();
        let single = d.len() == 1;
        return Some((d, 1, single));
    }
    let (v, _) = value(&ws[i].folded)?;
    // "un"/"una" start a number only as "un millón", "una mil..." (rare);
    // otherwise they are the article.
    if matches!(ws[i].folded.as_str(), "un" | "una")
        && !ws
            .get(i + 1)
            .and_then(|w| value(&w.folded))
            .is_some_and(|(_, c)| matches!(c, Class::Thousand | Class::Million))
    {
        return None;
    }
    if v == 0 {
        return Some(("0".into(), 1, true));
    }
    let (mut total, mut cur) = (0u64, 0u64);
    let mut last: Option<Class> = None;
    let mut after_y = false;
    let mut j = i;
    while j < ws.len() {
        if j > i && !text[ws[j - 1].end..ws[j].start].trim().is_empty() {
            break; // a comma or a dash ends one number (the run goes on)
        }
        let w = &ws[j].folded;
        if w == "y" {
            let next_unit = ws
                .get(j + 1)
                .and_then(|n| value(&n.folded))
                .is_some_and(|(v, c)| c == Class::Unit && v > 0);
            if last == Some(Class::Tens) && next_unit && !after_y {
                after_y = true;
                j += 1;
                continue;
            }
            break;
        }
        let Some((v, c)) = value(w) else { break };
        let ok = match c {
            Class::Unit => v > 0 && (after_y || (cur % 100 == 0 && last != Some(Class::Unit))),
            Class::Teen | Class::Tens => {
                cur % 100 == 0 && !matches!(last, Some(Class::Unit | Class::Teen | Class::Tens))
            }
            Class::Hundred => cur == 0 && last != Some(Class::Hundred),
            Class::Thousand => {
                !matches!(last, Some(Class::Thousand)) && total % 1_000_000 == 0 || last.is_none()
            }
            Class::Million => !matches!(last, Some(Class::Million | Class::Thousand)),
        };
        if !ok || (after_y && c != Class::Unit) {
            break;
        }
        match c {
            Class::Thousand => {
                total += cur.max(1) * 1000;
                cur = 0;
            }
            Class::Million => {
                total = (total + cur.max(1)) * 1_000_000;
                cur = 0;
            }
            _ => cur += v,
        }
        if after_y && c == Class::Unit {
            after_y = false;
        }
        last = Some(c);
        j += 1;
    }
    let taken = j - i;
    if taken == 0 {
        return None;
    }
    // A trailing "y" was not taken: `j` already stops before it.
    let single = taken == 1 && last == Some(Class::Unit);
    Some(((total + cur).to_string(), taken, single))
}

/// One number run of a text: spoken or written numbers joined by spaces,
/// commas or dashes ("cuatro, cinco, seis", "4111 1111", "treinta y dos").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Byte range in the text, from the first number's first character to
    /// the last number's last.
    pub start: usize,
    pub end: usize,
    /// Its digits, every group's written one after the other.
    pub digits: String,
}

/// Every number run of the text, in order.
pub fn runs(text: &str) -> Vec<Run> {
    runs_in(text, &words(text))
}

/// [`runs`] over the text's [`words`], already split.
pub fn runs_in(text: &str, ws: &[Word]) -> Vec<Run> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < ws.len() {
        match run_at(ws, text, i) {
            Some((groups, j)) => {
                out.push(Run {
                    start: ws[i].start,
                    end: ws[j - 1].end,
                    digits: groups.iter().map(|g| g.0.as_str()).collect(),
                });
                i = j;
            }
            None => i += 1,
        }
    }
    out
}

/// One number of a run: its digits, the words it took, and whether it was
/// one small word (see [`group`]).
type Group = (String, usize, bool);

/// The run starting at word `i`: its groups and the index of the first
/// word after it.
fn run_at(ws: &[Word], text: &str, i: usize) -> Option<(Vec<Group>, usize)> {
    let first = group(ws, text, i)?;
    let mut j = i + first.1;
    let mut groups = vec![first];
    while j < ws.len() && joins(&text[ws[j - 1].end..ws[j].start]) {
        match group(ws, text, j) {
            Some(g) => {
                j += g.1;
                groups.push(g);
            }
            None => break,
        }
    }
    Some((groups, j))
}

/// The text with its spoken numbers as digits.
pub fn to_digits(text: &str, mode: Mode) -> String {
    let ws = words(text);
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i < ws.len() {
        let Some((groups, mut j)) = run_at(&ws, text, i) else {
            i += 1;
            continue;
        };
        let next = |k: usize| ws.get(j + k).map(|w| w.folded.as_str());
        let percent =
            next(0) == Some("por") && next(1) == Some("ciento") || next(0) == Some("porciento");
        let money = next(0).is_some_and(|w| CURRENCY.contains(&w));
        let all_single = groups.iter().all(|g| g.2);
        let compound = groups.iter().any(|g| g.1 > 1);
        let named = i > 0
            && NAMES_A_FIGURE.contains(&ws[i - 1].folded.as_str())
            && text[ws[i - 1].end..ws[i].start]
                .chars()
                .all(char::is_whitespace);
        let convert = mode == Mode::Canonical
            || percent
            || money
            || named
            || compound
            || (all_single && groups.len() >= 3)
            || (!all_single && groups.len() >= 2);
        if !convert {
            i = j;
            continue;
        }
        out.push_str(&text[copied..ws[i].start]);
        let rendered: Vec<&str> = groups.iter().map(|g| g.0.as_str()).collect();
        if mode == Mode::Canonical {
            let digits: Vec<String> = rendered
                .iter()
                .flat_map(|g| g.chars().map(String::from))
                .collect();
            out.push_str(&digits.join(" "));
        } else if all_single {
            out.push_str(&rendered.concat());
        } else {
            out.push_str(&rendered.join(" "));
        }
        copied = ws[j - 1].end;
        if percent {
            let last = if next(0) == Some("porciento") {
                j
            } else {
                j + 1
            };
            out.push('%');
            copied = ws[last].end;
            j = last + 1;
        }
        i = j;
    }
    out.push_str(&text[copied..]);
    out
}

/// Text for word error rates: numbers as digits, one token per digit, and
/// "%" as "por ciento", so that any way of writing a number compares equal.
pub fn canonical(text: &str) -> String {
    to_digits(text, Mode::Canonical).replace('%', " por ciento ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> String {
        to_digits(s, Mode::Display)
    }

    #[test]
    fn figures_become_digits() {
        assert_eq!(
            d("Mi número de cuenta es cuatro, cinco, seis, siete, ocho."),
            "Mi número de cuenta es 45678."
        );
        assert_eq!(d("cero, ocho, cero, cero, uno"), "08001");
        assert_eq!(
            d("La factura es de ciento veinte euros."),
            "La factura es de 120 euros."
        );
        assert_eq!(
            d("Le aplicamos un veinte por ciento durante un año."),
            "Le aplicamos un 20% durante un año."
        );
        assert_eq!(
            d("doscientos cincuenta y nueve euros con noventa céntimos"),
            "259 euros con 90 céntimos"
        );
        assert_eq!(d("Son mil quinientos euros."), "Son 1500 euros.");
        assert_eq!(
            d("el treinta y uno de diciembre de dos mil veintiséis"),
            "el 31 de diciembre de 2026"
        );
        assert_eq!(
            d("seiscientos cuarenta y cinco, veinte, treinta, cuarenta"),
            "645 20 30 40"
        );
        assert_eq!(
            d("Seis, uno, dos, tres, 4, 5, seis, siete, ocho."),
            "612345678."
        );
        assert_eq!(d("un millón de euros"), "1000000 de euros");
        assert_eq!(d("cinco euros"), "5 euros");
        assert_eq!(d("ciento dos"), "102");
        assert_eq!(d("dos mil"), "2000");
        // A lone number after a word that names a figure.
        assert_eq!(
            d("Marque el número uno para cambiar. Número dos para reproducir."),
            "Marque el número 1 para cambiar. Número 2 para reproducir."
        );
        assert_eq!(d("marque tres, pulse cuatro"), "marque 3, pulse 4");
        assert_eq!(d("la opción cinco"), "la opción 5");
        assert_eq!(d("Extensión doce"), "Extensión 12");
    }

    #[test]
    fn words_that_are_not_figures_stay() {
        for s in [
            "Le llamo en cinco minutos.",
            "Uno de ellos no funciona.",
            "un año, una línea",
            "a las tres y media",
            "uno o dos días",
            "dos, tres veces",
            "treinta y tantos",
            "Gracias, adiós.",
            // Not right after the naming word.
            "el número, uno de ellos",
            "marque y espere dos minutos",
            "",
            "¿Algo más?",
        ] {
            assert_eq!(d(s), s);
        }
    }

    #[test]
    fn canonical_makes_every_spelling_equal() {
        assert_eq!(canonical("marque uno"), canonical("marque 1"));
        assert_eq!(
            canonical("45678"),
            canonical("cuatro cinco seis siete ocho")
        );
        assert_eq!(canonical("20%"), canonical("veinte por ciento"));
        assert_eq!(canonical("ciento veinte"), "1 2 0");
    }
}
