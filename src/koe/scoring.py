"""Word and character error rates with Whisper-style normalisation (tests and `make bench` use these)."""

from __future__ import annotations

import re
import unicodedata

_EN_SPELLINGS = {
    "mister": "mr", "missus": "mrs", "doctor": "dr", "okay": "ok", "colour": "color", "favourite": "favorite",
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10", "zero": "0",
}  # fmt: skip
_FILLERS = {"uh", "um", "hmm", "mm", "mhm", "ah", "er", "eh"}


def normalize_en(text: str) -> str:
    """Lower case, no punctuation or fillers, numerals and common spellings unified (as Whisper's normaliser)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[\[(<][^\])>]*[\])>]", " ", text)  # (UM), [noise], <unk>
    text = text.replace("'s ", " s ").replace("’", "'")
    text = re.sub(r"[^\w\s']", " ", text).replace("'", "")
    words = [_EN_SPELLINGS.get(w, w) for w in text.split() if w not in _FILLERS]
    return " ".join(words)


def normalize_ja(text: str) -> str:
    """NFKC, no spaces or punctuation: characters are what count in Japanese."""
    text = unicodedata.normalize("NFKC", text)
    return "".join(ch for ch in text if not (ch.isspace() or unicodedata.category(ch).startswith(("P", "S"))))


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    ref, hyp = normalize_en(reference), normalize_en(hypothesis)
    return float(jiwer.wer(ref, hyp)) if ref else float(bool(hyp))


def cer(reference: str, hypothesis: str) -> float:
    import jiwer

    ref, hyp = normalize_ja(reference), normalize_ja(hypothesis)
    return float(jiwer.cer(ref, hyp)) if ref else float(bool(hyp))
