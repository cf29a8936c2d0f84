"""Unit tests for the Calico selector language: operators, precedence, canonical text, errors."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from types import MappingProxyType

import pytest
import yaml

from policy.selector import (
    All,
    And,
    Contains,
    EndsWith,
    Equals,
    Global,
    Has,
    In,
    Not,
    NotEquals,
    NotIn,
    Or,
    SelectorError,
    StartsWith,
    labels_used,
    parse,
)

# The repo is cloned with shared/ beside it (locally and in CI).
EXAMPLES = Path(
    os.environ.get(
        "ROUTEMESH_EXAMPLES", Path(__file__).resolve().parents[2].parent / "shared" / "examples"
    )
)

OPERAND = "a label key, '!', '(', 'has(', 'all()' or 'global()'"
OPERATOR = "'==', '!=', 'in', 'not in', 'contains', 'starts with' or 'ends with'"
END = "'&&', '||' or end of selector"
CLOSE = "'&&', '||' or ')'"


# --- every operator, including Calico's behaviour for absent labels ---------------------------

OPERATOR_CASES = [
    ("a == 'x'", {"a": "x"}, True),
    ("a == 'x'", {"a": "y"}, False),
    ("a == 'x'", {}, False),
    ("a == ''", {"a": ""}, True),
    ("a == ''", {}, False),
    ("a != 'x'", {"a": "x"}, False),
    ("a != 'x'", {"a": "y"}, True),
    ("a != 'x'", {}, True),  # absent label is "not equal", as in Calico
    ("a in {'x', 'y'}", {"a": "y"}, True),
    ("a in {'x', 'y'}", {"a": "z"}, False),
    ("a in {'x', 'y'}", {}, False),
    ("a in {}", {"a": ""}, False),
    ("a in {''}", {"a": ""}, True),
    ("a in {''}", {}, False),
    ("a not in {''}", {}, True),
    ("a not in {'x', 'y'}", {"a": "x"}, False),
    ("a not in {'x', 'y'}", {"a": "z"}, True),
    ("a not in {'x', 'y'}", {}, True),
    ("a not in {}", {}, True),
    ("has(a)", {"a": ""}, True),
    ("has(a)", {"b": "a"}, False),
    ("!has(a)", {"b": "a"}, True),
    ("!has(a)", {"a": "x"}, False),
    ("all()", {}, True),
    ("all()", {"a": "b"}, True),
    ("global()", {}, True),
    ("a starts with 'pre'", {"a": "prefix"}, True),
    ("a starts with 'pre'", {"a": "apre"}, False),
    ("a starts with 'pre'", {}, False),
    ("a starts with 'pre'", {"a": "pr"}, False),
    ("a starts with ''", {"a": ""}, True),
    ("a ends with 'fix'", {"a": "prefix"}, True),
    ("a ends with 'fix'", {"a": "fixed"}, False),
    ("a ends with 'fix'", {}, False),
    ("a ends with 'fix'", {"a": "ix"}, False),
    ("a contains 'ef'", {"a": "prefix"}, True),
    ("a contains 'ef'", {"a": "pre-fix"}, False),
    ("a contains ''", {}, False),
    ("a contains 'ef'", {"a": "f"}, False),
    ("a == 'x' && b == 'y'", {"a": "x", "b": "y"}, True),
    ("a == 'x' && b == 'y'", {"a": "x", "b": "z"}, False),
    ("a == 'x' || b == 'y'", {"a": "q", "b": "y"}, True),
    ("a == 'x' || b == 'y'", {"a": "q", "b": "q"}, False),
    ("!(a == 'x')", {"a": "x"}, False),
    ("!(a == 'x')", {}, True),
    ("!a == 'x'", {"a": "y"}, True),
    ("!!has(a)", {"a": "1"}, True),
    ("has(a) && has(b) && has(c)", {"a": "", "b": "", "c": ""}, True),
    ("has(a) && has(b) && has(c)", {"a": "", "b": ""}, False),
    ("has(a) || has(b) || has(c)", {"c": ""}, True),
    ("has(a) || has(b) || has(c)", {"d": ""}, False),
]


@pytest.mark.parametrize(("text", "labels", "expected"), OPERATOR_CASES)
def test_operator_semantics(text: str, labels: dict[str, str], expected: bool) -> None:
    sel = parse(text)
    assert sel.evaluate(labels) is expected
    assert sel.matcher(labels) is expected


def test_evaluate_accepts_any_mapping() -> None:
    labels = MappingProxyType({"a": "x"})
    assert parse("a == 'x' && a starts with 'x' && a in {'x'}").evaluate(labels)


@pytest.mark.parametrize(
    ("text", "ast"),
    [
        ("a == 'x'", Equals("a", "x")),
        ("a != 'x'", NotEquals("a", "x")),
        ("a in {'x'}", In("a", ["x"])),
        ("a not in {'x'}", NotIn("a", ["x"])),
        ("has(a)", Has("a")),
        ("!has(a)", Not(Has("a"))),
        ("all()", All()),
        ("global()", Global()),
        ("a starts with 'x'", StartsWith("a", "x")),
        ("a ends with 'x'", EndsWith("a", "x")),
        ("a contains 'x'", Contains("a", "x")),
        # Calico's tokenizer accepts the joined spellings too.
        ("a notin {'x'}", NotIn("a", ["x"])),
        ("a startswith 'x'", StartsWith("a", "x")),
        ("a endswith 'x'", EndsWith("a", "x")),
    ],
)
def test_each_operator_builds_its_node(text: str, ast: object) -> None:
    assert parse(text) == ast


# --- precedence ---------------------------------------------------------------------------------


def test_and_binds_tighter_than_or() -> None:
    sel = parse("a == '1' || b == '1' && c == '1'")
    assert sel == Or([Equals("a", "1"), And([Equals("b", "1"), Equals("c", "1")])])
    # Under the wrong grouping ((a || b) && c) this would be False.
    assert sel.evaluate({"a": "1"}) is True


def test_and_binds_tighter_than_or_on_the_left() -> None:
    sel = parse("a == '1' && b == '1' || c == '1'")
    assert sel == Or([And([Equals("a", "1"), Equals("b", "1")]), Equals("c", "1")])
    # Under the wrong grouping (a && (b || c)) this would be False.
    assert sel.evaluate({"c": "1"}) is True


def test_not_binds_tighter_than_and() -> None:
    sel = parse("!has(a) && has(b)")
    assert sel == And([Not(Has("a")), Has("b")])
    # Under the wrong grouping !(has(a) && has(b)) this would be True.
    assert sel.evaluate({"a": "", "c": ""}) is False


def test_not_applies_to_a_whole_comparison() -> None:
    assert parse("!a == 'x'") == Not(Equals("a", "x"))


def test_parentheses_override_precedence() -> None:
    sel = parse("(has(a) || has(b)) && has(c)")
    assert sel == And([Or([Has("a"), Has("b")]), Has("c")])
    assert sel.evaluate({"a": ""}) is False


def test_not_of_parenthesised_group() -> None:
    sel = parse("!(has(a) || has(b))")
    assert sel == Not(Or([Has("a"), Has("b")]))
    assert sel.evaluate({"c": ""}) is True
    assert sel.evaluate({"b": ""}) is False


def test_chains_flatten_regardless_of_grouping() -> None:
    flat = And([Has("a"), Has("b"), Has("c")])
    assert parse("has(a) && has(b) && has(c)") == flat
    assert parse("(has(a) && has(b)) && has(c)") == flat
    assert parse("has(a) && (has(b) && has(c))") == flat
    assert And([Has("a"), And([Has("b"), Has("c")])]) == flat
    assert parse("has(a) || (has(b) || has(c))") == Or([Has("a"), Has("b"), Has("c")])


# --- quoting, whitespace, keys ------------------------------------------------------------------


def test_single_and_double_quotes_are_the_same_selector() -> None:
    assert parse("a == 'x'") == parse('a == "x"')
    assert hash(parse("a == 'x'")) == hash(parse('a == "x"'))


def test_the_other_quote_may_appear_inside_a_string() -> None:
    assert parse("""a == "it's" """) == Equals("a", "it's")
    assert parse("""a == 'say "hi"'""") == Equals("a", 'say "hi"')


def test_string_contents_are_kept_verbatim() -> None:
    assert parse("a == ' x && y || ( '") == Equals("a", " x && y || ( ")
    assert parse("a == 'ünï\tcode'") == Equals("a", "ünï\tcode")


def test_whitespace_anywhere_between_tokens() -> None:
    spaced = parse(
        " \t( has( a ) &&\n b  not   in { 'x' ,'y' } )||c!='z'&&!  has(d)  "
        "|| e starts  with 'p' || all( ) || global (  )\r\n"
    )
    tight = parse(
        "(has(a)&&b not in{'x','y'})||c!='z'&&!has(d)||e starts with 'p'||all()||global()"
    )
    assert spaced == tight
    assert str(spaced) == (
        'has(a) && b not in {"x", "y"} || c != "z" && !has(d) || e starts with "p" '
        "|| all() || global()"
    )


@pytest.mark.parametrize(
    "key",
    ["a.b/c-d_e", "projectcalico.org/namespace", "kubernetes.io/hostname", "8021x", "-", "A_Z"],
)
def test_kubernetes_style_label_keys(key: str) -> None:
    sel = parse(f"{key} == 'v' && has({key})")
    assert sel == And([Equals(key, "v"), Has(key)])
    assert sel.evaluate({key: "v"}) is True
    assert labels_used(sel) == {key}


@pytest.mark.parametrize("key", ["in", "not", "has", "all", "global", "contains", "starts"])
def test_operator_words_are_usable_as_label_keys(key: str) -> None:
    assert parse(f"{key} == 'v'") == Equals(key, "v")
    assert parse(f"{key} in {{'v'}}") == In(key, ["v"])
    assert parse(f"has({key})") == Has(key)


def test_label_key_length_limit_is_calicos_512() -> None:
    assert parse("k" * 512 + " == 'v'") == Equals("k" * 512, "v")
    with pytest.raises(SelectorError) as info:
        parse("has(" + "k" * 513 + ")")
    assert info.value.position == 4
    assert info.value.expected == "at most 512 characters"
    assert info.value.reason == "label key of 513 characters is too long"


# --- empty selector -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", " ", "\t\n  "])
def test_empty_selector_means_all_as_in_calico(text: str) -> None:
    sel = parse(text)
    assert sel == All()
    assert str(sel) == "all()"
    assert sel.evaluate({}) is True


# --- canonical string ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("org=='ami'", 'org == "ami"'),
        ("a == 'say \"hi\"'", "a == 'say \"hi\"'"),
        ("a != ''", 'a != ""'),
        ("a in { 'b' , 'a', 'b' }", 'a in {"a", "b"}'),
        ("a not in {}", "a not in {}"),
        ("a notin {'x'}", 'a not in {"x"}'),
        ("a startswith 'x'", 'a starts with "x"'),
        ("a ends   with 'x'", 'a ends with "x"'),
        ('a contains "x\'"', 'a contains "x\'"'),
        ("has( a )", "has(a)"),
        ("!has(a)", "!has(a)"),
        ("! ! has(a)", "!!has(a)"),
        ("!a=='x'", '!(a == "x")'),
        ("!(has(a) && has(b))", "!(has(a) && has(b))"),
        ("!(all())", "!all()"),
        ("!global()", "!global()"),
        ("((has(a)))", "has(a)"),
        ("(has(a) || has(b)) && has(c)", "(has(a) || has(b)) && has(c)"),
        ("has(a) || (has(b) && has(c))", "has(a) || has(b) && has(c)"),
        ("(has(a) && has(b)) && (has(c) && has(d))", "has(a) && has(b) && has(c) && has(d)"),
        ("", "all()"),
    ],
)
def test_canonical_string(text: str, canonical: str) -> None:
    sel = parse(text)
    assert str(sel) == canonical
    assert parse(canonical) == sel
    assert str(parse(canonical)) == canonical


def test_set_members_are_sorted_and_deduplicated() -> None:
    assert parse("a in {'c', 'a', 'b', 'a'}").values == ("a", "b", "c")
    assert parse("a in {'c', 'a'}") == parse("a in {'a', 'c', 'c'}")
    assert In("a", {"y", "x"}) == In("a", ("x", "y"))


def test_selectors_are_hashable_and_usable_as_keys() -> None:
    table = {parse("org == 'ami'"): "ami", parse("has(org)"): "any"}
    assert table[parse('org=="ami"')] == "ami"
    assert table[parse("has( org )")] == "any"
    assert len({parse("has(a) && has(b)"), parse("(has(a)) && (has(b))")}) == 1


def test_operand_order_is_significant() -> None:
    # Kept as written (no commutative sorting): the canonical text reads like the input.
    assert parse("has(a) && has(b)") != parse("has(b) && has(a)")


def test_distinct_node_types_never_compare_equal() -> None:
    assert All() != Global()
    assert Equals("a", "x") != NotEquals("a", "x")
    assert StartsWith("a", "x") != EndsWith("a", "x")
    assert In("a", ["x"]) != NotIn("a", ["x"])


def test_nodes_are_frozen() -> None:
    sel = Equals("a", "x")
    with pytest.raises(AttributeError):
        sel.value = "y"  # type: ignore[misc]


# --- labels_used --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("all()", set()),
        ("global() || !all()", set()),
        ("has(a)", {"a"}),
        ("a == 'x' && !(b in {'y'} || c contains 'z')", {"a", "b", "c"}),
        ("a != 'x' || a not in {} || d starts with '' && e ends with ''", {"a", "d", "e"}),
    ],
)
def test_labels_used(text: str, keys: set[str]) -> None:
    assert labels_used(parse(text)) == frozenset(keys)


# --- the shared example manifests ---------------------------------------------------------------


def _example_selectors() -> set[str]:
    found: set[str] = set()

    def walk(node: object, key: str = "") -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list):
            for item in node:
                walk(item, key)
        elif isinstance(node, str) and key.lower().endswith("selector"):
            found.add(node)

    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            walk(doc)
    return found


def test_every_selector_in_the_examples_parses() -> None:
    found = _example_selectors()
    assert {"org == 'ami'", "has(org)", "route-reflector == 'true'", "rack == 'r1'", "all()"} <= (
        found
    )
    for text in found:
        assert str(parse(str(parse(text)))) == str(parse(text))


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("org == 'ami'", {"org": "ami"}, True),
        ("org == 'ami'", {"org": "bmi"}, False),
        ("org == 'ami'", {}, False),
        ("has(org)", {"org": "bmi"}, True),
        ("has(org)", {"app": "x"}, False),
        ("route-reflector == 'true'", {"route-reflector": "true", "rack": "r1"}, True),
        ("route-reflector == 'true'", {"rack": "r1"}, False),
        ("rack == 'r1'", {"rack": "r1"}, True),
        ("rack == 'r1'", {"rack": "r2"}, False),
        ("all()", {}, True),
    ],
)
def test_example_selectors_match_the_intended_endpoints(
    text: str, labels: dict[str, str], expected: bool
) -> None:
    assert parse(text).evaluate(labels) is expected


def test_invalid_example_is_rejected_with_position_and_expectation() -> None:
    doc = yaml.safe_load((EXAMPLES / "invalid" / "policy-bad-selector.yaml").read_text())
    text = doc["spec"]["selector"]
    assert text == "org == 'ami"
    with pytest.raises(SelectorError) as info:
        parse(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.position == 7
    assert err.expected == "closing '"
    assert err.reason == "unterminated string"
    assert str(err) == (
        """selector "org == 'ami": unterminated string at position 7 (expected closing ')"""
    )


