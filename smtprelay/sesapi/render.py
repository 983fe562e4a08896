"""SES email templates rendered as SES renders them: Handlebars (pybars3), with SES's
own rules on top of the library's.

- A variable the data does not have is a rendering failure, not an empty string:
  SES does not send such a message (it emits a Rendering Failure event, "Attribute
  'name' is not present in the rendering data."). Handlebars itself prints nothing
  for it, so the data is wrapped: a lookup that misses gives `_Missing`, falsy (so
  `{{#if name}}` and `{{#each name}}` test for presence, as SES's own examples use
  them) and recorded the moment it is printed.
- Nothing is HTML-escaped, in any part: "SES doesn't escape HTML content when
  rendering the HTML template" (SES's guide); `{{{x}}}` and `{{x}}` are the same.
- Values print as JavaScript prints them (true, 2 not 2.0, null as nothing).
- A block left open (`{{#if a}}` without `{{/if}}`), which pybars3 accepts silently
  and renders as nothing, is a syntax error; so is any `__` in a tag, which would
  reach Python attributes rather than data.

pybars3 compiles a template to a Python module; compiling is slow (a PEG parser in
Python) and its compiler is not thread-safe, so templates are compiled under a lock
and kept in a small LRU by source text.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import pybars  # type: ignore[import-untyped]

from smtprelay.policy.templates import Content

# SES: "Each template can be up to 500 KB in size, including both the text and HTML
# parts"; TemplateData: "up to 262144 characters" (the SESv2 model's length limit).
MAX_TEMPLATE_SIZE = 500 * 1024
MAX_TEMPLATE_DATA = 262_144
_CACHE_SIZE = 256

_TAG = re.compile(r"\{\{\{?~?\s*(.*?)\s*~?\}?\}\}", re.DOTALL)
_OPEN = re.compile(r"^#\*?\s*([^\s}]+)")
_CLOSE = re.compile(r"^/\s*([^\s}]+)")
_INLINE = re.compile(r"""\{\{#\*\s*inline\s+["']([^"']+)["']\s*\}\}(.*?)\{\{/inline\}\}\n?""",
                     re.DOTALL)


class TemplateSyntaxError(ValueError):
    """The template cannot be compiled; the message names the part and the place."""


class RenderingFailure(ValueError):
    """The data does not fit the template; the message is SES's wording where it has one."""


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str | None
    html: str | None


class _Missing:
    """What a lookup of an absent attribute gives: nothing, until it is printed."""

    __slots__ = ("misses", "name")

    def __init__(self, name: str, misses: list[str]) -> None:
        self.name = name
        self.misses = misses

    def __bool__(self) -> bool:
        return False

    def __getitem__(self, key: object) -> _Missing:
        return _Missing(f"{self.name}.{key}", self.misses)

    def __str__(self) -> str:
        self.misses.append(self.name)
        return ""


class _Object(dict[str, Any]):
    """A JSON object of the data: a missing key is `_Missing`, never a Python
    attribute of the dict (pybars falls back to getattr, so `{{items}}` would
    otherwise print a method)."""

    misses: list[str]
    path: str  # "a.b." for the object at a.b; "" for the data itself

    def __missing__(self, key: str) -> _Missing:
        return _Missing(f"{self.path}{key}", self.misses)

    def __str__(self) -> str:
        return "[object Object]"  # what Handlebars prints for an object


def _wrap(value: Any, misses: list[str], path: str = "") -> Any:
    if isinstance(value, dict):
        wrapped = _Object((k, _wrap(v, misses, f"{path}{k}.")) for k, v in value.items())
        wrapped.misses, wrapped.path = misses, path
        return wrapped
    if isinstance(value, list):
        return [_wrap(v, misses, f"{path}{i}.") for i, v in enumerate(value)]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # JavaScript prints 2.0 as 2
    return value


def _prepare(value: Any, should_escape: bool) -> Any:
    # SES escapes nothing: every expansion as {{{...}}}.
    return _library_prepare(value, False)


_library_prepare: Callable[[Any, bool], Any] = pybars._compiler.prepare
_compiler = pybars.Compiler()
_compile_lock = threading.Lock()
_compiled: OrderedDict[str, Callable[..., Any]] = OrderedDict()


def _check_blocks(source: str) -> None:
    stack: list[str] = []
    for match in _TAG.finditer(source):
        inside = match.group(1)
        if "__" in inside:
            raise TemplateSyntaxError(f"{match.group(0)!r}: names with '__' are not allowed")
        if (opened := _OPEN.match(inside)) is not None:
            stack.append(opened.group(1))
        elif (closed := _CLOSE.match(inside)) is not None:
            if not stack or stack[-1] != closed.group(1):
                raise TemplateSyntaxError(
                    f"{match.group(0)!r} closes {'nothing' if not stack else stack[-1]!r}")
            stack.pop()
    if stack:
        raise TemplateSyntaxError(f"{{{{#{stack[-1]}}}}} is not closed")


def _compile_one(source: str) -> Callable[..., Any]:
    try:
        function = _compiler.compile(source)
    except pybars.PybarsError as exc:
        raise TemplateSyntaxError(str(exc)) from None
    except Exception as exc:  # the PEG parser's own failures on odd input
        raise TemplateSyntaxError(f"cannot parse: {exc}") from None
    # compile() registers a module per template in sys.modules; the function keeps
    # its globals, so the registration is only a leak in a long-lived server.
    sys.modules.pop(function.__module__, None)
    function.__globals__["prepare"] = _prepare
    return cast(Callable[..., Any], function)


def compiled(source: str) -> Callable[..., Any]:
    """The template function of `source`; TemplateSyntaxError when it has none.

    SES's inline partials (`{{#* inline "name"}}...{{/inline}}`, then `{{> name}}`),
    which pybars3's grammar lacks, are taken out of the part first and compiled as
    partials of it, each part its own (SES: "Inline partials are not transferred
    between parts of the email"); the newline after a definition is not rendered."""
    with _compile_lock:
        found = _compiled.get(source)
        if found is not None:
            _compiled.move_to_end(source)
            return found
        _check_blocks(source)
        partials = {name: _compile_one(body) for name, body in _INLINE.findall(source)}
        main = _compile_one(_INLINE.sub("", source))

        def function(context: Any) -> Any:
            return main(context, partials=partials)

        _compiled[source] = function
        if len(_compiled) > _CACHE_SIZE:
            _compiled.popitem(last=False)
        return function


def check(content: Content) -> None:
    """TemplateSyntaxError naming the part that does not compile, or that is too big."""
    if content.size() > MAX_TEMPLATE_SIZE:
        raise TemplateSyntaxError(f"the template is larger than {MAX_TEMPLATE_SIZE} bytes")
    for name, source in content.parts():
        try:
            compiled(source)
        except TemplateSyntaxError as exc:
            raise TemplateSyntaxError(f"{name} part: {exc}") from None


def _render_part(source: str, data: Mapping[str, Any]) -> str:
    misses: list[str] = []
    try:
        out = str(compiled(source)(_wrap(dict(data), misses)))
    except TemplateSyntaxError:
        raise
    except Exception as exc:  # a helper given the wrong things, an index not a number
        raise RenderingFailure(f"Template rendering failed: {exc}") from None
    if misses:
        raise RenderingFailure(f"Attribute '{misses[0]}' is not present in the rendering data.")
    return out


def render(content: Content, data: Mapping[str, Any]) -> Rendered:
    """Every part of `content` with `data`: RenderingFailure for a missing attribute,
    TemplateSyntaxError for a template that does not compile."""
    return Rendered(
        subject=_render_part(content.subject or "", data),
        text=None if content.text is None else _render_part(content.text, data),
        html=None if content.html is None else _render_part(content.html, data))


def parse_data(text: str, field: str) -> dict[str, Any]:
    """TemplateData: a JSON object of at most MAX_TEMPLATE_DATA characters; ValueError
    saying what is wrong with it, naming `field`."""
    if len(text) > MAX_TEMPLATE_DATA:
        raise ValueError(f"{field} is longer than {MAX_TEMPLATE_DATA} characters")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{field} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{field} must be a JSON object")
    return data


def merged(default: Mapping[str, Any], replacement: Mapping[str, Any]) -> dict[str, Any]:
    """An entry's data over the defaults: its own keys win, the others are the
    default's (SendBulkEmail's DefaultContent TemplateData under each entry's
    ReplacementTemplateData)."""
    return {**default, **replacement}
