//! The check digits that tell a real identifier from any digits: Luhn for
//! card numbers, the DNI/NIE check letter, the IBAN's mod-97.

/// Luhn's mod-10 check over ASCII digits (card numbers).
pub fn luhn(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

const DNI_LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";

/// The check letter of a DNI's 8 digits (or a NIE's with X/Y/Z as 0/1/2).
pub fn dni_letter(digits: &str) -> Option<char> {
    if digits.len() != 8 {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    Some(DNI_LETTERS[(n % 23) as usize] as char)
}

/// A DNI ("12345678Z") or NIE ("X1234567L") with its right check letter;
/// any case, no separators.
pub fn dni_or_nie(word: &str) -> bool {
    if word.len() != 9 {
        return false;
    }
    let w = word.to_ascii_uppercase();
    let b = w.as_bytes();
    if b.len() != 9 || !b[8].is_ascii_uppercase() {
        return false;
    }
    let digits = match b[0] {
        b'X' => format!("0{}", &w[1..8]),
        b'Y' => format!("1{}", &w[1..8]),
        b'Z' => format!("2{}", &w[1..8]),
        _ => w[..8].to_owned(),
    };
    dni_letter(&digits) == Some(b[8] as char)
}

/// An IBAN (letters and digits, no separators) whose mod-97 check holds.
pub fn iban(candidate: &str) -> bool {
    let s = candidate.to_ascii_uppercase();
    let b = s.as_bytes();
    if !(15..=34).contains(&b.len())
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
        || !b.iter().all(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    let mut rem = 0u32;
    for &c in b[4..].iter().chain(&b[..4]) {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_tells_test_cards_from_neighbours() {
        for good in ["4111111111111111", "5500005555555559", "378282246310005"] {
            assert!(luhn(good), "{good}");
        }
        for bad in ["4111111111111112", "1234567812345678", "", "4111a"] {
            assert!(!luhn(bad), "{bad}");
        }
    }

    #[test]
    fn dni_and_nie_letters() {
        assert!(dni_or_nie("12345678Z"));
        assert!(dni_or_nie("12345678z"));
        assert!(!dni_or_nie("12345678A"));
        assert!(dni_or_nie("X1234567L"));
        assert!(!dni_or_nie("X1234567A"));
        assert!(!dni_or_nie("1234567Z"));
    }

    #[test]
    fn iban_mod_97() {
        assert!(iban("ES9121000418450200051332"));
        assert!(iban("GB82WEST12345698765432"));
        assert!(!iban("ES9121000418450200051333"));
        assert!(!iban("ES91"));
    }
}