# --- errors: exact position, expectation and reason for every path ------------------------------

ERROR_CASES = [
    # unterminated strings: reported at the opening quote
    ("org == 'ami", 7, "closing '", "unterminated string"),
    ('a == "x', 5, 'closing "', "unterminated string"),
    ("a in {'x', 'y}", 11, "closing '", "unterminated string"),
    # unexpected characters, with a hint for half-typed operators
    ("a = 'x'", 2, "'=='", "unexpected character '='"),
    ("has(a) & has(b)", 7, "'&&'", "unexpected character '&'"),
    ("has(a) | has(b)", 7, "'||'", "unexpected character '|'"),
    ("a !== 'x'", 4, "a quoted string", "unexpected character '='"),
    ("& has(a)", 0, OPERAND, "unexpected character '&'"),
    ("a | 'x'", 2, OPERATOR, "unexpected character '|'"),
    ("@", 0, OPERAND, "unexpected character '@'"),
    ("a == 'x' && #", 12, OPERAND, "unexpected character '#'"),
    ("has(a) ~", 7, END, "unexpected character '~'"),
    ("has(é)", 4, "a label key", "unexpected character 'é'"),
    ("a\u00a0== 'x'", 1, OPERATOR, "unexpected character '\\xa0'"),
    # missing operands
    ("a == 'x' &&", 11, OPERAND, "missing operand after '&&'"),
    ("a == 'x' ||  ", 13, OPERAND, "missing operand after '||'"),
    ("!", 1, OPERAND, "missing operand after '!'"),
    ("&& has(a)", 0, OPERAND, "unexpected '&&'"),
    ("has(a) && || has(b)", 10, OPERAND, "unexpected '||'"),
    ("()", 1, OPERAND, "unexpected ')'"),
    ("'x'", 0, OPERAND, "unexpected string 'x'"),
    # missing or wrong operator / value
    ("a", 1, OPERATOR, "missing operator after label 'a'"),
    ("a b", 2, OPERATOR, "unexpected 'b'"),
    ("a 'x'", 2, OPERATOR, "unexpected string 'x'"),
    ("a ==", 4, "a quoted string", "missing value after '=='"),
    ("a != b", 5, "a quoted string", "unquoted value 'b'"),
    ("a == (", 5, "a quoted string", "unexpected '('"),
    ("a contains", 10, "a quoted string", "missing value after 'contains'"),
    ("a starts 'x'", 9, "'with'", "unexpected string 'x'"),
    ("a ends", 6, "'with'", "unexpected end of selector"),
    ("a not 'x'", 6, "'in'", "unexpected string 'x'"),
    ("a starts with", 13, "a quoted string", "missing value after 'starts'"),
    # functions
    ("has(", 4, "a label key", "unexpected end of selector"),
    ("has()", 4, "a label key", "unexpected ')'"),
    ("has('a')", 4, "a label key", "unexpected string 'a'"),
    ("has(a", 5, "')'", "unexpected end of selector"),
    ("has(a b)", 6, "')'", "unexpected 'b'"),
    ("all(x)", 4, "')'", "unexpected 'x'"),
    ("global(", 7, "')'", "unexpected end of selector"),
    ("has", 3, OPERATOR, "missing operator after label 'has'"),
    # unbalanced parentheses
    ("(has(a)", 7, CLOSE, "unclosed '(' from position 0"),
    ("( (has(a) )", 11, CLOSE, "unclosed '(' from position 0"),
    ("(has(a) has(b))", 8, CLOSE, "unexpected 'has'"),
    ("has(a))", 6, END, "unmatched ')'"),
    (")", 0, OPERAND, "unexpected ')'"),
    # bad `in` sets
    ("a in", 4, "'{'", "missing set after 'in'"),
    ("a not in", 8, "'{'", "missing set after 'not'"),
    ("a in 'x'", 5, "'{'", "unexpected string 'x'"),
    ("a in ('x')", 5, "'{'", "unexpected '('"),
    ("a in {", 6, "a quoted string or '}'", "unclosed '{' from position 5"),
    ("a in {'x'", 9, "',' or '}'", "unclosed '{' from position 5"),
    ("a in {'x',", 10, "a quoted string", "unclosed '{' from position 5"),
    ("a in {'x',}", 10, "a quoted string", "unexpected '}'"),
    ("a in {'x' 'y'}", 10, "',' or '}'", "unexpected string 'y'"),
    ("a in {x}", 6, "a quoted string or '}'", "unquoted value 'x'"),
    ("a in {'x', y}", 11, "a quoted string", "unquoted value 'y'"),
    ("a in {,}", 6, "a quoted string or '}'", "unexpected ','"),
    ("a in {'x'; 'y'}", 9, "',' or '}'", "unexpected character ';'"),
    # trailing input
    ("has(a) has(b)", 7, END, "unexpected 'has'"),
    ("a == 'x' 'y'", 9, END, "unexpected string 'y'"),
    ("all() ,", 6, END, "unexpected ','"),
    ("all() !", 6, END, "unexpected '!'"),
]


