""".env files as mirrord reads them (dotenvy 0.15): the cases of dotenvy's own tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirrord.config.env_file import EnvFileError, parse_env_file, read_env_file


def parse(text: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    return parse_env_file(text, environ or {})


def test_line_forms() -> None:
    # dotenvy's test_parse_line_env (note the spaces after KEY8=)
    text = (
        "\nKEY=1\nKEY2=\"2\"\nKEY3='3'\nKEY4='fo ur'\nKEY5=\"fi ve\"\nKEY6=s\\ ix\nKEY7=\n"
        'KEY8=     \nKEY9=   # foo\nKEY10  ="whitespace before ="\n'
        'KEY11=    "whitespace after ="\nexport="export as key"\nexport   SHELL_LOVER=1\n'
    )
    assert parse(text) == {
        "KEY": "1",
        "KEY2": "2",
        "KEY3": "3",
        "KEY4": "fo ur",
        "KEY5": "fi ve",
        "KEY6": "s ix",
        "KEY7": "",
        "KEY8": "",
        "KEY9": "",
        "KEY10": "whitespace before =",
        "KEY11": "whitespace after =",
        "export": "export as key",
        "SHELL_LOVER": "1",
    }


def test_comments_and_blank_lines() -> None:
    assert parse("\n# foo=bar\n#    ") == {}
    assert parse("A=1 # trailing\nB=2#not-a-comment\n  # indented comment\n") == {
        "A": "1",
        "B": "2#not-a-comment",
    }


def test_escapes_and_quotes() -> None:
    # dotenvy's test_parse_value_escapes
    text = (
        "KEY=my\\ cool\\ value\n"
        "KEY2=\\$sweet\n"
        'KEY3="awesome stuff \\"mang\\""\n'
        "KEY4='sweet $\\fgs'\\''fds'\n"
        'KEY5="\'\\"yay\\\\"\\ "stuff"\n'
        'KEY6="lol" #well you see when I say lol wh\n'
        'KEY7="line 1\\nline 2"\n'
    )
    assert parse(text) == {
        "KEY": "my cool value",
        "KEY2": "$sweet",
        "KEY3": 'awesome stuff "mang"',
        "KEY4": "sweet $\\fgs'fds",
        "KEY5": "'\"yay\\ stuff",
        "KEY6": "lol",
        "KEY7": "line 1\nline 2",
    }


def test_quoted_values_span_lines() -> None:
    assert parse('CERT="-----BEGIN-----\nabc\n-----END-----"\nNEXT=1\n') == {
        "CERT": "-----BEGIN-----\nabc\n-----END-----",
        "NEXT": "1",
    }


def test_crlf_and_bom() -> None:
    assert parse("\ufeffA=1\r\nB='x'\r\n") == {"A": "1", "B": "x"}


def test_later_definitions_win() -> None:
    # mirrord collects the pairs and `extend`s its map with them: the last one stays.
    assert parse("A=1\nA=2\n") == {"A": "2"}


def test_substitution() -> None:
    # dotenvy's variable_substitution_tests
    assert parse('KEY=test\nKEY1="${KEY}"') == {"KEY": "test", "KEY1": "test"}
    assert parse('KEY=">$KEY1<>${KEY2}<"') == {"KEY": "><><"}
    assert parse("KEY=>\\$KEY1<>\\${KEY2}<") == {"KEY": ">$KEY1<>${KEY2}<"}
    assert parse('KEY=">\\$KEY1<>\\${KEY2}<"') == {"KEY": ">$KEY1<>${KEY2}<"}
    assert parse("KEY='>${KEY1}<>$KEY2<'") == {"KEY": ">${KEY1}<>$KEY2<"}
    assert parse("KEY=VALUE\nKEY1=$KEY$KEY") == {"KEY": "VALUE", "KEY1": "VALUEVALUE"}
    assert parse("KEY.Value=VALUE") == {"KEY.Value": "VALUE"}
    assert parse("KEY=${KEY1}+KEY_VALUE\nKEY1=${KEY}+KEY1_VALUE") == {
        "KEY": "+KEY_VALUE",
        "KEY1": "+KEY_VALUE+KEY1_VALUE",
    }
    # a bare $NAME stops at the first character that is not a letter or digit (even "_")
    assert parse(
        'KEY1=test_user\nKEY1_1=test_user_with_separator\nKEY=">$KEY1_1<>$KEY1}<>$KEY1{<"'
    )["KEY"] == (">test_user_1<>test_user}<>test_user{<")
    assert parse("KEY2=$KEY1_2\nKEY=>${KEY1}<>${KEY2}<") == {"KEY2": "_2", "KEY": "><>_2<"}


def test_local_environment_wins_in_substitution() -> None:
    environ = {"KEY11": "test_user_env"}
    assert parse('KEY11=test_user\nKEY=">${KEY11}<"', environ) == {
        "KEY11": "test_user",
        "KEY": ">test_user_env<",
    }


def test_reference_at_the_end_of_a_quoted_value() -> None:
    # dotenvy keeps the closing quote as text here and then fails on the open string; read
    # it as everyone means it.
    assert parse('A=x\nB="$A"\nC="pre $A post"\nD=$A') == {
        "A": "x",
        "B": "x",
        "C": "pre x post",
        "D": "x",
    }


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("  invalid    ", 1),
        ("A=1\nvery bacon = yes indeed", 2),
        ("=value", 1),
        ("KEY=my uncool value", 1),
        ('KEY2="why', 1),
        ("KEY3='please stop''", 1),
        ("KEY4=h\\8u", 1),
        ("KEY=VALUE\nKEY1=>${KEY{<", 2),
    ],
)
def test_errors_name_the_line(text: str, line: int) -> None:
    with pytest.raises(EnvFileError) as info:
        parse_env_file(text, {}, source="x.env")
    message = str(info.value)
    assert message.startswith(f"x.env:{line}: cannot parse ")
    assert "\n" not in message


def test_read_env_file(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_text("A=1\n")
    assert read_env_file(path, {}) == {"A": "1"}
    with pytest.raises(EnvFileError, match="no such file"):
        read_env_file(tmp_path / "missing.env", {})
    with pytest.raises(EnvFileError, match="is a directory"):
        read_env_file(tmp_path, {})


def test_trailing_blanks_on_an_unterminated_last_line() -> None:
    assert parse("A=1\nB=2  ") == {"A": "1", "B": "2"}
