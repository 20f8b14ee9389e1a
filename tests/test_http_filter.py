"""mirrord's HTTP filter semantics (feature.network.incoming.http_filter)."""

from __future__ import annotations

import re
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirrord.http.filter import HttpFilter

TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
header_names = st.text(TOKEN_CHARS, min_size=1, max_size=20)
header_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30)
headers = st.lists(st.tuples(header_names, header_values), max_size=6)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"])
paths = st.builds(
    lambda segs, query: "/" + "/".join(segs) + (f"?{query}" if query else ""),
    st.lists(st.text("abcxyz019", min_size=1, max_size=4), max_size=3),
    st.one_of(st.none(), st.text("abc=&1", min_size=1, max_size=6)),
)


def swapcase_some(text: str, data: st.DataObject) -> str:
    flips = data.draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(text, flips, strict=True))


@settings(max_examples=200)
@given(name=header_names, value=header_values, others=headers, data=st.data())
def test_header_regex_matches_name_colon_value_case_insensitively(name, value, others, data):
    f = HttpFilter.from_config({"header_filter": f"^{re.escape(f'{name}: {value}')}$"})
    received = [*others, (swapcase_some(name, data), swapcase_some(value, data))]
    assert f.matches("GET", "/", received)
    # and only a header with that name and value matches
    assert f.matches("GET", "/", others) == any(
        f"{n}: {v}".lower() == f"{name}: {value}".lower() for n, v in others
    )


def test_header_filter_is_a_search_on_each_header_line():
    f = HttpFilter.from_config({"header_filter": "x-mirrord-user: me"})
    assert f.matches("GET", "/", [("Host", "a"), ("X-Mirrord-User", "me")])
    assert f.matches("GET", "/", [("x-mirrord-user", "meh")])  # not anchored, as in mirrord
    assert not f.matches("GET", "/", [("x-mirrord-user", "you")])
    # each header on its own: a match cannot span two headers
    assert not HttpFilter.from_config({"header_filter": "a: b.*c: d"}).matches(
        "GET", "/", [("a", "b"), ("c", "d")]
    )
    # the filter sees the name lowercased (as hyper prints it)
    assert HttpFilter.from_config({"header_filter": "(?-i:^x-user)"}).matches(
        "GET", "/", [("X-User", "1")]
    )


def test_header_with_non_ascii_value_is_skipped_like_hyper_to_str():
    f = HttpFilter.from_config({"header_filter": "^x-user: "})
    assert not f.matches("GET", "/", [("x-user", "caf\xe9")])
    assert f.matches("GET", "/", [("x-user", "a\tb")])


def test_kube_probe_exclusion_example_from_mirrord_docs():
    f = HttpFilter.from_config({"header_filter": "^User-Agent: (?!kube-probe)"})
    assert f.matches("GET", "/", [("user-agent", "curl/8")])
    assert not f.matches("GET", "/", [("User-Agent", "kube-probe/1.29")])
    assert not f.matches("GET", "/", [])


def test_path_filter_tries_path_then_path_and_query():
    f = HttpFilter.from_config({"path_filter": "^/api$"})
    assert f.matches("GET", "/api?x=1", [])  # the path alone matches
    assert f.matches("GET", "/API", [])  # case-insensitive
    assert not f.matches("GET", "/api/v1", [])
    q = HttpFilter.from_config({"path_filter": r"\?debug=1$"})
    assert q.matches("GET", "/api?debug=1", [])  # path+query matches
    assert not q.matches("GET", "/api", [])
    # absolute-form targets (proxies) are reduced to path?query
    assert f.matches("GET", "http://svc:8080/api?x", [])
    assert HttpFilter.from_config({"path_filter": "^(?!/health/)"}).matches("GET", "/x", [])
    assert not HttpFilter.from_config({"path_filter": "^(?!/health/)"}).matches(
        "GET", "/health/live", []
    )


@given(method=methods, data=st.data())
def test_method_filter_is_case_insensitive(method, data):
    f = HttpFilter.from_config({"method_filter": swapcase_some(method, data)})
    assert f.matches(swapcase_some(method, data), "/", [])
    assert not f.matches("BREW" if method != "BREW" else "GET", "/", [])


INNER = [
    {"header": "^x-user: me$"},
    {"header": "^host: api\\."},
    {"path": "^/api/"},
    {"path": "debug=1"},
    {"method": "post"},
    {"method": "GET"},
]
requests_ = st.tuples(
    methods,
    st.sampled_from(["/", "/api/x", "/api/x?debug=1", "/other?debug=1"]),
    st.lists(
        st.sampled_from([("X-User", "me"), ("x-user", "you"), ("Host", "api.svc"), ("host", "x")]),
        max_size=3,
    ),
)


def single(inner: dict[str, str]) -> HttpFilter:
    ((kind, value),) = inner.items()
    return HttpFilter.from_config({f"{kind}_filter": value})