@pytest.mark.parametrize(("text", "position", "expected", "reason"), ERROR_CASES)
def test_error_position_and_expectation(
    text: str, position: int, expected: str, reason: str
) -> None:
    with pytest.raises(SelectorError) as info:
        parse(text)
    err = info.value
    assert (err.position, err.expected, err.reason) == (position, expected, reason)
    assert err.selector == text
    assert str(err) == (f'selector "{text}": {reason} at position {position} (expected {expected})')


def test_first_error_in_the_text_wins() -> None:
    # A later unterminated string must not hide an earlier syntax error.
    with pytest.raises(SelectorError) as info:
        parse(") 'abc")
    assert (info.value.position, info.value.reason) == (0, "unexpected ')'")


def test_nesting_limit() -> None:
    assert parse("(" * 100 + "has(a)" + ")" * 100) == Has("a")
    assert parse("!" * 100 + "has(a)").evaluate({}) is False  # 100 negations: even
    with pytest.raises(SelectorError) as info:
        parse("!" * 50 + "(" * 51 + "has(a)" + ")" * 51)
    assert info.value.position == 100
    assert info.value.reason == "selector nested too deeply"
    assert info.value.expected == "at most 100 levels of '!' and '('"


def test_selector_error_survives_pickling() -> None:
    with pytest.raises(SelectorError) as info:
        parse("org == 'ami")
    clone = pickle.loads(pickle.dumps(info.value))
    assert (clone.selector, clone.position, clone.reason, clone.expected) == (
        "org == 'ami",
        7,
        "unterminated string",
        "closing '",
    )
    assert str(clone) == str(info.value)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        parse(b"has(a)")  # type: ignore[arg-type]


