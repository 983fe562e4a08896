"""The template renderer: SES's Handlebars subset on pybars3, with SES's rules (a
missing attribute fails, nothing is escaped, blocks must close)."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprelay.policy.templates import Content
from smtprelay.sesapi import render


def one(source: str, data: dict[str, object]) -> str:
    return render.render(Content(source, None, None), data).subject


def test_nested_paths_each_if_and_this() -> None:
    data = {"contact": {"firstName": "Anaya"}, "subscription": [
        {"interest": "Sports"}, {"interest": "Travel"}], "tags": ["a", "b"]}
    assert one("Hi {{contact.firstName}}", data) == "Hi Anaya"
    assert one("{{#each subscription}}[{{interest}}]{{/each}}", data) == "[Sports][Travel]"
    assert one("{{#each tags}}{{this}},{{/each}}", data) == "a,b,"
    assert one("{{#if subscription}}yes{{else}}no{{/if}}", data) == "yes"
    assert one("{{#if missing}}yes{{else}}no{{/if}}", data) == "no"  # presence test
    assert one("{{#each missing}}x{{else}}none{{/each}}", data) == "none"


def test_values_print_as_javascript_does_and_nothing_is_escaped() -> None:
    assert one("{{a}} {{b}} {{c}} {{d}}", {"a": True, "b": 2.0, "c": None, "d": 1.5}) == \
        "true 2  1.5"
    assert one("{{x}}|{{{x}}}", {"x": "<b>&\"'"}) == "<b>&\"'|<b>&\"'"


def test_a_missing_attribute_fails_with_ses_words() -> None:
    with pytest.raises(render.RenderingFailure) as failed:
        one("Hello {{name}}", {})
    assert str(failed.value) == "Attribute 'name' is not present in the rendering data."
    with pytest.raises(render.RenderingFailure, match=r"'a\.b\.c'"):
        one("{{a.b.c}}", {"a": {}})
    # A dict method is not data.
    with pytest.raises(render.RenderingFailure, match="'items'"):
        one("{{items}}", {})


@pytest.mark.parametrize("source", ["{{#if a}}open", "{{#if a}}x{{/each}}", "{{/if}}",
                                    "{{{x}}", "{{x.__class__}}"])
def test_syntax_errors_are_refused(source: str) -> None:
    with pytest.raises(render.TemplateSyntaxError):
        render.check(Content(None, source, None))


def test_data_must_be_a_json_object_within_the_limit() -> None:
    assert render.parse_data('{"a": 1}', "TemplateData") == {"a": 1}
    for bad in ("[1]", "{nope", "x" * (render.MAX_TEMPLATE_DATA + 1)):
        with pytest.raises(ValueError, match="TemplateData"):
            render.parse_data(bad, "TemplateData")
    assert render.merged({"a": 1, "b": 2}, {"b": 3}) == {"a": 1, "b": 3}


# Helper names are helpers, in Handlebars too.
HELPERS = {"if", "each", "unless", "with", "log", "lookup", "else", "this"}
names = st.text(string.ascii_letters, min_size=1, max_size=8).filter(
    lambda n: n not in HELPERS)
values = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(st.dictionaries(names, values, min_size=1, max_size=5))
def test_every_variable_is_substituted_verbatim(data: dict[str, str]) -> None:
    source = "|".join(f"{{{{{k}}}}}" for k in data)
    assert one(source, data) == "|".join(data.values())


@given(st.dictionaries(names, values, max_size=5), names)
def test_rendering_never_fails_otherwise(data: dict[str, str], name: str) -> None:
    source = f"{{{{{name}}}}}"
    try:
        assert one(source, data) == data[name]
    except render.RenderingFailure as exc:
        assert name not in data and json.dumps(name)[1:-1] in str(exc)


def test_inline_partials_as_the_ses_guide_writes_them() -> None:
    """SES's "Creating inline partials" example: defined at the top of a part, used in
    it and in a loop; the newline after the definition is not rendered, and a part
    does not see another part's partials."""
    partial = ('{{#* inline "fullName"}}{{firstName}}{{#if lastName}} {{lastName}}{{/if}}'
               '{{/inline}}\n')
    html = (partial + "<h1>Hello {{> fullName}}!</h1><ul>{{#each friends}}"
            "<li>{{> fullName}}</li>{{/each}}</ul>")
    data = {"firstName": "Anaya", "lastName": "Iyengar",
            "friends": [{"firstName": "Bo"}, {"firstName": "Cy", "lastName": "Dee"}]}
    rendered = render.render(Content("{{firstName}}'s preferences", "Hi {{firstName}}",
                                     html), data)
    assert rendered.html == ("<h1>Hello Anaya Iyengar!</h1>"
                             "<ul><li>Bo</li><li>Cy Dee</li></ul>")
    with pytest.raises(render.RenderingFailure):
        render.render(Content("x", "{{> fullName}}", html), data)  # the text part's own
    with pytest.raises(render.TemplateSyntaxError):
        render.check(Content("x", '{{#* inline "a"}}unclosed', None))
