"""Tokens of the Calico selector language and the lazy lexer that produces them.

Also owns `SelectorError`, the one exception every selector parsing failure raises.
"""

from __future__ import annotations

from typing import Final, NamedTuple

# Calico's LabelKeyMatcher is `[a-zA-Z0-9_./-]{1,512}`; keys outside it cannot be written.
KEY_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-")
MAX_KEY_LEN: Final = 512
# ASCII whitespace only: YAML block scalars may fold selectors across lines, but a stray
# non-breaking space is far more likely a paste accident than intent, so it is an error.
WHITESPACE: Final = frozenset(" \t\r\n\f\v")

# Token kinds. Plain strings so error messages and debugging output read naturally.
WORD: Final = "word"  # a label key or an operator word such as `in`, `starts`, `has`
STRING: Final = "string"
LPAREN: Final = "("
RPAREN: Final = ")"
LBRACE: Final = "{"
RBRACE: Final = "}"
COMMA: Final = ","
EQ: Final = "=="
NE: Final = "!="
NOT: Final = "!"
AND: Final = "&&"
OR: Final = "||"
EOF: Final = "eof"
BAD: Final = "bad"  # a character that starts no token; the parser reports it in context

_SINGLE: Final = {"(": LPAREN, ")": RPAREN, "{": LBRACE, "}": RBRACE, ",": COMMA}
# Half of a two-character operator: the hint names what was probably meant.
_HALF_OPERATOR_HINT: Final = {"=": "'=='", "&": "'&&'", "|": "'||'"}


class SelectorError(ValueError):
    """A selector string that does not parse.

    `position` is the 0-based character offset where parsing stopped, `expected` says what
    would have been accepted there, and `reason` says what was found instead.
    """

    def __init__(self, selector: str, position: int, reason: str, expected: str) -> None:
        self.selector = selector
        self.position = position
        self.reason = reason
        self.expected = expected
        super().__init__(
            f'selector "{selector}": {reason} at position {position} (expected {expected})'
        )

    def __reduce__(self) -> tuple[type[SelectorError], tuple[str, int, str, str]]:
        # The default exception pickling replays only the message; keep the fields intact.
        return (SelectorError, (self.selector, self.position, self.reason, self.expected))


class Token(NamedTuple):
    kind: str
    pos: int  # offset of the token's first character
    text: str  # the source text of the token (a string token includes its quotes)
    # A string token's contents; for a BAD token, what to suggest instead of the parser's
    # own expectation ("" = nothing better to suggest).
    value: str = ""


class Lexer:
    """Produces tokens on demand so the earliest error in the text is the one reported."""

    __slots__ = ("_n", "_pos", "_text")

    def __init__(self, text: str) -> None:
        self._text = text
        self._n = len(text)
        self._pos = 0

    def _skip_space(self) -> int:
        text, n, pos = self._text, self._n, self._pos
        while pos < n and text[pos] in WHITESPACE:
            pos += 1
        self._pos = pos
        return pos

    def next_char_is(self, char: str) -> bool:
        """True if the next non-whitespace character is `char` (one-character lookahead)."""
        pos = self._skip_space()
        return pos < self._n and self._text[pos] == char

    def next(self) -> Token:
        text = self._text
        start = self._skip_space()
        if start >= self._n:
            return Token(EOF, self._n, "")
        ch = text[start]
        if ch in KEY_CHARS:
            end = start + 1
            while end < self._n and text[end] in KEY_CHARS:
                end += 1
            if end - start > MAX_KEY_LEN:
                raise SelectorError(
                    text,
                    start,
                    f"label key of {end - start} characters is too long",
                    f"at most {MAX_KEY_LEN} characters",
                )
            self._pos = end
            return Token(WORD, start, text[start:end])
        if ch == "'" or ch == '"':
            end = text.find(ch, start + 1)
            if end < 0:
                raise SelectorError(text, start, "unterminated string", f"closing {ch}")
            self._pos = end + 1
            return Token(STRING, start, text[start : end + 1], text[start + 1 : end])
        kind = _SINGLE.get(ch)
        if kind is not None:
            self._pos = start + 1
            return Token(kind, start, ch)
        pair = text[start : start + 2]
        if pair in (EQ, NE, AND, OR):
            self._pos = start + 2
            return Token(pair, start, pair)
        if ch == "!":
            self._pos = start + 1
            return Token(NOT, start, ch)
        self._pos = start + 1
        return Token(BAD, start, ch, _HALF_OPERATOR_HINT.get(ch, ""))