# --- building ASTs directly ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: Has(""), ValueError),
        (lambda: Has("a b"), ValueError),
        (lambda: Has("k" * 513), ValueError),
        (lambda: Has(1), TypeError),
        (lambda: Equals("a", "both ' and \""), ValueError),
        (lambda: Equals("a", None), TypeError),
        (lambda: In("a", "xy"), TypeError),
        (lambda: NotIn("a", ["x", "'\""]), ValueError),
        (lambda: And([Has("a")]), ValueError),
        (lambda: Or([]), ValueError),
        (lambda: And([Has("a"), "has(b)"]), TypeError),
        (lambda: Not("has(a)"), TypeError),
    ],
)
def test_constructors_reject_what_cannot_be_written(build, error: type[Exception]) -> None:
    with pytest.raises(error):
        build()


def test_built_ast_prints_and_reparses() -> None:
    sel = And(
        [
            Or([Has("a.b/c"), Not(NotIn("x", ["2", "1"]))]),
            Contains("d", "it's"),
            Not(And([Global(), StartsWith("e", 'q"')])),
        ]
    )
    text = str(sel)
    assert text == (
        '(has(a.b/c) || !(x not in {"1", "2"})) && d contains "it\'s" '
        "&& !(global() && e starts with 'q\"')"
    )
    assert parse(text) == sel