@settings(max_examples=300)
@given(chosen=st.lists(st.sampled_from(INNER), min_size=1, max_size=4), request=requests_)
def test_all_of_and_any_of_combine_the_inner_filters(chosen, request):
    method, path, hdrs = request
    each = [single(inner).matches(method, path, hdrs) for inner in chosen]
    assert HttpFilter.from_config({"all_of": chosen}).matches(method, path, hdrs) == all(each)
    assert HttpFilter.from_config({"any_of": chosen}).matches(method, path, hdrs) == any(each)


def test_ports():
    assert HttpFilter.from_config({"header_filter": "x"}).applies_to(1234)  # absent: all ports
    f = HttpFilter.from_config({"header_filter": "x", "ports": [80, 8080]})
    assert f.applies_to(80) and f.applies_to(8080) and not f.applies_to(81)
    assert f.ports == frozenset({80, 8080})
    assert HttpFilter.from_config({"path_filter": "x", "ports": 9000}).ports == {9000}


def test_rust_named_groups_are_accepted():
    f = HttpFilter.from_config({"header_filter": r"^x-user: (?<user>\w+)$"})
    assert f.matches("GET", "/", [("x-user", "me")])


@pytest.mark.parametrize(
    ("cfg", "named"),
    [
        ({"header_filter": "x-user: (me"}, "http_filter.header_filter"),
        ({"path_filter": "[/api"}, "http_filter.path_filter"),
        ({"all_of": [{"header": "ok"}, {"path": "*bad"}]}, "http_filter.all_of[1].path"),
        ({"any_of": [{"method": "GET"}, {"header": "("}]}, "http_filter.any_of[1].header"),
    ],
)
def test_bad_regex_is_named(cfg, named):
    with pytest.raises(ValueError) as info:
        HttpFilter.from_config(cfg)
    message = str(info.value)
    assert named in message and "invalid regex" in message and "\n" not in message


def _invalid_regex(text: str) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            re.compile(text)
    except re.error:
        return True
    return False


@given(st.text("()[]{}*+?|\\^$a-", min_size=1, max_size=8).filter(_invalid_regex))
def test_any_invalid_regex_is_a_value_error_naming_the_key(pattern):
    with pytest.raises(ValueError, match=r"^http_filter\.header_filter: invalid regex"):
        HttpFilter.from_config({"header_filter": pattern})


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [
        ({}, "no filter set"),
        ({"ports": [80]}, "no filter set"),
        ({"header_filter": "a", "path_filter": "b"}, "header_filter and path_filter"),
        ({"path_filter": "a", "method_filter": "GET"}, "only one kind"),
        ({"all_of": []}, "http_filter.all_of: a composite HTTP filter cannot be empty"),
        ({"header_filter": ""}, "http_filter.header_filter: HTTP filter cannot be an empty"),
        ({"any_of": [{"path": ""}]}, "http_filter.any_of[0].path"),
        ({"any_of": [{"header": "a", "path": "b"}]}, "http_filter.any_of[0]: expected exactly"),
        ({"any_of": [{"nope": "a"}]}, "http_filter.any_of[0]"),
        ({"any_of": ["x"]}, "http_filter.any_of[0]"),
        ({"all_of": "x"}, "http_filter.all_of: expected a list"),
        ({"method_filter": "GE T"}, "http_filter.method_filter: 'GE T' is not an HTTP method"),
        ({"header_filter": 3}, "http_filter.header_filter: expected a string"),
        ({"header_filter": "a", "ports": [70000]}, "http_filter.ports"),
        ({"header_filter": "a", "ports": True}, "http_filter.ports"),
        ({"header_filter": "a", "ports": "80"}, "http_filter.ports"),
        ({"header_filter": "a", "bogus": 1}, "unknown key 'bogus'"),
        (
            {"body_filter": {"body": "json", "query": "$", "matches": "x"}},
            "http_filter.body_filter: not supported",
        ),
        ({"header_filter_jq": ". == 1"}, "http_filter.header_filter_jq: not supported"),
        ({"all_of": [{"body": "json", "query": "$", "matches": "x"}]}, "all_of[0]: body"),
    ],
)
def test_config_errors(cfg, fragment):
    with pytest.raises(ValueError) as info:
        HttpFilter.from_config(cfg)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_model_dump_shape_is_accepted():
    """What MirrordConfig hands over: model_dump(exclude_none=True) of HttpFilterConfig."""
    from mirrord.config.schema import HttpFilterConfig

    dumped = HttpFilterConfig.model_validate(
        {"any_of": [{"header": "^x-user: me$"}, {"method": "delete"}], "ports": 8080}
    ).model_dump(exclude_none=True)
    f = HttpFilter.from_config(dumped)
    assert f.applies_to(8080) and not f.applies_to(80)
    assert f.matches("DELETE", "/", []) and f.matches("GET", "/", [("X-User", "me")])
    assert not f.matches("GET", "/", [])
    assert "any of" in repr(f)
